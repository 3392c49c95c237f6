//! Circuit breakers with resilience4j's semantics and names, one per upstream service.
//!
//! - `config`: the policy (window, thresholds, waits, what counts as a failure) and its checks.
//! - `window`: the lock-free sliding window (count- or time-based) of a CLOSED breaker.
//! - `state`: the lock-free state machine: admission (`try_acquire`), outcomes (`record`), manual
//!   transitions and metrics.

mod config;
mod state;
mod window;

pub use config::{BreakerConfig, FailureKind, WindowType};
pub use state::{Breaker, Metrics, Outcome, Permit, Rejected, State};
pub use window::Snapshot;
