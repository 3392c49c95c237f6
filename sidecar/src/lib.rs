//! The ReskFlow data plane: what decides, per request, where a call goes and whether it may go.
//! The sidecar, the gateway's proxy and the workflow engine's step calls all use it, so there is
//! one implementation of each mechanism.
//!
//! - `balance`: endpoints with live stats, and the load-balancing policies (round robin, weighted,
//!   random, least request by P2C on peak-EWMA, ring hash, zone-aware preference).
//! - `breaker`: lock-free circuit breakers with resilience4j's semantics.
//! - `health::outlier`: passive outlier detection and ejection, as Envoy's.
//! - `clock`: the cheap monotonic millisecond clock they share.
//! - `client`: HTTP/1.1 connections pooled per endpoint.
//! - `server`: the HTTP server (its own HTTP/1.1 connection loop; HTTP/2 through hyper).
//! - `retry_budget`: the lock-free retry budget.
//! - `routing`: gateway route matching (path normalization, most specific route).
//!
//! The sidecar binary:
//!
//! - `config`: its settings (environment, TOML).
//! - `upstreams`: the live routing table built from each config version.
//! - `config_watch`: the config stream client (ACK/NACK, reports, reconnects, saved config).
//! - `proxy`: the outbound proxy, top to bottom.
//! - `registration`: registering, heartbeating and deregistering the instance.
//! - `admin`: readiness, Prometheus metrics, config dump.
//! - `run`: wires them together.

pub mod admin;
pub mod balance;
pub mod breaker;
pub mod client;
pub mod clock;
pub mod config;
pub mod config_watch;
pub mod fields;
pub mod health;
pub mod proxy;
pub mod registration;
pub mod retry_budget;
pub mod routing;
pub mod run;
pub mod server;
pub mod upstreams;
