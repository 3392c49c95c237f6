//! `/api/gateway/routes`: the gateway's routes, stored in the control plane (which checks them) and
//! streamed to every gateway.
//!
//! - `GET /api/gateway/routes`: every route.
//! - `POST /api/gateway/routes`: create one route (409 if its id exists).
//! - `PUT /api/gateway/routes`: replace the whole table (a list, or `{"routes": [...]}`).
//! - `GET|PUT|DELETE /api/gateway/routes/{id}`: one route; PUT creates or replaces it.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use reskflow_proto::pb::registry::v1 as pb;
use serde_json::{json, Value};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::json::JsonBody;
use crate::openapi::{Document, ErrorResponse};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list, create, replace_all)).routes(routes!(one, put_one, remove))
}

type ApiResult<T> = Result<T, ApiError>;

fn parse(json: &str) -> ApiResult<Value> {
    serde_json::from_str(json)
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "bad_control_plane_answer", e.to_string()))
}

async fn put(s: &AppState, routes: Value, create_only: bool, replace_all: bool, single: bool) -> ApiResult<Value> {
    let req = pb::PutRoutesRequest { routes_json: routes.to_string(), create_only, replace_all, single };
    let answer = s.client().registry().put_routes(req).await?.into_inner();
    Ok(json!({ "routes": parse(&answer.routes_json)?, "version": answer.version }))
}

/// Every route, with the table's version.
#[utoipa::path(get, path = "/api/gateway/routes", tag = "gateway",
    responses((status = 200, description = "`{\"routes\": [...], \"version\"}`", body = Document)))]
async fn list(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let answer = s.client().registry().list_routes(pb::ListRoutesRequest {}).await?.into_inner();
    Ok(Json(json!({ "routes": parse(&answer.routes_json)?, "version": answer.version })))
}

/// One route.
#[utoipa::path(get, path = "/api/gateway/routes/{id}", tag = "gateway", params(("id" = String, Path)),
    responses((status = 200, body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such route", body = ErrorResponse)))]
async fn one(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let answer = s.client().registry().get_route(pb::GetRouteRequest { id }).await?.into_inner();
    let mut routes = parse(&answer.routes_json)?;
    Ok(Json(routes.get_mut(0).map(Value::take).unwrap_or(Value::Null)))
}

fn object(body: Value) -> ApiResult<Value> {
    if body.is_object() {
        Ok(body)
    } else {
        Err(ApiError::field("body", "must be a route (a JSON object)"))
    }
}

/// Creates a route: method, path pattern, service, target path, authentication, roles, rate
/// limit, cache, validation, transforms, timeout, body limit (README: API gateway).
#[utoipa::path(post, path = "/api/gateway/routes", tag = "gateway", request_body(content = Document, description = "A route"),
    responses((status = 201, body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 409, description = "The id exists", body = ErrorResponse)))]
async fn create(State(s): State<AppState>, JsonBody(body): JsonBody<Value>) -> ApiResult<impl IntoResponse> {
    let mut stored = put(&s, Value::Array(vec![object(body)?]), true, false, true).await?;
    Ok((StatusCode::CREATED, Json(stored["routes"].get_mut(0).map(Value::take).unwrap_or(Value::Null))))
}

/// Creates or replaces one route.
#[utoipa::path(put, path = "/api/gateway/routes/{id}", tag = "gateway", params(("id" = String, Path)),
    request_body(content = Document, description = "A route"),
    responses((status = 200, body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse)))]
async fn put_one(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> ApiResult<Json<Value>> {
    let mut body = object(body)?;
    match body.get("id") {
        None => body["id"] = Value::String(id),
        Some(Value::String(given)) if *given == id => {}
        Some(given) => {
            return Err(ApiError::field("id", format!("the body's id {given} differs from the path's '{id}'")))
        }
    }
    let mut stored = put(&s, Value::Array(vec![body]), false, false, true).await?;
    Ok(Json(stored["routes"].get_mut(0).map(Value::take).unwrap_or(Value::Null)))
}

/// Replaces the whole table: a list of routes or `{"routes": [...]}`.
#[utoipa::path(put, path = "/api/gateway/routes", tag = "gateway", request_body(content = Document, description = "The routes"),
    responses((status = 200, description = "`{\"routes\": [...], \"version\"}`", body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse)))]
async fn replace_all(State(s): State<AppState>, JsonBody(body): JsonBody<Value>) -> ApiResult<Json<Value>> {
    let routes = match body {
        Value::Array(routes) => routes,
        Value::Object(mut o) if o.contains_key("routes") => match o.remove("routes") {
            Some(Value::Array(routes)) => routes,
            _ => return Err(ApiError::field("routes", "must be a list of routes")),
        },
        _ => return Err(ApiError::field("body", "must be a list of routes or {\"routes\": [...]}")),
    };
    Ok(Json(put(&s, Value::Array(routes), false, true, false).await?))
}

/// Deletes a route.
#[utoipa::path(delete, path = "/api/gateway/routes/{id}", tag = "gateway", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such route", body = ErrorResponse)))]
async fn remove(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.client().registry().delete_route(pb::DeleteRouteRequest { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}
