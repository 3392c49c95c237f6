//! Workers: claim due tasks from the store, run them, commit each outcome through the state
//! machine. A step call discovers a healthy instance of the step's service and POSTs the rendered
//! input to `/actions/{action}` with an `Idempotency-Key` that is the same on every retry and after
//! any restart (`<instance>:<step>`, and `#<n>` for the n-th visit of a step a workflow loops back
//! to), so a call repeated after a crash is recognisable. Outcomes are committed in batches: every
//! outcome that arrives while a batch is being written joins the next one. 2xx JSON is
//! the output; 4xx a client error; 5xx, timeouts and connection failures are retryable by default.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::Ordering;

use reskflow_sidecar::balance::PickContext;
use reskflow_sidecar::breaker::{FailureKind, Outcome as CallOutcome};
use reskflow_sidecar::clock;
use reskflow_sidecar::health::outlier::Answer;
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::definition::{Definition, RetryOn};
use super::engine::{transition_of, Engine, WorkflowError};
use super::state::{Event, Run, Status, StepError};
use crate::store::{now_ms, Backend, Commit, Committed, InstanceRow, StoreError, Stored, Task, TaskKind, Transition};

/// Largest response body a step may return.
const MAX_OUTPUT_BYTES: usize = 8 * 1024 * 1024;

fn corrupt(instance_id: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { what: format!("run {instance_id}"), why: e.to_string() }
}

/// The run a step call is for: its id, and the trace it belongs to (when tracing is on).
#[derive(Clone, Copy)]
struct RunRef<'a> {
    instance_id: &'a str,
    trace: Option<&'a str>,
}

