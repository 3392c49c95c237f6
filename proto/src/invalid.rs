//! Field-level validation errors. The control plane returns them as `INVALID_ARGUMENT` with a
//! `google.rpc.BadRequest` detail; the gateway turns that detail back into a JSON 400 naming each field.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// `google.rpc.ErrorInfo` reason of an UNAVAILABLE discovery: the service exists but no instance fits.
pub const NO_HEALTHY_INSTANCE: &str = "NO_HEALTHY_INSTANCE";

/// One bad field: its camelCase path as in the REST API (`healthCheck.interval`, `tags[2]`) and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// Every problem found in one input, reported at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid input: {}", summary(.0))]
pub struct Invalid(pub Vec<FieldViolation>);

fn summary(violations: &[FieldViolation]) -> String {
    violations.iter().map(|v| format!("{}: {}", v.field, v.description)).collect::<Vec<_>>().join("; ")
}

impl Invalid {
    pub fn one(field: impl Into<String>, description: impl Into<String>) -> Self {
        Invalid(vec![FieldViolation { field: field.into(), description: description.into() }])
    }

    /// Reads the violations back out of a status made by `From<Invalid> for Status`.
    pub fn from_status(status: &Status) -> Option<Self> {
        if status.code() != Code::InvalidArgument {
            return None;
        }
        let details = status.get_error_details();
        let bad_request = details.bad_request()?;
        Some(Invalid(
            bad_request
                .field_violations
                .iter()
                .map(|v| FieldViolation { field: v.field.clone(), description: v.description.clone() })
                .collect(),
        ))
    }
}

impl From<Invalid> for Status {
    fn from(invalid: Invalid) -> Self {
        let mut details = ErrorDetails::new();
        for v in &invalid.0 {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
        }
        Status::with_error_details(Code::InvalidArgument, invalid.to_string(), details)
    }
}

/// Collects violations while walking an input; `finish` turns them into a result.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation { field: field.into(), description: description.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn finish(self) -> Result<(), Invalid> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Invalid(self.0))
        }
    }
}

/// The field a deserializer's error path names (serde_path_to_error's `steps[2].retry`), or `root`
/// when the path names no field: the error is about the whole document (`.`, `?`, ``), or about a
/// key that is itself empty (`steps[0].` names `steps[0]`).
pub fn field_or_root(path: &str, root: &str) -> String {
    let path = path.trim_end_matches('.');
    if path.is_empty() || path == "?" {
        root.to_string()
    } else {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_survive_the_trip_through_a_grpc_status() {
        let invalid = Invalid(vec![
            FieldViolation { field: "port".into(), description: "must be 1-65535".into() },
            FieldViolation { field: "tags[1]".into(), description: "must not be empty".into() },
        ]);
        let status = Status::from(invalid.clone());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(Invalid::from_status(&status), Some(invalid));
    }

    #[test]
    fn error_paths_that_name_no_field_name_the_document() {
        for path in ["", ".", "?"] {
            assert_eq!(field_or_root(path, "body"), "body");
        }
        assert_eq!(field_or_root("steps[0].", "body"), "steps[0]");
        assert_eq!(field_or_root("steps[0].retry", "body"), "steps[0].retry");
    }
}
