//! A breaker's policy, with resilience4j's names and defaults, as it travels in the config stream
//! (JSON, camelCase) and as operators write it on a service.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// The problems with this policy, as (field, why).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
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
        out
    }

    pub fn counts_as_failure(&self, kind: FailureKind) -> bool {
        self.record_failures.contains(&kind)
    }
}
