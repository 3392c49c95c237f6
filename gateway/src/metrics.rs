//! Per-route metrics: counters and a latency histogram of atomics (no lock on the request path),
//! kept by route id across configs. `GET /api/gateway/metrics` shows them as JSON with latency
//! percentiles and the cache hit ratio; `/metrics` as Prometheus text, with the data plane's
//! upstream and breaker metrics.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

/// Latency buckets: exact below 8 µs, then 8 per power of two (at most 12.5% wide), up to ~67 s.
const SUB: u64 = 8;
const BUCKETS: usize = 200;

#[derive(Debug)]
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(), sum_us: AtomicU64::new(0) }
    }
}

fn bucket(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let p = 63 - u64::from(us.leading_zeros()); // >= 3
    let m = us >> (p - 3); // 8..=15
    (((p - 2) * SUB + m - SUB) as usize).min(BUCKETS - 1)
}

/// The largest value (µs) bucket `i` holds.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let p = i / SUB + 2;
    let m = i % SUB + SUB;
    ((m + 1) << (p - 3)) - 1
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// The `q` quantile in µs (the upper bound of its bucket); None when empty.
    pub fn quantile(counts: &[u64], q: f64) -> Option<u64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper(i));
            }
        }
        Some(upper(BUCKETS - 1))
    }
}

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
            let _ = writeln!(out, "# HELP reskflow_gateway_route_{name} {help}");
            let _ = writeln!(out, "# TYPE reskflow_gateway_route_{name} counter");
            for (id, m) in &routes {
                let _ = writeln!(out, "reskflow_gateway_route_{name}{{route=\"{id}\"}} {}", read(m));
            }
        }
        let _ = writeln!(out, "# HELP reskflow_gateway_route_responses_total Answers by status class.");
        let _ = writeln!(out, "# TYPE reskflow_gateway_route_responses_total counter");
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
        let _ = writeln!(out, "# HELP reskflow_gateway_route_duration_seconds Time to the response head.");
        let _ = writeln!(out, "# TYPE reskflow_gateway_route_duration_seconds histogram");
        const LE: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];
        for (id, m) in &routes {
            let counts = m.latency.snapshot();
            for le in LE {
                let bound = (le * 1e6) as u64;
                let n: u64 = counts.iter().enumerate().filter(|(i, _)| upper(*i) <= bound).map(|(_, c)| c).sum();
                let _ =
                    writeln!(out, "reskflow_gateway_route_duration_seconds_bucket{{route=\"{id}\",le=\"{le}\"}} {n}");
            }
            let total: u64 = counts.iter().sum();
            let _ =
                writeln!(out, "reskflow_gateway_route_duration_seconds_bucket{{route=\"{id}\",le=\"+Inf\"}} {total}");
            let sum = m.latency.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "reskflow_gateway_route_duration_seconds_sum{{route=\"{id}\"}} {sum}");
            let _ = writeln!(out, "reskflow_gateway_route_duration_seconds_count{{route=\"{id}\"}} {total}");
        }
        let _ = writeln!(out, "# HELP reskflow_gateway_unmatched_total Requests no route matched.");
        let _ = writeln!(out, "# TYPE reskflow_gateway_unmatched_total counter");
        let _ = writeln!(out, "reskflow_gateway_unmatched_total {}", self.unmatched.load(Ordering::Relaxed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_within_an_eighth() {
        for us in [0u64, 1, 7, 8, 9, 15, 16, 17, 100, 1_000, 12_345, 1_000_000, 60_000_000] {
            let i = bucket(us);
            assert!(upper(i) >= us, "{us} in bucket {i} (upper {})", upper(i));
            assert!(i == 0 || upper(i - 1) < us, "{us}: bucket {i} is the first to hold it");
            assert!(upper(i) as f64 <= us as f64 * 1.125 + 1.0, "{us}: upper {}", upper(i));
        }
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let counts = h.snapshot();
        let p50 = Histogram::quantile(&counts, 0.5).expect("p50") as f64 / 1000.0;
        let p99 = Histogram::quantile(&counts, 0.99).expect("p99") as f64 / 1000.0;
        assert!((50.0..=57.0).contains(&p50), "{p50}");
        assert!((99.0..=112.0).contains(&p99), "{p99}");
        assert_eq!(Histogram::quantile(&[0; BUCKETS], 0.5), None);
    }
}
