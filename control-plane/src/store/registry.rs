//! Registry rows and the change log. Every mutation writes its rows and appends its changes in one
//! transaction, so the log and the tables never disagree; the store also owns the timestamps
//! (`createdAt` survives a replace, `registeredAt` is set once).

use std::collections::HashMap;

use prost::Message;
use reskflow_proto::pb::registry::v1 as pb;
use reskflow_proto::registry::{Change, Instance, Service};
use reskflow_proto::route::Route;
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tokio::sync::MutexGuard;

use super::{now_ms, Backend, Store, StoreError};

/// Key of the PostgreSQL advisory lock that orders registry writes (any constant unique to us).
const REGISTRY_WRITE_LOCK: i64 = 0x5245_534b_0001;
/// LISTEN/NOTIFY channel that tells other replicas a registry change committed.
pub(super) const CHANGE_CHANNEL: &str = "reskflow_registry";

#[derive(Debug, Clone)]
pub enum Mutation {
    CreateService(Service),
    ReplaceService(Service),
    DeleteService(String),
    CreateInstance(Instance),
    /// Replaces an instance's document (health changes, metadata updates).
    UpdateInstance(Instance),
    DeleteInstance(String),
    /// Resets the circuit breakers of calls to a service (only the change log records it).
    ResetBreaker(String),
    /// Creates or replaces gateway routes, all or none. `create_only`: any existing id is a
    /// conflict. `replace_all`: routes not in the list are deleted (the list is the whole table).
    PutRoutes {
        routes: Vec<Route>,
        create_only: bool,
        replace_all: bool,
    },
    DeleteRoute(String),
}

/// The registry as stored at one version.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub services: Vec<Service>,
    pub instances: Vec<Instance>,
    pub routes: Vec<Route>,
    pub version: u64,
}

/// A committed change and the registry version it produced.
#[derive(Debug, Clone, PartialEq)]
pub struct ChangeRecord {
    pub seq: u64,
    pub change: Change,
}

fn encode_service(s: &Service) -> Vec<u8> {
    pb::Service::from(s.clone()).encode_to_vec()
}

fn encode_instance(i: &Instance) -> Vec<u8> {
    pb::Instance::from(i.clone()).encode_to_vec()
}

fn decode_service(what: &str, bytes: &[u8]) -> Result<Service, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt { what: what.to_string(), why };
    let message = pb::Service::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    Service::try_from(message).map_err(|e| corrupt(e.to_string()))
}

fn decode_instance(what: &str, bytes: &[u8]) -> Result<Instance, StoreError> {
    let corrupt = |why: String| StoreError::Corrupt { what: what.to_string(), why };
    let message = pb::Instance::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
    Instance::try_from(message).map_err(|e| corrupt(e.to_string()))
}

fn decode_route(what: &str, bytes: &[u8]) -> Result<Route, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { what: what.to_string(), why: e.to_string() })
}

fn encode_route(r: &Route) -> Vec<u8> {
    serde_json::to_vec(r).unwrap_or_default()
}