impl Engine {
    /// Calls `action` on a healthy instance of `service`.
    async fn call(
        &self,
        service: &str,
        action: &str,
        input: &serde_json::Value,
        key: &str,
        timeout: Duration,
        of: RunRef<'_>,
    ) -> Result<serde_json::Value, StepError> {
        let RunRef { instance_id, trace } = of;
        let fail = |kind, message: String| StepError { kind, message };
        let Some(upstream) = self.inner.upstreams.get(service) else {
            return Err(fail(RetryOn::Connection, format!("service {service} is not registered")));
        };
        let now = clock::now_ms();
        let permit = upstream.breaker.try_acquire_at(now).map_err(|rejected| {
            upstream.stats.breaker_rejections.fetch_add(1, Ordering::Relaxed);
            fail(RetryOn::Connection, format!("circuit breaker {service} is {}", rejected.state.as_str()))
        })?;
        let Some(endpoint) = upstream.balancer.pick(PickContext { hash_key: None, now_ms: now }).cloned() else {
            upstream.stats.no_endpoint.fetch_add(1, Ordering::Relaxed);
            upstream.breaker.record_at(permit, CallOutcome::Failure(FailureKind::ConnectError), Duration::ZERO, now);
            return Err(fail(RetryOn::Connection, format!("no healthy instance of {service}")));
        };
        upstream.stats.requests.fetch_add(1, Ordering::Relaxed);
        let url = format!("{}://{}/actions/{action}", endpoint.spec.scheme, endpoint.authority);
        // With tracing on, the call is a span of the trace that started the run; otherwise one trace
        // per run: the run's id (a UUID) is the trace id.
        let span = match trace.filter(|_| reskflow_runtime::telemetry::enabled()) {
            Some(parent) => {
                let span = tracing::info_span!(
                    "step",
                    otel.name = format!("{service}/{action}"),
                    otel.kind = "client",
                    workflow.instance_id = instance_id,
                );
                reskflow_runtime::telemetry::continue_traceparent(&span, parent);
                span
            }
            None => tracing::Span::none(),
        };
        let traceparent = reskflow_runtime::telemetry::traceparent_of(&span)
            .unwrap_or_else(|| format!("00-{}-{:016x}-01", instance_id.replace('-', ""), rand::random::<u64>() | 1));
        endpoint.start();
        let started = clock::now_ns();
        let result = tracing::Instrument::instrument(self.send(&url, input, key, timeout, &traceparent), span).await;
        let elapsed = Duration::from_nanos(clock::now_ns().saturating_sub(started));
        let done = clock::now_ms();
        endpoint.finish(elapsed, done);
        let (answer, outcome) = match &result {
            Ok((status, _)) if status.is_server_error() => {
                (Answer::Status(status.as_u16()), CallOutcome::Failure(FailureKind::ServerError))
            }
            Ok((status, _)) if status.is_client_error() => (Answer::Ok, CallOutcome::Failure(FailureKind::ClientError)),
            Ok(_) => (Answer::Ok, CallOutcome::Success),
            Err(e) if e.kind == RetryOn::Timeout => (Answer::NoAnswer, CallOutcome::Failure(FailureKind::Timeout)),
            Err(_) => (Answer::NoAnswer, CallOutcome::Failure(FailureKind::ConnectError)),
        };
        if upstream.outlier.observe(&upstream.balancer, &endpoint, answer, done) {
            upstream.stats.ejections.fetch_add(1, Ordering::Relaxed);
        }
        upstream.breaker.record_at(permit, outcome, elapsed, done);
        let (status, body) = result?;
        upstream.stats.count_status(status.as_u16());
        let text = || String::from_utf8_lossy(&body[..body.len().min(512)]).to_string();
        if status.is_success() {
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(serde_json::Value::Null);
            }
            return serde_json::from_slice(&body).map_err(|e| {
                fail(RetryOn::ServerError, format!("{url}: answered {status} with a body that is not JSON: {e}"))
            });
        }
        let kind = if status.is_client_error() { RetryOn::ClientError } else { RetryOn::ServerError };
        Err(fail(kind, format!("{url}: {status}: {}", text())))
    }

    /// POSTs the input; the status and body, or how the exchange failed.
    async fn send(
        &self,
        url: &str,
        input: &serde_json::Value,
        key: &str,
        timeout: Duration,
        traceparent: &str,
    ) -> Result<(reqwest::StatusCode, bytes::Bytes), StepError> {
        let fail = |kind, message: String| StepError { kind, message };
        let sent = self
            .inner
            .http
            .post(url)
            .timeout(timeout)
            .header("Idempotency-Key", key)
            .header("traceparent", traceparent)
            .json(input)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => {
                return Err(fail(
                    RetryOn::Timeout,
                    format!("{url}: no answer within {}", humantime::format_duration(timeout)),
                ))
            }
            Err(e) => return Err(fail(RetryOn::Connection, format!("{url}: {}", root_cause(&e)))),
        };
        let status = response.status();
        match response.bytes().await {
            Ok(b) if b.len() > MAX_OUTPUT_BYTES => {
                Err(fail(RetryOn::ServerError, format!("{url}: response larger than {MAX_OUTPUT_BYTES} bytes")))
            }
            Ok(b) => Ok((status, b)),
            Err(e) if e.is_timeout() => Err(fail(RetryOn::Timeout, format!("{url}: body not received in time"))),
            Err(e) => Err(fail(RetryOn::Connection, format!("{url}: {}", root_cause(&e)))),
        }
    }

    /// Runs a claimed task (`row`: its run, as read after the claim) and commits the outcome.
    async fn handle(self, task: Task, row: Option<InstanceRow>, commits: mpsc::Sender<Pending>) {
        let id = task.instance_id.clone();
        let task_id = task.id;
        let result = async {
            let Some(row) = row else {
                return Ok(()); // the run is gone (its tasks went with it)
            };
            let def = self.compiled(&row.workflow_id, row.version).await?;
            let outcome = match task.kind {
                TaskKind::Step | TaskKind::Compensate => self.run_call(&task, &row, &def).await?,
                TaskKind::Deadline => Outcome::Deadline,
            };
            let (reply, answer) = oneshot::channel();
            commits
                .send(Pending { task, def, outcome, reply })
                .await
                .map_err(|_| WorkflowError::Unavailable("the engine is stopping".into()))?;
            answer.await.map_err(|_| WorkflowError::Unavailable("the engine is stopping".into()))??;
            Ok::<(), WorkflowError>(())
        }
        .await;
        if let Err(err) = result {
            // The task stays leased and is retried once its lease runs out.
            warn!(instance_id = %id, task_id, error = %err, "task failed; will retry");
        }
    }

    /// Calls the step (or compensation) a task stands for; what happened, as an event to commit.
    async fn run_call(&self, task: &Task, row: &InstanceRow, def: &Definition) -> Result<Outcome, WorkflowError> {
        let id = task.instance_id.as_str();
        let run: Run = serde_json::from_str(&row.run).map_err(|e| WorkflowError::Corrupt(e.to_string()))?;
        let live = match task.kind {
            TaskKind::Step => run.status == Status::Running && run.current == Some((task.step, task.attempt)),
            _ => {
                run.status == Status::Compensating
                    && run.compensations.first() == Some(&task.step)
                    && run.compensation_attempt == task.attempt
            }
        };
        let Some(step) = def.steps.get(task.step).filter(|_| live) else {
            // Stale (the run moved on, or was cancelled while this retry waited): drop it.
            return Ok(Outcome::Drop);
        };
        let vars = run.vars(id);
        let (service, action, template, timeout, key) = match (task.kind, &step.compensate) {
            (TaskKind::Compensate, Some(c)) => {
                (&c.service, &c.action, &c.input, c.timeout, run.compensation_key(id, def, task.step))
            }
            _ => (&step.service, &step.action, &step.input, step.timeout, run.step_key(id, def, task.step)),
        };
        let outcome = match template.render(&vars) {
            Ok(input) => {
                let of = RunRef { instance_id: id, trace: run.trace.as_deref() };
                self.call(service, action, &input, &key, timeout, of).await
            }
            Err(e) => {
                Err(StepError { kind: RetryOn::ClientError, message: format!("rendering the input failed: {e}") })
            }
        };
        Ok(Outcome::Event(match (task.kind, outcome) {
            (TaskKind::Step, Ok(output)) => Event::StepSucceeded { step: task.step, output },
            (TaskKind::Step, Err(error)) => Event::StepFailed { step: task.step, attempt: task.attempt, error },
            (_, Ok(_)) => Event::CompensationSucceeded { step: task.step },
            (_, Err(error)) => Event::CompensationFailed { step: task.step, attempt: task.attempt, error },
        }))
    }

    /// Commits a batch of outcomes in one transaction and answers each.
    async fn commit_batch(&self, batch: Vec<Pending>) {
        let mut finished: Vec<Option<Status>> = vec![None; batch.len()];
        let mut replies = Vec::with_capacity(batch.len());
        let mut commits = Vec::with_capacity(batch.len());
        for (pending, finished) in batch.into_iter().zip(finished.iter_mut()) {
            let Pending { task, def, outcome, reply } = pending;
            let instance_id = task.instance_id.clone();
            replies.push((reply, task.instance_id, task.id));
            let id = instance_id.clone();
            commits.push(Commit {
                instance_id,
                task: Some(task.id),
                withdraw_waiting_calls: matches!(outcome, Outcome::Deadline),
                apply: Box::new(move |stored| apply(&def, &id, outcome, stored, finished)),
            });
        }
        let results = self.inner.store.commit_batch(&self.inner.options.node_id, commits).await;
        match results {
            Ok(results) => {
                for (((reply, id, task_id), result), finished) in replies.into_iter().zip(results).zip(finished) {
                    match (&result, finished) {
                        (Ok(Committed::LeaseLost), _) => {
                            debug!(instance_id = %id, task_id, "lease lost; another worker owns the task")
                        }
                        (Ok(Committed::Done), Some(status)) => {
                            info!(instance_id = %id, status = ?status, "workflow finished")
                        }
                        _ => {}
                    }
                    let _ = reply.send(result.map_err(WorkflowError::from));
                }
            }
            Err(err) => {
                let message = err.to_string();
                for (reply, _, _) in replies {
                    let _ = reply.send(Err(WorkflowError::Unavailable(message.clone())));
                }
            }
        }
    }
}

