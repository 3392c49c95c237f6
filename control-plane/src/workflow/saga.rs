//! Ad-hoc sagas: a list of named steps, each a forward call and an optional compensating call, run
//! by the same engine with the same guarantees as a registered workflow. A saga becomes a workflow
//! definition whose id is a hash of its shape (`saga-<hash>`), stored once and shared by every run of
//! the same shape.
//!
//! ```json
//! {"name": "book-trip", "input": {"tripId": "t-1"}, "idempotencyKey": "trip-t-1", "wait": "10s",
//!  "steps": [
//!    {"name": "reserve-flight",
//!     "forward": {"service": "flights", "action": "reserve", "input": {"trip": "{{input.tripId}}"}},
//!     "compensate": {"service": "flights", "action": "cancel", "input": {"trip": "{{input.tripId}}"}}},
//!    {"name": "charge", "forward": {"service": "payments", "action": "charge", "retry": {"maxAttempts": 5}}}]}
//! ```

use std::time::Duration;

use reskflow_proto::invalid::{field_or_root, Invalid};
use serde::Deserialize;

use super::definition::{CompensateSpec, RetrySpec, StepSpec, WorkflowSpec};

/// Longest a saga request may wait for its result.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaRequest {
    #[serde(default)]
    pub name: String,
    pub steps: Vec<SagaStep>,
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Wait up to this long for the saga to end (else the answer is 202 with the run's id).
    #[serde(default, with = "humantime_serde")]
    pub wait: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SagaStep {
    pub name: String,
    pub forward: Call,
    #[serde(default)]
    pub compensate: Option<Call>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Call {
    pub service: String,
    pub action: String,
    #[serde(default)]
    pub input: Option<serde_json::Value>,
    #[serde(default)]
    pub retry: Option<RetrySpec>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl SagaRequest {
    pub fn parse(json: &str) -> Result<SagaRequest, Invalid> {
        let de = &mut serde_json::Deserializer::from_str(json);
        let request: SagaRequest = serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            let why = err.inner().to_string();
            let why = why.split(" at line ").next().unwrap_or(&why).to_string();
            Invalid::one(field_or_root(&path, "body"), why)
        })?;
        if request.wait.is_some_and(|w| w > MAX_WAIT) {
            return Err(Invalid::one("wait", format!("must be at most {}", humantime::format_duration(MAX_WAIT))));
        }
        Ok(request)
    }

    /// The workflow this saga runs as. Its id depends only on its shape.
    pub fn workflow(&self) -> WorkflowSpec {
        let steps = self
            .steps
            .iter()
            .map(|s| StepSpec {
                id: s.name.clone(),
                service: s.forward.service.clone(),
                action: s.forward.action.clone(),
                input: s.forward.input.clone(),
                condition: None,
                next: Vec::new(),
                on_failure: None,
                retry: s.forward.retry.clone(),
                timeout: s.forward.timeout,
                compensate: s.compensate.as_ref().map(|c| CompensateSpec {
                    service: c.service.clone(),
                    action: c.action.clone(),
                    input: c.input.clone(),
                    retry: c.retry.clone(),
                    timeout: c.timeout,
                }),
            })
            .collect();
        let mut spec = WorkflowSpec {
            id: String::new(),
            name: if self.name.is_empty() { "saga".into() } else { self.name.clone() },
            description: "ad-hoc saga".into(),
            input_schema: None,
            timeout: self.timeout,
            steps,
            output: None,
        };
        let shape = serde_json::to_string(&spec).unwrap_or_default();
        spec.id = format!("saga-{:016x}", fnv1a(shape.as_bytes()));
        spec
    }
}

/// The saga's name for a field of the workflow it runs as: `steps[1].input.x` is
/// `steps[1].forward.input.x`, `steps[1].id` is `steps[1].name`; compensation fields keep theirs.
pub fn saga_field(field: &str) -> String {
    let Some(rest) = field.strip_prefix("steps[") else {
        return field.to_string();
    };
    let Some((index, tail)) = rest.split_once("].") else {
        return field.to_string();
    };
    let head = tail.split(['.', '[']).next().unwrap_or(tail);
    match head {
        "id" => format!("steps[{index}].name"),
        "service" | "action" | "input" | "retry" | "timeout" => format!("steps[{index}].forward.{tail}"),
        _ => field.to_string(),
    }
}

/// 64-bit FNV-1a: stable across processes and versions, so every replica names a shape alike.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str) -> SagaRequest {
        SagaRequest::parse(
            &serde_json::json!({"name": name, "steps": [
                {"name": "a", "forward": {"service": "s", "action": "do"}, "compensate": {"service": "s", "action": "undo"}}
            ]})
            .to_string(),
        )
        .unwrap()
    }

    #[test]
    fn the_same_shape_gets_the_same_workflow_id() {
        assert_eq!(request("trip").workflow().id, request("trip").workflow().id);
        assert_ne!(request("trip").workflow().id, request("other").workflow().id);
        assert!(request("trip").workflow().steps[0].compensate.is_some());
    }

    #[test]
    fn workflow_fields_map_back_to_saga_fields() {
        assert_eq!(saga_field("steps[1].input.amount"), "steps[1].forward.input.amount");
        assert_eq!(saga_field("steps[0].id"), "steps[0].name");
        assert_eq!(saga_field("steps[2].compensate.input.x"), "steps[2].compensate.input.x");
        assert_eq!(saga_field("steps"), "steps");
    }

    #[test]
    fn bad_requests_name_the_field() {
        let err = SagaRequest::parse(r#"{"steps": [{"name": "a", "forward": {"service": "s"}}]}"#).unwrap_err();
        assert_eq!(err.0[0].field, "steps[0].forward");
        let err = SagaRequest::parse(r#"{"steps": [], "wait": "2h"}"#).unwrap_err();
        assert_eq!(err.0[0].field, "wait");
    }
}
