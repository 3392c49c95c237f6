//! The gateway's one error type. Every error answers JSON:
//! `{"error": {"code": "invalid_argument", "message": "...", "fields": [{"field": "port", "description": "..."}]}}`
//! `From<tonic::Status>` maps the control plane's answers; field violations travel as a
//! `google.rpc.BadRequest` detail and come back out here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use reskflow_proto::invalid::{FieldViolation, Invalid, NO_HEALTHY_INSTANCE};
use serde::Serialize;
use tonic::Code;
use tonic_types::StatusExt;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub fields: Vec<FieldViolation>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    fields: &'a [FieldViolation],
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), fields: Vec::new() }
    }

    pub fn invalid(invalid: Invalid) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_argument",
            message: invalid.to_string(),
            fields: invalid.0,
        }
    }

    pub fn field(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::invalid(Invalid::one(field, description))
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl ApiError {
    /// The JSON body, `{"error": {"code", "message", "fields"?}}` (also what the gateway's front door
    /// answers with, without going through axum).
    pub fn to_json(&self) -> Vec<u8> {
        let body = Body { error: Inner { code: self.code, message: &self.message, fields: &self.fields } };
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body { error: Inner { code: self.code, message: &self.message, fields: &self.fields } };
        (self.status, Json(body)).into_response()
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        if let Some(invalid) = Invalid::from_status(&status) {
            return ApiError::invalid(invalid);
        }
        let message = status.message().to_string();
        let (http, code) = match status.code() {
            Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Code::AlreadyExists | Code::Aborted => (StatusCode::CONFLICT, "conflict"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "forbidden"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Code::DeadlineExceeded | Code::Cancelled => (StatusCode::GATEWAY_TIMEOUT, "control_plane_timeout"),
            Code::Unavailable => {
                let details = status.get_error_details();
                if details.error_info().is_some_and(|info| info.reason == NO_HEALTHY_INSTANCE) {
                    (StatusCode::SERVICE_UNAVAILABLE, "no_healthy_instance")
                } else {
                    tracing::warn!(message = %message, "control plane unavailable");
                    return ApiError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "control_plane_unavailable",
                        format!("the control plane is unavailable: {message}"),
                    );
                }
            }
            _ => {
                tracing::error!(code = ?status.code(), message = %message, "control plane error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(http, code, message)
    }
}