fn seq_of(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn decode_change(row: &AnyRow) -> Result<ChangeRecord, StoreError> {
    let seq: i64 = row.try_get("seq")?;
    let kind: String = row.try_get("kind")?;
    let entity_id: String = row.try_get("entity_id")?;
    let body: Option<Vec<u8>> = row.try_get("body")?;
    let what = format!("change {seq}");
    let body = || body.as_deref().ok_or_else(|| StoreError::Corrupt { what: what.clone(), why: "no body".into() });
    let change = match kind.as_str() {
        "service_upserted" => Change::ServiceUpserted(decode_service(&what, body()?)?),
        "service_deleted" => Change::ServiceDeleted(entity_id),
        "instance_upserted" => Change::InstanceUpserted(decode_instance(&what, body()?)?),
        "instance_deleted" => Change::InstanceDeleted(decode_instance(&what, body()?)?),
        "breaker_reset" => Change::BreakerReset(entity_id),
        "route_upserted" => Change::RouteUpserted(decode_route(&what, body()?)?),
        "route_deleted" => Change::RouteDeleted(entity_id),
        other => return Err(StoreError::Corrupt { what, why: format!("unknown kind {other}") }),
    };
    Ok(ChangeRecord { seq: seq_of(seq), change })
}

async fn append_change(tx: &mut Transaction<'_, Any>, change: &Change, now: i64) -> Result<u64, StoreError> {
    let (kind, id, body) = match change {
        Change::ServiceUpserted(s) => ("service_upserted", s.id.as_str(), Some(encode_service(s))),
        Change::ServiceDeleted(id) => ("service_deleted", id.as_str(), None),
        Change::InstanceUpserted(i) => ("instance_upserted", i.id.as_str(), Some(encode_instance(i))),
        Change::InstanceDeleted(i) => ("instance_deleted", i.id.as_str(), Some(encode_instance(i))),
        Change::BreakerReset(id) => ("breaker_reset", id.as_str(), None),
        Change::RouteUpserted(r) => ("route_upserted", r.id.as_str(), Some(encode_route(r))),
        Change::RouteDeleted(id) => ("route_deleted", id.as_str(), None),
    };
    let seq: i64 = sqlx::query_scalar(
        "INSERT INTO registry_changes (kind, entity_id, body, created_at_ms) VALUES ($1, $2, $3, $4) RETURNING seq",
    )
    .bind(kind)
    .bind(id)
    .bind(body)
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    Ok(seq_of(seq))
}

async fn stored_service(tx: &mut Transaction<'_, Any>, id: &str) -> Result<Option<Service>, StoreError> {
    let body: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT body FROM services WHERE id = $1").bind(id).fetch_optional(&mut **tx).await?;
    body.map(|b| decode_service(&format!("service {id}"), &b)).transpose()
}

impl Store {
    /// A transaction that may append to the change log. In-process writers queue on the gate
    /// (SQLite has a single writer); replicas on PostgreSQL queue on the advisory lock, held until
    /// commit, so change-log order is commit order.
    async fn begin_registry_write(&self) -> Result<(MutexGuard<'_, ()>, Transaction<'static, Any>), StoreError> {
        let gate = self.write_gate.lock().await;
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT 1 FROM pg_advisory_xact_lock($1)").bind(REGISTRY_WRITE_LOCK).execute(&mut *tx).await?;
        }
        Ok((gate, tx))
    }

    /// Applies one mutation and returns the changes it committed, in version order.
    pub async fn apply(&self, mutation: Mutation) -> Result<Vec<ChangeRecord>, StoreError> {
        let _timer = self.timings().registry_write.time();
        let (_gate, mut tx) = self.begin_registry_write().await?;
        let now = now_ms();
        let changes = write_rows(&mut tx, mutation, now).await?;
        let mut records = Vec::with_capacity(changes.len());
        for change in changes {
            let seq = append_change(&mut tx, &change, now).await?;
            records.push(ChangeRecord { seq, change });
        }
        if self.backend == Backend::Postgres && !records.is_empty() {
            sqlx::query("SELECT 1 FROM pg_notify($1, '')").bind(CHANGE_CHANNEL).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.changed.notify_one();
        Ok(records)
    }

    /// Every service, instance and gateway route, and the version they are at, read in one snapshot.
    pub async fn load_registry(&self) -> Result<Snapshot, StoreError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").execute(&mut *tx).await?;
        }
        let version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM registry_changes").fetch_one(&mut *tx).await?;
        let compacted = self.compacted_through_in(&mut tx).await?;
        let mut services = Vec::new();
        for row in sqlx::query("SELECT id, body FROM services ORDER BY id").fetch_all(&mut *tx).await? {
            let id: String = row.try_get("id")?;
            services.push(decode_service(&format!("service {id}"), &row.try_get::<Vec<u8>, _>("body")?)?);
        }
        let mut instances = Vec::new();
        for row in sqlx::query("SELECT id, body FROM instances ORDER BY id").fetch_all(&mut *tx).await? {
            let id: String = row.try_get("id")?;
            instances.push(decode_instance(&format!("instance {id}"), &row.try_get::<Vec<u8>, _>("body")?)?);
        }
        let mut routes = Vec::new();
        for row in sqlx::query("SELECT id, body FROM gateway_routes ORDER BY id").fetch_all(&mut *tx).await? {
            let id: String = row.try_get("id")?;
            routes.push(decode_route(&format!("route {id}"), &row.try_get::<Vec<u8>, _>("body")?)?);
        }
        tx.commit().await?;
        Ok(Snapshot { services, instances, routes, version: seq_of(version).max(compacted) })
    }

    /// Changes after `after`, oldest first, at most `limit`.
    pub async fn changes_since(&self, after: u64, limit: u32) -> Result<Vec<ChangeRecord>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, kind, entity_id, body FROM registry_changes WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(i64::try_from(after).unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(decode_change).collect()
    }

    /// Changes up to this version have been removed from the log.
    pub async fn compacted_through(&self) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let v = self.compacted_through_in(&mut tx).await?;
        tx.commit().await?;
        Ok(v)
    }

    async fn compacted_through_in(&self, tx: &mut Transaction<'_, Any>) -> Result<u64, StoreError> {
        let v: i64 = sqlx::query_scalar("SELECT value FROM registry_meta WHERE name = 'compacted_through'")
            .fetch_one(&mut **tx)
            .await?;
        Ok(seq_of(v))
    }

    /// Drops all but the newest `keep` changes; returns how many went.
    pub async fn compact_changes(&self, keep: u64) -> Result<u64, StoreError> {
        let (_gate, mut tx) = self.begin_registry_write().await?;
        let max: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM registry_changes").fetch_one(&mut *tx).await?;
        let through = max - i64::try_from(keep).unwrap_or(i64::MAX).min(max);
        if through <= 0 {
            tx.commit().await?;
            return Ok(0);
        }
        let deleted = sqlx::query("DELETE FROM registry_changes WHERE seq <= $1")
            .bind(through)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("UPDATE registry_meta SET value = $1 WHERE name = 'compacted_through' AND value < $1")
            .bind(through)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted)
    }

    /// Records a TTL heartbeat. False when the instance is unknown.
    pub async fn record_heartbeat(&self, instance_id: &str, at_ms: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE instances SET last_heartbeat_ms = $2 WHERE id = $1")
            .bind(instance_id)
            .bind(at_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The last heartbeat of every instance that has sent one.
    pub async fn heartbeats(&self) -> Result<HashMap<String, i64>, StoreError> {
        let rows = sqlx::query("SELECT id, last_heartbeat_ms FROM instances WHERE last_heartbeat_ms > 0")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get::<String, _>("id")?, r.try_get::<i64, _>("last_heartbeat_ms")?))).collect()
    }
}

