//! Leader leases: a named row that one holder owns until it expires. Work that must run on exactly
//! one replica (health checks, log compaction) runs while its holder keeps renewing the lease; when
//! the holder dies, another replica takes the lease over once it has expired.

use std::time::Duration;

use super::{now_ms, Store, StoreError};

impl Store {
    /// Takes or renews the lease. True when `holder` owns it until now + `ttl`.
    pub async fn try_acquire_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_ms();
        let expires = now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
             WHERE leases.holder = excluded.holder OR leases.expires_at_ms < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(expires)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Gives the lease up at once (clean shutdown), so another replica need not wait for it to expire.
    pub async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
