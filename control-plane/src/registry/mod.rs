//! The service registry: writes go to the store, reads come from memory.
//!
//! A write commits its rows and change-log entries in one transaction, then waits until this
//! replica's reader (`sync`) has applied its version, so a caller reads its own writes. Every replica
//! applies the same log in the same order, and watchers are fed from it.
//!
//! - `state`: the in-memory registry at one version.
//! - `sync`: applies the store's change log to the state and fans it out to watchers.
//! - `discovery`: load-balanced instance selection.
//! - `search`: list and search with cursor pages.
//! - `dependency_graph`: dependencies, dependents, cycles.
//! - `health_check`: active checks, TTL expiry and deregistration (on the lease-holding replica).

pub mod dependency_graph;
pub mod discovery;
pub mod health_check;
pub mod routes;
pub mod search;
pub mod state;
pub mod sync;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reskflow_proto::invalid::Invalid;
use reskflow_proto::registry::*;
use reskflow_proto::route::Route;
use tokio::sync::{broadcast, watch};

use crate::store::{ChangeRecord, Mutation, Store, StoreError};
use state::RegistryState;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    FailedPrecondition(String),
    /// Discovery found nothing to route to.
    #[error("no instance available: {why}")]
    NoInstance { service_id: String, why: String },
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for RegistryError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { kind, id } => RegistryError::NotFound { kind, id },
            StoreError::Conflict(msg) => RegistryError::Conflict(msg),
            StoreError::Unavailable(e) => RegistryError::Unavailable(format!("database unavailable: {e}")),
            other => RegistryError::Store(other),
        }
    }
}

/// What watchers receive: a committed change, or "start over" after this replica reloaded the state.
#[derive(Debug, Clone)]
pub enum Feed {
    Change(Arc<ChangeRecord>),
    Reset,
}

/// How long a write waits for this replica to apply its own change before giving up.
const APPLY_WAIT: Duration = Duration::from_secs(10);

/// Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    /// std lock: held only for in-memory reads and applies, never across `.await`.
    state: RwLock<RegistryState>,
    version: watch::Sender<u64>,
    feed: broadcast::Sender<Feed>,
    /// When this replica's checker last probed each instance (the stored value changes only with
    /// the status, to keep probes from writing on every interval).
    checked_at: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl Registry {
    /// Loads the registry from the store. Run [`sync::run`] beside it to follow later changes.
    pub async fn load(store: Store) -> Result<Self, RegistryError> {
        let snapshot = store.load_registry().await?;
        let version = snapshot.version;
        let state = RegistryState::from_snapshot(snapshot);
        let (version_tx, _) = watch::channel(version);
        let (feed, _) = broadcast::channel(8192);
        Ok(Registry {
            inner: Arc::new(Inner {
                store,
                state: RwLock::new(state),
                version: version_tx,
                feed,
                checked_at: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub(crate) fn read(&self) -> RwLockReadGuard<'_, RegistryState> {
        // A panic while holding the lock cannot leave the state half-applied (apply does not
        // panic), so a poisoned lock is still a consistent state.
        self.inner.state.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn version(&self) -> u64 {
        *self.inner.version.borrow()
    }

    /// Follows the version this replica has applied (it changes after each applied change).
    pub fn versions(&self) -> watch::Receiver<u64> {
        self.inner.version.subscribe()
    }

    /// Resets the circuit breakers of calls to `service_id` on every data plane: the reset is a
    /// change in the log, so every replica streams it to its clients. Returns its version.
    pub async fn reset_breaker(&self, service_id: &str) -> Result<u64, RegistryError> {
        let records = self.commit(Mutation::ResetBreaker(service_id.to_string())).await?;
        Ok(records.last().map_or(0, |r| r.seq))
    }

    /// The service an instance belongs to, if it is registered.
    pub fn service_of_instance(&self, id: &str) -> Option<String> {
        self.read().service_of(id).map(|entry| entry.service.id.clone())
    }

    /// Open Watch streams (subscribers of the change feed) on this replica.
    pub fn watchers(&self) -> usize {
        self.inner.feed.receiver_count()
    }

    /// Subscribes to changes, then returns the state the subscription starts after.
    pub fn subscribe(&self) -> (broadcast::Receiver<Feed>, Vec<Service>, Vec<Instance>, u64) {
        let rx = self.inner.feed.subscribe();
        let state = self.read();
        let services = state.services.values().map(|e| (*e.service).clone()).collect();
        let instances = state.instances().map(|(_, i)| self.with_checked_at(i)).collect();
        (rx, services, instances, state.version)
    }

    async fn commit(&self, mutation: Mutation) -> Result<Vec<ChangeRecord>, RegistryError> {
        let records = self.inner.store.apply(mutation).await?;
        if let Some(last) = records.last() {
            let mut rx = self.inner.version.subscribe();
            let applied = tokio::time::timeout(APPLY_WAIT, rx.wait_for(|v| *v >= last.seq)).await;
            if !matches!(applied, Ok(Ok(_))) {
                return Err(RegistryError::Unavailable(
                    "the change was stored but this replica has not applied it yet; retry the read".into(),
                ));
            }
        }
        Ok(records)
    }

    /// Creates or replaces gateway routes (all or none) after checking each and the table they make
    /// with the stored ones (`replace_all`: the list is the whole table). Returns them as stored.
    pub async fn put_routes(
        &self,
        routes: Vec<Route>,
        create_only: bool,
        replace_all: bool,
        single: bool,
    ) -> Result<Vec<Route>, RegistryError> {
        let routes = routes::normalize_all(routes, single)?;
        {
            let state = self.read();
            let mut table: std::collections::BTreeMap<&str, &Route> = if replace_all {
                Default::default()
            } else {
                state.routes.iter().map(|(id, r)| (id.as_str(), &**r)).collect()
            };
            for route in &routes {
                if create_only && table.contains_key(route.id.as_str()) {
                    return Err(RegistryError::Conflict(format!("route {} already exists", route.id)));
                }
                table.insert(&route.id, route);
            }
            routes::table_is_routable(&table)?;
        }
        let records = self.commit(Mutation::PutRoutes { routes, create_only, replace_all }).await?;
        Ok(records
            .into_iter()
            .filter_map(|r| match r.change {
                Change::RouteUpserted(route) => Some(route),
                _ => None,
            })
            .collect())
    }

    pub async fn delete_route(&self, id: &str) -> Result<(), RegistryError> {
        self.commit(Mutation::DeleteRoute(id.to_string())).await?;
        Ok(())
    }

    /// Every route, by id.
    pub fn list_routes(&self) -> Vec<Route> {
        self.read().routes.values().map(|r| (**r).clone()).collect()
    }

    pub fn get_route(&self, id: &str) -> Result<Route, RegistryError> {
        self.read().routes.get(id).map(|r| (**r).clone()).ok_or_else(|| not_found("route", id))
    }

    fn with_checked_at(&self, instance: &Instance) -> Instance {
        let mut copy = instance.clone();
        let checked = self.inner.checked_at.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = checked.get(&instance.id) {
            if copy.last_checked_at.is_none_or(|stored| stored < *at) {
                copy.last_checked_at = Some(*at);
            }
        }
        copy
    }

    // === services ===

    pub async fn register_service(&self, mut service: Service) -> Result<Service, RegistryError> {
        service.normalize()?;
        let records = self.commit(Mutation::CreateService(service)).await?;
        upserted_service(records)
    }

    pub async fn update_service(&self, mut service: Service) -> Result<Service, RegistryError> {
        service.normalize()?;
        let records = self.commit(Mutation::ReplaceService(service)).await?;
        upserted_service(records)
    }

    pub fn get_service(&self, id: &str) -> Result<ServiceSummary, RegistryError> {
        let state = self.read();
        let entry = state.services.get(id).ok_or_else(|| not_found("service", id))?;
        Ok(entry.summary())
    }

    pub async fn deregister_service(&self, id: &str) -> Result<u32, RegistryError> {
        let records = self.commit(Mutation::DeleteService(id.to_string())).await?;
        let removed = records.iter().filter(|r| matches!(r.change, Change::InstanceDeleted(_))).count();
        Ok(u32::try_from(removed).unwrap_or(u32::MAX))
    }

    pub fn list_services(&self, page: Page) -> Result<ServiceList, RegistryError> {
        self.search(SearchQuery { page_size: page.page_size, page_token: page.page_token, ..Default::default() })
    }

    pub fn search(&self, query: SearchQuery) -> Result<ServiceList, RegistryError> {
        query.validate()?;
        Ok(search::search(&self.read(), &query)?)
    }

    // === instances ===

    pub async fn register_instance(&self, instance: Instance) -> Result<Instance, RegistryError> {
        self.register_instance_with(instance, false).await
    }

    /// Registers an instance; with `replace`, one already registered under its id (of the same
    /// service) is replaced, keeping its registration time, and its health while its address and
    /// port stay the same.
    pub async fn register_instance_with(
        &self,
        mut instance: Instance,
        replace: bool,
    ) -> Result<Instance, RegistryError> {
        let (kind, existing) = {
            let state = self.read();
            let service_version = state.services.get(&instance.service_id).map(|e| e.service.version.clone());
            instance.normalize(service_version.as_deref())?;
            let entry =
                state.services.get(&instance.service_id).ok_or_else(|| not_found("service", &instance.service_id))?;
            let existing = if replace { state.instance(&instance.id).map(|i| (**i).clone()) } else { None };
            (entry.service.check_kind(), existing)
        };
        if let Some(old) = existing {
            if old.service_id != instance.service_id {
                return Err(RegistryError::Conflict(format!(
                    "instance {} belongs to service {}",
                    instance.id, old.service_id
                )));
            }
            instance.registered_at = old.registered_at;
            if old.address == instance.address && old.port == instance.port {
                instance.status = old.status;
                instance.status_output = old.status_output;
                instance.status_since = old.status_since;
                instance.last_checked_at = old.last_checked_at;
            } else {
                (instance.status, instance.status_output) = initial_health(kind);
                instance.status_since = Some(Utc::now());
            }
            let records = self.commit(Mutation::UpdateInstance(instance)).await?;
            return upserted_instance(records);
        }
        // As in Consul, a checked instance is critical until its first check passes; an instance
        // of a service without checks is passing while registered.
        (instance.status, instance.status_output) = initial_health(kind);
        let records = self.commit(Mutation::CreateInstance(instance)).await?;
        upserted_instance(records)
    }

    pub async fn deregister_instance(&self, id: &str) -> Result<(), RegistryError> {
        self.commit(Mutation::DeleteInstance(id.to_string())).await?;
        self.inner.checked_at.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        Ok(())
    }

    pub fn list_instances(&self, service_id: &str) -> Result<Vec<Instance>, RegistryError> {
        let state = self.read();
        let entry = state.services.get(service_id).ok_or_else(|| not_found("service", service_id))?;
        Ok(entry.instances.values().map(|i| self.with_checked_at(i)).collect())
    }

    /// Refreshes a TTL check; the instance takes the reported status (passing by default) at once.
    pub async fn heartbeat(&self, instance_id: &str, beat: Heartbeat) -> Result<Instance, RegistryError> {
        if beat.output.len() > 4096 {
            return Err(Invalid::one("output", "must be at most 4096 characters").into());
        }
        let current = {
            let state = self.read();
            let instance = state.instance(instance_id).ok_or_else(|| not_found("instance", instance_id))?;
            let kind = state.service_of(instance_id).map_or(CheckKind::None, |e| e.service.check_kind());
            if kind != CheckKind::Ttl {
                return Err(RegistryError::FailedPrecondition(format!(
                    "service {} has no ttl check; heartbeats apply to ttl checks only",
                    instance.service_id
                )));
            }
            instance.clone()
        };
        let now = Utc::now();
        if !self.inner.store.record_heartbeat(instance_id, now.timestamp_millis()).await? {
            return Err(not_found("instance", instance_id));
        }
        let status = beat.status.unwrap_or(HealthStatus::Passing);
        let output = if beat.output.is_empty() { format!("ttl heartbeat: {}", status.as_str()) } else { beat.output };
        self.set_health(&current, status, output, now).await
    }

    /// Records a check result. Writes only when the status or its output changed.
    pub async fn set_health(
        &self,
        current: &Instance,
        status: HealthStatus,
        output: String,
        at: DateTime<Utc>,
    ) -> Result<Instance, RegistryError> {
        self.inner.checked_at.lock().unwrap_or_else(|e| e.into_inner()).insert(current.id.clone(), at);
        if current.status == status && current.status_output == output {
            return Ok(self.with_checked_at(current));
        }
        let mut next = current.clone();
        if current.status != status {
            next.status_since = Some(at);
        }
        next.status = status;
        next.status_output = output;
        next.last_checked_at = Some(at);
        let records = self.commit(Mutation::UpdateInstance(next)).await?;
        upserted_instance(records)
    }

    // === discovery, health, graph ===

    pub fn discover(&self, query: DiscoverQuery) -> Result<Discovered, RegistryError> {
        query.validate()?;
        let state = self.read();
        let entry = state.services.get(&query.service_id).ok_or_else(|| not_found("service", &query.service_id))?;
        discovery::select(entry, &query)
            .map_err(|no| RegistryError::NoInstance { service_id: query.service_id.clone(), why: no.why })
    }

    pub fn service_health(&self, service_id: &str) -> Result<ServiceHealth, RegistryError> {
        let state = self.read();
        let entry = state.services.get(service_id).ok_or_else(|| not_found("service", service_id))?;
        Ok(ServiceHealth {
            service_id: service_id.to_string(),
            check_kind: entry.service.check_kind(),
            summary: entry.health(),
            instances: entry.instances.values().map(|i| self.with_checked_at(i)).collect(),
        })
    }

    pub fn dependencies(&self, service_id: &str) -> Result<DependencyGraph, RegistryError> {
        let state = self.read();
        if !state.services.contains_key(service_id) {
            return Err(not_found("service", service_id));
        }
        Ok(dependency_graph::build(&state, service_id))
    }
}

fn not_found(kind: &'static str, id: &str) -> RegistryError {
    RegistryError::NotFound { kind, id: id.to_string() }
}

fn upserted_service(records: Vec<ChangeRecord>) -> Result<Service, RegistryError> {
    records
        .into_iter()
        .find_map(|r| match r.change {
            Change::ServiceUpserted(s) => Some(s),
            _ => None,
        })
        .ok_or_else(|| RegistryError::Unavailable("the store reported no change".into()))
}

fn upserted_instance(records: Vec<ChangeRecord>) -> Result<Instance, RegistryError> {
    records
        .into_iter()
        .find_map(|r| match r.change {
            Change::InstanceUpserted(i) => Some(i),
            _ => None,
        })
        .ok_or_else(|| RegistryError::Unavailable("the store reported no change".into()))
}

#[cfg(test)]
mod tests;

/// As in Consul, a checked instance is critical until its first check passes; an instance of a
/// service without checks is passing while registered.
fn initial_health(kind: CheckKind) -> (HealthStatus, String) {
    match kind {
        CheckKind::None => (HealthStatus::Passing, "no health check".into()),
        CheckKind::Ttl => (HealthStatus::Critical, "waiting for the first heartbeat".into()),
        _ => (HealthStatus::Critical, "waiting for the first check".into()),
    }
}
