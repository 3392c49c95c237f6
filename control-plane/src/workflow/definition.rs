//! Workflow definitions: the JSON form users register, and [`Definition::compile`], which checks all
//! of it at registration (duplicate step ids, unknown or unreachable targets, expression syntax,
//! references to steps that do not exist) and keeps the compiled expressions for the engine.
//!
//! ```json
//! {"id": "order-processing", "name": "Order processing", "timeout": "10m",
//!  "inputSchema": {"type": "object", "required": ["orderId"]},
//!  "steps": [
//!    {"id": "reserve-stock", "service": "inventory", "action": "reserve",
//!     "input": {"orderId": "{{input.orderId}}", "items": "{{input.items}}"},
//!     "compensate": {"service": "inventory", "action": "release", "input": {"orderId": "{{input.orderId}}"}}},
//!    {"id": "process-payment", "service": "payments", "action": "charge",
//!     "input": {"amount": "{{input.total}}"}, "timeout": "5s",
//!     "retry": {"maxAttempts": 5, "backoff": {"initial": "200ms", "multiplier": 2, "max": "5s", "jitter": 0.2}},
//!     "next": [{"when": "steps.process-payment.output.status == 'review'", "goto": "manual-review"}],
//!     "onFailure": "notify-customer"},
//!    ...],
//!  "output": {"chargeId": "{{steps.process-payment.output.chargeId}}"}}
//! ```
//!
//! Steps run in list order unless a `next` rule (first `when` that holds; a rule without `when`
//! always holds) or `onFailure` sends the run elsewhere; `"$end"` ends the workflow. A step whose
//! `condition` is false is skipped.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use reskflow_expr::template::TemplateError;
use reskflow_expr::{Expr, ExprError, Scope, Template};
use reskflow_proto::invalid::{Invalid, Violations};
use reskflow_proto::registry::is_valid_id;
use serde::{Deserialize, Serialize};

/// Expressions in a workflow see its input, the steps that ran, and facts about the run.
pub const SCOPE: Scope = Scope { variables: &["input", "steps", "workflow"], keyed: &["steps"] };
/// The `goto` target that ends the workflow.
pub const END: &str = "$end";
const MAX_STEPS: usize = 500;
const MAX_STEP_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
const MAX_WORKFLOW_TIMEOUT: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowSpec {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// JSON Schema the execute input must satisfy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<serde_json::Value>,
    /// The whole run, from execute to a final state.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    pub steps: Vec<StepSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StepSpec {
    pub id: String,
    pub service: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    /// Skip the step when this is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub next: Vec<RouteSpec>,
    /// Where to go when the step finally fails (instead of failing the workflow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compensate: Option<CompensateSpec>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    /// A condition on the results so far; none = always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    pub goto: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CompensateSpec {
    pub service: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetrySpec>,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

/// What a failed attempt may be retried for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOn {
    /// The service answered 5xx.
    ServerError,
    /// No answer within the step timeout.
    Timeout,
    /// No connection (refused, reset, no healthy instance).
    Connection,
    /// The service answered 4xx (not retried unless asked).
    ClientError,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    #[serde(default = "RetrySpec::default_attempts")]
    pub max_attempts: u32,
    #[serde(default)]
    pub backoff: Backoff,
    /// Default: server errors, timeouts and connection failures.
    #[serde(default = "RetrySpec::default_retry_on")]
    pub retry_on: Vec<RetryOn>,
}

impl RetrySpec {
    fn default_attempts() -> u32 {
        3
    }
    fn default_retry_on() -> Vec<RetryOn> {
        vec![RetryOn::ServerError, RetryOn::Timeout, RetryOn::Connection]
    }
    /// Used when a step declares no policy: a few quick retries of transient failures.
    pub fn default_policy() -> Self {
        RetrySpec { max_attempts: 3, backoff: Backoff::default(), retry_on: Self::default_retry_on() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Backoff {
    #[serde(default = "Backoff::default_initial", with = "humantime_serde")]
    pub initial: Duration,
    #[serde(default = "Backoff::default_multiplier")]
    pub multiplier: f64,
    #[serde(default = "Backoff::default_max", with = "humantime_serde")]
    pub max: Duration,
    /// Each delay is spread by up to this fraction either way (0.2 = +/-20%).
    #[serde(default = "Backoff::default_jitter")]
    pub jitter: f64,
}

impl Backoff {
    fn default_initial() -> Duration {
        Duration::from_millis(200)
    }
    fn default_multiplier() -> f64 {
        2.0
    }
    fn default_max() -> Duration {
        Duration::from_secs(30)
    }
    fn default_jitter() -> f64 {
        0.2
    }

    /// The delay before attempt `attempt + 1` (attempt 1 failed: the first delay), before jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.multiplier.powi(i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX));
        let secs = (self.initial.as_secs_f64() * exp).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs.max(0.0))
    }

    /// `delay` spread by the jitter, with `unit` uniform in [0, 1).
    pub fn jittered(&self, attempt: u32, unit: f64) -> Duration {
        let base = self.delay(attempt).as_secs_f64();
        let spread = base * self.jitter * (2.0 * unit - 1.0);
        Duration::from_secs_f64((base + spread).max(0.0))
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Self::default_initial(),
            multiplier: Self::default_multiplier(),
            max: Self::default_max(),
            jitter: Self::default_jitter(),
        }
    }
}

