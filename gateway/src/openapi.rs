//! The REST API's OpenAPI 3.1 document, generated from the handlers: every REST route is added
//! with utoipa-axum's `routes!`, which serves a handler and documents it from its
//! `#[utoipa::path]` in one step, so a route cannot be served without being documented.
//! Served at `GET /api/openapi.json`.

use std::collections::BTreeMap;

use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{InfoBuilder, OpenApi, Server};
use utoipa::{Modify, ToSchema};

/// Every error: `{"error": {"code", "message", "fields"?}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorResponse {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_argument`, `not_found`, `already_exists`, `unavailable`,
    /// `payload_too_large`, `unsupported_media_type`, `no_healthy_instance`, ...
    #[schema(example = "invalid_argument")]
    code: String,
    message: String,
    /// For 400s: each bad field, named by its path in the body (`instances[0].port`) or query.
    fields: Option<Vec<FieldError>>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct FieldError {
    #[schema(example = "healthCheck.interval")]
    field: String,
    description: String,
}

/// A JSON document documented in prose (workflow definitions, run details, routes): its shape is
/// described in the README and checked by the control plane, which names each bad field.
#[derive(ToSchema)]
#[schema(value_type = Object)]
#[allow(dead_code)]
pub struct Document(BTreeMap<String, serde_json::Value>);

/// Info, servers and the credentials the gateway takes (a bearer JWT or an API key).
pub struct Describe;

impl Modify for Describe {
    fn modify(&self, api: &mut OpenApi) {
        api.info = InfoBuilder::new()
            .title("ReskFlow Orchestration REST API")
            .version(env!("CARGO_PKG_VERSION"))
            .description(Some(
                "The REST API of the ReskFlow gateway: service registry, workflows and sagas, circuit \
                 breakers, gateway routes and the gateway's own metrics. Errors are JSON \
                 (`ErrorResponse`); 400s name each bad field. With JWT or API keys configured, the \
                 management API needs the admin role (ADMIN_ROLE).",
            ))
            .build();
        api.servers = Some(vec![Server::new("/")]);
        let components = api.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
        components.add_security_scheme("apiKey", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("x-api-key"))));
    }
}