/// What a task's work came to.
pub(super) enum Outcome {
    /// Nothing to record (a stale task): just consume it.
    Drop,
    Event(Event),
    /// The run's deadline passed.
    Deadline,
}

/// An outcome waiting for a batch commit.
pub(super) struct Pending {
    task: Task,
    def: Arc<Definition>,
    outcome: Outcome,
    reply: oneshot::Sender<Result<Committed, WorkflowError>>,
}

/// Applies an outcome to a run as stored; notes in `finished` when the run ends.
fn apply(
    def: &Definition,
    id: &str,
    outcome: Outcome,
    stored: Stored<'_>,
    finished: &mut Option<Status>,
) -> Result<Option<Transition>, StoreError> {
    if matches!(outcome, Outcome::Drop) {
        return Ok(None);
    }
    let mut run: Run = serde_json::from_str(stored.run).map_err(|e| corrupt(id, e))?;
    let event = match outcome {
        Outcome::Drop => return Ok(None),
        Outcome::Event(event) => event,
        Outcome::Deadline => Event::Deadline { in_flight: run.current.is_some() && !stored.withdrew_call },
    };
    let effects = run.on(def, id, event, &mut || rand::random::<f64>());
    if effects.is_empty() {
        return Ok(None);
    }
    if run.status.is_final() {
        *finished = Some(run.status);
    }
    transition_of(def, &run, &effects, now_ms()).map(Some).map_err(|e| corrupt(id, e))
}

