//! Per-route metrics: counters and a latency histogram of atomics (no lock on the request path),
//! kept by route id across configs. `GET /api/gateway/metrics` shows them as JSON with latency
//! percentiles and the cache hit ratio; `/metrics` as Prometheus text, with the data plane's
//! upstream and breaker metrics.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use reskflow_runtime::metrics::Histogram;
use reskflow_runtime::metrics::{describe, single};
use serde_json::{json, Value};

/// One route's counters.
#[derive(Debug, Default)]
pub struct RouteMetrics {
    pub requests: AtomicU64,
    pub status_2xx: AtomicU64,
    pub status_3xx: AtomicU64,
    pub status_4xx: AtomicU64,
    pub status_5xx: AtomicU64,
    pub rate_limited: AtomicU64,
    /// 401s.
    pub auth_failures: AtomicU64,
    /// 403s.
    pub forbidden: AtomicU64,
    pub validation_failures: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    /// Connect errors, resets, timeouts and no endpoint.
    pub upstream_errors: AtomicU64,
    pub breaker_rejections: AtomicU64,
    pub latency: Histogram,
}

impl RouteMetrics {
    pub fn count(&self, status: u16, elapsed: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let class = match status {
            200..=299 => &self.status_2xx,
            300..=399 => &self.status_3xx,
            400..=499 => &self.status_4xx,
            _ => &self.status_5xx,
        };
        class.fetch_add(1, Ordering::Relaxed);
        self.latency.record(elapsed);
    }

    fn json(&self, id: &str) -> Value {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counts = self.latency.snapshot();
        let ms = |q: f64| Histogram::quantile(&counts, q).map(|us| us as f64 / 1000.0);
        let (hits, misses) = (load(&self.cache_hits), load(&self.cache_misses));
        let lookups = hits + misses;
        json!({
            "route": id,
            "requests": load(&self.requests),
            "status": { "2xx": load(&self.status_2xx), "3xx": load(&self.status_3xx),
                        "4xx": load(&self.status_4xx), "5xx": load(&self.status_5xx) },
            "latencyMs": { "p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99) },
            "cache": { "hits": hits, "misses": misses,
                       "hitRatio": if lookups == 0 { Value::Null } else { json!(hits as f64 / lookups as f64) } },
            "rateLimited": load(&self.rate_limited),
            "authFailures": load(&self.auth_failures),
            "forbidden": load(&self.forbidden),
            "validationFailures": load(&self.validation_failures),
            "upstreamErrors": load(&self.upstream_errors),
            "breakerRejections": load(&self.breaker_rejections),
        })
    }
}

/// Every route's metrics, by id, kept while the gateway runs.
#[derive(Debug, Default)]
pub struct Metrics {
    routes: Mutex<HashMap<String, Arc<RouteMetrics>>>,
    /// Requests no route matched.
    pub unmatched: AtomicU64,
}

impl Metrics {
    pub fn route(&self, id: &str) -> Arc<RouteMetrics> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).entry(id.to_string()).or_default().clone()
    }

    fn sorted(&self) -> BTreeMap<String, Arc<RouteMetrics>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    pub fn json(&self) -> Value {
        let routes: Vec<Value> = self.sorted().iter().map(|(id, m)| m.json(id)).collect();
        json!({ "routes": routes, "unmatched": self.unmatched.load(Ordering::Relaxed) })
    }

    /// Prometheus text of the route metrics.
    pub fn prometheus(&self, out: &mut String) {
        let routes = self.sorted();
        type Read = fn(&RouteMetrics) -> u64;
        let counters: [(&str, &str, Read); 10] = [
            ("rate_limited_total", "Requests refused by a rate limit.", |m| m.rate_limited.load(Ordering::Relaxed)),
            ("auth_failures_total", "Requests without valid credentials (401).", |m| {
                m.auth_failures.load(Ordering::Relaxed)
            }),
            ("forbidden_total", "Requests lacking a required role (403).", |m| m.forbidden.load(Ordering::Relaxed)),
            ("validation_failures_total", "Requests refused by validation (400, 413).", |m| {
                m.validation_failures.load(Ordering::Relaxed)
            }),
            ("cache_hits_total", "Responses served from the cache.", |m| m.cache_hits.load(Ordering::Relaxed)),
            ("cache_misses_total", "Cacheable requests sent upstream.", |m| m.cache_misses.load(Ordering::Relaxed)),
            ("upstream_errors_total", "Connect errors, resets, timeouts, no endpoint.", |m| {
                m.upstream_errors.load(Ordering::Relaxed)
            }),
            ("breaker_rejections_total", "Calls refused by the circuit breaker.", |m| {
                m.breaker_rejections.load(Ordering::Relaxed)
            }),
            ("requests_total", "Requests matched to the route.", |m| m.requests.load(Ordering::Relaxed)),
            ("responses_5xx_total", "5xx answers.", |m| m.status_5xx.load(Ordering::Relaxed)),
        ];
        for (name, help, read) in counters {
            describe(out, &format!("reskflow_gateway_route_{name}"), "counter", help);
            for (id, m) in &routes {
                let _ = writeln!(out, "reskflow_gateway_route_{name}{{route=\"{id}\"}} {}", read(m));
            }
        }
        describe(out, "reskflow_gateway_route_responses_total", "counter", "Answers by status class.");
        for (id, m) in &routes {
            for (class, c) in
                [("2xx", &m.status_2xx), ("3xx", &m.status_3xx), ("4xx", &m.status_4xx), ("5xx", &m.status_5xx)]
            {
                let _ = writeln!(
                    out,
                    "reskflow_gateway_route_responses_total{{route=\"{id}\",class=\"{class}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }
        describe(out, "reskflow_gateway_route_duration_seconds", "histogram", "Time to the response head.");
        for (id, m) in &routes {
            m.latency.prometheus(out, "reskflow_gateway_route_duration_seconds", &format!("route=\"{id}\""));
        }
        let unmatched = self.unmatched.load(Ordering::Relaxed);
        single(out, "reskflow_gateway_unmatched_total", "counter", "Requests no route matched.", unmatched);
    }
}
