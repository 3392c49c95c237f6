//! Load balancing over one upstream service's endpoints. A [`Balancer`] is built from a config
//! version (immutable; the proxy swaps in a new one when the config changes) and picks an endpoint
//! per request without a lock. Ejected endpoints (outlier detection) are skipped.
//!
//! - `endpoint`: an endpoint and its live stats (in flight, peak-EWMA latency, ejection).
//! - `round_robin`, `weighted`, `random`, `p2c`, `ring_hash`: the policies, each a pick over a
//!   subset of the endpoints.
//! - zone awareness (here): with `zoneAware`, endpoints in this node's region and zone are
//!   preferred while one of them is available, as Envoy's zone-aware routing does in spirit.

mod endpoint;
mod p2c;
mod ring_hash;
mod weighted;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub use endpoint::{Endpoint, EndpointSpec};
pub use reskflow_proto::policy::{LbConfig, LbPolicy};
use ring_hash::Ring;

/// Where this data plane runs (for zone awareness).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality {
    pub region: String,
    pub zone: String,
}

/// The endpoints of one subset (all, or the local zone) and what the policies precompute for it.
#[derive(Debug, Default)]
struct Subset {
    members: Vec<u32>,
    /// Weighted: a smooth weighted round-robin schedule of member positions.
    schedule: Vec<u32>,
}

#[derive(Debug)]
pub struct Balancer {
    config: LbConfig,
    endpoints: Vec<Arc<Endpoint>>,
    all: Subset,
    local: Subset,
    ring: Option<Ring>,
    next: AtomicUsize,
}

/// What a pick may look at in the request.
#[derive(Debug, Clone, Copy, Default)]
pub struct PickContext<'a> {
    /// The value of the hash header, for RING_HASH.
    pub hash_key: Option<&'a [u8]>,
    /// Now, in ms on the data plane's clock (to skip ejected endpoints).
    pub now_ms: u64,
}

impl Balancer {
    /// Builds a balancer over `specs`. Endpoints `previous` already knew keep their stats.
    pub fn new(config: LbConfig, specs: &[EndpointSpec], locality: &Locality, previous: Option<&Balancer>) -> Balancer {
        let known: HashMap<&str, &Arc<Endpoint>> =
            previous.map(|p| p.endpoints.iter().map(|e| (e.spec.id.as_str(), e)).collect()).unwrap_or_default();
        let endpoints: Vec<Arc<Endpoint>> = specs
            .iter()
            .map(|spec| match known.get(spec.id.as_str()) {
                Some(e) if e.spec == *spec => Arc::clone(e),
                _ => Arc::new(Endpoint::new(spec.clone())),
            })
            .collect();
        let subset = |members: Vec<u32>| {
            let schedule = if config.policy == LbPolicy::Weighted {
                weighted::schedule(&members.iter().map(|&i| endpoints[i as usize].spec.weight).collect::<Vec<_>>())
            } else {
                Vec::new()
            };
            Subset { members, schedule }
        };
        let all = subset((0..endpoints.len() as u32).collect());
        let local = if config.zone_aware && !locality.zone.is_empty() {
            subset(
                (0..endpoints.len() as u32)
                    .filter(|&i| {
                        let s = &endpoints[i as usize].spec;
                        s.zone == locality.zone && (locality.region.is_empty() || s.region == locality.region)
                    })
                    .collect(),
            )
        } else {
            Subset::default()
        };
        let ring = (config.policy == LbPolicy::RingHash).then(|| Ring::new(&endpoints));
        Balancer { config, endpoints, all, local, ring, next: AtomicUsize::new(0) }
    }

    pub fn config(&self) -> &LbConfig {
        &self.config
    }

    pub fn endpoints(&self) -> &[Arc<Endpoint>] {
        &self.endpoints
    }

    /// An endpoint for a request, None when there is none. When every endpoint is ejected, all of
    /// them are used as if none were (Envoy's panic routing): ejecting everything would turn a
    /// partial failure into a total one.
    pub fn pick(&self, cx: PickContext<'_>) -> Option<&Arc<Endpoint>> {
        // At the end of time nothing is ejected.
        self.pick_at(cx.hash_key, cx.now_ms).or_else(|| self.pick_at(cx.hash_key, u64::MAX))
    }

    fn pick_at(&self, hash_key: Option<&[u8]>, now_ms: u64) -> Option<&Arc<Endpoint>> {
        if let (Some(ring), Some(key)) = (&self.ring, hash_key) {
            return ring.pick(&self.endpoints, key, now_ms);
        }
        if !self.local.members.is_empty() {
            if let Some(found) = self.pick_in(&self.local, now_ms) {
                return Some(found);
            }
        }
        self.pick_in(&self.all, now_ms)
    }

    fn pick_in(&self, subset: &Subset, now_ms: u64) -> Option<&Arc<Endpoint>> {
        let members = &subset.members;
        if members.is_empty() {
            return None;
        }
        let available = |i: u32| {
            let e = &self.endpoints[i as usize];
            (!e.ejected(now_ms)).then_some(e)
        };
        let n = members.len();
        match self.config.policy {
            LbPolicy::LeastRequest => p2c::pick(&self.endpoints, members, now_ms),
            LbPolicy::Weighted => {
                let schedule = &subset.schedule;
                let start = self.next.fetch_add(1, Ordering::Relaxed);
                (0..schedule.len())
                    .find_map(|k| available(members[schedule[(start + k) % schedule.len()] as usize]))
                    .or_else(|| first_available(members, 0, &available))
            }
            LbPolicy::RoundRobin => first_available(members, self.next.fetch_add(1, Ordering::Relaxed) % n, &available),
            LbPolicy::Random | LbPolicy::RingHash => first_available(members, fastrand::usize(..n), &available),
        }
    }

    /// Endpoints not ejected now.
    pub fn available(&self, now_ms: u64) -> usize {
        self.endpoints.iter().filter(|e| !e.ejected(now_ms)).count()
    }
}

/// The first available member from position `start` on, wrapping around.
fn first_available<'a>(
    members: &[u32],
    start: usize,
    available: &impl Fn(u32) -> Option<&'a Arc<Endpoint>>,
) -> Option<&'a Arc<Endpoint>> {
    let n = members.len();
    (0..n).find_map(|k| available(members[(start + k) % n]))
}

#[cfg(test)]
mod tests;
