//! The admin port: readiness, Prometheus metrics, the config in use and the breakers.

use std::fmt::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::breaker::State as BreakerState;
use crate::clock;
use crate::upstreams::Upstreams;
use reskflow_runtime::metrics::{describe, single};

/// A counter of the upstream stats: name, help, reader.
type Counter = (&'static str, &'static str, fn(&crate::upstreams::Stats) -> u64);

#[derive(Clone)]
pub struct Admin {
    pub upstreams: Arc<Upstreams>,
    /// Set once the sidecar stops taking traffic (SIGTERM).
    pub draining: Arc<AtomicBool>,
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/health", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/config_dump", get(config_dump))
        .route("/breakers", get(breakers))
        .with_state(admin)
}

async fn ready(State(a): State<Admin>) -> impl IntoResponse {
    let table = a.upstreams.table();
    let draining = a.draining.load(Ordering::Relaxed);
    let ready = !table.source.is_empty() && !draining;
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let body = json!({ "ready": ready, "draining": draining, "version": table.config.version, "source": table.source });
    (status, Json(body))
}

async fn config_dump(State(a): State<Admin>) -> Json<serde_json::Value> {
    let table = a.upstreams.table();
    Json(json!({ "version": table.config.version, "source": table.source, "config": table.config }))
}

async fn breakers(State(a): State<Admin>) -> Json<serde_json::Value> {
    Json(json!(a.upstreams.breakers()))
}

async fn metrics(State(a): State<Admin>) -> impl IntoResponse {
    let mut out = String::with_capacity(4096);
    upstream_metrics(&mut out, "reskflow_sidecar", &a.upstreams);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// Prometheus text for the data plane's upstreams (config version, counters, breakers, endpoints),
/// each metric named `<prefix>_...`; the sidecar and the gateway both expose it.
pub fn upstream_metrics(out: &mut String, prefix: &str, upstreams: &Upstreams) {
    let table = upstreams.table();
    let now = clock::now_ms();
    let version = table.config.version;
    single(out, &format!("{prefix}_config_version"), "gauge", "The config version in use.", version);
    let mut services: Vec<_> = table.upstreams.iter().collect();
    services.sort_by(|a, b| a.0.cmp(b.0));
    let counters: [Counter; 9] = [
        ("requests_total", "Requests to the upstream.", |s| s.requests.load(Ordering::Relaxed)),
        ("upstream_errors_total", "Connect errors, resets and timeouts.", |s| {
            s.upstream_errors.load(Ordering::Relaxed)
        }),
        ("retries_total", "Retries sent.", |s| s.retries.load(Ordering::Relaxed)),
        ("breaker_rejections_total", "Calls refused by the circuit breaker.", |s| {
            s.breaker_rejections.load(Ordering::Relaxed)
        }),
        ("fallbacks_total", "Fallback responses served.", |s| s.fallbacks.load(Ordering::Relaxed)),
        ("no_endpoint_total", "Requests with no endpoint to send to.", |s| s.no_endpoint.load(Ordering::Relaxed)),
        ("ejections_total", "Endpoints ejected by outlier detection.", |s| s.ejections.load(Ordering::Relaxed)),
        ("responses_2xx_total", "2xx responses.", |s| s.responses_2xx.load(Ordering::Relaxed)),
        ("responses_5xx_total", "5xx responses from the upstream.", |s| s.responses_5xx.load(Ordering::Relaxed)),
    ];
    for (name, help, read) in counters {
        describe(out, &format!("{prefix}_upstream_{name}"), "counter", help);
        for (id, u) in &services {
            let _ = writeln!(out, "{prefix}_upstream_{name}{{service=\"{id}\"}} {}", read(&u.stats));
        }
    }
    describe(out, &format!("{prefix}_breaker_state"), "gauge", "Circuit breaker state (1 for the current one).");
    for (id, u) in &services {
        let current = u.breaker.state_at(now);
        for s in [
            BreakerState::Closed,
            BreakerState::Open,
            BreakerState::HalfOpen,
            BreakerState::ForcedOpen,
            BreakerState::Disabled,
        ] {
            let _ = writeln!(
                out,
                "{prefix}_breaker_state{{service=\"{id}\",state=\"{}\"}} {}",
                s.as_str(),
                u8::from(s == current)
            );
        }
    }
    let help = "Failure rate over the window, percent (-1: too few calls).";
    describe(out, &format!("{prefix}_breaker_failure_rate"), "gauge", help);
    for (id, u) in &services {
        let _ = writeln!(out, "{prefix}_breaker_failure_rate{{service=\"{id}\"}} {}", u.breaker.metrics().failure_rate);
    }
    describe(out, &format!("{prefix}_endpoints"), "gauge", "Endpoints of the upstream, by whether they are ejected.");
    for (id, u) in &services {
        let total = u.balancer.endpoints().len();
        let available = u.balancer.available(now);
        let _ = writeln!(out, "{prefix}_endpoints{{service=\"{id}\",ejected=\"false\"}} {available}");
        let _ = writeln!(out, "{prefix}_endpoints{{service=\"{id}\",ejected=\"true\"}} {}", total - available);
    }
}
