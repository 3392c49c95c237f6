//! `/api/registry/*`: services, instances, heartbeats, discovery, search, health and dependencies.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use reskflow_proto::registry::*;
use serde::Deserialize;

use crate::error::ApiError;
use crate::json::{JsonBody, QueryParams};
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/registry/services", post(register_service).get(list_services))
        .route("/api/registry/services/{id}", get(get_service).put(update_service).delete(deregister_service))
        .route("/api/registry/services/{id}/instances", get(list_instances))
        .route("/api/registry/services/{id}/health", get(service_health))
        .route("/api/registry/services/{id}/dependencies", get(dependencies))
        .route("/api/registry/instances", post(register_instance))
        .route("/api/registry/instances/{id}", delete(deregister_instance))
        .route("/api/registry/instances/{id}/heartbeat", post(heartbeat).put(heartbeat))
        .route("/api/registry/discover", post(discover))
        .route("/api/registry/search", post(search))
}

type ApiResult<T> = Result<T, ApiError>;

/// Path ids are checked here so a malformed one is a 400 naming it, not a 404.
fn path_id(field: &str, id: &str) -> ApiResult<()> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(ApiError::field(field, "is not a valid id"))
    }
}

async fn register_service(
    State(s): State<AppState>,
    JsonBody(service): JsonBody<Service>,
) -> ApiResult<impl IntoResponse> {
    let created = s.client().register_service(service).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn update_service(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(service): JsonBody<Service>,
) -> ApiResult<Json<Service>> {
    path_id("id", &id)?;
    if service.id != id {
        return Err(ApiError::field("id", format!("the body's id '{}' differs from the path's '{id}'", service.id)));
    }
    Ok(Json(s.client().update_service(service).await?))
}

async fn get_service(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ServiceSummary>> {
    path_id("id", &id)?;
    Ok(Json(s.client().get_service(&id).await?))
}

async fn deregister_service(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    path_id("id", &id)?;
    let removed = s.client().deregister_service(&id).await?;
    Ok(Json(serde_json::json!({ "id": id, "instancesRemoved": removed })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ListParams {
    page_size: Option<u32>,
    #[serde(default)]
    page_token: String,
}

async fn list_services(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> ApiResult<Json<ServiceList>> {
    check_page(p.page_size).map_err(ApiError::invalid)?;
    Ok(Json(s.client().list_services(Page { page_size: p.page_size, page_token: p.page_token }).await?))
}

async fn list_instances(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    path_id("id", &id)?;
    let instances = s.client().list_instances(&id).await?;
    Ok(Json(serde_json::json!({ "serviceId": id, "instances": instances })))
}

async fn service_health(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ServiceHealth>> {
    path_id("id", &id)?;
    Ok(Json(s.client().service_health(&id).await?))
}

async fn dependencies(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<DependencyGraph>> {
    path_id("id", &id)?;
    Ok(Json(s.client().dependencies(&id).await?))
}

async fn register_instance(
    State(s): State<AppState>,
    JsonBody(instance): JsonBody<Instance>,
) -> ApiResult<impl IntoResponse> {
    let created = s.client().register_instance(instance).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

async fn deregister_instance(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    path_id("id", &id)?;
    s.client().deregister_instance(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn heartbeat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(beat): JsonBody<Heartbeat>,
) -> ApiResult<Json<Instance>> {
    path_id("id", &id)?;
    Ok(Json(s.client().heartbeat(&id, beat).await?))
}

async fn discover(
    State(s): State<AppState>,
    JsonBody(mut query): JsonBody<DiscoverQuery>,
) -> ApiResult<Json<Discovered>> {
    // A zone-aware query that names no location is about the caller: this gateway.
    if query.strategy == Strategy::ZoneAware && query.region.is_empty() && query.zone.is_empty() {
        query.region.clone_from(&s.region);
        query.zone.clone_from(&s.zone);
    }
    Ok(Json(s.client().discover(query).await?))
}

async fn search(State(s): State<AppState>, JsonBody(query): JsonBody<SearchQuery>) -> ApiResult<Json<ServiceList>> {
    Ok(Json(s.client().search(query).await?))
}
