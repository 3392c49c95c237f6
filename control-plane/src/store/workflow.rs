//! Durable workflow state: versioned definitions, runs, their append-only history, and the task
//! queue. A worker claims due tasks under a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so
//! replicas never claim the same task); it commits a task's outcome with [`Store::transition`],
//! which in one transaction checks the worker still holds the lease, locks the run, applies the
//! state machine to the run as stored, appends the history and enqueues what comes next. A worker
//! that lost its lease (it stalled and another took over) commits nothing.

use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tokio::sync::MutexGuard;

use super::{now_ms, Backend, Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct StoredDefinition {
    pub id: String,
    pub version: i64,
    pub name: String,
    pub body: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Call a step.
    Step,
    /// Call a step's compensation.
    Compensate,
    /// The run's deadline.
    Deadline,
}

impl TaskKind {
    fn as_str(self) -> &'static str {
        match self {
            TaskKind::Step => "step",
            TaskKind::Compensate => "compensate",
            TaskKind::Deadline => "deadline",
        }
    }

    fn parse(s: &str) -> Result<Self, StoreError> {
        Ok(match s {
            "step" => TaskKind::Step,
            "compensate" => TaskKind::Compensate,
            "deadline" => TaskKind::Deadline,
            other => return Err(StoreError::Corrupt { what: "task".into(), why: format!("unknown kind {other}") }),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    pub id: i64,
    pub instance_id: String,
    pub kind: TaskKind,
    pub step: usize,
    pub attempt: u32,
    pub run_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub kind: TaskKind,
    pub step: usize,
    pub attempt: u32,
    pub run_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRow {
    pub id: String,
    pub workflow_id: String,
    pub version: i64,
    pub status: String,
    /// The state machine's state, JSON.
    pub run: String,
    pub idempotency_key: Option<String>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub deadline_ms: i64,
}

/// What a transition writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Transition {
    pub status: String,
    pub run: String,
    /// History entries (JSON), appended in order.
    pub history: Vec<String>,
    pub tasks: Vec<NewTask>,
    /// The run is final: drop its remaining tasks (deadline, retries).
    pub finished: bool,
}

/// A run as stored, handed to a transition.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub status: &'a str,
    pub run: &'a str,
    /// A waiting call task of the run was withdrawn (see `transition`).
    pub withdrew_call: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Committed {
    Done,
    /// Another worker holds the task now; nothing was written.
    LeaseLost,
}

fn task_from(row: &AnyRow) -> Result<Task, StoreError> {
    Ok(Task {
        id: row.try_get("id")?,
        instance_id: row.try_get("instance_id")?,
        kind: TaskKind::parse(&row.try_get::<String, _>("kind")?)?,
        step: usize::try_from(row.try_get::<i64, _>("step")?).unwrap_or(usize::MAX),
        attempt: u32::try_from(row.try_get::<i64, _>("attempt")?).unwrap_or(0),
        run_at_ms: row.try_get("run_at_ms")?,
    })
}

fn definition_from(row: &AnyRow) -> Result<StoredDefinition, StoreError> {
    Ok(StoredDefinition {
        id: row.try_get("id")?,
        version: row.try_get("version")?,
        name: row.try_get("name")?,
        body: row.try_get("body")?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

fn instance_from(row: &AnyRow) -> Result<InstanceRow, StoreError> {
    Ok(InstanceRow {
        id: row.try_get("id")?,
        workflow_id: row.try_get("workflow_id")?,
        version: row.try_get("version")?,
        status: row.try_get("status")?,
        run: row.try_get("run")?,
        idempotency_key: row.try_get("idempotency_key")?,
        created_at_ms: row.try_get("created_at_ms")?,
        updated_at_ms: row.try_get("updated_at_ms")?,
        deadline_ms: row.try_get("deadline_ms")?,
    })
}

const INSTANCE_COLUMNS: &str =
    "id, workflow_id, version, status, run, idempotency_key, created_at_ms, updated_at_ms, deadline_ms";

async fn insert_tasks(tx: &mut Transaction<'_, Any>, instance_id: &str, tasks: &[NewTask]) -> Result<(), StoreError> {
    for t in tasks {
        sqlx::query(
            "INSERT INTO workflow_tasks (instance_id, kind, step, attempt, run_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(instance_id)
        .bind(t.kind.as_str())
        .bind(i64::try_from(t.step).unwrap_or(i64::MAX))
        .bind(i64::from(t.attempt))
        .bind(t.run_at_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

async fn append_history(
    tx: &mut Transaction<'_, Any>,
    instance_id: &str,
    entries: &[String],
    at: i64,
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM workflow_events WHERE instance_id = $1")
        .bind(instance_id)
        .fetch_one(&mut **tx)
        .await?;
    for (n, body) in entries.iter().enumerate() {
        sqlx::query("INSERT INTO workflow_events (instance_id, seq, at_ms, body) VALUES ($1, $2, $3, $4)")
            .bind(instance_id)
            .bind(last + 1 + i64::try_from(n).unwrap_or(0))
            .bind(at)
            .bind(body)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl Store {
    /// A write transaction for workflow state. SQLite has one writer, so in-process writers queue
    /// on the gate; on PostgreSQL writers only lock the rows they touch.
    async fn begin_workflow_write(
        &self,
    ) -> Result<(Option<MutexGuard<'_, ()>>, Transaction<'static, Any>), StoreError> {
        let gate = match self.backend {
            Backend::Sqlite => Some(self.write_gate.lock().await),
            Backend::Postgres => None,
        };
        Ok((gate, self.pool.begin().await?))
    }

    /// Stores a new version of a definition and returns its number (1 for a new id).
    pub async fn put_definition(&self, id: &str, name: &str, body: &str) -> Result<i64, StoreError> {
        let (_gate, mut tx) = self.begin_workflow_write().await?;
        if self.backend == Backend::Postgres {
            // Two replicas registering the same id at once must not pick the same version.
            sqlx::query("SELECT 1 FROM pg_advisory_xact_lock(hashtext($1))").bind(id).execute(&mut *tx).await?;
        }
        let version: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) + 1 FROM workflow_definitions WHERE id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO workflow_definitions (id, version, name, body, created_at_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(version)
        .bind(name)
        .bind(body)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(version)
    }

    /// A version of a definition, or the latest.
    pub async fn definition(&self, id: &str, version: Option<i64>) -> Result<Option<StoredDefinition>, StoreError> {
        let query = match version {
            Some(_) => "SELECT id, version, name, body, created_at_ms FROM workflow_definitions WHERE id = $1 AND version = $2",
            None => "SELECT id, version, name, body, created_at_ms FROM workflow_definitions WHERE id = $1 AND version >= $2 ORDER BY version DESC LIMIT 1",
        };
        let row = sqlx::query(query).bind(id).bind(version.unwrap_or(0)).fetch_optional(&self.pool).await?;
        row.as_ref().map(definition_from).transpose()
    }

    /// The latest version of every definition, by id.
    pub async fn list_definitions(&self) -> Result<Vec<StoredDefinition>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.version, d.name, d.body, d.created_at_ms FROM workflow_definitions d \
             WHERE d.version = (SELECT MAX(version) FROM workflow_definitions m WHERE m.id = d.id) ORDER BY d.id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(definition_from).collect()
    }

    /// Creates a run with its first history and tasks. With an idempotency key already used for
    /// this workflow, returns the existing run instead (`false`).
    pub async fn create_instance(
        &self,
        row: &InstanceRow,
        history: &[String],
        tasks: &[NewTask],
    ) -> Result<(String, bool), StoreError> {
        let (_gate, mut tx) = self.begin_workflow_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO workflow_instances (id, workflow_id, version, status, run, idempotency_key, created_at_ms, updated_at_ms, deadline_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
        )
        .bind(&row.id)
        .bind(&row.workflow_id)
        .bind(row.version)
        .bind(&row.status)
        .bind(&row.run)
        .bind(&row.idempotency_key)
        .bind(row.created_at_ms)
        .bind(row.updated_at_ms)
        .bind(row.deadline_ms)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            let existing: Option<String> = match &row.idempotency_key {
                Some(key) => {
                    sqlx::query_scalar(
                        "SELECT id FROM workflow_instances WHERE workflow_id = $1 AND idempotency_key = $2",
                    )
                    .bind(&row.workflow_id)
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?
                }
                None => None,
            };
            tx.commit().await?;
            return existing
                .map(|id| (id, false))
                .ok_or_else(|| StoreError::Conflict(format!("instance {} already exists", row.id)));
        }
        append_history(&mut tx, &row.id, history, row.created_at_ms).await?;
        insert_tasks(&mut tx, &row.id, tasks).await?;
        tx.commit().await?;
        self.tasks_ready.notify_one();
        Ok((row.id.clone(), true))
    }

    pub async fn instance(&self, id: &str) -> Result<Option<InstanceRow>, StoreError> {
        let row = sqlx::query(&format!("SELECT {INSTANCE_COLUMNS} FROM workflow_instances WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(instance_from).transpose()
    }

    /// Runs of a workflow (all workflows when `workflow_id` is empty), newest first, optionally of
    /// one status; `after` is the (created-at, id) of the last row of the previous page.
    pub async fn list_instances(
        &self,
        workflow_id: &str,
        status: Option<&str>,
        after: Option<(i64, &str)>,
        limit: u32,
    ) -> Result<Vec<InstanceRow>, StoreError> {
        let (before_ms, before_id) = after.unwrap_or((0, ""));
        let rows = sqlx::query(&format!(
            "SELECT {INSTANCE_COLUMNS} FROM workflow_instances \
             WHERE ($1 = '' OR workflow_id = $1) AND ($2 = '' OR status = $2) \
             AND ($3 = 0 OR created_at_ms < $3 OR (created_at_ms = $3 AND id < $4)) \
             ORDER BY created_at_ms DESC, id DESC LIMIT $5"
        ))
        .bind(workflow_id)
        .bind(status.unwrap_or(""))
        .bind(before_ms)
        .bind(before_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(instance_from).collect()
    }

    /// The run's history entries (JSON) with their times, oldest first.
    pub async fn history(&self, instance_id: &str) -> Result<Vec<(i64, String)>, StoreError> {
        let rows = sqlx::query("SELECT at_ms, body FROM workflow_events WHERE instance_id = $1 ORDER BY seq")
            .bind(instance_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok((r.try_get("at_ms")?, r.try_get("body")?))).collect()
    }

    /// Claims up to `limit` due tasks for `owner` until now + `lease`.
    pub async fn claim_tasks(&self, owner: &str, lease: Duration, limit: u32) -> Result<Vec<Task>, StoreError> {
        let now = now_ms();
        let until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let lock = if self.backend == Backend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
        let (_gate, mut tx) = self.begin_workflow_write().await?;
        let rows = sqlx::query(&format!(
            "UPDATE workflow_tasks SET lease_owner = $1, lease_until_ms = $2 WHERE id IN \
             (SELECT id FROM workflow_tasks WHERE run_at_ms <= $3 AND lease_until_ms < $3 ORDER BY run_at_ms LIMIT $4 {lock}) \
             RETURNING id, instance_id, kind, step, attempt, run_at_ms"
        ))
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter().map(task_from).collect()
    }

    /// When the next task falls due (for the worker's sleep), if any is queued and unleased.
    pub async fn next_task_due_ms(&self) -> Result<Option<i64>, StoreError> {
        let due: Option<i64> =
            sqlx::query_scalar("SELECT MIN(run_at_ms) FROM workflow_tasks WHERE lease_until_ms < $1")
                .bind(now_ms())
                .fetch_one(&self.pool)
                .await?;
        Ok(due)
    }

    /// Frees the leases `owner` holds (a replica restarting under the same name takes its tasks
    /// back at once instead of waiting for the leases to run out).
    pub async fn release_leases(&self, owner: Option<&str>) -> Result<u64, StoreError> {
        let (_gate, mut tx) = self.begin_workflow_write().await?;
        let done = match owner {
            Some(owner) => {
                sqlx::query("UPDATE workflow_tasks SET lease_owner = NULL, lease_until_ms = 0 WHERE lease_owner = $1")
                    .bind(owner)
                    .execute(&mut *tx)
                    .await?
            }
            None => {
                sqlx::query("UPDATE workflow_tasks SET lease_owner = NULL, lease_until_ms = 0 WHERE lease_until_ms > 0")
                    .execute(&mut *tx)
                    .await?
            }
        };
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Commits the outcome of `task` (held by `owner`): under the run's row lock, `apply` maps the
    /// stored run to a transition, which is written with the task's removal. `task` None: an outside
    /// event with no task to consume. `withdraw_waiting_calls`: first remove the run's step tasks no
    /// worker holds (a cancel: a retry waiting for its backoff is not in flight and must not start).
    pub async fn transition<F>(
        &self,
        instance_id: &str,
        task: Option<(i64, &str)>,
        withdraw_waiting_calls: bool,
        apply: F,
    ) -> Result<Committed, StoreError>
    where
        F: FnOnce(Stored<'_>) -> Result<Option<Transition>, StoreError>,
    {
        let (_gate, mut tx) = self.begin_workflow_write().await?;
        if let Some((task_id, owner)) = task {
            let held = sqlx::query("DELETE FROM workflow_tasks WHERE id = $1 AND lease_owner = $2")
                .bind(task_id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            if held.rows_affected() == 0 {
                return Ok(Committed::LeaseLost);
            }
        }
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        let row = sqlx::query(&format!("SELECT status, run FROM workflow_instances WHERE id = $1{lock}"))
            .bind(instance_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::NotFound { kind: "workflow instance", id: instance_id.to_string() })?;
        let status: String = row.try_get("status")?;
        let run: String = row.try_get("run")?;
        let withdrew_call = if withdraw_waiting_calls {
            // Under the run's lock: a call task no worker holds is withdrawn; one a worker holds is
            // in flight (PostgreSQL re-checks the lease of a row a claim just updated).
            sqlx::query("DELETE FROM workflow_tasks WHERE instance_id = $1 AND kind = 'step' AND lease_until_ms < $2")
                .bind(instance_id)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0
        } else {
            false
        };
        let Some(t) = apply(Stored { status: &status, run: &run, withdrew_call })? else {
            tx.commit().await?;
            return Ok(Committed::Done);
        };
        let now = now_ms();
        sqlx::query("UPDATE workflow_instances SET status = $2, run = $3, updated_at_ms = $4 WHERE id = $1")
            .bind(instance_id)
            .bind(&t.status)
            .bind(&t.run)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        append_history(&mut tx, instance_id, &t.history, now).await?;
        if t.finished {
            sqlx::query("DELETE FROM workflow_tasks WHERE instance_id = $1")
                .bind(instance_id)
                .execute(&mut *tx)
                .await?;
        }
        insert_tasks(&mut tx, instance_id, &t.tasks).await?;
        tx.commit().await?;
        if !t.tasks.is_empty() {
            self.tasks_ready.notify_one();
        }
        Ok(Committed::Done)
    }

    /// Holds a claimed task until `until_ms` (a call longer than the claim's lease). False when the
    /// task is no longer this owner's.
    pub async fn extend_lease(&self, task_id: i64, owner: &str, until_ms: i64) -> Result<bool, StoreError> {
        let (_gate, mut tx) = self.begin_workflow_write().await?;
        let done = sqlx::query(
            "UPDATE workflow_tasks SET lease_until_ms = $3 WHERE id = $1 AND lease_owner = $2 AND lease_until_ms < $3",
        )
        .bind(task_id)
        .bind(owner)
        .bind(until_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// Signalled when this process queued a task (workers also poll).
    pub fn tasks_ready(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.tasks_ready.clone()
    }
}
