//! ReskFlow gateway: the REST API in front of the control plane, and the API gateway in front of
//! the services (routes streamed from the control plane, proxied through the shared data plane).
//!
//! - [`config`]: the typed configuration.
//! - [`edge`]: the front door: management endpoints first, then route matching and proxying.
//! - [`routes`]: the compiled route table, replaced whole on each config.
//! - [`auth`]: JWT and API key authentication.
//! - [`error`]: `ApiError`, the JSON error every endpoint answers with.
//! - [`json`]: body and query extractors that name the failing field.
//! - [`rest`]: one module per REST resource, each calling the control plane over gRPC.
//! - [`openapi`]: the OpenAPI document, generated from the handlers as they are routed.
//!
//! [`router`] builds the whole app from its state, so tests drive it in-process with `oneshot`.

pub mod auth;
pub mod cache;
pub mod config;
pub mod edge;
pub mod error;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod ratelimit;
pub mod rest;
pub mod routes;
pub mod shape;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use reskflow_proto::{Client, ClientOptions};
use tokio::net::TcpListener;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tracing::info;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::Config;
use crate::error::ApiError;
use crate::openapi::Describe;
use reskflow_proto::pb::config::v1 as pb;
use reskflow_runtime::metrics::single;
use reskflow_sidecar::balance::Locality;
use reskflow_sidecar::config_watch::{self, Watcher};
use reskflow_sidecar::proxy::Proxy;
use reskflow_sidecar::upstreams::Upstreams;
use tokio_util::sync::CancellationToken;

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
    /// The data plane this gateway proxies through, and what it counts (for the metrics endpoints).
    pub upstreams: Arc<Upstreams>,
    pub metrics: Arc<metrics::Metrics>,
    pub shared_limits: Option<Arc<ratelimit::Shared>>,
    pub cache: Arc<cache::ResponseCache>,
}

impl AppState {
    pub fn connect(config: &Config) -> anyhow::Result<Self> {
        let token = (!config.control_plane_token.is_empty()).then(|| config.control_plane_token.clone());
        let options = ClientOptions { request_timeout: config.request_timeout, token, ..ClientOptions::default() };
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
            upstreams: Arc::new(Upstreams::new(Locality::default())),
            metrics: Arc::default(),
            shared_limits: None,
            cache: Arc::new(cache::ResponseCache::new(config.cache_max_bytes)),
        })
    }

    /// A control-plane client (round robin over the connections).
    pub fn client(&self) -> &Client {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        &self.clients[n % self.clients.len()]
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&Describe),
    tags(
        (name = "registry", description = "Services, instances, health, discovery, dependencies"),
        (name = "workflows", description = "Workflow definitions, runs, cancel, sagas"),
        (name = "circuit breakers", description = "What the data planes report, and resets"),
        (name = "gateway", description = "Routes and the gateway's own metrics and cache"),
        (name = "operations", description = "Health, readiness, Prometheus, this document"),
    )
)]
struct ApiDoc;

/// Every REST route with its documentation: `routes!` serves a handler and documents it from its
/// `#[utoipa::path]` at once.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(rest::registry::routes())
        .merge(rest::workflows::routes())
        .merge(rest::dataplane::routes())
        .merge(rest::routes::routes())
        .routes(routes!(gateway_metrics))
        .routes(routes!(purge_cache))
        .routes(routes!(prometheus))
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(openapi_json))
        .routes(routes!(dashboard))
        .split_for_parts()
}

/// The OpenAPI document (built once per process).
pub fn openapi_document() -> &'static serde_json::Value {
    static DOC: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(api().1).unwrap_or_default())
}

/// This API's OpenAPI 3.1 document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1", body = openapi::Document)))]
async fn openapi_json() -> Json<&'static serde_json::Value> {
    Json(openapi_document())
}

/// The web dashboard: services and instances with live health, the dependency graph, circuit
/// breakers, workflow runs with each run's step timeline. One static page reading this REST API.
#[utoipa::path(get, path = "/ui", tag = "operations",
    responses((status = 200, description = "The dashboard (HTML)", content_type = "text/html", body = String)))]
async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; \
                 img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        include_str!("../ui/index.html"),
    )
}

/// Liveness: the process serves.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ok\"}`", body = openapi::Document)))]
async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

pub fn router(state: AppState, config: &Config) -> Router {
    let max_body = config.max_body_bytes;
    let (api, _) = api();
    api.fallback(|| async { ApiError::not_found("no such endpoint") })
        .layer(middleware::from_fn(trace_request))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn(move |req: Request, next: Next| reject_oversized(max_body, req, next)))
        .with_state(state)
}

