//! One compiled CEL expression.
//!
//! Before compiling, `root.some-name` is rewritten to `root["some-name"]` for the roots a [`Scope`]
//! names as keyed by ids (workflow `steps`, request `headers`): ids like `process-payment` are normal
//! there, and CEL would otherwise read the `-` as a minus. Compiling also checks that every variable
//! is one the scope offers and records which ids of those roots the expression names, so a workflow
//! can refuse a reference to a step that does not exist when it is registered, not when it runs.

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::{Context, Program};

use crate::value::{to_cel, to_json};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    #[error("syntax error in `{expr}`: {why}")]
    Syntax { expr: String, why: String },
    #[error("`{expr}` uses unknown variable `{name}` (available: {available})")]
    UnknownVariable { expr: String, name: String, available: String },
    #[error("`{expr}` calls unknown function `{name}`")]
    UnknownFunction { expr: String, name: String },
    #[error("`{expr}` failed: {why}")]
    Eval { expr: String, why: String },
    #[error("`{expr}` must be true or false, got {got}")]
    NotABool { expr: String, got: String },
}

/// What an expression may refer to.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    /// Top-level variables (e.g. `input`, `steps`, `workflow`).
    pub variables: &'static [&'static str],
    /// Variables whose fields are ids that may contain `-` (e.g. `steps`, `headers`).
    pub keyed: &'static [&'static str],
}

/// CEL's standard functions and macros, which `references().functions()` also lists.
const STANDARD_FUNCTIONS: &[&str] = &[
    "size",
    "has",
    "all",
    "exists",
    "exists_one",
    "map",
    "filter",
    "contains",
    "startsWith",
    "endsWith",
    "matches",
    "int",
    "uint",
    "double",
    "string",
    "bytes",
    "bool",
    "type",
    "duration",
    "timestamp",
    "max",
    "min",
    "dyn",
    "_+_",
    "_-_",
    "_*_",
    "_/_",
    "_%_",
    "_==_",
    "_!=_",
    "_<_",
    "_<=_",
    "_>_",
    "_>=_",
    "_&&_",
    "_||_",
    "!_",
    "-_",
    "_?_:_",
    "_[_]",
    "@in",
    "in",
    "@not_strictly_false",
    "format",
    "lowerAscii",
    "upperAscii",
    "trim",
    "split",
    "join",
    "replace",
    "indexOf",
    "lastIndexOf",
    "substring",
    "charAt",
    "getHours",
];

/// A compiled expression; cheap to clone.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
    keyed_refs: Arc<BTreeSet<(String, String)>>,
}

impl std::fmt::Debug for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Expr").field(&self.source).finish()
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Rewrites `root.a-b` to `root["a-b"]` for keyed roots, outside string literals, and collects the
/// ids named through keyed roots (`root.id`, `root["id"]`, `root['id']`).
fn rewrite(source: &str, keyed: &[&str]) -> (String, BTreeSet<(String, String)>) {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len() + 8);
    let mut refs = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' {
            // Copy a string literal as it is (escapes included).
            out.push(c);
            i += 1;
            while i < chars.len() {
                out.push(chars[i]);
                if chars[i] == '\\' && i + 1 < chars.len() {
                    out.push(chars[i + 1]);
                    i += 2;
                    continue;
                }
                if chars[i] == c {
                    i += 1;
                    break;
                }
                i += 1;
            }
            continue;
        }
        let starts_word = is_ident_start(c) && (i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == '.'));
        if starts_word {
            let end = (i..chars.len()).find(|&j| !is_ident(chars[j])).unwrap_or(chars.len());
            let word: String = chars[i..end].iter().collect();
            out.push_str(&word);
            i = end;
            if !keyed.contains(&word.as_str()) {
                continue;
            }
            if i < chars.len() && chars[i] == '.' && i + 1 < chars.len() && is_ident_start(chars[i + 1]) {
                let name_end =
                    (i + 1..chars.len()).find(|&j| !(is_ident(chars[j]) || chars[j] == '-')).unwrap_or(chars.len());
                let name: String = chars[i + 1..name_end].iter().collect();
                let name = name.trim_end_matches('-').to_string();
                let consumed = i + 1 + name.chars().count();
                if name.contains('-') {
                    out.push_str(&format!("[\"{name}\"]"));
                } else {
                    out.push('.');
                    out.push_str(&name);
                }
                refs.insert((word.clone(), name));
                i = consumed;
            } else if i + 1 < chars.len() && chars[i] == '[' && (chars[i + 1] == '"' || chars[i + 1] == '\'') {
                let quote = chars[i + 1];
                if let Some(close) = (i + 2..chars.len()).find(|&j| chars[j] == quote) {
                    let name: String = chars[i + 2..close].iter().collect();
                    refs.insert((word.clone(), name));
                }
            }
            continue;
        }
        out.push(c);
        i += 1;
    }
    (out, refs)
}

