//! The control plane's Prometheus metrics, served on `METRICS_ADDR` (`/metrics`, `/health`):
//! gRPC calls by method and code with latency histograms (a tower layer on the gRPC server), store
//! latencies, registry size and version, connected data planes and Watch streams, workflow runs by
//! status and the task queue's depth (both read from the store at scrape time).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use reskflow_proto::registry::HealthStatus;
use reskflow_runtime::metrics::{describe, Histogram};

use crate::registry::Registry;
use crate::store::Store;

/// gRPC status code names, by number.
const CODES: [&str; 17] = [
    "OK",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

#[derive(Default)]
struct MethodStats {
    codes: [AtomicU64; 17],
    latency: Histogram,
}

/// gRPC call counters, by full method name.
#[derive(Default)]
pub struct GrpcMetrics {
    methods: Mutex<HashMap<String, Arc<MethodStats>>>,
}

impl GrpcMetrics {
    fn record(&self, method: &str, code: usize, elapsed: std::time::Duration) {
        let stats = {
            let mut methods = self.methods.lock().unwrap_or_else(|e| e.into_inner());
            match methods.get(method) {
                Some(s) => s.clone(),
                None => methods.entry(method.to_string()).or_default().clone(),
            }
        };
        stats.codes[code.min(16)].fetch_add(1, Ordering::Relaxed);
        stats.latency.record(elapsed);
    }
}

/// Counts each gRPC call by method and status, and times it to the response head.
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<GrpcMetrics>);

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService { inner, metrics: self.0.clone() }
    }
}

#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<GrpcMetrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_string();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        // One span per call, continuing the caller's trace (traceparent in the metadata).
        // Only while spans are exported: this is every call's path.
        let span = if reskflow_runtime::telemetry::enabled() {
            let name = method.trim_start_matches('/');
            let span = tracing::info_span!("grpc", otel.name = name, otel.kind = "server", rpc.system = "grpc");
            reskflow_runtime::telemetry::continue_trace(&span, req.headers());
            span
        } else {
            tracing::Span::none()
        };
        let future = span.in_scope(|| self.inner.call(req));
        Box::pin(tracing::Instrument::instrument(
            async move {
                let result = future.await;
                if let Ok(response) = &result {
                    // Errors come trailers-only (the status in the head); OK comes in trailers.
                    let code = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(0);
                    metrics.record(&method, code, started.elapsed());
                }
                result
            },
            span,
        ))
    }
}

/// Everything `/metrics` reads.
#[derive(Clone)]
pub struct Sources {
    pub grpc: Arc<GrpcMetrics>,
    pub store: Store,
    pub registry: Registry,
    /// Connected data planes (config streams) on this replica.
    pub config_streams: Arc<dyn Fn() -> usize + Send + Sync>,
}

pub fn router(sources: Sources) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }))
        .with_state(sources)
}

async fn metrics(State(s): State<Sources>) -> impl IntoResponse {
    let mut out = String::with_capacity(8192);
    describe(&mut out, "grpc_server_handled_total", "counter", "gRPC calls completed, by method and status code.");
    let methods: BTreeMap<String, Arc<MethodStats>> =
        s.grpc.methods.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    let split = |m: &str| {
        let m = m.trim_start_matches('/');
        m.split_once('/').map_or((m.to_string(), String::new()), |(svc, name)| (svc.to_string(), name.to_string()))
    };
    for (method, stats) in &methods {
        let (service, name) = split(method);
        for (code, counter) in stats.codes.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "grpc_server_handled_total{{grpc_service=\"{service}\",grpc_method=\"{name}\",grpc_code=\"{}\"}} {n}",
                    CODES[code]
                );
            }
        }
    }
    describe(&mut out, "grpc_server_handling_seconds", "histogram", "Time to the response head of gRPC calls.");
    for (method, stats) in &methods {
        let (service, name) = split(method);
        let labels = format!("grpc_service=\"{service}\",grpc_method=\"{name}\"");
        stats.latency.prometheus(&mut out, "grpc_server_handling_seconds", &labels);
    }

    describe(&mut out, "reskflow_store_operation_seconds", "histogram", "Store transactions, by operation.");
    for (op, h) in s.store.timings().all() {
        h.prometheus(&mut out, "reskflow_store_operation_seconds", &format!("operation=\"{op}\""));
    }

    let (version, services, by_status) = {
        let state = s.registry.read();
        let mut by_status: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (_, instance) in state.instances() {
            let status = match instance.status {
                HealthStatus::Passing => "passing",
                HealthStatus::Warning => "warning",
                HealthStatus::Critical => "critical",
            };
            *by_status.entry(status).or_default() += 1;
        }
        (state.version, state.services.len(), by_status)
    };
    describe(&mut out, "reskflow_registry_version", "gauge", "The registry version this replica has applied.");
    let _ = writeln!(out, "reskflow_registry_version {version}");
    describe(&mut out, "reskflow_registry_services", "gauge", "Registered services.");
    let _ = writeln!(out, "reskflow_registry_services {services}");
    describe(&mut out, "reskflow_registry_instances", "gauge", "Registered instances, by health status.");
    for status in ["passing", "warning", "critical"] {
        let _ = writeln!(
            out,
            "reskflow_registry_instances{{status=\"{status}\"}} {}",
            by_status.get(status).copied().unwrap_or(0)
        );
    }
    describe(&mut out, "reskflow_watch_streams", "gauge", "Open registry Watch streams on this replica.");
    let _ = writeln!(out, "reskflow_watch_streams {}", s.registry.watchers());
    describe(&mut out, "reskflow_config_streams", "gauge", "Connected data planes (config streams) on this replica.");
    let _ = writeln!(out, "reskflow_config_streams {}", (s.config_streams)());

    match s.store.workflow_gauges().await {
        Ok(gauges) => {
            describe(&mut out, "reskflow_workflow_runs", "gauge", "Workflow runs in the store, by status.");
            for (status, n) in &gauges.runs_by_status {
                let _ = writeln!(out, "reskflow_workflow_runs{{status=\"{status}\"}} {n}");
            }
            describe(&mut out, "reskflow_workflow_queue_due", "gauge", "Workflow tasks due and not held by a worker.");
            let _ = writeln!(out, "reskflow_workflow_queue_due {}", gauges.due);
            describe(&mut out, "reskflow_workflow_queue_held", "gauge", "Workflow tasks held by a worker now.");
            let _ = writeln!(out, "reskflow_workflow_queue_held {}", gauges.held);
            describe(
                &mut out,
                "reskflow_workflow_queue_scheduled",
                "gauge",
                "Workflow tasks due later (retries, waits).",
            );
            let _ = writeln!(out, "reskflow_workflow_queue_scheduled {}", gauges.scheduled);
        }
        Err(err) => tracing::warn!(error = %err, "cannot read workflow gauges for /metrics"),
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
