//! Traffic policies: how the data plane (sidecars, the gateway's proxy, workflow step calls) treats
//! calls to a service. Operators set them on the service in the registry (`trafficPolicy`); the
//! control plane streams them to every data plane that calls the service. Names and defaults follow
//! resilience4j for breakers and Envoy for outlier detection and retries.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::invalid::Violations;

/// Everything a data plane applies to calls to one service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct TrafficPolicy {
    pub load_balancer: LbConfig,
    pub circuit_breaker: BreakerConfig,
    pub outlier_detection: OutlierConfig,
    pub retry: RetryPolicy,
    /// Whole-request timeout (all tries); default 15 s.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// What callers get while the breaker is open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
}

impl TrafficPolicy {
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);

    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or(Self::DEFAULT_TIMEOUT)
    }

    /// Adds this policy's problems to `v`, fields under `at` (e.g. `trafficPolicy`).
    pub fn check(&self, v: &mut Violations, at: &str) {
        self.load_balancer.check(v, &format!("{at}.loadBalancer"));
        self.circuit_breaker.check(v, &format!("{at}.circuitBreaker"));
        self.outlier_detection.check(v, &format!("{at}.outlierDetection"));
        self.retry.check(v, &format!("{at}.retry"));
        if self.timeout.is_some_and(|t| t.is_zero()) {
            v.add(format!("{at}.timeout"), "must be positive");
        }
        if let Some(fallback) = &self.fallback {
            fallback.check(v, &format!("{at}.fallback"));
        }
    }
}

// === load balancing ===

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    #[default]
    RoundRobin,
    /// Smooth weighted round robin by instance weight.
    Weighted,
    Random,
    /// Power of two choices on peak-EWMA latency times requests in flight (linkerd2-proxy).
    LeastRequest,
    /// Consistent hashing on a request header (`hashHeader`); random without the header.
    RingHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct LbConfig {
    pub policy: LbPolicy,
    /// The header whose value is hashed (RING_HASH).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
    /// Prefer endpoints in the caller's region and zone while one is available.
    pub zone_aware: bool,
}

impl LbConfig {
    pub fn check(&self, v: &mut Violations, at: &str) {
        match (&self.policy, &self.hash_header) {
            (LbPolicy::RingHash, None) => v.add(format!("{at}.hashHeader"), "is required with RING_HASH"),
            (_, Some(h)) if h.is_empty() || h.len() > 128 || http_header_name(h).is_none() => {
                v.add(format!("{at}.hashHeader"), "must be a header name")
            }
            _ => {}
        }
    }
}

fn http_header_name(name: &str) -> Option<()> {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)).then_some(())
}

// === circuit breaker ===

/// How the sliding window counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WindowType {
    /// The last `slidingWindowSize` calls.
    #[default]
    CountBased,
    /// The calls of the last `slidingWindowSize` seconds.
    TimeBased,
}

/// An outcome that may count as a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FailureKind {
    /// A 5xx answer.
    ServerError,
    /// A 4xx answer (not a failure by default: the caller's fault, not the upstream's).
    ClientError,
    /// The connection could not be made or broke.
    ConnectError,
    /// No answer in time.
    Timeout,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct BreakerConfig {
    pub sliding_window_type: WindowType,
    /// Calls (count-based) or seconds (time-based).
    pub sliding_window_size: u32,
    /// No decision before this many calls are in the window.
    pub minimum_number_of_calls: u32,
    /// Percent of failed calls at which the breaker opens.
    pub failure_rate_threshold: f32,
    /// Percent of slow calls at which the breaker opens.
    pub slow_call_rate_threshold: f32,
    #[serde(with = "humantime_serde")]
    pub slow_call_duration_threshold: Duration,
    #[serde(with = "humantime_serde")]
    pub wait_duration_in_open_state: Duration,
    pub permitted_number_of_calls_in_half_open_state: u32,
    /// How long HALF_OPEN may wait for its probes before opening again; zero waits for all of them.
    #[serde(with = "humantime_serde")]
    pub max_wait_duration_in_half_open_state: Duration,
    /// What counts as a failure.
    pub record_failures: Vec<FailureKind>,
}

impl Default for BreakerConfig {
    /// resilience4j's defaults.
    fn default() -> Self {
        BreakerConfig {
            sliding_window_type: WindowType::CountBased,
            sliding_window_size: 100,
            minimum_number_of_calls: 100,
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration_threshold: Duration::from_secs(60),
            wait_duration_in_open_state: Duration::from_secs(60),
            permitted_number_of_calls_in_half_open_state: 10,
            max_wait_duration_in_half_open_state: Duration::ZERO,
            record_failures: vec![FailureKind::ServerError, FailureKind::ConnectError, FailureKind::Timeout],
        }
    }
}

/// Largest window: count-based windows keep one byte per call.
pub const MAX_WINDOW: u32 = 100_000;
/// Largest number of half-open probes (they are counted in 11-bit fields).
pub const MAX_HALF_OPEN_CALLS: u32 = 2_000;

