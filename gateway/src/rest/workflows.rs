//! `/api/workflows/*`: definitions, runs, cancel. Definitions, inputs and run details are JSON
//! documents that pass through to the control plane as they are.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use reskflow_proto::pb::workflow::v1 as pb;
use serde::Deserialize;
use serde_json::{json, Value};

use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::json::{JsonBody, QueryParams};
use crate::openapi::{Document, ErrorResponse};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register, list))
        .routes(routes!(list_instances))
        .routes(routes!(instance))
        .routes(routes!(cancel))
        .routes(routes!(definition))
        .routes(routes!(execute))
        .routes(routes!(execute_saga))
}

type ApiResult<T> = Result<T, ApiError>;

fn parse_json(field: &str, text: &str) -> ApiResult<Value> {
    serde_json::from_str(text).map_err(|e| ApiError::field(field, format!("the control plane sent invalid JSON: {e}")))
}

fn definition_json(d: pb::WorkflowDefinition) -> ApiResult<Value> {
    Ok(json!({
        "id": d.id, "version": d.version, "name": d.name,
        "createdAt": chrono_ms(d.created_at_ms),
        "definition": parse_json("definition", &d.definition_json)?,
    }))
}

pub(crate) fn chrono_ms(ms: i64) -> Value {
    // RFC 3339 like every other time in the API.
    let secs = ms.div_euclid(1000);
    let nanos = u32::try_from(ms.rem_euclid(1000) * 1_000_000).unwrap_or(0);
    match std::time::UNIX_EPOCH.checked_add(std::time::Duration::new(u64::try_from(secs).unwrap_or(0), nanos)) {
        Some(t) => json!(humantime::format_rfc3339_millis(t).to_string()),
        None => Value::Null,
    }
}

fn summary_json(s: pb::InstanceSummary) -> Value {
    json!({
        "instanceId": s.instance_id, "workflowId": s.workflow_id, "version": s.version, "status": s.status,
        "createdAt": chrono_ms(s.created_at_ms), "updatedAt": chrono_ms(s.updated_at_ms),
    })
}

/// Registers a workflow definition (a new version when the id exists): steps of `service` +
/// `action` with templated `input`, conditions, `next` branches, retries, timeouts, compensations.
#[utoipa::path(post, path = "/api/workflows", tag = "workflows", request_body(content = Document, description = "The definition (README: Workflows)"),
    responses((status = 201, description = "`{\"id\", \"version\", \"name\", \"createdAt\", \"definition\"}`", body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse)))]
async fn register(State(s): State<AppState>, JsonBody(definition): JsonBody<Value>) -> ApiResult<impl IntoResponse> {
    let req = pb::RegisterWorkflowRequest { definition_json: definition.to_string() };
    let stored = s.client().workflows().register_workflow(req).await?.into_inner();
    Ok((StatusCode::CREATED, Json(definition_json(stored)?)))
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PageParams {
    page_size: Option<u32>,
    #[serde(default)]
    page_token: String,
}

/// The latest version of each workflow, a page at a time.
#[utoipa::path(get, path = "/api/workflows", tag = "workflows", params(PageParams),
    responses((status = 200, description = "`{\"workflows\": [...], \"nextPageToken\"?}`", body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse)))]