/// One span per REST call, named by its route (`GET /api/registry/services/{id}`), continuing the
/// caller's trace (`traceparent`); the control plane's spans for the gRPC calls it makes are its
/// children.
async fn trace_request(req: Request, next: Next) -> Response {
    if !reskflow_runtime::telemetry::enabled() {
        return next.run(req).await;
    }
    let route = req.extensions().get::<axum::extract::MatchedPath>().map_or("unmatched", |p| p.as_str());
    let name = format!("{} {route}", req.method());
    let span = tracing::info_span!(
        "http",
        otel.name = name,
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = req.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    reskflow_runtime::telemetry::continue_trace(&span, req.headers());
    let response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
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

/// Per-route metrics (JSON), with the shared rate limit store's health.
#[utoipa::path(get, path = "/api/gateway/metrics", tag = "gateway",
    responses((status = 200, description = "Per route: requests by class, latency p50/p95/p99, cache hit ratio, refusals", body = openapi::Document)))]
async fn gateway_metrics(State(state): State<AppState>) -> Json<serde_json::Value> {
    let mut body = state.metrics.json();
    body["configVersion"] = state.upstreams.version().into();
    if let Some(shared) = &state.shared_limits {
        // Counters only: serializing them cannot fail.
        let mut redis = serde_json::to_value(&*shared.stats).unwrap_or_default();
        redis["healthy"] = shared.healthy().into();
        body["redis"] = redis;
    }
    Json(body)
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct PurgeQuery {
    route: Option<String>,
    path: Option<String>,
}

/// Drops cached answers: all, a route's, or a route's for one path (`?route=&path=`): in this
/// replica's memory and, with `CACHE_STORE=redis`, in Redis (every replica within a second).
#[utoipa::path(delete, path = "/api/gateway/cache", tag = "gateway", params(PurgeQuery),
    responses((status = 204, description = "Purged"),
              (status = 400, description = "A field is invalid", body = openapi::ErrorResponse),
              (status = 503, description = "The shared cache store does not answer", body = openapi::ErrorResponse)))]
async fn purge_cache(
    State(state): State<AppState>,
    json::QueryParams(q): json::QueryParams<PurgeQuery>,
) -> Result<StatusCode, ApiError> {
    if q.path.is_some() && q.route.is_none() {
        return Err(ApiError::field("path", "give the route too"));
    }
    state
        .cache
        .purge_everywhere(q.route.as_deref(), q.path.as_deref())
        .await
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cache_store_unavailable", e))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Prometheus text: routes, then the data plane's upstreams and breakers.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
async fn prometheus(State(state): State<AppState>) -> impl IntoResponse {
    let mut out = String::with_capacity(8192);
    state.metrics.prometheus(&mut out);
    if let Some(shared) = &state.shared_limits {
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        let stats = &shared.stats;
        let samples: [(&str, &str, &str, &dyn std::fmt::Display); 6] = [
            ("redis_up", "gauge", "Whether the shared rate limit store answers.", &u8::from(shared.healthy())),
            ("redis_errors_total", "counter", "Failed calls to Redis.", &load(&stats.redis_errors)),
            ("redis_calls_total", "counter", "Rate limit script calls to Redis.", &load(&stats.redis_calls)),
            (
                "redis_call_seconds_total",
                "counter",
                "Rate limit script calls' round trips, summed.",
                &(load(&stats.redis_call_micros) as f64 / 1e6),
            ),
            ("redis_checks_total", "counter", "Requests whose limit Redis decided.", &load(&stats.redis_checks)),
            ("rate_limit_fallback_total", "counter", "Limits decided without Redis.", &load(&stats.fallback_decisions)),
        ];
        for (name, kind, help, value) in samples {
            single(&mut out, &format!("reskflow_gateway_{name}"), kind, help, value);
        }
    }
    reskflow_sidecar::admin::upstream_metrics(&mut out, "reskflow_gateway", &state.upstreams);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Ready when the control plane answers its gRPC health check.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "`{\"status\": \"ready\", \"controlPlane\"}`", body = openapi::Document),
              (status = 503, description = "The control plane does not answer", body = openapi::ErrorResponse)))]
async fn ready(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    let mut health = state.health.clone();
    let mut request = tonic::Request::new(HealthCheckRequest { service: String::new() });
    request.set_timeout(std::time::Duration::from_secs(2));
    let status = health.check(request).await.map_err(|s| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "control_plane_unavailable", s.message().to_string())
    })?;
    Ok(Json(serde_json::json!({ "status": "ready", "controlPlane": status.into_inner().status().as_str_name() })))
}