// === compiled form ===

/// A definition that passed every check, with its expressions compiled.
#[derive(Debug, Clone)]
pub struct Definition {
    pub spec: WorkflowSpec,
    pub steps: Vec<Step>,
    /// Step id -> position in `steps`.
    pub index: HashMap<String, usize>,
    pub output: Option<Template>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: String,
    pub service: String,
    pub action: String,
    pub input: Template,
    pub condition: Option<Expr>,
    pub routes: Vec<(Option<Expr>, Target)>,
    pub on_failure: Option<Target>,
    pub retry: RetrySpec,
    pub timeout: Duration,
    pub compensate: Option<Compensation>,
}

#[derive(Debug, Clone)]
pub struct Compensation {
    pub service: String,
    pub action: String,
    pub input: Template,
    pub retry: RetrySpec,
    pub timeout: Duration,
}

/// Where a route leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Step(usize),
    End,
}

/// Default per-step timeout when a step declares none.
pub const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(30);

fn check_name(v: &mut Violations, field: String, value: &str, what: &str) {
    if value.is_empty() {
        v.add(field, "is required");
    } else if !is_valid_id(value) {
        v.add(field, format!("is not a valid {what} (letters, digits, '.', '_', '-')"));
    }
}

fn check_timeout(v: &mut Violations, field: String, timeout: Option<Duration>, max: Duration) {
    if let Some(t) = timeout {
        if t.is_zero() || t > max {
            v.add(field, format!("must be more than 0 and at most {}", humantime::format_duration(max)));
        }
    }
}

fn check_retry(v: &mut Violations, field: &str, retry: &RetrySpec) {
    if !(1..=100).contains(&retry.max_attempts) {
        v.add(format!("{field}.maxAttempts"), "must be between 1 and 100");
    }
    let b = &retry.backoff;
    if !(b.multiplier.is_finite() && (1.0..=10.0).contains(&b.multiplier)) {
        v.add(format!("{field}.backoff.multiplier"), "must be between 1 and 10");
    }
    if !(b.jitter.is_finite() && (0.0..=1.0).contains(&b.jitter)) {
        v.add(format!("{field}.backoff.jitter"), "must be between 0 and 1");
    }
    if b.initial > b.max {
        v.add(format!("{field}.backoff.initial"), "must not exceed backoff.max");
    }
    if b.max > Duration::from_secs(3600) {
        v.add(format!("{field}.backoff.max"), "must be at most 1h");
    }
}

fn expr_violation(v: &mut Violations, field: String, err: ExprError) {
    v.add(field, err.to_string());
}

fn template_violation(v: &mut Violations, field: &str, err: TemplateError) {
    let path = if err.path.is_empty() { field.to_string() } else { format!("{field}.{}", err.path) };
    v.add(path, err.error.to_string());
}

