//! Config for data planes: what a sidecar or gateway needs of the registry, built from this
//! replica's in-memory state. The stream itself (hello, ACK/NACK, reports) is `api::config`.
//!
//! A client's config is rebuilt whenever the registry version moves and sent only when it differs
//! from what the client was sent last, so unrelated changes cost the client nothing.

use std::collections::BTreeMap;

use reskflow_proto::dataplane::{DataPlaneConfig, EndpointSpec, Upstream};
use reskflow_proto::registry::HealthStatus;

use crate::registry::state::RegistryState;

/// What a client asked for in its hello.
#[derive(Debug, Clone, Default)]
pub struct Wanted {
    pub all: bool,
    pub services: Vec<String>,
    /// Gateways get the routes too.
    pub routes: bool,
}

impl Wanted {
    fn wants(&self, id: &str) -> bool {
        self.all || self.services.iter().any(|s| s == id)
    }
}

/// The config of a client that wants `wanted`, at the state's version. Services it names that do
/// not exist (yet) are absent: the client answers their calls with 503 until they appear.
pub fn build(state: &RegistryState, wanted: &Wanted) -> DataPlaneConfig {
    let mut services = BTreeMap::new();
    for (id, entry) in &state.services {
        if !wanted.wants(id) {
            continue;
        }
        let endpoints = entry
            .instances
            .values()
            .filter(|i| matches!(i.status, HealthStatus::Passing | HealthStatus::Warning))
            .map(|i| EndpointSpec {
                id: i.id.clone(),
                address: i.address.clone(),
                port: i.port,
                scheme: if i.scheme.is_empty() { "http".into() } else { i.scheme.clone() },
                weight: i.weight.max(1),
                region: i.region.clone(),
                zone: i.zone.clone(),
            })
            .collect();
        let policy = entry.service.traffic_policy.as_deref().cloned().unwrap_or_default();
        services.insert(id.clone(), Upstream { endpoints, policy, breaker_reset: entry.breaker_reset });
    }
    let routes = if wanted.routes { state.routes.values().map(|r| (**r).clone()).collect() } else { Vec::new() };
    DataPlaneConfig { version: state.version, services, routes }
}