/// Outcomes committed in one transaction at most.
const MAX_BATCH: usize = 256;

/// Commits outcomes as they come: whatever queued while the previous batch was being written goes
/// into the next one, so batches grow with the load and a lone outcome is committed at once.
async fn committer(engine: Engine, queue: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let mut batch = Vec::new();
        {
            let mut queue = queue.lock().await;
            if queue.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return; // every sender is gone
            }
        }
        engine.commit_batch(batch).await;
    }
}

/// Runs the workers until `shutdown`, then lets the calls in flight finish (bounded by their leases).
pub async fn run(engine: Engine, shutdown: CancellationToken) {
    let options = engine.inner.options.clone();
    let store = engine.inner.store.clone();
    // A previous run of this replica cannot be working any more: take its tasks back at once. On
    // SQLite this process is the only worker, so every lease left behind is void.
    let released = match store.backend() {
        Backend::Sqlite => store.release_leases(None).await,
        Backend::Postgres => store.release_leases(Some(&options.node_id)).await,
    };
    match released {
        Ok(0) => {}
        Ok(n) => info!(tasks = n, "took back tasks held before a restart"),
        Err(err) => warn!(error = %err, "cannot release old leases; they will run out"),
    }
    let (commits, queue) = mpsc::channel::<Pending>(options.concurrency.max(1));
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    // SQLite has one writer; on PostgreSQL a second committer gathers the next batch while the
    // first waits for its flush.
    let committers = match store.backend() {
        Backend::Sqlite => 1,
        Backend::Postgres => 2,
    };
    let mut committing: JoinSet<()> = JoinSet::new();
    for _ in 0..committers {
        committing.spawn(committer(engine.clone(), queue.clone()).in_current_span());
    }
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let ready = store.tasks_ready();
    let mut running: JoinSet<()> = JoinSet::new();
    while !shutdown.is_cancelled() {
        while running.try_join_next().is_some() {}
        let free = permits.available_permits();
        let mut claimed = 0;
        if free > 0 {
            match claim(&engine, u32::try_from(free).unwrap_or(u32::MAX)).await {
                Ok(tasks) => {
                    claimed = tasks.len();
                    if claimed > 0 {
                        debug!(count = claimed, "claimed workflow tasks");
                    }
                    for (task, row) in tasks {
                        let Ok(permit) = permits.clone().acquire_owned().await else { break };
                        let span = tracing::debug_span!("task", instance_id = %task.instance_id, kind = ?task.kind, step = task.step);
                        running.spawn(run_task(engine.clone(), task, row, commits.clone(), permit).instrument(span));
                    }
                }
                Err(err) => warn!(error = %err, "cannot claim workflow tasks; will retry"),
            }
        }
        if claimed > 0 && claimed == free {
            continue; // there may be more due
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ready.notified() => {}
            _ = tokio::time::sleep(options.poll) => {}
            Some(_) = running.join_next(), if free == 0 => {}
        }
    }
    let drain = tokio::time::timeout(options.lease, async { while running.join_next().await.is_some() {} }).await;
    if drain.is_err() {
        running.abort_all();
    }
    drop(commits);
    while committing.join_next().await.is_some() {}
}

/// Claims up to `limit` due tasks and reads their runs.
async fn claim(engine: &Engine, limit: u32) -> Result<Vec<(Task, Option<InstanceRow>)>, StoreError> {
    let store = &engine.inner.store;
    let tasks = store.claim_tasks(&engine.inner.options.node_id, engine.inner.options.lease, limit).await?;
    if tasks.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<&str> = tasks.iter().map(|t| t.instance_id.as_str()).collect();
    let rows: HashMap<String, InstanceRow> =
        store.instances(&ids).await?.into_iter().map(|row| (row.id.clone(), row)).collect();
    // Two tasks of one run (a step and its deadline) both get the run as read.
    Ok(tasks.into_iter().map(|task| (task.clone(), rows.get(&task.instance_id).cloned())).collect())
}

async fn run_task(
    engine: Engine,
    task: Task,
    row: Option<InstanceRow>,
    commits: mpsc::Sender<Pending>,
    _permit: OwnedSemaphorePermit,
) {
    engine.handle(task, row, commits).await;
}

fn root_cause(err: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = err;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}
