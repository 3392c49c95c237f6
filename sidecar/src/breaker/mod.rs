//! Circuit breakers with resilience4j's semantics and names, one per upstream service.
//!
//! The policy (window, thresholds, waits, what counts as a failure) is
//! `reskflow_proto::policy::BreakerConfig`: it travels in the config stream.
//!
//! - `window`: the lock-free sliding window (count- or time-based) of a CLOSED breaker.
//! - `state`: the lock-free state machine: admission (`try_acquire`), outcomes (`record`), manual
//!   transitions and metrics.

mod state;
mod window;

pub use reskflow_proto::policy::{BreakerConfig, FailureKind, WindowType, MAX_HALF_OPEN_CALLS, MAX_WINDOW};
pub use state::{Breaker, Metrics, Outcome, Permit, Rejected, State};
pub use window::Snapshot;