/// Writes the rows of one mutation and says which changes it made.
async fn write_rows(tx: &mut Transaction<'_, Any>, mutation: Mutation, now: i64) -> Result<Vec<Change>, StoreError> {
    match mutation {
        Mutation::CreateService(mut service) => {
            let at = chrono_ms(now);
            service.created_at = at;
            service.updated_at = at;
            let inserted = sqlx::query(
                "INSERT INTO services (id, body, updated_at_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&service.id)
            .bind(encode_service(&service))
            .bind(now)
            .execute(&mut **tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("service {} already exists", service.id)));
            }
            Ok(vec![Change::ServiceUpserted(service)])
        }
        Mutation::ReplaceService(mut service) => {
            let existing = stored_service(tx, &service.id)
                .await?
                .ok_or_else(|| StoreError::NotFound { kind: "service", id: service.id.clone() })?;
            service.created_at = existing.created_at;
            service.updated_at = chrono_ms(now);
            sqlx::query("UPDATE services SET body = $2, updated_at_ms = $3 WHERE id = $1")
                .bind(&service.id)
                .bind(encode_service(&service))
                .bind(now)
                .execute(&mut **tx)
                .await?;
            Ok(vec![Change::ServiceUpserted(service)])
        }
        Mutation::DeleteService(id) => {
            let rows = sqlx::query("DELETE FROM instances WHERE service_id = $1 RETURNING id, body")
                .bind(&id)
                .fetch_all(&mut **tx)
                .await?;
            let deleted = sqlx::query("DELETE FROM services WHERE id = $1").bind(&id).execute(&mut **tx).await?;
            if deleted.rows_affected() == 0 {
                return Err(StoreError::NotFound { kind: "service", id });
            }
            let mut changes = Vec::with_capacity(rows.len() + 1);
            for row in rows {
                let instance_id: String = row.try_get("id")?;
                let body: Vec<u8> = row.try_get("body")?;
                changes.push(Change::InstanceDeleted(decode_instance(&format!("instance {instance_id}"), &body)?));
            }
            changes.push(Change::ServiceDeleted(id));
            Ok(changes)
        }
        Mutation::CreateInstance(mut instance) => {
            if stored_service(tx, &instance.service_id).await?.is_none() {
                return Err(StoreError::NotFound { kind: "service", id: instance.service_id });
            }
            let at = chrono_ms(now);
            instance.registered_at = at;
            instance.status_since = at;
            let inserted = sqlx::query(
                "INSERT INTO instances (id, service_id, body) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
            )
            .bind(&instance.id)
            .bind(&instance.service_id)
            .bind(encode_instance(&instance))
            .execute(&mut **tx)
            .await?;
            if inserted.rows_affected() == 0 {
                return Err(StoreError::Conflict(format!("instance {} already exists", instance.id)));
            }
            Ok(vec![Change::InstanceUpserted(instance)])
        }
        Mutation::UpdateInstance(instance) => {
            let updated = sqlx::query("UPDATE instances SET body = $2 WHERE id = $1 AND service_id = $3")
                .bind(&instance.id)
                .bind(encode_instance(&instance))
                .bind(&instance.service_id)
                .execute(&mut **tx)
                .await?;
            if updated.rows_affected() == 0 {
                return Err(StoreError::NotFound { kind: "instance", id: instance.id });
            }
            Ok(vec![Change::InstanceUpserted(instance)])
        }
        Mutation::DeleteInstance(id) => {
            let body: Option<Vec<u8>> = sqlx::query_scalar("DELETE FROM instances WHERE id = $1 RETURNING body")
                .bind(&id)
                .fetch_optional(&mut **tx)
                .await?;
            let body = body.ok_or_else(|| StoreError::NotFound { kind: "instance", id: id.clone() })?;
            Ok(vec![Change::InstanceDeleted(decode_instance(&format!("instance {id}"), &body)?)])
        }
        Mutation::ResetBreaker(id) => {
            if stored_service(tx, &id).await?.is_none() {
                return Err(StoreError::NotFound { kind: "service", id });
            }
            Ok(vec![Change::BreakerReset(id)])
        }
        Mutation::PutRoutes { routes, create_only, replace_all } => {
            let mut changes = Vec::with_capacity(routes.len());
            if replace_all {
                let existing: Vec<String> =
                    sqlx::query_scalar("SELECT id FROM gateway_routes ORDER BY id").fetch_all(&mut **tx).await?;
                for id in existing {
                    if !routes.iter().any(|r| r.id == id) {
                        sqlx::query("DELETE FROM gateway_routes WHERE id = $1").bind(&id).execute(&mut **tx).await?;
                        changes.push(Change::RouteDeleted(id));
                    }
                }
            }
            let upsert = "INSERT INTO gateway_routes (id, body, updated_at_ms) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO UPDATE SET body = excluded.body, updated_at_ms = excluded.updated_at_ms";
            let insert =
                "INSERT INTO gateway_routes (id, body, updated_at_ms) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING";
            for route in routes {
                let done = sqlx::query(if create_only { insert } else { upsert })
                    .bind(&route.id)
                    .bind(encode_route(&route))
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::Conflict(format!("route {} already exists", route.id)));
                }
                changes.push(Change::RouteUpserted(route));
            }
            Ok(changes)
        }
        Mutation::DeleteRoute(id) => {
            let deleted = sqlx::query("DELETE FROM gateway_routes WHERE id = $1").bind(&id).execute(&mut **tx).await?;
            if deleted.rows_affected() == 0 {
                return Err(StoreError::NotFound { kind: "route", id });
            }
            Ok(vec![Change::RouteDeleted(id)])
        }
    }
}

fn chrono_ms(ms: i64) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::from_timestamp_millis(ms)
}
