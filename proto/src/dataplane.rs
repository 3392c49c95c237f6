//! What the control plane sends a data plane over the config stream: for each service it calls,
//! the endpoints to balance over (its healthy instances) and the service's traffic policy.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::TrafficPolicy;

/// A data plane's whole config at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DataPlaneConfig {
    pub version: u64,
    /// By service id.
    pub services: BTreeMap<String, Upstream>,
    /// The gateway's routes (sent to gateways only), by id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<crate::route::Route>,
}

/// One service a data plane calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Upstream {
    /// The instances to send traffic to (passing or warning).
    pub endpoints: Vec<EndpointSpec>,
    pub policy: TrafficPolicy,
    /// The version of the last operator reset of this service's breakers; a data plane resets its
    /// breaker when this grows.
    #[serde(default)]
    pub breaker_reset: u64,
}

/// An endpoint as the config stream describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSpec {
    /// The registry's instance id.
    pub id: String,
    pub address: String,
    pub port: u16,
    #[serde(default = "http")]
    pub scheme: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
}

fn http() -> String {
    "http".into()
}

fn one() -> u32 {
    1
}

impl DataPlaneConfig {
    /// The problems that make a data plane refuse this config (NACK), as text.
    pub fn problems(&self) -> Vec<String> {
        let mut v = crate::invalid::Violations::default();
        for (id, upstream) in &self.services {
            upstream.policy.check(&mut v, &format!("services.{id}.policy"));
            for (i, e) in upstream.endpoints.iter().enumerate() {
                if e.address.is_empty() || e.port == 0 {
                    v.add(format!("services.{id}.endpoints[{i}]"), "needs an address and a port");
                }
            }
        }
        match v.finish() {
            Ok(()) => Vec::new(),
            Err(invalid) => invalid.0.into_iter().map(|f| format!("{}: {}", f.field, f.description)).collect(),
        }
    }
}