async fn list(State(s): State<AppState>, QueryParams(p): QueryParams<PageParams>) -> ApiResult<Json<Value>> {
    let req = pb::ListWorkflowsRequest { page_size: p.page_size.unwrap_or(0), page_token: p.page_token };
    let page = s.client().workflows().list_workflows(req).await?.into_inner();
    let workflows = page.workflows.into_iter().map(definition_json).collect::<ApiResult<Vec<_>>>()?;
    let mut body = json!({ "workflows": workflows });
    if !page.next_page_token.is_empty() {
        body["nextPageToken"] = json!(page.next_page_token);
    }
    Ok(Json(body))
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct VersionParam {
    version: Option<i64>,
}

/// A workflow definition: the latest version, or `?version=`.
#[utoipa::path(get, path = "/api/workflows/{workflow_id}", tag = "workflows",
    params(("workflow_id" = String, Path), VersionParam),
    responses((status = 200, body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such workflow", body = ErrorResponse)))]
async fn definition(
    State(s): State<AppState>,
    Path(workflow_id): Path<String>,
    QueryParams(p): QueryParams<VersionParam>,
) -> ApiResult<Json<Value>> {
    let req = pb::GetWorkflowRequest { id: workflow_id, version: p.version.unwrap_or(0) };
    Ok(Json(definition_json(s.client().workflows().get_workflow(req).await?.into_inner())?))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExecuteBody {
    #[serde(default)]
    input: Option<Value>,
    #[serde(default)]
    idempotency_key: Option<String>,
    #[serde(default)]
    version: Option<i64>,
}

/// 202 with the run's id at once; the run is queued. The idempotency key may come in the body or
/// as an `Idempotency-Key` header.
/// Starts a run (queued; 202 at once). The same idempotency key (body or `Idempotency-Key`
/// header) answers the same run.
#[utoipa::path(post, path = "/api/workflows/{workflow_id}/execute", tag = "workflows",
    params(("workflow_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)), request_body = Option<ExecuteBody>,
    responses((status = 202, description = "`{\"instanceId\", \"status\", \"created\"}`", body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse),
              (status = 404, description = "No such workflow", body = ErrorResponse)))]
async fn execute(
    State(s): State<AppState>,
    Path(workflow_id): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<ExecuteBody>,
) -> ApiResult<impl IntoResponse> {
    let header_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_string);
    let req = pb::ExecuteRequest {
        workflow_id,
        version: body.version.unwrap_or(0),
        input_json: body.input.unwrap_or_else(|| json!({})).to_string(),
        idempotency_key: body.idempotency_key.or(header_key).unwrap_or_default(),
    };
    let started = s.client().workflows().execute(req).await?.into_inner();
    let body = json!({ "instanceId": started.instance_id, "status": started.status, "created": started.created });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// A run: status, input, output, each step with its attempts, compensations and the history.
#[utoipa::path(get, path = "/api/workflows/instances/{instance_id}", tag = "workflows",
    params(("instance_id" = String, Path)),
    responses((status = 200, body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse), (status = 404, description = "No such run", body = ErrorResponse)))]
async fn instance(State(s): State<AppState>, Path(instance_id): Path<String>) -> ApiResult<Json<Value>> {
    let req = pb::GetInstanceRequest { instance_id };
    let detail = s.client().workflows().get_instance(req).await?.into_inner();
    Ok(Json(parse_json("detail", &detail.detail_json)?))
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ListParams {
    #[serde(default)]
    workflow_id: String,
    #[serde(default)]
    status: String,
    page_size: Option<u32>,
    #[serde(default)]
    page_token: String,
}

/// Runs, newest first, by workflow and status, a page at a time.
#[utoipa::path(get, path = "/api/workflows/instances", tag = "workflows", params(ListParams),
    responses((status = 200, description = "`{\"instances\": [...], \"nextPageToken\"?}`", body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse)))]
async fn list_instances(State(s): State<AppState>, QueryParams(p): QueryParams<ListParams>) -> ApiResult<Json<Value>> {
    let req = pb::ListInstancesRequest {
        workflow_id: p.workflow_id,
        status: p.status,
        page_size: p.page_size.unwrap_or(0),
        page_token: p.page_token,
    };
    let page = s.client().workflows().list_instances(req).await?.into_inner();
    let instances: Vec<_> = page.instances.into_iter().map(summary_json).collect();
    let mut body = json!({ "instances": instances });
    if !page.next_page_token.is_empty() {
        body["nextPageToken"] = json!(page.next_page_token);
    }
    Ok(Json(body))
}

/// Cancels a run: it stops and compensates what completed (202).
#[utoipa::path(post, path = "/api/workflows/instances/{instance_id}/cancel", tag = "workflows",
    params(("instance_id" = String, Path)),
    responses((status = 202, description = "`{\"instanceId\", \"status\"}`", body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse),
              (status = 404, description = "No such run", body = ErrorResponse),
              (status = 409, description = "The run has ended", body = ErrorResponse)))]
async fn cancel(State(s): State<AppState>, Path(instance_id): Path<String>) -> ApiResult<impl IntoResponse> {
    let req = pb::CancelRequest { instance_id: instance_id.clone() };
    let status = s.client().workflows().cancel(req).await?.into_inner().status;
    Ok((StatusCode::ACCEPTED, Json(json!({ "instanceId": instance_id, "status": status }))))
}

/// 200 with the run's detail when the saga ended within `wait`; otherwise 202 with its id.
/// Runs an ad-hoc saga (steps with `forward` and `compensate` calls), durably.
#[utoipa::path(post, path = "/api/saga/execute", tag = "workflows", request_body(content = Document, description = "The saga (README: Sagas)"),
    responses((status = 200, description = "The run's detail, when it ended within `wait`", body = Document),
              (status = 202, description = "`{\"instanceId\", \"status\", \"created\"}`", body = Document), (status = 400, description = "A field is invalid; each is named", body = ErrorResponse)))]
async fn execute_saga(State(s): State<AppState>, JsonBody(body): JsonBody<Value>) -> ApiResult<impl IntoResponse> {
    let req = pb::ExecuteSagaRequest { request_json: body.to_string() };
    // The call may wait for the saga: allow for that beyond the usual deadline.
    let mut request = tonic::Request::new(req);
    request.set_timeout(s.request_timeout + std::time::Duration::from_secs(60));
    let result = s.client().workflows().execute_saga(request).await?.into_inner();
    if result.finished {
        return Ok((StatusCode::OK, Json(parse_json("detail", &result.detail_json)?)));
    }
    let body = json!({ "instanceId": result.instance_id, "status": result.status, "created": result.created });
    Ok((StatusCode::ACCEPTED, Json(body)))
}