/// Names bound by comprehension macros (`list.exists(x, ...)`), which CEL reports as variables.
fn macro_bound(source: &str) -> BTreeSet<String> {
    const MACROS: &[&str] = &["all", "exists", "exists_one", "map", "filter"];
    let mut bound = BTreeSet::new();
    for m in MACROS {
        let needle = format!(".{m}(");
        let mut from = 0;
        while let Some(at) = source[from..].find(&needle) {
            let args = &source[from + at + needle.len()..];
            let name: String = args.trim_start().chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() && args.trim_start()[name.len()..].trim_start().starts_with(',') {
                bound.insert(name);
            }
            from += at + needle.len();
        }
    }
    bound
}

impl Expr {
    pub fn compile(source: &str, scope: &Scope) -> Result<Expr, ExprError> {
        let expr = source.trim().to_string();
        if expr.is_empty() {
            return Err(ExprError::Syntax { expr, why: "empty expression".into() });
        }
        let (rewritten, keyed_refs) = rewrite(&expr, scope.keyed);
        let program =
            Program::compile(&rewritten).map_err(|e| ExprError::Syntax { expr: expr.clone(), why: e.to_string() })?;
        let references = program.references();
        let bound = macro_bound(&rewritten);
        for name in references.variables() {
            if !scope.variables.contains(&name) && !bound.contains(name) {
                return Err(ExprError::UnknownVariable {
                    expr,
                    name: name.to_string(),
                    available: scope.variables.join(", "),
                });
            }
        }
        for name in references.functions() {
            if !STANDARD_FUNCTIONS.contains(&name) && !name.starts_with('_') && !name.starts_with('@') {
                return Err(ExprError::UnknownFunction { expr, name: name.to_string() });
            }
        }
        Ok(Expr { source: expr.into(), program: Arc::new(program), keyed_refs: Arc::new(keyed_refs) })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The ids this expression names under the keyed root `root` (e.g. the steps it reads).
    pub fn keyed_refs<'a>(&'a self, root: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.keyed_refs.iter().filter(move |(r, _)| r == root).map(|(_, id)| id.as_str())
    }

    pub fn eval(&self, vars: &Vars) -> Result<serde_json::Value, ExprError> {
        let value = self
            .program
            .execute(&vars.context)
            .map_err(|e| ExprError::Eval { expr: self.source.to_string(), why: e.to_string() })?;
        to_json(&value).ok_or_else(|| ExprError::Eval {
            expr: self.source.to_string(),
            why: format!("the result {value:?} has no JSON form"),
        })
    }

    pub fn eval_bool(&self, vars: &Vars) -> Result<bool, ExprError> {
        match self.eval(vars)? {
            serde_json::Value::Bool(b) => Ok(b),
            other => Err(ExprError::NotABool { expr: self.source.to_string(), got: other.to_string() }),
        }
    }
}

/// CEL's standard functions and macros, built once: building them is far dearer than most
/// evaluations.
static STDLIB: std::sync::LazyLock<Arc<cel::Env>> = std::sync::LazyLock::new(|| Arc::new(cel::Env::stdlib()));

/// The variables an evaluation sees.
pub struct Vars {
    context: Context<'static, 'static>,
}

impl Default for Vars {
    fn default() -> Self {
        Vars { context: Context::with_env(STDLIB.clone()) }
    }
}

