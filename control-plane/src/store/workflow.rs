//! Durable workflow state: versioned definitions, runs, their append-only history, and the task
//! queue. A worker claims due tasks under a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so
//! replicas never claim the same task); it commits task outcomes with [`Store::commit_batch`],
//! which in one transaction locks the runs, checks the worker still holds each task's lease,
//! applies the state machine to each run as stored, appends the history and enqueues what comes
//! next. A worker that lost a lease (it stalled and another took over) commits nothing for that
//! task. A batch costs a fixed number of statements whatever its size (multi-row writes), so under
//! load many step completions share one transaction and one disk flush.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tokio::sync::MutexGuard;

use super::{list, now_ms, values, Backend, Store, StoreError};

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
    /// How long a claim holds the task beyond the base lease (the call's timeout).
    pub hold_ms: i64,
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

/// A run to create, with its first history entries (JSON) and tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct NewInstance {
    pub row: InstanceRow,
    pub history: Vec<String>,
    pub tasks: Vec<NewTask>,
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

/// One run's commit in a batch (see [`Store::commit_batch`]).
pub struct Commit<'a> {
    pub instance_id: String,
    /// The claimed task this commit consumes; it must still be held by the batch's owner.
    pub task: Option<i64>,
    /// First remove the run's step tasks no worker holds (a cancel: a retry waiting for its
    /// backoff is not in flight and must not start).
    pub withdraw_waiting_calls: bool,
    /// Maps the run as stored (after earlier commits of the batch) to what to write; None writes
    /// nothing but still consumes the task.
    #[allow(clippy::type_complexity)]
    pub apply: Box<dyn FnOnce(Stored<'_>) -> Result<Option<Transition>, StoreError> + Send + 'a>,
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

/// Rows per multi-row statement: well under SQLite's 32,766 and PostgreSQL's 65,535 parameters.
const ROWS_PER_STATEMENT: usize = 500;

async fn insert_tasks(tx: &mut Transaction<'_, Any>, tasks: &[(&str, &NewTask)]) -> Result<(), StoreError> {
    for chunk in tasks.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO workflow_tasks (instance_id, kind, step, attempt, run_at_ms, hold_ms) VALUES {}",
            values(chunk.len(), 6, 1)
        );
        let mut query = sqlx::query(&sql);
        for (instance_id, t) in chunk {
            query = query
                .bind(*instance_id)
                .bind(t.kind.as_str())
                .bind(i64::try_from(t.step).unwrap_or(i64::MAX))
                .bind(i64::from(t.attempt))
                .bind(t.run_at_ms)
                .bind(t.hold_ms);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Appends history entries given as (run, seq, time, body).
async fn insert_events(tx: &mut Transaction<'_, Any>, events: &[(&str, i64, i64, &str)]) -> Result<(), StoreError> {
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let sql =
            format!("INSERT INTO workflow_events (instance_id, seq, at_ms, body) VALUES {}", values(chunk.len(), 4, 1));
        let mut query = sqlx::query(&sql);
        for (instance_id, seq, at, body) in chunk {
            query = query.bind(*instance_id).bind(*seq).bind(*at).bind(*body);
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// A run as locked by a batch, with what the batch changed so far.
struct Live {
    status: String,
    run: String,
    history_len: i64,
    dirty: bool,
    finished: bool,
}

impl Store {
    /// A write transaction for workflow state. SQLite has one writer, so in-process writers queue
    /// on the gate; on PostgreSQL writers only lock the rows they touch.
    async fn begin_workflow_write(
        &self,
    ) -> Result<(Option<MutexGuard<'_, ()>>, Transaction<'static, Any>), StoreError> {
        let gate = self.sqlite_gate().await;
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

    /// The latest version of each definition whose id sorts after `after`, by id, at most `limit`.
    pub async fn list_definitions(&self, after: &str, limit: u32) -> Result<Vec<StoredDefinition>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.version, d.name, d.body, d.created_at_ms FROM workflow_definitions d \
             WHERE d.id > $1 AND d.version = (SELECT MAX(version) FROM workflow_definitions m WHERE m.id = d.id) \
             ORDER BY d.id LIMIT $2",
        )
        .bind(after)
        .bind(i64::from(limit))
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
        let new = NewInstance { row: row.clone(), history: history.to_vec(), tasks: tasks.to_vec() };
        let mut results = self.create_instances(std::slice::from_ref(&new)).await?;
        results.pop().unwrap_or_else(|| Err(StoreError::Conflict(format!("instance {} was not created", row.id))))
    }

    /// Creates many runs in one transaction (see [`Store::create_instance`]); each gets its own
    /// result. Two runs of one batch with the same idempotency key are one run.
    pub async fn create_instances(
        &self,
        runs: &[NewInstance],
    ) -> Result<Vec<Result<(String, bool), StoreError>>, StoreError> {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        let (_gate, mut tx) = self.begin_workflow_write().await?;
        let mut inserted: HashSet<String> = HashSet::with_capacity(runs.len());
        for chunk in runs.chunks(ROWS_PER_STATEMENT / 2) {
            let sql = format!(
                "INSERT INTO workflow_instances (id, workflow_id, version, status, run, idempotency_key, created_at_ms, updated_at_ms, deadline_ms, history_len) \
                 VALUES {} ON CONFLICT DO NOTHING RETURNING id",
                values(chunk.len(), 10, 1)
            );
            let mut query = sqlx::query_scalar::<_, String>(&sql);
            for new in chunk {
                let row = &new.row;
                query = query
                    .bind(&row.id)
                    .bind(&row.workflow_id)
                    .bind(row.version)
                    .bind(&row.status)
                    .bind(&row.run)
                    .bind(&row.idempotency_key)
                    .bind(row.created_at_ms)
                    .bind(row.updated_at_ms)
                    .bind(row.deadline_ms)
                    .bind(i64::try_from(new.history.len()).unwrap_or(i64::MAX));
            }
            inserted.extend(query.fetch_all(&mut *tx).await?);
        }
        let mut results = Vec::with_capacity(runs.len());
        let mut events = Vec::new();
        let mut tasks = Vec::new();
        for new in runs {
            let row = &new.row;
            if inserted.contains(&row.id) {
                events.extend(
                    (1..).zip(&new.history).map(|(seq, body)| (row.id.as_str(), seq, row.created_at_ms, body.as_str())),
                );
                tasks.extend(new.tasks.iter().map(|t| (row.id.as_str(), t)));
                results.push(Ok((row.id.clone(), true)));
                continue;
            }
            // A conflict: the key was used already (or, in theory, the id).
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
            results.push(
                existing
                    .map(|id| (id, false))
                    .ok_or_else(|| StoreError::Conflict(format!("instance {} already exists", row.id))),
            );
        }
        insert_events(&mut tx, &events).await?;
        let due = tasks.iter().any(|(_, t)| t.run_at_ms <= now_ms());
        insert_tasks(&mut tx, &tasks).await?;
        if due {
            self.announce_tasks(&mut tx).await?;
        }
        tx.commit().await?;
        if due {
            self.tasks_ready.notify_one();
        }
        Ok(results)
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

    /// Claims up to `limit` due tasks for `owner`, each until now + `lease` + its hold.
    pub async fn claim_tasks(&self, owner: &str, lease: Duration, limit: u32) -> Result<Vec<Task>, StoreError> {
        let _timer = self.timings().task_claim.time();
        let now = now_ms();
        let until = now + i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 2);
        let lock = if self.backend == Backend::Postgres { "FOR UPDATE SKIP LOCKED" } else { "" };
        let _gate = self.sqlite_gate().await;
        // One statement is its own transaction: one round trip.
        let rows = sqlx::query(&format!(
            "UPDATE workflow_tasks SET lease_owner = $1, lease_until_ms = $2 + hold_ms WHERE id IN \
             (SELECT id FROM workflow_tasks WHERE run_at_ms <= $3 AND lease_until_ms < $3 ORDER BY run_at_ms LIMIT $4 {lock}) \
             RETURNING id, instance_id, kind, step, attempt, run_at_ms"
        ))
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from).collect()
    }

    /// The runs with these ids (those that exist), in one query.
    pub async fn instances(&self, ids: &[&str]) -> Result<Vec<InstanceRow>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let sql =
                format!("SELECT {INSTANCE_COLUMNS} FROM workflow_instances WHERE id IN ({})", list(chunk.len(), 1));
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                out.push(instance_from(&row)?);
            }
        }
        Ok(out)
    }

    /// When the next unleased task falls due, if any is queued (tests check what is left queued).
    #[cfg(test)]
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

    /// Commits one run's transition: see [`Commit`]. `task` is the consumed task and its owner.
    pub async fn transition<F>(
        &self,
        instance_id: &str,
        task: Option<(i64, &str)>,
        withdraw_waiting_calls: bool,
        apply: F,
    ) -> Result<Committed, StoreError>
    where
        F: FnOnce(Stored<'_>) -> Result<Option<Transition>, StoreError> + Send,
    {
        let commit = Commit {
            instance_id: instance_id.to_string(),
            task: task.map(|(id, _)| id),
            withdraw_waiting_calls,
            apply: Box::new(apply),
        };
        let owner = task.map_or("", |(_, owner)| owner);
        let mut results = self.commit_batch(owner, vec![commit]).await?;
        results.pop().unwrap_or(Ok(Committed::Done))
    }

    /// Commits many runs' transitions in one transaction, in order (two commits of one run apply
    /// one after the other). Each gets its own result: a run that is gone or unreadable, or a task
    /// whose lease `owner` lost, fails alone and writes nothing of its own; a database error fails
    /// the whole batch (every task stays leased and is retried when its lease runs out).
    ///
    /// Runs are locked in id order and tasks only after their runs, so concurrent batches (this
    /// replica's or another's) never deadlock.
    pub async fn commit_batch(
        &self,
        owner: &str,
        commits: Vec<Commit<'_>>,
    ) -> Result<Vec<Result<Committed, StoreError>>, StoreError> {
        if commits.is_empty() {
            return Ok(Vec::new());
        }
        let _timer = self.timings().workflow_commit.time();
        let (_gate, mut tx) = self.begin_workflow_write().await?;
        let pg = self.backend == Backend::Postgres;

        let mut ids: Vec<&str> = commits.iter().map(|c| c.instance_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut live: HashMap<String, Live> = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT id, status, run, history_len FROM workflow_instances WHERE id IN ({}) ORDER BY id{}",
                list(chunk.len(), 1),
                if pg { " FOR UPDATE" } else { "" }
            );
            let mut query = sqlx::query(&sql);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&mut *tx).await? {
                live.insert(
                    row.try_get("id")?,
                    Live {
                        status: row.try_get("status")?,
                        run: row.try_get("run")?,
                        history_len: row.try_get("history_len")?,
                        dirty: false,
                        finished: false,
                    },
                );
            }
        }

        let task_ids: Vec<i64> = commits.iter().filter_map(|c| c.task).collect();
        let mut held: HashSet<i64> = HashSet::with_capacity(task_ids.len());
        for chunk in task_ids.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "SELECT id FROM workflow_tasks WHERE lease_owner = $1 AND id IN ({}){}",
                list(chunk.len(), 2),
                if pg { " FOR UPDATE" } else { "" }
            );
            let mut query = sqlx::query_scalar::<_, i64>(&sql).bind(owner);
            for id in chunk {
                query = query.bind(*id);
            }
            held.extend(query.fetch_all(&mut *tx).await?);
        }

        let now = now_ms();
        let mut results = Vec::with_capacity(commits.len());
        let mut consumed: Vec<i64> = Vec::new();
        let mut events: Vec<(String, i64, String)> = Vec::new();
        let mut new_tasks: Vec<(String, NewTask)> = Vec::new();
        for commit in commits {
            if let Some(task) = commit.task {
                if !held.remove(&task) {
                    results.push(Ok(Committed::LeaseLost));
                    continue;
                }
            }
            let Some(state) = live.get_mut(&commit.instance_id) else {
                results.push(Err(StoreError::NotFound { kind: "workflow instance", id: commit.instance_id }));
                continue;
            };
            let withdrew_call = if commit.withdraw_waiting_calls && !state.finished {
                // Under the run's lock: a call task no worker holds is withdrawn; one a worker holds
                // is in flight (PostgreSQL re-checks the lease of a row a claim just updated).
                let withdrawn = sqlx::query(
                    "DELETE FROM workflow_tasks WHERE instance_id = $1 AND kind = 'step' AND lease_until_ms < $2",
                )
                .bind(&commit.instance_id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                let before = new_tasks.len();
                new_tasks.retain(|(id, t)| id != &commit.instance_id || t.kind != TaskKind::Step);
                withdrawn > 0 || new_tasks.len() < before
            } else {
                false
            };
            match (commit.apply)(Stored { status: &state.status, run: &state.run, withdrew_call }) {
                Err(err) => {
                    // The task stays (leased): it is retried when the lease runs out.
                    results.push(Err(err));
                    continue;
                }
                Ok(None) => {}
                Ok(Some(t)) => {
                    state.status = t.status;
                    state.run = t.run;
                    state.dirty = true;
                    for body in t.history {
                        state.history_len += 1;
                        events.push((commit.instance_id.clone(), state.history_len, body));
                    }
                    if t.finished {
                        state.finished = true;
                        new_tasks.retain(|(id, _)| id != &commit.instance_id);
                    }
                    new_tasks.extend(t.tasks.into_iter().map(|task| (commit.instance_id.clone(), task)));
                }
            }
            consumed.extend(commit.task);
            results.push(Ok(Committed::Done));
        }

        let dirty: Vec<(&String, &Live)> = live.iter().filter(|(_, l)| l.dirty).collect();
        for chunk in dirty.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "WITH v (id, status, run, history_len) AS (VALUES {}) \
                 UPDATE workflow_instances SET status = v.status, run = v.run, history_len = v.history_len, updated_at_ms = ${} \
                 FROM v WHERE workflow_instances.id = v.id",
                values(chunk.len(), 4, 1),
                chunk.len() * 4 + 1
            );
            let mut query = sqlx::query(&sql);
            for (id, l) in chunk {
                query = query.bind(id.as_str()).bind(l.status.as_str()).bind(l.run.as_str()).bind(l.history_len);
            }
            query.bind(now).execute(&mut *tx).await?;
        }
        let events: Vec<_> = events.iter().map(|(id, seq, body)| (id.as_str(), *seq, now, body.as_str())).collect();
        insert_events(&mut tx, &events).await?;
        let finished: Vec<&str> = live.iter().filter(|(_, l)| l.finished).map(|(id, _)| id.as_str()).collect();
        if !consumed.is_empty() || !finished.is_empty() {
            let sql = format!(
                "DELETE FROM workflow_tasks WHERE id IN ({}) OR instance_id IN ({})",
                if consumed.is_empty() { "NULL".to_string() } else { list(consumed.len(), 1) },
                if finished.is_empty() { "NULL".to_string() } else { list(finished.len(), consumed.len() + 1) },
            );
            let mut query = sqlx::query(&sql);
            for id in &consumed {
                query = query.bind(*id);
            }
            for id in &finished {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await?;
        }
        let due = new_tasks.iter().any(|(_, t)| t.run_at_ms <= now);
        let tasks: Vec<_> = new_tasks.iter().map(|(id, t)| (id.as_str(), t)).collect();
        insert_tasks(&mut tx, &tasks).await?;
        if due {
            self.announce_tasks(&mut tx).await?;
        }
        tx.commit().await?;
        if due {
            self.tasks_ready.notify_one();
        }
        Ok(results)
    }

    /// Tells other replicas (PostgreSQL) that tasks are due, when the transaction commits.
    async fn announce_tasks(&self, tx: &mut Transaction<'static, Any>) -> Result<(), StoreError> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(super::notify::TASKS_CHANNEL)
                .bind(&self.node_id)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    /// Signalled when this process queued a task (workers also poll).
    pub fn tasks_ready(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.tasks_ready.clone()
    }
}
