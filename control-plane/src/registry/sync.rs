//! Follows the store's change log: applies each committed change to this replica's state in version
//! order, then hands it to the watchers. Woken by the store's change signal (this process's writes,
//! PostgreSQL notifications from other replicas) and by a poll, so a lost notification only delays.
//! If the log was compacted past this replica's version, it reloads the whole state and tells the
//! watchers to start over.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::state::RegistryState;
use super::{Feed, Registry};

const BATCH: u32 = 1000;
const POLL: Duration = Duration::from_secs(1);

impl Registry {
    /// Applies every change committed after this replica's version. Returns how many it applied.
    pub async fn catch_up(&self) -> Result<usize, crate::store::StoreError> {
        let mut applied = 0;
        loop {
            let from = self.version();
            let batch = self.inner.store.changes_since(from, BATCH).await?;
            if batch.is_empty() {
                return Ok(applied);
            }
            let full = batch.len() >= BATCH as usize;
            let last = batch.last().map_or(from, |r| r.seq);
            {
                let mut state = self.inner.state.write().unwrap_or_else(|e| e.into_inner());
                for record in batch.iter() {
                    if state.apply(record) {
                        applied += 1;
                    }
                }
            }
            for record in batch {
                // No receivers is fine: nobody is watching.
                let _ = self.inner.feed.send(Feed::Change(Arc::new(record)));
            }
            self.inner.version.send_replace(last);
            if !full {
                return Ok(applied);
            }
        }
    }

    /// Reloads the state when the changes after our version were compacted away.
    async fn resync_if_compacted(&self) -> Result<(), crate::store::StoreError> {
        let compacted = self.inner.store.compacted_through().await?;
        if compacted <= self.version() {
            return Ok(());
        }
        let snapshot = self.inner.store.load_registry().await?;
        let version = snapshot.version;
        info!(from = self.version(), to = version, "registry log compacted past this replica; reloaded");
        *self.inner.state.write().unwrap_or_else(|e| e.into_inner()) = RegistryState::from_snapshot(snapshot);
        let _ = self.inner.feed.send(Feed::Reset);
        self.inner.version.send_replace(version);
        Ok(())
    }
}

/// Runs until `shutdown`.
pub async fn run(registry: Registry, shutdown: CancellationToken) {
    let changed = registry.store().changed();
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let polled = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = changed.notified() => false,
            _ = poll.tick() => true,
        };
        if polled {
            if let Err(err) = registry.resync_if_compacted().await {
                warn!(error = %err, "cannot check the registry log; will retry");
                continue;
            }
        }
        match registry.catch_up().await {
            Ok(0) => {}
            Ok(n) => debug!(applied = n, version = registry.version(), "registry changes applied"),
            Err(err) => warn!(error = %err, "cannot read the registry log; will retry"),
        }
    }
}
