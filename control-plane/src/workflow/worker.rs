//! Workers: claim due tasks from the store, run them, commit each outcome through the state
//! machine. A step call discovers a healthy instance of the step's service and POSTs the rendered
//! input to `/actions/{action}` with an `Idempotency-Key` that is the same on every retry and after
//! any restart (`<instance>:<step>`), so a call repeated after a crash is recognisable. 2xx JSON is
//! the output; 4xx a client error; 5xx, timeouts and connection failures are retryable by default.

use std::sync::Arc;
use std::time::Duration;

use reskflow_proto::registry::DiscoverQuery;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::definition::{Definition, RetryOn};
use super::engine::{transition_of, Engine, WorkflowError};
use super::state::{Event, Run, Status, StepError};
use crate::registry::RegistryError;
use crate::store::{now_ms, Backend, Committed, StoreError, Task, TaskKind};

/// Largest response body a step may return.
const MAX_OUTPUT_BYTES: usize = 8 * 1024 * 1024;

fn corrupt(instance_id: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { what: format!("run {instance_id}"), why: e.to_string() }
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
        instance_id: &str,
    ) -> Result<serde_json::Value, StepError> {
        let fail = |kind, message: String| StepError { kind, message };
        let query = DiscoverQuery { service_id: service.to_string(), ..Default::default() };
        let target = match self.inner.registry.discover(query) {
            Ok(found) => found.instance,
            Err(RegistryError::NotFound { .. }) => {
                return Err(fail(RetryOn::Connection, format!("service {service} is not registered")))
            }
            Err(err) => return Err(fail(RetryOn::Connection, err.to_string())),
        };
        let host = if target.address.contains(':') { format!("[{}]", target.address) } else { target.address.clone() };
        let scheme = if target.scheme == "https" { "https" } else { "http" };
        let url = format!("{scheme}://{host}:{}/actions/{action}", target.port);
        // One trace per run: the run's id (a UUID) is the trace id.
        let traceparent = format!("00-{}-{:016x}-01", instance_id.replace('-', ""), rand::random::<u64>() | 1);
        let sent = self
            .inner
            .http
            .post(&url)
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
        let body = match response.bytes().await {
            Ok(b) if b.len() > MAX_OUTPUT_BYTES => {
                return Err(fail(RetryOn::ServerError, format!("{url}: response larger than {MAX_OUTPUT_BYTES} bytes")))
            }
            Ok(b) => b,
            Err(e) if e.is_timeout() => {
                return Err(fail(RetryOn::Timeout, format!("{url}: body not received in time")))
            }
            Err(e) => return Err(fail(RetryOn::Connection, format!("{url}: {}", root_cause(&e)))),
        };
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

    async fn handle(self, task: Task) {
        let result = match task.kind {
            TaskKind::Step | TaskKind::Compensate => self.run_call(&task).await,
            TaskKind::Deadline => self.run_deadline(&task).await,
        };
        if let Err(err) = result {
            // The task stays leased and is retried once its lease runs out.
            warn!(instance_id = %task.instance_id, task_id = task.id, error = %err, "task failed; will retry");
        }
    }

    async fn run_call(&self, task: &Task) -> Result<(), WorkflowError> {
        let id = task.instance_id.as_str();
        let Some(row) = self.inner.store.instance(id).await? else {
            return Ok(());
        };
        let def = self.compiled(&row.workflow_id, row.version).await?;
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
            self.commit(task, &def, None).await?;
            return Ok(());
        };
        let vars = run.vars(id);
        let (service, action, template, timeout, key) = match (task.kind, &step.compensate) {
            (TaskKind::Compensate, Some(c)) => {
                (&c.service, &c.action, &c.input, c.timeout, format!("{id}:{}:compensate", step.id))
            }
            _ => (&step.service, &step.action, &step.input, step.timeout, format!("{id}:{}", step.id)),
        };
        let lease_until =
            now_ms() + i64::try_from((timeout + self.inner.options.lease).as_millis()).unwrap_or(i64::MAX / 2);
        if !self.inner.store.extend_lease(task.id, &self.inner.options.node_id, lease_until).await?
            && self.inner.options.lease < timeout
        {
            debug!(instance_id = %id, task_id = task.id, "task taken over before the call");
            return Ok(());
        }
        let outcome = match template.render(&vars) {
            Ok(input) => self.call(service, action, &input, &key, timeout, id).await,
            Err(e) => {
                Err(StepError { kind: RetryOn::ClientError, message: format!("rendering the input failed: {e}") })
            }
        };
        let event = match (task.kind, outcome) {
            (TaskKind::Step, Ok(output)) => Event::StepSucceeded { step: task.step, output },
            (TaskKind::Step, Err(error)) => Event::StepFailed { step: task.step, attempt: task.attempt, error },
            (_, Ok(_)) => Event::CompensationSucceeded { step: task.step },
            (_, Err(error)) => Event::CompensationFailed { step: task.step, attempt: task.attempt, error },
        };
        self.commit(task, &def, Some(event)).await
    }

    async fn run_deadline(&self, task: &Task) -> Result<(), WorkflowError> {
        let id = task.instance_id.clone();
        let Some(row) = self.inner.store.instance(&id).await? else {
            return Ok(());
        };
        let def = self.compiled(&row.workflow_id, row.version).await?;
        let owner = self.inner.options.node_id.clone();
        self.inner
            .store
            .transition(&id, Some((task.id, &owner)), true, |stored| {
                let mut run: Run = serde_json::from_str(stored.run).map_err(|e| corrupt(&id, e))?;
                let in_flight = run.current.is_some() && !stored.withdrew_call;
                let effects = run.on(&def, &id, Event::Deadline { in_flight }, &mut || rand::random::<f64>());
                if effects.is_empty() {
                    return Ok(None);
                }
                transition_of(&run, &effects, now_ms()).map(Some).map_err(|e| corrupt(&id, e))
            })
            .await?;
        Ok(())
    }

    /// Commits `event` for `task` of a run of `def` (None: just drop the task).
    async fn commit(&self, task: &Task, def: &Definition, event: Option<Event>) -> Result<(), WorkflowError> {
        let id = task.instance_id.clone();
        let owner = self.inner.options.node_id.clone();
        let mut finished = None;
        let committed = self
            .inner
            .store
            .transition(&id, Some((task.id, &owner)), false, |stored| {
                let Some(event) = event else {
                    return Ok(None);
                };
                let mut run: Run = serde_json::from_str(stored.run).map_err(|e| corrupt(&id, e))?;
                let effects = run.on(def, &id, event, &mut || rand::random::<f64>());
                if effects.is_empty() {
                    return Ok(None);
                }
                if run.status.is_final() {
                    finished = Some(run.status);
                }
                transition_of(&run, &effects, now_ms()).map(Some).map_err(|e| corrupt(&id, e))
            })
            .await?;
        match (committed, finished) {
            (Committed::LeaseLost, _) => {
                debug!(instance_id = %id, task_id = task.id, "lease lost; another worker owns the task")
            }
            (Committed::Done, Some(status)) => info!(instance_id = %id, status = ?status, "workflow finished"),
            (Committed::Done, None) => {}
        }
        Ok(())
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
    let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
    let ready = store.tasks_ready();
    let mut running: JoinSet<()> = JoinSet::new();
    while !shutdown.is_cancelled() {
        while running.try_join_next().is_some() {}
        let free = permits.available_permits();
        let mut claimed = 0;
        if free > 0 {
            match store.claim_tasks(&options.node_id, options.lease, u32::try_from(free).unwrap_or(u32::MAX)).await {
                Ok(tasks) => {
                    claimed = tasks.len();
                    if claimed > 0 {
                        debug!(count = claimed, "claimed workflow tasks");
                    }
                    for task in tasks {
                        let Ok(permit) = permits.clone().acquire_owned().await else { break };
                        let span = tracing::debug_span!("task", instance_id = %task.instance_id, kind = ?task.kind, step = task.step);
                        running.spawn(run_task(engine.clone(), task, permit).instrument(span));
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
}

async fn run_task(engine: Engine, task: Task, _permit: OwnedSemaphorePermit) {
    engine.handle(task).await;
}

fn root_cause(err: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = err;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}
