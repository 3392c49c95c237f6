//! The live routing table: per upstream service, its balancer, breaker, outlier detector, retry
//! budget and counters, built from a config version and swapped in atomically (arc-swap), so the
//! request path reads it without a lock. What must outlive a version does: endpoint stats (by
//! instance), the breaker while its policy is unchanged, the counters always.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use reskflow_proto::dataplane::DataPlaneConfig;
use reskflow_proto::policy::TrafficPolicy;
use serde::Serialize;

use crate::balance::{Balancer, Locality};
use crate::breaker::{Breaker, Metrics};
use crate::health::outlier::OutlierDetector;
use crate::retry_budget::RetryBudget;

/// Counters of one upstream since the sidecar started.
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub requests: AtomicU64,
    pub responses_2xx: AtomicU64,
    pub responses_3xx: AtomicU64,
    pub responses_4xx: AtomicU64,
    pub responses_5xx: AtomicU64,
    /// Connect errors, resets and timeouts (the caller got a 502/504 from the sidecar).
    pub upstream_errors: AtomicU64,
    pub retries: AtomicU64,
    pub breaker_rejections: AtomicU64,
    pub fallbacks: AtomicU64,
    pub no_endpoint: AtomicU64,
    pub ejections: AtomicU64,
}

impl Stats {
    pub fn count_status(&self, status: u16) {
        let counter = match status {
            200..=299 => &self.responses_2xx,
            300..=399 => &self.responses_3xx,
            400..=499 => &self.responses_4xx,
            _ => &self.responses_5xx,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct Upstream {
    pub service: String,
    pub policy: TrafficPolicy,
    pub balancer: Balancer,
    pub breaker: Arc<Breaker>,
    pub outlier: OutlierDetector,
    pub budget: Arc<RetryBudget>,
    pub stats: Arc<Stats>,
    breaker_reset: u64,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("service", &self.service).finish_non_exhaustive()
    }
}

/// One config version, ready for the request path.
#[derive(Default)]
pub struct Table {
    pub config: DataPlaneConfig,
    /// Looked up on every request: seeded fast hashing of the service name.
    pub upstreams: HashMap<String, Arc<Upstream>, foldhash::fast::RandomState>,
    /// Where the config came from: "control-plane", "disk", or "" before any.
    pub source: &'static str,
}

/// Checks and installs what a config holds beyond upstreams (the gateway's routes) just before the
/// upstreams are installed; an error refuses the whole config (NACK).
pub type ApplyHook = Box<dyn Fn(&DataPlaneConfig) -> Result<(), String> + Send + Sync>;

pub struct Upstreams {
    table: ArcSwap<Table>,
    hook: Option<ApplyHook>,
    locality: Locality,
    /// Counters by service, kept across versions (and across a service's absence).
    stats: Mutex<HashMap<String, Arc<Stats>>>,
}

fn budget(policy: &TrafficPolicy) -> RetryBudget {
    let r = &policy.retry;
    RetryBudget::new(f64::from(r.budget_percent) / 100.0, r.min_retries_per_second)
}

impl Upstreams {
    pub fn new(locality: Locality) -> Upstreams {
        Upstreams { table: ArcSwap::from_pointee(Table::default()), hook: None, locality, stats: Mutex::default() }
    }

    pub fn with_hook(locality: Locality, hook: ApplyHook) -> Upstreams {
        Upstreams { hook: Some(hook), ..Upstreams::new(locality) }
    }

    pub fn table(&self) -> Arc<Table> {
        self.table.load_full()
    }

    pub fn get(&self, service: &str) -> Option<Arc<Upstream>> {
        self.table.load().upstreams.get(service).cloned()
    }

    pub fn version(&self) -> u64 {
        self.table.load().config.version
    }

    /// Checks and installs a config; Err (the reason, for a NACK) leaves the current one in place.
    pub fn apply(&self, config: DataPlaneConfig, source: &'static str) -> Result<(), String> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        if let Some(hook) = &self.hook {
            hook(&config)?;
        }
        let old = self.table.load_full();
        let mut stats = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut upstreams = HashMap::with_capacity_and_hasher(config.services.len(), Default::default());
        for (service, spec) in &config.services {
            let previous = old.upstreams.get(service);
            let balancer = Balancer::new(
                spec.policy.load_balancer.clone(),
                &spec.endpoints,
                &self.locality,
                previous.map(|p| &p.balancer),
            );
            let breaker = match previous {
                Some(p) if p.policy.circuit_breaker == spec.policy.circuit_breaker => p.breaker.clone(),
                _ => Arc::new(Breaker::new(spec.policy.circuit_breaker.clone())),
            };
            if previous.is_some_and(|p| spec.breaker_reset > p.breaker_reset) {
                tracing::info!(%service, "circuit breaker reset by an operator");
                breaker.reset();
            }
            let budget = match previous {
                Some(p) if p.policy.retry == spec.policy.retry => p.budget.clone(),
                _ => Arc::new(budget(&spec.policy)),
            };
            upstreams.insert(
                service.clone(),
                Arc::new(Upstream {
                    service: service.clone(),
                    policy: spec.policy.clone(),
                    balancer,
                    breaker,
                    outlier: OutlierDetector::new(spec.policy.outlier_detection.clone()),
                    budget,
                    stats: stats.entry(service.clone()).or_default().clone(),
                    breaker_reset: spec.breaker_reset,
                }),
            );
        }
        drop(stats);
        self.table.store(Arc::new(Table { config, upstreams, source }));
        Ok(())
    }

    /// Breaker metrics by service (what the sidecar reports).
    pub fn breakers(&self) -> HashMap<String, Metrics> {
        self.table.load().upstreams.iter().map(|(id, u)| (id.clone(), u.breaker.metrics())).collect()
    }
}
