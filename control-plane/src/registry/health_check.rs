//! Active health checking. One replica at a time (the holder of the `health-checks` lease; on SQLite
//! the only process) runs a probe task per checked instance, so a slow or hanging instance delays
//! only its own probe, never another's or the API. A sweep on the same replica expires TTL checks
//! whose heartbeats stopped and deregisters instances critical for longer than their limit.
//!
//! Results become a status through consecutive thresholds:
//! `passing --failureThreshold x (warning|critical)--> warning|critical --successThreshold x passing--> passing`
//! HTTP: 2xx passing, 429 warning, anything else critical (as Consul). TCP: connect. gRPC:
//! `grpc.health.v1.Health/Check` answers SERVING.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use reskflow_proto::registry::{CheckKind, HealthCheck, HealthStatus, Instance};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{health_check_response::ServingStatus, HealthCheckRequest};
use tracing::{debug, info, warn, Instrument};

use super::Registry;
use crate::store::Backend;

const LEASE: &str = "health-checks";

#[derive(Debug, Clone)]
pub struct MonitorOptions {
    /// Who holds the lease (unique per replica).
    pub node_id: String,
    /// How long the lease lasts without renewal: the longest a dead checker goes unnoticed.
    pub lease_ttl: Duration,
    /// How often TTL expiry and deregistration are checked.
    pub sweep_interval: Duration,
}

impl Default for MonitorOptions {
    fn default() -> Self {
        MonitorOptions {
            node_id: uuid::Uuid::new_v4().to_string(),
            lease_ttl: Duration::from_secs(10),
            sweep_interval: Duration::from_millis(500),
        }
    }
}

// === Tally: consecutive results -> status ===

/// Counts consecutive results that differ from the current status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    streak: Option<(HealthStatus, u32)>,
}

impl Tally {
    /// Feeds one result; returns the new status when a threshold is reached.
    pub fn observe(
        &mut self,
        current: HealthStatus,
        result: HealthStatus,
        check: &HealthCheck,
    ) -> Option<HealthStatus> {
        if result == current {
            self.streak = None;
            return None;
        }
        let count = match self.streak {
            Some((r, n)) if r == result => n + 1,
            _ => 1,
        };
        let needed = if result == HealthStatus::Passing { check.success_threshold } else { check.failure_threshold };
        if count >= needed.max(1) {
            self.streak = None;
            Some(result)
        } else {
            self.streak = Some((result, count));
            None
        }
    }
}

// === probes ===

/// What a probe task was started for; a change restarts it.
#[derive(Debug, Clone, PartialEq)]
struct ProbeSpec {
    address: String,
    port: u16,
    scheme: String,
    check: HealthCheck,
}

impl ProbeSpec {
    fn host(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]", self.address)
        } else {
            self.address.clone()
        }
    }
}

fn describe(err: &reqwest::Error, timeout: Duration) -> String {
    if err.is_timeout() {
        format!("timed out after {}", humantime::format_duration(timeout))
    } else if err.is_connect() {
        "connection failed".into()
    } else {
        let mut source: &dyn std::error::Error = err;
        while let Some(next) = source.source() {
            source = next;
        }
        source.to_string()
    }
}

