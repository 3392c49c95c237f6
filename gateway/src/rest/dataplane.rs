//! `/api/circuit-breakers` and `/api/dataplane/clients`: what the data planes (sidecars, gateways)
//! connected to the control plane report. Breakers are shown aggregated per name (the upstream
//! service) and per holder; a reset goes to every holder through the config stream.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use reskflow_proto::pb::config::v1 as pb;
use serde_json::{json, Value};

use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::openapi::{Document, ErrorResponse};
use crate::AppState;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list)).routes(routes!(one)).routes(routes!(reset)).routes(routes!(clients))
}

type ApiResult<T> = Result<T, ApiError>;

/// Worse states first: the aggregate shows the worst any holder is in.
fn severity(state: &str) -> u8 {
    match state {
        "FORCED_OPEN" => 5,
        "OPEN" => 4,
        "HALF_OPEN" => 3,
        "CLOSED" => 2,
        "DISABLED" => 1,
        _ => 0,
    }
}

async fn breakers(s: &AppState) -> ApiResult<BTreeMap<String, Value>> {
    let list = s.client().config().list_clients(pb::ListClientsRequest {}).await?.into_inner();
    let mut by_name: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for client in list.clients {
        let Ok(Value::Object(report)) = serde_json::from_str::<Value>(&client.breakers_json) else { continue };
        for (name, mut metrics) in report {
            metrics["nodeId"] = json!(client.node_id);
            metrics["role"] = json!(client.role);
            metrics["serviceId"] = json!(client.service_id);
            by_name.entry(name).or_default().push(metrics);
        }
    }
    let sum = |holders: &[Value], field: &str| holders.iter().filter_map(|h| h[field].as_u64()).sum::<u64>();
    Ok(by_name
        .into_iter()
        .map(|(name, holders)| {
            let state = holders
                .iter()
                .filter_map(|h| h["state"].as_str())
                .max_by_key(|s| severity(s))
                .unwrap_or("CLOSED")
                .to_string();
            let open = holders.iter().filter(|h| severity(h["state"].as_str().unwrap_or("")) >= 3).count();
            let failure_rate = holders.iter().filter_map(|h| h["failureRate"].as_f64()).fold(-1.0_f64, f64::max);
            let aggregate = json!({
                "name": name,
                "state": state,
                "holders": holders.len(),
                "holdersNotClosed": open,
                "maxFailureRate": failure_rate,
                "successfulCalls": sum(&holders, "successfulCalls"),
                "failedCalls": sum(&holders, "failedCalls"),
                "slowCalls": sum(&holders, "slowCalls"),
                "notPermittedCalls": sum(&holders, "notPermittedCalls"),
                "transitions": sum(&holders, "transitions"),
                "perHolder": holders,
            });
            (name, aggregate)
        })
        .collect())
}

/// Every circuit breaker the data planes hold, by name (the upstream service): the worst state,
/// summed calls, and each holder's metrics.
#[utoipa::path(get, path = "/api/circuit-breakers", tag = "circuit breakers",
    responses((status = 200, description = "`{\"breakers\": [...]}`", body = Document)))]
async fn list(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let all: Vec<Value> = breakers(&s).await?.into_values().collect();
    Ok(Json(json!({ "breakers": all })))
}

/// One breaker, aggregated over its holders.
#[utoipa::path(get, path = "/api/circuit-breakers/{name}", tag = "circuit breakers", params(("name" = String, Path)),
    responses((status = 200, body = Document), (status = 404, description = "No data plane holds it", body = ErrorResponse)))]
async fn one(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    breakers(&s)
        .await?
        .remove(&name)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no data plane reports a circuit breaker named {name}")))
}

/// Closes a breaker on every holder.
#[utoipa::path(post, path = "/api/circuit-breakers/{name}/reset", tag = "circuit breakers", params(("name" = String, Path)),
    responses((status = 202, description = "`{\"name\", \"version\"}`", body = Document), (status = 404, description = "No data plane holds it", body = ErrorResponse)))]
/// 202: the reset is on its way to every holder (they apply it within the config stream's delay).
async fn reset(State(s): State<AppState>, Path(name): Path<String>) -> ApiResult<impl IntoResponse> {
    let req = pb::ResetBreakerRequest { service_id: name.clone() };
    let version = s.client().config().reset_breaker(req).await?.into_inner().version;
    Ok((StatusCode::ACCEPTED, Json(json!({ "name": name, "version": version }))))
}

/// The data planes (sidecars, gateways) on the config stream: sent and acked versions, stale, NACKs.
#[utoipa::path(get, path = "/api/dataplane/clients", tag = "circuit breakers",
    responses((status = 200, description = "`{\"currentVersion\", \"clients\": [...]}`", body = Document)))]
async fn clients(State(s): State<AppState>) -> ApiResult<Json<Value>> {
    let list = s.client().config().list_clients(pb::ListClientsRequest {}).await?.into_inner();
    let clients: Vec<Value> = list
        .clients
        .into_iter()
        .map(|c| {
            json!({
                "nodeId": c.node_id, "role": c.role, "serviceId": c.service_id, "region": c.region, "zone": c.zone,
                "sentVersion": c.sent_version, "ackedVersion": c.acked_version,
                "stale": c.acked_version < c.sent_version,
                "nackedVersion": c.nacked_version, "nackError": c.nack_error,
                "controlPlane": c.control_plane,
                "connectedAt": super::workflows::chrono_ms(c.connected_at_ms),
                "lastSeenAt": super::workflows::chrono_ms(c.last_seen_ms),
            })
        })
        .collect();
    Ok(Json(json!({ "currentVersion": list.current_version, "clients": clients })))
}
