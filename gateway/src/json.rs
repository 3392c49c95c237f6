//! Request extractors that fail with `ApiError`: JSON bodies name the field that failed to parse
//! (`instances[0].port: invalid type ...`), and unknown fields are errors.

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. An empty body reads as `{}` when `T` allows it.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            let status = rejection.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "bad_request" };
            ApiError::new(status, code, rejection.body_text())
        })?;
        parse_json_body(content_type.as_deref(), &bytes).map(JsonBody)
    }
}

/// What `JsonBody` does with a request's body once read: blank reads as `{}`, anything else must
/// be sent as JSON and parse into `T`, or the error names the field (`instances[0].port`).
pub fn parse_json_body<T: DeserializeOwned>(content_type: Option<&str>, bytes: &[u8]) -> Result<T, ApiError> {
    let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    if !bytes.is_empty() {
        let json = content_type.is_some_and(|ct| {
            let essence = ct.split(';').next().unwrap_or("").trim();
            essence.eq_ignore_ascii_case("application/json") || essence.to_ascii_lowercase().ends_with("+json")
        });
        if !json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with Content-Type: application/json",
            ));
        }
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize(de) {
        Ok(value) => Ok(value),
        Err(err) => {
            let path = err.path().to_string();
            let field = reskflow_proto::invalid::field_or_root(&path, "body");
            let inner = err.into_inner();
            let why = inner.to_string();
            // serde_json appends " at line L column C"; the field path says more.
            let why = why.split(" at line ").next().unwrap_or(&why).to_string();
            if inner.is_syntax() || inner.is_eof() {
                return Err(ApiError::field("body", format!("is not valid JSON: {why}")));
            }
            Err(ApiError::field(field, why))
        }
    }
}

/// Query parameters, with unknown or malformed parameters as a 400 naming them.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(QueryParams(value)),
            Err(QueryRejection::FailedToDeserializeQueryString(err)) => Err(ApiError::field("query", err.body_text())),
            Err(other) => Err(ApiError::field("query", other.body_text())),
        }
    }
}