impl Definition {
    /// Parses and checks a definition; every problem is reported, each naming its field
    /// (`steps[2].next[0].goto`).
    pub fn parse(json: &str) -> Result<Definition, Invalid> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let spec: WorkflowSpec = serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            let why = err.inner().to_string();
            let why = why.split(" at line ").next().unwrap_or(&why).to_string();
            let field = reskflow_proto::invalid::field_or_root(&path, "definition");
            Invalid::one(field, why)
        })?;
        Self::compile(spec)
    }

    pub fn compile(spec: WorkflowSpec) -> Result<Definition, Invalid> {
        let mut v = Violations::default();
        check_name(&mut v, "id".into(), &spec.id, "workflow id");
        if spec.id == "instances" {
            v.add("id", "'instances' is reserved (it is the path of the runs)");
        }
        if spec.name.chars().count() > 256 {
            v.add("name", "must be at most 256 characters");
        }
        check_timeout(&mut v, "timeout".into(), spec.timeout, MAX_WORKFLOW_TIMEOUT);
        if let Some(schema) = &spec.input_schema {
            if !schema.is_object() && !schema.is_boolean() {
                v.add("inputSchema", "must be a JSON Schema (an object)");
            }
        }
        if spec.steps.is_empty() {
            v.add("steps", "a workflow needs at least one step");
        }
        if spec.steps.len() > MAX_STEPS {
            v.add("steps", format!("must have at most {MAX_STEPS} steps"));
        }

        let mut index = HashMap::new();
        for (i, step) in spec.steps.iter().enumerate() {
            check_name(&mut v, format!("steps[{i}].id"), &step.id, "step id");
            if index.insert(step.id.clone(), i).is_some() {
                v.add(format!("steps[{i}].id"), format!("duplicate step id '{}'", step.id));
            }
        }
        let target = |v: &mut Violations, field: String, name: &str| -> Option<Target> {
            if name == END {
                Some(Target::End)
            } else if let Some(&i) = index.get(name) {
                Some(Target::Step(i))
            } else {
                v.add(field, format!("unknown step '{name}' (use a step id or \"{END}\")"));
                None
            }
        };
        let check_refs = |v: &mut Violations, field: &str, exprs: &[&Expr]| {
            for e in exprs {
                for id in e.keyed_refs("steps") {
                    if !index.contains_key(id) {
                        v.add(field.to_string(), format!("`{}` refers to unknown step '{id}'", e.source()));
                    }
                }
            }
        };

        let mut steps = Vec::with_capacity(spec.steps.len());
        for (i, s) in spec.steps.iter().enumerate() {
            let f = |name: &str| format!("steps[{i}].{name}");
            check_name(&mut v, f("service"), &s.service, "service id");
            check_name(&mut v, f("action"), &s.action, "action name");
            check_timeout(&mut v, f("timeout"), s.timeout, MAX_STEP_TIMEOUT);
            if let Some(retry) = &s.retry {
                check_retry(&mut v, &f("retry"), retry);
            }
            let input = match Template::compile(s.input.as_ref().unwrap_or(&serde_json::json!({})), &SCOPE) {
                Ok(t) => {
                    check_refs(&mut v, &f("input"), &t.exprs());
                    Some(t)
                }
                Err(err) => {
                    template_violation(&mut v, &f("input"), err);
                    None
                }
            };
            let condition = match s.condition.as_deref().map(|c| Expr::compile(c, &SCOPE)) {
                None => None,
                Some(Ok(e)) => {
                    check_refs(&mut v, &f("condition"), &[&e]);
                    Some(e)
                }
                Some(Err(err)) => {
                    expr_violation(&mut v, f("condition"), err);
                    None
                }
            };
            let mut routes = Vec::new();
            for (r, route) in s.next.iter().enumerate() {
                let when = match route.when.as_deref().map(|w| Expr::compile(w, &SCOPE)) {
                    None => None,
                    Some(Ok(e)) => {
                        check_refs(&mut v, &f(&format!("next[{r}].when")), &[&e]);
                        Some(e)
                    }
                    Some(Err(err)) => {
                        expr_violation(&mut v, f(&format!("next[{r}].when")), err);
                        None
                    }
                };
                if let Some(t) = target(&mut v, f(&format!("next[{r}].goto")), &route.goto) {
                    routes.push((when, t));
                }
            }
            let on_failure = s.on_failure.as_deref().and_then(|name| target(&mut v, f("onFailure"), name));
            let compensate = s.compensate.as_ref().and_then(|c| {
                check_name(&mut v, f("compensate.service"), &c.service, "service id");
                check_name(&mut v, f("compensate.action"), &c.action, "action name");
                check_timeout(&mut v, f("compensate.timeout"), c.timeout, MAX_STEP_TIMEOUT);
                if let Some(retry) = &c.retry {
                    check_retry(&mut v, &f("compensate.retry"), retry);
                }
                match Template::compile(c.input.as_ref().unwrap_or(&serde_json::json!({})), &SCOPE) {
                    Ok(input) => {
                        check_refs(&mut v, &f("compensate.input"), &input.exprs());
                        Some(Compensation {
                            service: c.service.clone(),
                            action: c.action.clone(),
                            input,
                            // Compensations must finish: by default they retry for longer.
                            retry: c
                                .retry
                                .clone()
                                .unwrap_or(RetrySpec { max_attempts: 10, ..RetrySpec::default_policy() }),
                            timeout: c.timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
                        })
                    }
                    Err(err) => {
                        template_violation(&mut v, &f("compensate.input"), err);
                        None
                    }
                }
            });
            steps.push(Step {
                id: s.id.clone(),
                service: s.service.clone(),
                action: s.action.clone(),
                input: input.unwrap_or(Template::Literal(serde_json::json!({}))),
                condition,
                routes,
                on_failure,
                retry: s.retry.clone().unwrap_or_else(RetrySpec::default_policy),
                timeout: s.timeout.unwrap_or(DEFAULT_STEP_TIMEOUT),
                compensate,
            });
        }

        let output = match spec.output.as_ref().map(|o| Template::compile(o, &SCOPE)) {
            None => None,
            Some(Ok(t)) => {
                check_refs(&mut v, "output", &t.exprs());
                Some(t)
            }
            Some(Err(err)) => {
                template_violation(&mut v, "output", err);
                None
            }
        };

        if v.is_empty() {
            for i in unreachable(&steps) {
                v.add(format!("steps[{i}]"), format!("step '{}' can never run (no route leads to it)", steps[i].id));
            }
        }
        v.finish()?;
        Ok(Definition { spec, steps, index, output })
    }
}

