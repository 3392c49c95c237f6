//! Change notifications across replicas. A write in this process signals [`Store::changed`] directly;
//! on PostgreSQL a listener task also turns other replicas' `NOTIFY`s into the same signal. The
//! reader of the change log treats every signal as a hint and re-reads the log, so a lost
//! notification (a dropped listener connection) costs latency, never a change: the reader also polls.
//! The same listener wakes this replica's workflow workers when another replica queues a due task
//! (the workers also poll).

use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::registry::CHANGE_CHANNEL;
use super::{Backend, Store};

/// Channel of "due workflow tasks were queued"; the payload is the queuing replica's node id.
pub(super) const TASKS_CHANNEL: &str = "reskflow_tasks";

impl Store {
    /// Runs until `shutdown`: forwards other replicas' notifications (PostgreSQL; a no-op on SQLite).
    pub async fn listen_for_changes(self, shutdown: CancellationToken) {
        if self.backend != Backend::Postgres {
            return;
        }
        let mut backoff = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            let mut listener = match PgListener::connect(&self.url).await {
                Ok(listener) => listener,
                Err(err) => {
                    warn!(error = %err, "change listener cannot connect; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if let Err(err) = listener.listen_all([CHANGE_CHANNEL, TASKS_CHANNEL]).await {
                warn!(error = %err, "change listener cannot LISTEN; retrying");
                continue;
            }
            backoff = Duration::from_millis(100);
            // Anything may have changed while we were not listening.
            self.changed.notify_one();
            self.tasks_ready.notify_one();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    received = listener.try_recv() => match received {
                        Ok(Some(n)) if n.channel() == TASKS_CHANNEL => {
                            if n.payload() != self.node_id {
                                self.tasks_ready.notify_one();
                            }
                        }
                        Ok(Some(_)) => self.changed.notify_one(),
                        Ok(None) => {
                            debug!("change listener connection lost; reconnecting");
                            self.changed.notify_one();
                            self.tasks_ready.notify_one();
                        }
                        Err(err) => {
                            warn!(error = %err, "change listener failed; reconnecting");
                            break;
                        }
                    },
                }
            }
        }
    }
}