impl BreakerConfig {
    /// Adds this policy's problems to `v`, fields under `at` (e.g. `trafficPolicy.circuitBreaker`).
    pub fn check(&self, v: &mut Violations, at: &str) {
        let mut out: Vec<(&str, String)> = Vec::new();
        let max_window = match self.sliding_window_type {
            WindowType::CountBased => MAX_WINDOW,
            WindowType::TimeBased => 3_600,
        };
        if self.sliding_window_size == 0 || self.sliding_window_size > max_window {
            out.push(("slidingWindowSize", format!("must be between 1 and {max_window}")));
        }
        if self.minimum_number_of_calls == 0 {
            out.push(("minimumNumberOfCalls", "must be at least 1".to_string()));
        }
        for (field, value) in [
            ("failureRateThreshold", self.failure_rate_threshold),
            ("slowCallRateThreshold", self.slow_call_rate_threshold),
        ] {
            if !(value > 0.0 && value <= 100.0) {
                out.push((field, "must be a percentage above 0 and at most 100".to_string()));
            }
        }
        if self.permitted_number_of_calls_in_half_open_state == 0
            || self.permitted_number_of_calls_in_half_open_state > MAX_HALF_OPEN_CALLS
        {
            out.push(("permittedNumberOfCallsInHalfOpenState", format!("must be between 1 and {MAX_HALF_OPEN_CALLS}")));
        }
        if self.wait_duration_in_open_state.is_zero() {
            out.push(("waitDurationInOpenState", "must be positive".to_string()));
        }
        for (field, why) in out {
            v.add(format!("{at}.{field}"), why);
        }
    }

    pub fn counts_as_failure(&self, kind: FailureKind) -> bool {
        self.record_failures.contains(&kind)
    }
}

// === outlier detection ===

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct OutlierConfig {
    pub enabled: bool,
    /// 0 turns this detector off.
    pub consecutive_5xx: u32,
    /// 0 turns this detector off.
    pub consecutive_gateway_failure: u32,
    #[serde(with = "humantime_serde")]
    pub base_ejection_time: Duration,
    #[serde(with = "humantime_serde")]
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    /// Envoy's defaults.
    fn default() -> Self {
        OutlierConfig {
            enabled: true,
            consecutive_5xx: 5,
            consecutive_gateway_failure: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    }
}

impl OutlierConfig {
    pub fn check(&self, v: &mut Violations, at: &str) {
        if self.max_ejection_percent > 100 {
            v.add(format!("{at}.maxEjectionPercent"), "must be at most 100");
        }
        if self.enabled && self.base_ejection_time.is_zero() {
            v.add(format!("{at}.baseEjectionTime"), "must be positive");
        }
    }
}

// === retries ===

/// Retries of safe requests (GET, HEAD, OPTIONS, and requests carrying an `Idempotency-Key`),
/// bounded by a budget so retries cannot multiply load on a struggling service (as linkerd's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Tries in all, the first included (1 = no retry).
    pub max_attempts: u32,
    /// What is retried.
    pub retry_on: Vec<FailureKind>,
    /// Timeout of each try; default: the whole request's timeout.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Retries may add this percent of the requests...
    pub budget_percent: f32,
    /// ...plus this many per second.
    pub min_retries_per_second: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            retry_on: vec![FailureKind::ConnectError, FailureKind::ServerError],
            per_try_timeout: None,
            budget_percent: 20.0,
            min_retries_per_second: 10,
        }
    }
}

impl RetryPolicy {
    pub fn check(&self, v: &mut Violations, at: &str) {
        if self.max_attempts == 0 || self.max_attempts > 10 {
            v.add(format!("{at}.maxAttempts"), "must be between 1 and 10");
        }
        if !(0.0..=1000.0).contains(&self.budget_percent) {
            v.add(format!("{at}.budgetPercent"), "must be between 0 and 1000");
        }
        if self.per_try_timeout.is_some_and(|t| t.is_zero()) {
            v.add(format!("{at}.perTryTimeout"), "must be positive");
        }
    }
}

// === fallback ===

/// What a caller gets instead of a 503 while the breaker is open.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type", deny_unknown_fields)]
pub enum Fallback {
    /// A fixed response.
    Static {
        #[serde(default = "ok_status")]
        status: u16,
        #[serde(default)]
        headers: BTreeMap<String, String>,
        /// Sent as JSON.
        #[serde(default)]
        body: serde_json::Value,
    },
    /// The same request to another service.
    Service {
        #[serde(rename = "serviceId")]
        service_id: String,
    },
}

fn ok_status() -> u16 {
    200
}

impl Fallback {
    pub fn check(&self, v: &mut Violations, at: &str) {
        match self {
            Fallback::Static { status, headers, .. } => {
                if !(100..=599).contains(status) {
                    v.add(format!("{at}.status"), "must be an HTTP status (100-599)");
                }
                for name in headers.keys() {
                    if name.is_empty() || http_header_name(name).is_none() {
                        v.add(format!("{at}.headers.{name}"), "is not a header name");
                    }
                }
            }
            Fallback::Service { service_id } => {
                if !crate::registry::is_valid_id(service_id) {
                    v.add(format!("{at}.serviceId"), "is not a valid service id");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_reads_from_json_with_defaults_and_names_bad_fields() {
        let p: TrafficPolicy = serde_json::from_value(serde_json::json!({
            "loadBalancer": {"policy": "RING_HASH"},
            "circuitBreaker": {"failureRateThreshold": 150, "waitDurationInOpenState": "5s"},
            "fallback": {"type": "static", "status": 200, "body": {"cached": true}}
        }))
        .expect("parses");
        assert_eq!(p.circuit_breaker.wait_duration_in_open_state, Duration::from_secs(5));
        assert_eq!(p.circuit_breaker.minimum_number_of_calls, 100, "resilience4j default");
        let mut v = Violations::default();
        p.check(&mut v, "trafficPolicy");
        let fields: Vec<_> = v.finish().expect_err("bad").0.into_iter().map(|f| f.field).collect();
        assert_eq!(
            fields,
            ["trafficPolicy.loadBalancer.hashHeader", "trafficPolicy.circuitBreaker.failureRateThreshold"]
        );
        assert!(serde_json::from_value::<TrafficPolicy>(serde_json::json!({"retries": 3})).is_err(), "unknown field");
    }
}