/// Steps no path from the first step reaches. A step falls through to the next in the list unless
/// one of its routes has no `when` (it always goes there).
fn unreachable(steps: &[Step]) -> Vec<usize> {
    let mut seen = HashSet::from([0usize]);
    let mut queue = VecDeque::from([0usize]);
    while let Some(i) = queue.pop_front() {
        let step = &steps[i];
        let always = step.routes.iter().any(|(when, _)| when.is_none());
        let mut next: Vec<Target> = step.routes.iter().map(|(_, t)| *t).collect();
        next.extend(step.on_failure);
        if !always && i + 1 < steps.len() {
            next.push(Target::Step(i + 1));
        }
        for t in next {
            if let Target::Step(j) = t {
                if seen.insert(j) {
                    queue.push_back(j);
                }
            }
        }
    }
    (0..steps.len()).filter(|i| !seen.contains(i)).collect()
}

#[cfg(test)]
mod tests;

/// Hostile input: any definition a client could send parses or is refused with fields, never a
/// panic (ids, gotos, conditions, templates, retries and timeouts all come from the client).
#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    fn step() -> impl Strategy<Value = serde_json::Value> {
        (
            "[a-z$-]{0,4}",
            "[a-z]{0,3}",
            proptest::option::of("[a-z.=<> 0-9\"]{0,12}"),
            proptest::option::of("[a-z$-]{0,4}"),
            proptest::option::of((any::<i64>(), "[0-9]{0,3}(ms|s|x)?", any::<f64>())),
            proptest::option::of("[a-z{}. ]{0,14}"),
            any::<bool>(),
        )
            .prop_map(|(id, service, condition, goto, retry, input, compensate)| {
                let mut s = serde_json::json!({ "id": id, "service": service, "action": "act" });
                if let Some(c) = condition {
                    s["condition"] = c.into();
                }
                if let Some(g) = goto {
                    s["next"] = serde_json::json!([{ "when": "input.x == 1", "goto": g }]);
                }
                if let Some((attempts, initial, jitter)) = retry {
                    s["retry"] = serde_json::json!({ "maxAttempts": attempts, "backoff": { "initial": initial, "jitter": jitter } });
                }
                if let Some(i) = input {
                    s["input"] = serde_json::json!({ "v": i });
                }
                if compensate {
                    s["compensate"] = serde_json::json!({ "service": service, "action": "undo" });
                }
                s
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn definitions_parse_or_name_what_is_wrong(
            id in "[a-z-]{0,6}",
            steps in proptest::collection::vec(step(), 0..6),
            timeout in "[0-9]{0,3}(s|m|h|q)?",
        ) {
            let json = serde_json::json!({ "id": id, "timeout": timeout, "steps": steps }).to_string();
            if let Err(invalid) = Definition::parse(&json) {
                prop_assert!(!invalid.0.is_empty());
                prop_assert!(invalid.0.iter().all(|v| !v.field.is_empty() && !v.description.is_empty()), "{invalid}");
            }
        }
    }
}