async fn probe_http(spec: &ProbeSpec, http: &reqwest::Client) -> (HealthStatus, String) {
    let scheme = if spec.scheme == "https" { "https" } else { "http" };
    let url = format!("{scheme}://{}:{}{}", spec.host(), spec.port, spec.check.path);
    let method = reqwest::Method::from_bytes(spec.check.method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let label = format!("HTTP {method} {url}");
    match http.request(method, &url).timeout(spec.check.timeout).send().await {
        Ok(response) => {
            let code = response.status();
            let status = if code.is_success() {
                HealthStatus::Passing
            } else if code.as_u16() == 429 {
                HealthStatus::Warning
            } else {
                HealthStatus::Critical
            };
            (status, format!("{label}: {code}"))
        }
        Err(err) => (HealthStatus::Critical, format!("{label}: {}", describe(&err, spec.check.timeout))),
    }
}

async fn probe_tcp(spec: &ProbeSpec) -> (HealthStatus, String) {
    let target = format!("{}:{}", spec.host(), spec.port);
    match tokio::time::timeout(spec.check.timeout, tokio::net::TcpStream::connect(&target)).await {
        Ok(Ok(_)) => (HealthStatus::Passing, format!("TCP connect {target}: success")),
        Ok(Err(err)) => (HealthStatus::Critical, format!("TCP connect {target}: {err}")),
        Err(_) => (
            HealthStatus::Critical,
            format!("TCP connect {target}: timed out after {}", humantime::format_duration(spec.check.timeout)),
        ),
    }
}

async fn probe_grpc(spec: &ProbeSpec, client: &mut Option<HealthClient<Channel>>) -> (HealthStatus, String) {
    let label = format!("gRPC health {}:{} service '{}'", spec.host(), spec.port, spec.check.grpc_service);
    if client.is_none() {
        let scheme = if spec.scheme == "https" { "https" } else { "http" };
        match Endpoint::from_shared(format!("{scheme}://{}:{}", spec.host(), spec.port)) {
            Ok(endpoint) => {
                *client = Some(HealthClient::new(endpoint.connect_timeout(spec.check.timeout).connect_lazy()));
            }
            Err(err) => return (HealthStatus::Critical, format!("{label}: {err}")),
        }
    }
    let Some(health) = client.as_mut() else {
        return (HealthStatus::Critical, format!("{label}: no client"));
    };
    let mut request = tonic::Request::new(HealthCheckRequest { service: spec.check.grpc_service.clone() });
    request.set_timeout(spec.check.timeout);
    match tokio::time::timeout(spec.check.timeout, health.check(request)).await {
        Ok(Ok(reply)) => {
            let serving = reply.into_inner().status();
            let status = if serving == ServingStatus::Serving { HealthStatus::Passing } else { HealthStatus::Critical };
            (status, format!("{label}: {}", serving.as_str_name()))
        }
        Ok(Err(status)) => (HealthStatus::Critical, format!("{label}: {} {}", status.code(), status.message())),
        Err(_) => (
            HealthStatus::Critical,
            format!("{label}: timed out after {}", humantime::format_duration(spec.check.timeout)),
        ),
    }
}

async fn probe_loop(registry: Registry, instance_id: String, spec: ProbeSpec, http: reqwest::Client) {
    let mut tally = Tally::default();
    let mut grpc = None;
    // Spread the first probes of many instances registered together.
    let spread = spec.check.interval.min(Duration::from_millis(200));
    let first = Duration::from_millis(rand::rng().random_range(0..=spread.as_millis() as u64));
    tokio::time::sleep(first).await;
    loop {
        let started = Instant::now();
        let (result, output) = match spec.check.kind {
            CheckKind::Http => probe_http(&spec, &http).await,
            CheckKind::Tcp => probe_tcp(&spec).await,
            CheckKind::Grpc => probe_grpc(&spec, &mut grpc).await,
            CheckKind::Ttl | CheckKind::None => return,
        };
        let Some(current) = registry.read().instance(&instance_id).map(|i| (**i).clone()) else {
            return;
        };
        let at = Utc::now();
        let next = tally.observe(current.status, result, &spec.check);
        let status = next.unwrap_or(current.status);
        // While a threshold is still being counted, the stored output keeps describing the status.
        let output = if status == result { output } else { current.status_output.clone() };
        match registry.set_health(&current, status, output, at).await {
            Ok(updated) if next.is_some() => {
                info!(instance_id = %instance_id, status = status.as_str(), output = %updated.status_output, "health changed")
            }
            Ok(_) => {}
            Err(err) => warn!(instance_id = %instance_id, error = %err, "cannot record health"),
        }
        tokio::time::sleep_until(started + spec.check.interval).await;
    }
}

// === the monitor ===

struct Probe {
    spec: ProbeSpec,
    handle: AbortHandle,
}

fn wanted_probes(registry: &Registry) -> HashMap<String, ProbeSpec> {
    let state = registry.read();
    state
        .instances()
        .filter_map(|(entry, instance)| {
            let check = entry.service.health_check.as_ref()?;
            matches!(check.kind, CheckKind::Http | CheckKind::Tcp | CheckKind::Grpc).then(|| {
                let spec = ProbeSpec {
                    address: instance.address.clone(),
                    port: instance.port,
                    scheme: instance.scheme.clone(),
                    check: check.clone(),
                };
                (instance.id.clone(), spec)
            })
        })
        .collect()
}

fn reconcile(
    registry: &Registry,
    probes: &mut HashMap<String, Probe>,
    tasks: &mut JoinSet<()>,
    http: &reqwest::Client,
) {
    let wanted = wanted_probes(registry);
    probes.retain(|id, probe| {
        let keep = wanted.get(id) == Some(&probe.spec) && !probe.handle.is_finished();
        if !keep {
            probe.handle.abort();
        }
        keep
    });
    for (id, spec) in wanted {
        if probes.contains_key(&id) {
            continue;
        }
        let span = tracing::info_span!("probe", instance_id = %id);
        let handle = tasks.spawn(probe_loop(registry.clone(), id.clone(), spec.clone(), http.clone()).instrument(span));
        probes.insert(id, Probe { spec, handle });
    }
}

/// TTL expiry, deregistration of long-critical instances, and instances of unchecked services.
async fn sweep(registry: &Registry) {
    let now = Utc::now();
    let has_ttl = registry.read().instances().any(|(e, _)| e.service.check_kind() == CheckKind::Ttl);
    let heartbeats = if has_ttl {
        match registry.store().heartbeats().await {
            Ok(h) => h,
            Err(err) => {
                warn!(error = %err, "cannot read heartbeats");
                return;
            }
        }
    } else {
        HashMap::new()
    };
    let mut updates: Vec<(Instance, HealthStatus, String)> = Vec::new();
    let mut deregister: Vec<(String, String)> = Vec::new();
    {
        let state = registry.read();
        for (entry, instance) in state.instances() {
            let check = entry.service.health_check.as_ref();
            match check.map(|c| c.kind) {
                None | Some(CheckKind::None) if instance.status != HealthStatus::Passing => {
                    updates.push(((**instance).clone(), HealthStatus::Passing, "no health check".into()));
                }
                Some(CheckKind::Ttl) => {
                    let ttl = check.and_then(|c| c.ttl).unwrap_or(Duration::from_secs(30));
                    let registered = instance.registered_at.map_or(0, |t| t.timestamp_millis());
                    let last = heartbeats.get(&instance.id).copied().unwrap_or(0).max(registered);
                    let silent = now.timestamp_millis() - last;
                    if instance.status != HealthStatus::Critical && silent > ttl.as_millis() as i64 {
                        let output = format!("ttl expired: no heartbeat for {}", humantime::format_duration(ttl));
                        updates.push(((**instance).clone(), HealthStatus::Critical, output));
                    }
                }
                _ => {}
            }
            if let (Some(after), HealthStatus::Critical, Some(since)) =
                (check.and_then(|c| c.deregister_critical_after), instance.status, instance.status_since)
            {
                if now.signed_duration_since(since).to_std().is_ok_and(|critical_for| critical_for > after) {
                    deregister.push((instance.id.clone(), instance.status_output.clone()));
                }
            }
        }
    }
    for (instance, status, output) in updates {
        if let Err(err) = registry.set_health(&instance, status, output, now).await {
            warn!(instance_id = %instance.id, error = %err, "cannot record health");
        } else {
            info!(instance_id = %instance.id, status = status.as_str(), "health changed");
        }
    }
    for (id, output) in deregister {
        match registry.deregister_instance(&id).await {
            Ok(()) => info!(instance_id = %id, last_output = %output, "critical for too long; deregistered"),
            Err(err) => debug!(instance_id = %id, error = %err, "cannot deregister"),
        }
    }
}

/// Runs until `shutdown`: holds (or waits for) the lease and, while holding it, checks every instance.
pub async fn run(registry: Registry, options: MonitorOptions, shutdown: CancellationToken) {
    let http = match reqwest::Client::builder()
        .user_agent("reskflow-health-check/1")
        .redirect(reqwest::redirect::Policy::limited(3))
        .build()
    {
        Ok(client) => client,
        Err(err) => {
            warn!(error = %err, "cannot build the health-check HTTP client; checks disabled");
            return;
        }
    };
    let single = registry.store().backend() == Backend::Sqlite;
    let mut leader = single;
    let mut probes: HashMap<String, Probe> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut sweep_tick = tokio::time::interval(options.sweep_interval);
    sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut versions = registry.inner.version.subscribe();
    let renew_every = options.lease_ttl / 3;
    let mut renewed_at: Option<Instant> = None;

    loop {
        let sweep_due = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = sweep_tick.tick() => true,
            changed = versions.changed() => {
                if changed.is_err() { break; }
                false
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
        };
        if !single && renewed_at.is_none_or(|at| at.elapsed() >= renew_every) {
            let was_leader = leader;
            leader = match registry.store().try_acquire_lease(LEASE, &options.node_id, options.lease_ttl).await {
                Ok(held) => held,
                Err(err) => {
                    warn!(error = %err, "cannot renew the health-check lease; pausing checks");
                    false
                }
            };
            renewed_at = Some(Instant::now());
            if leader != was_leader {
                info!(node_id = %options.node_id, leader, "health-check lease changed hands");
            }
        }
        if !leader {
            for probe in probes.values() {
                probe.handle.abort();
            }
            probes.clear();
            continue;
        }
        reconcile(&registry, &mut probes, &mut tasks, &http);
        if sweep_due {
            sweep(&registry).await;
        }
    }
    tasks.shutdown().await;
    if leader && !single {
        if let Err(err) = registry.store().release_lease(LEASE, &options.node_id).await {
            debug!(error = %err, "cannot release the health-check lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(success: u32, failure: u32) -> HealthCheck {
        let mut c = HealthCheck::of_kind(CheckKind::Http);
        c.success_threshold = success;
        c.failure_threshold = failure;
        c
    }

    use HealthStatus::*;

    #[test]
    fn a_status_changes_after_the_threshold_of_consecutive_results() {
        let c = check(2, 3);
        let mut t = Tally::default();
        assert_eq!(t.observe(Passing, Critical, &c), None);
        assert_eq!(t.observe(Passing, Critical, &c), None);
        assert_eq!(t.observe(Passing, Critical, &c), Some(Critical));
        assert_eq!(t.observe(Critical, Passing, &c), None);
        assert_eq!(t.observe(Critical, Passing, &c), Some(Passing));
    }

    #[test]
    fn a_result_matching_the_status_resets_the_count() {
        let c = check(1, 2);
        let mut t = Tally::default();
        assert_eq!(t.observe(Passing, Critical, &c), None);
        assert_eq!(t.observe(Passing, Passing, &c), None);
        assert_eq!(t.observe(Passing, Critical, &c), None);
        assert_eq!(t.observe(Passing, Warning, &c), None, "a different failure starts over");
        assert_eq!(t.observe(Passing, Warning, &c), Some(Warning));
    }

    #[test]
    fn thresholds_of_one_change_at_once() {
        let c = check(1, 1);
        let mut t = Tally::default();
        assert_eq!(t.observe(Critical, Passing, &c), Some(Passing));
        assert_eq!(t.observe(Passing, Warning, &c), Some(Warning));
    }
}
