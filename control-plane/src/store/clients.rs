//! Data planes connected over the config stream (see `config_push`): one row per client, written by
//! the replica holding its stream, read by any replica (`ListClients`, the breaker view).

use sqlx::Row;

use super::{values, Store, StoreError};

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClientRow {
    pub node_id: String,
    pub role: String,
    pub service_id: String,
    pub region: String,
    pub zone: String,
    pub sent_version: u64,
    pub acked_version: u64,
    pub nacked_version: u64,
    pub nack_error: String,
    pub control_plane: String,
    pub connected_at_ms: i64,
    pub last_seen_ms: i64,
    pub breakers_json: String,
}

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Writes the rows of the clients a replica holds (new ones, changed ones, and `last_seen_ms`
    /// of all), as multi-row upserts of up to 100 rows, each its own transaction: on SQLite, with
    /// one writer, a registry write never waits for more than one small batch of these.
    pub async fn upsert_clients(&self, rows: &[ClientRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        for chunk in rows.chunks(100) {
            let _gate = self.sqlite_gate().await;
            let values = values(chunk.len(), 13, 1);
            let sql = format!(
                "INSERT INTO dataplane_clients (node_id, role, service_id, region, zone, sent_version, acked_version, \
                 nacked_version, nack_error, control_plane, connected_at_ms, last_seen_ms, breakers_json) VALUES {values} \
                 ON CONFLICT (node_id) DO UPDATE SET role = excluded.role, service_id = excluded.service_id, \
                 region = excluded.region, zone = excluded.zone, sent_version = excluded.sent_version, \
                 acked_version = excluded.acked_version, nacked_version = excluded.nacked_version, \
                 nack_error = excluded.nack_error, control_plane = excluded.control_plane, \
                 connected_at_ms = excluded.connected_at_ms, last_seen_ms = excluded.last_seen_ms, \
                 breakers_json = excluded.breakers_json"
            );
            let mut query = sqlx::query(&sql);
            for r in chunk {
                query = query
                    .bind(&r.node_id)
                    .bind(&r.role)
                    .bind(&r.service_id)
                    .bind(&r.region)
                    .bind(&r.zone)
                    .bind(signed(r.sent_version))
                    .bind(signed(r.acked_version))
                    .bind(signed(r.nacked_version))
                    .bind(&r.nack_error)
                    .bind(&r.control_plane)
                    .bind(r.connected_at_ms)
                    .bind(r.last_seen_ms)
                    .bind(&r.breakers_json);
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// The client's stream ended: its row goes, unless another replica holds it by now.
    pub async fn client_disconnected(&self, node_id: &str, control_plane: &str) -> Result<(), StoreError> {
        let _gate = self.sqlite_gate().await;
        sqlx::query("DELETE FROM dataplane_clients WHERE node_id = $1 AND control_plane = $2")
            .bind(node_id)
            .bind(control_plane)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Clients seen since `since_ms` (rows of a replica that died stop being refreshed and age out).
    pub async fn clients(&self, since_ms: i64) -> Result<Vec<ClientRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT node_id, role, service_id, region, zone, sent_version, acked_version, nacked_version, nack_error, \
             control_plane, connected_at_ms, last_seen_ms, breakers_json FROM dataplane_clients \
             WHERE last_seen_ms >= $1 ORDER BY node_id",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ClientRow {
                    node_id: r.try_get("node_id")?,
                    role: r.try_get("role")?,
                    service_id: r.try_get("service_id")?,
                    region: r.try_get("region")?,
                    zone: r.try_get("zone")?,
                    sent_version: version(r.try_get("sent_version")?),
                    acked_version: version(r.try_get("acked_version")?),
                    nacked_version: version(r.try_get("nacked_version")?),
                    nack_error: r.try_get("nack_error")?,
                    control_plane: r.try_get("control_plane")?,
                    connected_at_ms: r.try_get("connected_at_ms")?,
                    last_seen_ms: r.try_get("last_seen_ms")?,
                    breakers_json: r.try_get("breakers_json")?,
                })
            })
            .collect()
    }

    /// Drops rows not refreshed since `before_ms` (left by replicas that died).
    pub async fn forget_clients(&self, before_ms: i64) -> Result<u64, StoreError> {
        let _gate = self.sqlite_gate().await;
        let done = sqlx::query("DELETE FROM dataplane_clients WHERE last_seen_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
