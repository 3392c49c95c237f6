//! JSON templates: any JSON value whose strings may hold `{{ expr }}`. A string that is exactly one
//! `{{ expr }}` yields the expression's JSON value, so `"{{input.qty}}"` renders as the number 3;
//! any other string with expressions is text with each value interpolated (strings bare, other
//! values as JSON). Everything else is copied as it is.

use crate::expr::{Expr, ExprError, Scope, Vars};
use crate::value::to_text;

#[derive(Debug, Clone, PartialEq)]
pub enum Template {
    Literal(serde_json::Value),
    /// The whole string was one expression: its value, with its JSON type.
    Value(Expr),
    Text(Vec<Part>),
    Array(Vec<Template>),
    Object(Vec<(String, Template)>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Expr(Expr),
}

/// A template error, with the JSON path of the string that holds it (`items[0].sku`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {error}")]
pub struct TemplateError {
    pub path: String,
    pub error: ExprError,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Splits a string into text and `{{ }}` parts. An unclosed `{{` is a syntax error.
fn parse_string(s: &str, scope: &Scope) -> Result<Vec<Part>, ExprError> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            parts.push(Part::Text(rest[..open].to_string()));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| ExprError::Syntax { expr: s.to_string(), why: "`{{` without a closing `}}`".into() })?;
        parts.push(Part::Expr(Expr::compile(&after[..close], scope)?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        parts.push(Part::Text(rest.to_string()));
    }
    Ok(parts)
}

impl Template {
    pub fn compile(json: &serde_json::Value, scope: &Scope) -> Result<Template, TemplateError> {
        Self::compile_at(json, scope, "")
    }

    fn compile_at(json: &serde_json::Value, scope: &Scope, path: &str) -> Result<Template, TemplateError> {
        Ok(match json {
            serde_json::Value::String(s) if s.contains("{{") => {
                let mut parts =
                    parse_string(s, scope).map_err(|error| TemplateError { path: path.to_string(), error })?;
                match parts.as_slice() {
                    [Part::Expr(_)] => match parts.pop() {
                        Some(Part::Expr(e)) => Template::Value(e),
                        _ => Template::Text(parts),
                    },
                    _ => Template::Text(parts),
                }
            }
            serde_json::Value::Array(items) => Template::Array(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| Self::compile_at(item, scope, &format!("{path}[{i}]")))
                    .collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(fields) => Template::Object(
                fields
                    .iter()
                    .map(|(k, v)| Ok((k.clone(), Self::compile_at(v, scope, &join(path, k))?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
            other => Template::Literal(other.clone()),
        })
    }

    pub fn render(&self, vars: &Vars) -> Result<serde_json::Value, ExprError> {
        Ok(match self {
            Template::Literal(v) => v.clone(),
            Template::Value(e) => e.eval(vars)?,
            Template::Text(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Text(t) => out.push_str(t),
                        Part::Expr(e) => out.push_str(&to_text(&e.eval(vars)?)),
                    }
                }
                serde_json::Value::String(out)
            }
            Template::Array(items) => {
                serde_json::Value::Array(items.iter().map(|t| t.render(vars)).collect::<Result<_, _>>()?)
            }
            Template::Object(fields) => serde_json::Value::Object(
                fields.iter().map(|(k, t)| Ok((k.clone(), t.render(vars)?))).collect::<Result<_, ExprError>>()?,
            ),
        })
    }

    /// Every expression in the template (for reference checks).
    pub fn exprs(&self) -> Vec<&Expr> {
        let mut all = Vec::new();
        self.collect(&mut all);
        all
    }

    fn collect<'a>(&'a self, all: &mut Vec<&'a Expr>) {
        match self {
            Template::Literal(_) => {}
            Template::Value(e) => all.push(e),
            Template::Text(parts) => all.extend(parts.iter().filter_map(|p| match p {
                Part::Expr(e) => Some(e),
                Part::Text(_) => None,
            })),
            Template::Array(items) => items.iter().for_each(|t| t.collect(all)),
            Template::Object(fields) => fields.iter().for_each(|(_, t)| t.collect(all)),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SCOPE: Scope = Scope { variables: &["input", "steps"], keyed: &["steps"] };

    fn vars() -> Vars {
        Vars::new()
            .with("input", &json!({"orderId": "o-1", "qty": 3, "address": {"city": "Lyon"}}))
            .with("steps", &json!({"process-payment": {"output": {"chargeId": "ch_1"}}}))
    }

    #[test]
    fn a_whole_string_expression_keeps_its_json_type() {
        let t = Template::compile(
            &json!({"qty": "{{input.qty}}", "address": "{{ input.address }}", "note": "order {{input.orderId}} x{{input.qty}}",
                    "charge": "{{steps.process-payment.output.chargeId}}", "fixed": [1, true, null]}),
            &SCOPE,
        )
        .unwrap();
        assert_eq!(
            t.render(&vars()).unwrap(),
            json!({"qty": 3, "address": {"city": "Lyon"}, "note": "order o-1 x3", "charge": "ch_1", "fixed": [1, true, null]})
        );
        let steps: Vec<_> =
            t.exprs().iter().flat_map(|e| e.keyed_refs("steps").map(String::from).collect::<Vec<_>>()).collect();
        assert_eq!(steps, ["process-payment"]);
    }

    #[test]
    fn errors_name_the_path_of_the_bad_string() {
        let err = Template::compile(&json!({"items": [{"sku": "{{input.("}]}), &SCOPE).unwrap_err();
        assert_eq!(err.path, "items[0].sku");
        let err = Template::compile(&json!({"a": "{{ input.x "}), &SCOPE).unwrap_err();
        assert_eq!(err.path, "a");
        let err = Template::compile(&json!("{{ secrets.key }}"), &SCOPE).unwrap_err();
        assert!(matches!(err.error, ExprError::UnknownVariable { .. }));
    }
}
