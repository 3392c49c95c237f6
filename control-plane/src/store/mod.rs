//! The durable store: one SQL implementation over sqlx's `Any` driver that runs on an embedded SQLite
//! file (the default) or on PostgreSQL (several replicas share one database). Queries are written once
//! with `$N` placeholders, which both engines accept; what differs (migrations, write ordering, change
//! notifications) is chosen by [`Backend`].
//!
//! - `registry`: services, instances, the change log and heartbeats.
//! - `lease`: leader leases (one replica runs the health checks).
//! - `notify`: wakes every replica's change reader when a change commits (LISTEN/NOTIFY on PostgreSQL).
//! - `workflow`: workflow definitions, runs, history and the task queue with leases.
//! - `clients`: data planes connected over the config stream, their versions and breaker reports.

mod clients;
mod lease;
mod notify;
mod registry;
mod workflow;

use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};
use tokio::sync::Notify;

pub use clients::ClientRow;
pub use registry::{ChangeRecord, Mutation, Snapshot};
pub use workflow::{
    Commit, Committed, InstanceRow, NewInstance, NewTask, Stored, StoredDefinition, Task, TaskKind, Transition,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Config(String),
    #[error("stored {what} is unreadable: {why}")]
    Corrupt { what: String, why: String },
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(err)
            }
            _ => StoreError::Database(err),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What the store needs from the configuration.
#[derive(Debug, Clone)]
pub struct Options {
    /// `sqlite://path/file.db` (created when missing) or `postgres://...`.
    pub url: String,
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// This replica's name (on its notifications, so it can ignore its own).
    pub node_id: String,
}

impl Options {
    pub fn new(url: impl Into<String>) -> Self {
        Options {
            url: url.into(),
            max_connections: 8,
            acquire_timeout: Duration::from_secs(5),
            node_id: uuid::Uuid::new_v4().to_string(),
        }
    }
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    url: String,
    node_id: String,
    /// Signalled when a change commits, by this process or (PostgreSQL) another replica.
    changed: Arc<Notify>,
    /// SQLite has one writer: writes queue here instead of failing with SQLITE_BUSY.
    write_gate: Arc<tokio::sync::Mutex<()>>,
    /// Signalled when this process (or, on PostgreSQL, another replica) queues a due workflow task.
    tasks_ready: Arc<Notify>,
    timings: Arc<Timings>,
}

/// How long the store's main transactions take (for `/metrics`).
#[derive(Default)]
pub struct Timings {
    pub registry_write: reskflow_runtime::metrics::Histogram,
    pub workflow_commit: reskflow_runtime::metrics::Histogram,
    pub task_claim: reskflow_runtime::metrics::Histogram,
}

impl Timings {
    pub fn all(&self) -> [(&'static str, &reskflow_runtime::metrics::Histogram); 3] {
        [
            ("registry_write", &self.registry_write),
            ("workflow_commit", &self.workflow_commit),
            ("task_claim", &self.task_claim),
        ]
    }
}

/// The workflow queue and runs, counted at one moment.
#[derive(Debug, Default)]
pub struct WorkflowGauges {
    pub runs_by_status: Vec<(String, i64)>,
    pub due: i64,
    pub held: i64,
    pub scheduled: i64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("backend", &self.backend).finish_non_exhaustive()
    }
}

/// Accepts `sqlite:` URLs with or without `//`, and turns on create-if-missing for files.
fn normalize_url(url: &str) -> Result<(Backend, String), StoreError> {
    let bad = |why: &str| StoreError::Config(format!("DATABASE_URL: {why}"));
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_string()));
    }
    let rest = url.strip_prefix("sqlite:").ok_or_else(|| bad("must start with sqlite: or postgres://"))?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    if rest.is_empty() {
        return Err(bad("the sqlite URL names no file"));
    }
    let mut normalized = format!("sqlite://{rest}");
    if rest != ":memory:" && !rest.contains("mode=") {
        normalized.push_str(if rest.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
    }
    Ok((Backend::Sqlite, normalized))
}

impl Store {
    /// Connects, applies the migrations and starts listening for other replicas' changes.
    pub async fn connect(options: &Options) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = normalize_url(&options.url)?;
        let connect_options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => options.max_connections.min(4),
                Backend::Postgres => options.max_connections,
            })
            .acquire_timeout(options.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // WAL lets readers run beside the writer; busy_timeout covers other processes
                        // (a CLI, a backup) holding the file for a moment.
                        conn.execute("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;")
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(connect_options)
            .await?;
        match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await?,
            Backend::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await?,
        }
        let store = Store {
            pool,
            backend,
            url,
            node_id: options.node_id.clone(),
            changed: Arc::new(Notify::new()),
            write_gate: Arc::new(tokio::sync::Mutex::new(())),
            tasks_ready: Arc::new(Notify::new()),
            timings: Arc::default(),
        };
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Resolves when a change may have committed since the last call (spurious wake-ups happen).
    pub fn changed(&self) -> Arc<Notify> {
        self.changed.clone()
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Cheap liveness probe of the database.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

impl Store {
    pub fn timings(&self) -> &Timings {
        &self.timings
    }

    /// Runs by status and the task queue, read now (for `/metrics`).
    pub async fn workflow_gauges(&self) -> Result<WorkflowGauges, StoreError> {
        let runs_by_status: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, COUNT(*) FROM workflow_instances GROUP BY status ORDER BY status")
                .fetch_all(&self.pool)
                .await?;
        let now = now_ms();
        let (due, held, scheduled): (i64, i64, i64) = sqlx::query_as(
            "SELECT \
               COALESCE(SUM(CASE WHEN run_at_ms <= $1 AND lease_until_ms <= $1 THEN 1 ELSE 0 END), 0), \
               COALESCE(SUM(CASE WHEN lease_until_ms > $1 THEN 1 ELSE 0 END), 0), \
               COALESCE(SUM(CASE WHEN run_at_ms > $1 AND lease_until_ms <= $1 THEN 1 ELSE 0 END), 0) \
             FROM workflow_tasks",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(WorkflowGauges { runs_by_status, due, held, scheduled })
    }

    /// SQLite has one writer: in-process writers queue here (None on PostgreSQL, where writers only
    /// lock the rows they touch). Hold the guard until the write commits.
    pub(super) async fn sqlite_gate(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.backend {
            Backend::Sqlite => Some(self.write_gate.lock().await),
            Backend::Postgres => None,
        }
    }
}

/// `($1, $2), ($3, $4)` for `rows` rows of `cols` columns, numbering from `first`.
pub(super) fn values(rows: usize, cols: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 5);
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            out.push_str(&format!("${}", first + r * cols + c));
        }
        out.push(')');
    }
    out
}

/// `$1, $2, ...` for a list of `n`, numbering from `first`.
pub(super) fn list(n: usize, first: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
