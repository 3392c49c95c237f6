//! Data planes connected over the config stream (see `config_push`): one row per client, written by
//! the replica holding its stream, read by any replica (`ListClients`, the breaker view).

use sqlx::Row;

use super::{now_ms, Backend, Store, StoreError};

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

/// What a stream learned about its client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientUpdate {
    Sent(u64),
    Acked(u64),
    Nacked(u64, String),
    Report(String),
}

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn signed(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Store {
    /// Writes outside a transaction: on SQLite they queue on the writer gate like the others.
    async fn gate(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.write_gate.lock().await),
            Backend::Postgres => None,
        }
    }

    /// A client said hello: (re)creates its row, held by `control_plane`.
    pub async fn client_connected(&self, row: &ClientRow) -> Result<(), StoreError> {
        let _gate = self.gate().await;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO dataplane_clients (node_id, role, service_id, region, zone, sent_version, acked_version, \
             nacked_version, nack_error, control_plane, connected_at_ms, last_seen_ms, breakers_json) \
             VALUES ($1, $2, $3, $4, $5, 0, $6, 0, '', $7, $8, $8, '{}') \
             ON CONFLICT (node_id) DO UPDATE SET role = $2, service_id = $3, region = $4, zone = $5, sent_version = 0, \
             acked_version = $6, nacked_version = 0, nack_error = '', control_plane = $7, connected_at_ms = $8, \
             last_seen_ms = $8, breakers_json = '{}'",
        )
        .bind(&row.node_id)
        .bind(&row.role)
        .bind(&row.service_id)
        .bind(&row.region)
        .bind(&row.zone)
        .bind(signed(row.acked_version))
        .bind(&row.control_plane)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records what a stream learned, if `control_plane` still holds the client.
    pub async fn client_update(
        &self,
        node_id: &str,
        control_plane: &str,
        update: ClientUpdate,
    ) -> Result<(), StoreError> {
        let _gate = self.gate().await;
        let now = now_ms();
        let where_ = "WHERE node_id = $1 AND control_plane = $2";
        let query = match &update {
            ClientUpdate::Sent(v) => {
                sqlx::query(&format!("UPDATE dataplane_clients SET sent_version = $3, last_seen_ms = $4 {where_}"))
                    .bind(node_id)
                    .bind(control_plane)
                    .bind(signed(*v))
                    .bind(now)
                    .execute(&self.pool)
                    .await
            }
            ClientUpdate::Acked(v) => {
                sqlx::query(&format!("UPDATE dataplane_clients SET acked_version = $3, last_seen_ms = $4 {where_}"))
                    .bind(node_id)
                    .bind(control_plane)
                    .bind(signed(*v))
                    .bind(now)
                    .execute(&self.pool)
                    .await
            }
            ClientUpdate::Nacked(v, why) => {
                sqlx::query(&format!(
                    "UPDATE dataplane_clients SET nacked_version = $3, nack_error = $4, last_seen_ms = $5 {where_}"
                ))
                .bind(node_id)
                .bind(control_plane)
                .bind(signed(*v))
                .bind(why)
                .bind(now)
                .execute(&self.pool)
                .await
            }
            ClientUpdate::Report(json) => {
                sqlx::query(&format!("UPDATE dataplane_clients SET breakers_json = $3, last_seen_ms = $4 {where_}"))
                    .bind(node_id)
                    .bind(control_plane)
                    .bind(json)
                    .bind(now)
                    .execute(&self.pool)
                    .await
            }
        };
        query?;
        Ok(())
    }

    /// The client's stream ended: its row goes, unless another replica holds it by now.
    pub async fn client_disconnected(&self, node_id: &str, control_plane: &str) -> Result<(), StoreError> {
        let _gate = self.gate().await;
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
        let _gate = self.gate().await;
        let done = sqlx::query("DELETE FROM dataplane_clients WHERE last_seen_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
