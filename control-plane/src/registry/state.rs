//! The registry as it stands at one version, in memory: services in id order with their instances.
//! It changes only by applying the store's change log in order (`sync` does that), so every replica
//! that has applied version N holds the same state. Reads (discovery, lists, health) are served here,
//! never by a query.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use reskflow_proto::registry::{Change, HealthSummary, Instance, Service, ServiceSummary};

use reskflow_proto::route::Route;

use crate::store::{ChangeRecord, Snapshot};

#[derive(Debug)]
pub struct ServiceEntry {
    pub service: Arc<Service>,
    /// In id order, so round robin walks a stable sequence.
    pub instances: BTreeMap<String, Arc<Instance>>,
    /// Round-robin position; atomic so discovery can advance it under the read lock.
    pub cursor: AtomicUsize,
    /// The version of the last breaker reset for calls to this service (0: none since this replica
    /// started; a reset is a command for the data planes connected now, not a lasting state).
    pub breaker_reset: u64,
}

impl ServiceEntry {
    fn new(service: Service) -> Self {
        ServiceEntry {
            service: Arc::new(service),
            instances: BTreeMap::new(),
            cursor: AtomicUsize::new(0),
            breaker_reset: 0,
        }
    }

    pub fn health(&self) -> HealthSummary {
        HealthSummary::of(self.instances.values().map(|i| i.status))
    }

    pub fn summary(&self) -> ServiceSummary {
        ServiceSummary {
            service: (*self.service).clone(),
            instance_count: u32::try_from(self.instances.len()).unwrap_or(u32::MAX),
            health: self.health(),
        }
    }
}

#[derive(Debug, Default)]
pub struct RegistryState {
    /// The version of the last change applied.
    pub version: u64,
    pub services: BTreeMap<String, ServiceEntry>,
    /// Gateway routes by id.
    pub routes: BTreeMap<String, Arc<Route>>,
    /// Instance id -> service id.
    owners: HashMap<String, String>,
}

impl RegistryState {
    pub fn from_snapshot(snapshot: Snapshot) -> Self {
        let mut state = RegistryState { version: snapshot.version, ..Default::default() };
        for service in snapshot.services {
            state.services.insert(service.id.clone(), ServiceEntry::new(service));
        }
        for instance in snapshot.instances {
            state.put_instance(instance);
        }
        state.routes = snapshot.routes.into_iter().map(|r| (r.id.clone(), Arc::new(r))).collect();
        state
    }

    /// Applies a committed change. Changes at or below the current version were applied already.
    pub fn apply(&mut self, record: &ChangeRecord) -> bool {
        if record.seq <= self.version {
            return false;
        }
        self.version = record.seq;
        match &record.change {
            Change::ServiceUpserted(service) => match self.services.get_mut(&service.id) {
                Some(entry) => entry.service = Arc::new(service.clone()),
                None => {
                    self.services.insert(service.id.clone(), ServiceEntry::new(service.clone()));
                }
            },
            Change::ServiceDeleted(id) => {
                if let Some(entry) = self.services.remove(id) {
                    for instance_id in entry.instances.keys() {
                        self.owners.remove(instance_id);
                    }
                }
            }
            Change::InstanceUpserted(instance) => self.put_instance(instance.clone()),
            Change::InstanceDeleted(instance) => {
                if let Some(owner) = self.owners.remove(&instance.id) {
                    if let Some(entry) = self.services.get_mut(&owner) {
                        entry.instances.remove(&instance.id);
                    }
                }
            }
            Change::BreakerReset(id) => {
                if let Some(entry) = self.services.get_mut(id) {
                    entry.breaker_reset = record.seq;
                }
            }
            Change::RouteUpserted(route) => {
                self.routes.insert(route.id.clone(), Arc::new(route.clone()));
            }
            Change::RouteDeleted(id) => {
                self.routes.remove(id);
            }
        }
        true
    }

    fn put_instance(&mut self, instance: Instance) {
        // The store refuses instances of unknown services, so a missing entry means a log written by
        // something else; keep the state consistent by skipping it.
        if let Some(entry) = self.services.get_mut(&instance.service_id) {
            self.owners.insert(instance.id.clone(), instance.service_id.clone());
            entry.instances.insert(instance.id.clone(), Arc::new(instance));
        }
    }

    pub fn instance(&self, id: &str) -> Option<&Arc<Instance>> {
        let owner = self.owners.get(id)?;
        self.services.get(owner)?.instances.get(id)
    }

    pub fn service_of(&self, instance_id: &str) -> Option<&ServiceEntry> {
        self.services.get(self.owners.get(instance_id)?)
    }

    pub fn instances(&self) -> impl Iterator<Item = (&ServiceEntry, &Arc<Instance>)> {
        self.services.values().flat_map(|e| e.instances.values().map(move |i| (e, i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, change: Change) -> ChangeRecord {
        ChangeRecord { seq, change }
    }

    fn service(id: &str) -> Service {
        serde_json::from_value(serde_json::json!({ "id": id })).unwrap()
    }

    fn instance(id: &str, service_id: &str) -> Instance {
        serde_json::from_value(serde_json::json!({
            "id": id, "serviceId": service_id, "address": "127.0.0.1", "port": 1
        }))
        .unwrap()
    }

    #[test]
    fn changes_at_or_below_the_version_are_ignored() {
        let mut state = RegistryState::default();
        assert!(state.apply(&record(2, Change::ServiceUpserted(service("a")))));
        assert!(!state.apply(&record(2, Change::ServiceDeleted("a".into()))));
        assert!(!state.apply(&record(1, Change::ServiceDeleted("a".into()))));
        assert!(state.services.contains_key("a"));
        assert_eq!(state.version, 2);
    }

    #[test]
    fn deleting_a_service_forgets_its_instances() {
        let mut state = RegistryState::default();
        state.apply(&record(1, Change::ServiceUpserted(service("a"))));
        state.apply(&record(2, Change::InstanceUpserted(instance("a1", "a"))));
        assert!(state.instance("a1").is_some());
        state.apply(&record(3, Change::ServiceDeleted("a".into())));
        assert!(state.instance("a1").is_none());
        assert_eq!(state.instances().count(), 0);
    }

    #[test]
    fn replacing_a_service_keeps_its_instances() {
        let mut state = RegistryState::default();
        state.apply(&record(1, Change::ServiceUpserted(service("a"))));
        state.apply(&record(2, Change::InstanceUpserted(instance("a1", "a"))));
        let mut v2 = service("a");
        v2.version = "2".into();
        state.apply(&record(3, Change::ServiceUpserted(v2)));
        assert_eq!(state.services["a"].service.version, "2");
        assert_eq!(state.services["a"].instances.len(), 1);
    }
}