/// Serves on `listener` until `shutdown` resolves: follows the control plane's config stream (and
/// starts from the saved config), stores `ROUTES_FILE`'s routes, and serves the REST API and the
/// routes on one port.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut state = AppState::connect(&config)?;
    let auth = auth::Authenticator::from_config(&config).await?;
    let metrics = state.metrics.clone();
    let routes = Arc::new(routes::Routes::new(routes::Defaults { max_body: config.max_body_bytes }, metrics.clone()));
    let hook_routes = routes.clone();
    let locality = Locality { region: config.region.clone(), zone: config.zone.clone() };
    let upstreams = Arc::new(Upstreams::with_hook(locality, Box::new(move |c| hook_routes.apply(c))));
    state.upstreams = upstreams.clone();
    let node = config.node();
    let cache = config.cache_path(&node);
    config_watch::load_saved(&cache, &upstreams);

    let stop = CancellationToken::new();
    let watcher = Watcher {
        client: state.client().clone(),
        hello: pb::Hello {
            node_id: node.clone(),
            role: "gateway".into(),
            service_id: String::new(),
            region: config.region.clone(),
            zone: config.zone.clone(),
            services: Vec::new(),
            all_services: true,
            running_version: 0,
        },
        upstreams: upstreams.clone(),
        cache,
        report_interval: config.report_interval,
    };
    let watching = tokio::spawn(watcher.run(stop.clone()));
    if !config.routes_file.is_empty() {
        store_routes_file(&state, &config.routes_file).await?;
    }

    // One multiplexed Redis connection for the shared limits and (CACHE_STORE=redis) the cache.
    let redis = match config.redis() {
        Some(url) => Some(ratelimit::connect_redis(&url, config.rate_limit_redis_timeout).await?),
        None => None,
    };
    let timeout = config.rate_limit_redis_timeout;
    let shared = redis.as_ref().map(|(conn, up)| {
        Arc::new(ratelimit::Shared::new(conn.clone(), *up, timeout, config.rate_limit_redis_failure))
    });
    state.shared_limits = shared.clone();
    if config.cache_store == config::CacheStore::Redis {
        let (conn, _) = redis.context("CACHE_STORE=redis needs REDIS_URL")?;
        state.cache = Arc::new(cache::ResponseCache::shared(config.cache_max_bytes, conn, timeout));
    }
    let limits = ratelimit::Limits { shared };
    let forgetting = tokio::spawn(routes.clone().forget_idle_callers());
    let cache = state.cache.clone();
    let edge = Arc::new(edge::Edge {
        proxy: Proxy::new(upstreams.clone(), String::new()),
        upstreams,
        routes,
        auth,
        management: router(state, &config),
        admin_role: config.admin_role.clone(),
        trust_forwarded: config.trust_forwarded,
        limits,
        metrics,
        cache,
        serve_limits: reskflow_sidecar::server::ServeLimits {
            header_read_timeout: config.header_read_timeout,
            max_header_bytes: config.max_header_bytes,
        },
    });
    info!(addr = %listener.local_addr()?, control_plane = %config.orchestration_url, node = %node, "gateway serving");
    let serving = tokio::spawn(edge.serve(listener, stop.clone()));
    shutdown.await;
    stop.cancel();
    let _ = serving.await;
    let _ = watching.await;
    forgetting.abort();
    info!("gateway stopped");
    Ok(())
}

/// Stores the routes of `ROUTES_FILE` (created or replaced; other routes stay). A file that does not
/// parse or routes the control plane refuses stop the start; a control plane that is not up yet is
/// waited for (then the routes are stored in the background).
async fn store_routes_file(state: &AppState, path: &str) -> anyhow::Result<()> {
    let file: reskflow_proto::route::RouteFile = auth::read_yaml(std::path::Path::new(path)).context("ROUTES_FILE")?;
    let routes = file.into_routes();
    let count = routes.len();
    let routes_json = serde_json::to_string(&routes).context("ROUTES_FILE")?;
    let request = reskflow_proto::pb::registry::v1::PutRoutesRequest {
        routes_json,
        create_only: false,
        replace_all: false,
        single: false,
    };
    let client = state.client().clone();
    let path_owned = path.to_string();
    // One task stores the file, retrying while the control plane is unavailable; the start waits for
    // it up to 10 s (a refusal stops the start), then lets it go on in the background.
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let outcome = loop {
            match client.registry().put_routes(request.clone()).await {
                Ok(_) => break Ok(()),
                Err(s) if matches!(s.code(), tonic::Code::Unavailable | tonic::Code::DeadlineExceeded) => {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(s) => break Err(s),
            }
        };
        match &outcome {
            Ok(()) => info!(routes = count, path = %path_owned, "routes from ROUTES_FILE stored"),
            Err(s) => tracing::error!(status = %s, "the control plane refused ROUTES_FILE"),
        }
        let _ = done_tx.send(outcome);
    });
    match tokio::time::timeout(std::time::Duration::from_secs(10), done_rx).await {
        Ok(Ok(Err(status))) => {
            let detail = reskflow_proto::invalid::Invalid::from_status(&status)
                .map_or_else(|| status.message().to_string(), |i| i.to_string());
            anyhow::bail!("ROUTES_FILE {path}: {detail}");
        }
        Ok(_) => Ok(()),
        Err(_) => {
            tracing::warn!("control plane unavailable; storing ROUTES_FILE in the background");
            Ok(())
        }
    }
}
