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
use axum::routing::get;
use axum::{Json, Router};
use reskflow_proto::pb::registry::v1 as pb;
use serde_json::{json, Value};

use crate::error::ApiError;
use crate::json::JsonBody;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/gateway/routes", get(list).post(create).put(replace_all))
        .route("/api/gateway/routes/{id}", get(one).put(put_one).delete(remove))
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

async fn list(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let answer = s.client().registry().list_routes(pb::ListRoutesRequest {}).await?.into_inner();
    Ok(Json(json!({ "routes": parse(&answer.routes_json)?, "version": answer.version })))
}

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

async fn create(State(s): State<AppState>, JsonBody(body): JsonBody<Value>) -> ApiResult<impl IntoResponse> {
    let mut stored = put(&s, Value::Array(vec![object(body)?]), true, false, true).await?;
    Ok((StatusCode::CREATED, Json(stored["routes"].get_mut(0).map(Value::take).unwrap_or(Value::Null))))
}

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

async fn remove(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    s.client().registry().delete_route(pb::DeleteRouteRequest { id }).await?;
    Ok(StatusCode::NO_CONTENT)
}
