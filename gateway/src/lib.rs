//! ReskFlow gateway: the REST API in front of the control plane.
//!
//! - [`config`]: the typed configuration.
//! - [`error`]: `ApiError`, the JSON error every endpoint answers with.
//! - [`json`]: body and query extractors that name the failing field.
//! - [`rest`]: one module per REST resource, each calling the control plane over gRPC.
//!
//! [`router`] builds the whole app from its state, so tests drive it in-process with `oneshot`.

pub mod config;
pub mod error;
pub mod json;
pub mod rest;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use reskflow_proto::{Client, ClientOptions};
use tokio::net::TcpListener;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tracing::info;

use crate::config::Config;
use crate::error::ApiError;

#[derive(Clone)]
pub struct AppState {
    /// Several HTTP/2 connections to the control plane: one connection's stream table is a lock
    /// every request takes, so calls are spread over a few.
    clients: Arc<[Client]>,
    next: Arc<AtomicUsize>,
    health: HealthClient<tonic::transport::Channel>,
    /// Deadline of calls to the control plane.
    pub request_timeout: std::time::Duration,
    /// This gateway's location (`REGION`, `ZONE`).
    pub region: String,
    pub zone: String,
}

impl AppState {
    pub fn connect(config: &Config) -> anyhow::Result<Self> {
        let options = ClientOptions { request_timeout: config.request_timeout, ..ClientOptions::default() };
        let clients = (0..config.control_plane_connections.max(1))
            .map(|_| Client::connect_lazy(&config.orchestration_url, options.clone()))
            .collect::<Result<Arc<[Client]>, _>>()
            .context("ORCHESTRATION_URL is not a usable endpoint")?;
        let channel = tonic::transport::Endpoint::from_shared(config.orchestration_url.clone())
            .context("ORCHESTRATION_URL is not a usable endpoint")?
            .connect_timeout(options.connect_timeout)
            .connect_lazy();
        Ok(AppState {
            clients,
            next: Arc::new(AtomicUsize::new(0)),
            health: HealthClient::new(channel),
            request_timeout: config.request_timeout,
            region: config.region.clone(),
            zone: config.zone.clone(),
        })
    }

    /// A control-plane client (round robin over the connections).
    pub fn client(&self) -> &Client {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        &self.clients[n % self.clients.len()]
    }
}

pub fn router(state: AppState, config: &Config) -> Router {
    let max_body = config.max_body_bytes;
    Router::new()
        .merge(rest::registry::routes())
        .merge(rest::workflows::routes())
        .merge(rest::dataplane::routes())
        .route("/health", get(|| async { Json(serde_json::json!({ "status": "ok" })) }))
        .route("/ready", get(ready))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(move |req: Request, next: Next| reject_oversized(max_body, req, next)))
        .with_state(state)
}

/// A declared body larger than the limit is refused before it is read (the body limit above still
/// covers chunked bodies that grow past it).
async fn reject_oversized(max: usize, req: Request, next: Next) -> Response {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max as u64) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body may be at most {max} bytes (MAX_BODY_BYTES)"),
        )
        .into_response();
    }
    next.run(req).await
}

/// Ready when the control plane answers its gRPC health check.
async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut health = state.health.clone();
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.set_timeout(std::time::Duration::from_secs(2));
    let status = health.check(request).await.map_err(|s| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "control_plane_unavailable", s.message().to_string())
    })?;
    Ok(Json(serde_json::json!({ "status": "ready", "controlPlane": status.into_inner().status().as_str_name() })))
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let state = AppState::connect(&config)?;
    let app = router(state, &config);
    info!(addr = %listener.local_addr()?, control_plane = %config.orchestration_url, "gateway serving REST");
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await.context("REST server failed")
}
