//! `/api/registry/*`: services, instances, heartbeats, discovery, search, health and dependencies.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use reskflow_proto::registry::*;
use serde::Deserialize;

use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::json::{JsonBody, QueryParams};
use crate::openapi::{Document, ErrorResponse};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register_service, list_services))
        .routes(routes!(get_service, update_service, deregister_service))
        .routes(routes!(list_instances))
        .routes(routes!(service_health))
        .routes(routes!(dependencies))
        .routes(routes!(register_instance))
        .routes(routes!(deregister_instance))
        .routes(routes!(heartbeat, heartbeat_put))
        .routes(routes!(discover))
        .routes(routes!(search))
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

/// Registers a service (its metadata, dependencies, health check and traffic policy).
#[utoipa::path(post, path = "/api/registry/services", tag = "registry", request_body = Service,
    responses((status = 201, description = "Registered", body = Service), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse),
              (status = 409, description = "The id exists", body = ErrorResponse)))]
async fn register_service(
    State(s): State<AppState>,
    JsonBody(service): JsonBody<Service>,
) -> ApiResult<impl IntoResponse> {
    let created = s.client().register_service(service).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Replaces a service's registration; the body's id must be the path's.
#[utoipa::path(put, path = "/api/registry/services/{id}", tag = "registry", params(("id" = String, Path, description = "The service id")), request_body = Service,
    responses((status = 200, description = "Updated", body = Service), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such service", body = ErrorResponse)))]
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

/// A service with its instance count and health.
#[utoipa::path(get, path = "/api/registry/services/{id}", tag = "registry", params(("id" = String, Path, description = "The service id")),
    responses((status = 200, body = ServiceSummary), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such service", body = ErrorResponse)))]
async fn get_service(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ServiceSummary>> {
    path_id("id", &id)?;
    Ok(Json(s.client().get_service(&id).await?))
}

/// Removes a service and its instances.
#[utoipa::path(delete, path = "/api/registry/services/{id}", tag = "registry", params(("id" = String, Path, description = "The service id")),
    responses((status = 200, description = "`{\"id\", \"instancesRemoved\"}`", body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such service", body = ErrorResponse)))]
async fn deregister_service(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    path_id("id", &id)?;
    let removed = s.client().deregister_service(&id).await?;
    Ok(Json(serde_json::json!({ "id": id, "instancesRemoved": removed })))
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    page_size: Option<u32>,
    #[serde(default)]
    page_token: String,
}

/// Services, a page at a time (`nextPageToken`).
#[utoipa::path(get, path = "/api/registry/services", tag = "registry", params(ListParams),
    responses((status = 200, body = ServiceList), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse)))]
async fn list_services(
    State(s): State<AppState>,
    QueryParams(p): QueryParams<ListParams>,
) -> ApiResult<Json<ServiceList>> {
    check_page(p.page_size).map_err(ApiError::invalid)?;
    Ok(Json(s.client().list_services(Page { page_size: p.page_size, page_token: p.page_token }).await?))
}

/// A service's instances with their health.
#[utoipa::path(get, path = "/api/registry/services/{id}/instances", tag = "registry", params(("id" = String, Path, description = "The service id")),
    responses((status = 200, description = "`{\"serviceId\", \"instances\": [Instance]}`", body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such service", body = ErrorResponse)))]
async fn list_instances(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    path_id("id", &id)?;
    let instances = s.client().list_instances(&id).await?;
    Ok(Json(serde_json::json!({ "serviceId": id, "instances": instances })))
}

/// A service's aggregate health and each instance's.
#[utoipa::path(get, path = "/api/registry/services/{id}/health", tag = "registry", params(("id" = String, Path, description = "The service id")),
    responses((status = 200, body = ServiceHealth), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such service", body = ErrorResponse)))]
async fn service_health(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<ServiceHealth>> {
    path_id("id", &id)?;
    Ok(Json(s.client().service_health(&id).await?))
}

/// A service's dependency graph: direct and transitive dependencies and dependents, cycles.
#[utoipa::path(get, path = "/api/registry/services/{id}/dependencies", tag = "registry", params(("id" = String, Path, description = "The service id")),
    responses((status = 200, body = DependencyGraph), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such service", body = ErrorResponse)))]
async fn dependencies(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<DependencyGraph>> {
    path_id("id", &id)?;
    Ok(Json(s.client().dependencies(&id).await?))
}

/// Registers an instance of a registered service (id generated when left out).
#[utoipa::path(post, path = "/api/registry/instances", tag = "registry", request_body = Instance,
    responses((status = 201, description = "Registered", body = Instance), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse),
              (status = 404, description = "No such service", body = ErrorResponse)))]
async fn register_instance(
    State(s): State<AppState>,
    JsonBody(instance): JsonBody<Instance>,
) -> ApiResult<impl IntoResponse> {
    let created = s.client().register_instance(instance).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Removes an instance.
#[utoipa::path(delete, path = "/api/registry/instances/{id}", tag = "registry",
    params(("id" = String, Path, description = "The instance id")),
    responses((status = 204, description = "Removed"), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such instance", body = ErrorResponse)))]
async fn deregister_instance(State(s): State<AppState>, Path(id): Path<String>) -> ApiResult<StatusCode> {
    path_id("id", &id)?;
    s.client().deregister_instance(&id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A TTL check's heartbeat (the body is optional: passing).
#[utoipa::path(post, path = "/api/registry/instances/{id}/heartbeat", tag = "registry",
    params(("id" = String, Path, description = "The instance id")), request_body = Option<Heartbeat>,
    responses((status = 200, body = Instance), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such instance", body = ErrorResponse)))]
async fn heartbeat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    JsonBody(beat): JsonBody<Heartbeat>,
) -> ApiResult<Json<Instance>> {
    path_id("id", &id)?;
    Ok(Json(s.client().heartbeat(&id, beat).await?))
}

/// The same heartbeat, as PUT.
#[utoipa::path(put, path = "/api/registry/instances/{id}/heartbeat", tag = "registry",
    params(("id" = String, Path, description = "The instance id")), request_body = Option<Heartbeat>,
    responses((status = 200, body = Instance), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such instance", body = ErrorResponse)))]
async fn heartbeat_put(
    state: State<AppState>,
    id: Path<String>,
    beat: JsonBody<Heartbeat>,
) -> ApiResult<Json<Instance>> {
    heartbeat(state, id, beat).await
}

/// Picks one healthy instance by the strategy (round robin, random, weighted, zone aware,
/// consistent hash) among those matching tags, version and capabilities.
#[utoipa::path(post, path = "/api/registry/discover", tag = "registry", request_body = DiscoverQuery,
    responses((status = 200, body = Discovered), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such service", body = ErrorResponse),
              (status = 503, description = "No instance is healthy (`no_healthy_instance`)", body = ErrorResponse)))]
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

/// Services by text, tags, capabilities, metadata and health.
#[utoipa::path(post, path = "/api/registry/search", tag = "registry", request_body = SearchQuery,
    responses((status = 200, body = ServiceList), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse)))]
async fn search(State(s): State<AppState>, JsonBody(query): JsonBody<SearchQuery>) -> ApiResult<Json<ServiceList>> {
    Ok(Json(s.client().search(query).await?))
}
