//! What the data plane learns about endpoint health from its own traffic.
//!
//! - `outlier`: consecutive failures eject an endpoint for a while (Envoy's outlier detection).

pub mod outlier;
