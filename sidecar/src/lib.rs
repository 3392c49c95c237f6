//! The ReskFlow data plane: what decides, per request, where a call goes and whether it may go.
//! The sidecar, the gateway's proxy and the workflow engine's step calls all use it, so there is
//! one implementation of each mechanism.
//!
//! - `balance`: endpoints with live stats, and the load-balancing policies (round robin, weighted,
//!   random, least request by P2C on peak-EWMA, ring hash, zone-aware preference).
//! - `breaker`: lock-free circuit breakers with resilience4j's semantics.
//! - `health::outlier`: passive outlier detection and ejection, as Envoy's.
//! - `clock`: the cheap monotonic millisecond clock they share.

pub mod balance;
pub mod breaker;
pub mod clock;
pub mod health;