impl Vars {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, name: &str, value: &serde_json::Value) -> Self {
        self.set(name, value);
        self
    }

    pub fn set(&mut self, name: &str, value: &serde_json::Value) {
        self.context.add_variable_from_value(name.to_string(), to_cel(value));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const WORKFLOW: Scope = Scope { variables: &["input", "steps", "workflow"], keyed: &["steps"] };

    fn vars() -> Vars {
        Vars::new()
            .with("input", &json!({"orderId": "o-1", "qty": 3, "vip": true, "items": [{"sku": "a"}]}))
            .with("steps", &json!({"process-payment": {"output": {"chargeId": "ch_1", "amount": 250}}}))
            .with("workflow", &json!({"instanceId": "wf-1"}))
    }

    #[test]
    fn hyphenated_step_ids_read_as_ids_not_subtraction() {
        let e = Expr::compile("steps.process-payment.output.chargeId", &WORKFLOW).unwrap();
        assert_eq!(e.eval(&vars()).unwrap(), json!("ch_1"));
        assert_eq!(e.keyed_refs("steps").collect::<Vec<_>>(), ["process-payment"]);
        let e = Expr::compile("steps['process-payment'].output.amount > 100", &WORKFLOW).unwrap();
        assert!(e.eval_bool(&vars()).unwrap());
        assert_eq!(e.keyed_refs("steps").collect::<Vec<_>>(), ["process-payment"]);
    }

    #[test]
    fn string_literals_are_left_alone() {
        let e = Expr::compile("'steps.a-b' + input.orderId", &WORKFLOW).unwrap();
        assert_eq!(e.eval(&vars()).unwrap(), json!("steps.a-bo-1"));
        assert_eq!(e.keyed_refs("steps").count(), 0);
    }

    #[test]
    fn integers_from_json_do_integer_arithmetic() {
        let e = Expr::compile("input.qty * 2 + size(input.items)", &WORKFLOW).unwrap();
        assert_eq!(e.eval(&vars()).unwrap(), json!(7));
    }

    #[test]
    fn unknown_variables_and_functions_are_refused_at_compile_time() {
        assert!(matches!(
            Expr::compile("request.path", &WORKFLOW),
            Err(ExprError::UnknownVariable { name, .. }) if name == "request"
        ));
        assert!(matches!(Expr::compile("launch(input)", &WORKFLOW), Err(ExprError::UnknownFunction { .. })));
        assert!(matches!(Expr::compile("input.(", &WORKFLOW), Err(ExprError::Syntax { .. })));
        assert!(matches!(Expr::compile("  ", &WORKFLOW), Err(ExprError::Syntax { .. })));
    }

    #[test]
    fn macros_and_standard_functions_work() {
        let e =
            Expr::compile("input.items.exists(i, i.sku == 'a') && input.orderId.startsWith('o-')", &WORKFLOW).unwrap();
        assert!(e.eval_bool(&vars()).unwrap());
        assert!(Expr::compile("has(input.coupon) ? input.coupon : 'none'", &WORKFLOW).unwrap().eval(&vars()).is_ok());
    }

    #[test]
    fn evaluation_errors_and_non_bool_conditions_are_errors() {
        let e = Expr::compile("input.missing.field", &WORKFLOW).unwrap();
        assert!(matches!(e.eval(&vars()), Err(ExprError::Eval { .. })));
        let e = Expr::compile("input.qty", &WORKFLOW).unwrap();
        assert!(matches!(e.eval_bool(&vars()), Err(ExprError::NotABool { .. })));
    }
}

/// Hostile input: any text compiles or is refused, and whatever compiles evaluates or errs, never
/// panics (expressions come from users' workflow definitions and gateway routes).
#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    const SCOPE: Scope = Scope { variables: &["input", "steps", "headers"], keyed: &["steps", "headers"] };

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn expressions_compile_or_refuse_and_evaluate_or_err(
            source in "[a-z0-9_.()+*/<>=!&|\"'\\[\\]{}, -]{0,40}|(input|steps|headers)(\\.[a-z-]{1,5}|\\[\"[a-z-]{0,5}\"\\]){0,3}( (==|<|\\+|/|%) [0-9a-z\"]{0,4})?",
        ) {
            if let Ok(expr) = Expr::compile(&source, &SCOPE) {
                let vars = Vars::new()
                    .with("input", &serde_json::json!({"a": 1, "b": "x", "c": [1, 2], "d": {"e": null}}))
                    .with("steps", &serde_json::json!({"s-1": {"output": {"n": 0}}}))
                    .with("headers", &serde_json::json!({"x-a": "1"}));
                let _ = expr.eval(&vars);
                let _ = expr.eval_bool(&vars);
            }
        }

        #[test]
        fn templates_compile_or_refuse(text in "[a-z{} .\"]{0,30}") {
            let _ = crate::Template::compile(&serde_json::Value::String(text), &SCOPE);
        }
    }
}
