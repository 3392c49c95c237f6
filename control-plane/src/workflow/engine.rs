//! The workflow engine's front: registering definitions, starting, reading and cancelling runs.
//! Work itself happens in `worker`, which turns queued tasks into step calls and commits each
//! outcome through the state machine in `state`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reskflow_proto::invalid::Invalid;
use serde::Serialize;

use super::definition::Definition;
use super::state::{Effect, Event, History, Run, Status};
use crate::registry::Registry;
use crate::store::{
    Committed, InstanceRow, NewInstance, NewTask, Store, StoreError, StoredDefinition, TaskKind, Transition,
};
use reskflow_sidecar::balance::Locality;
use reskflow_sidecar::upstreams::Upstreams;

#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("stored state is unreadable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for WorkflowError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { kind, id } => WorkflowError::NotFound { kind, id },
            StoreError::Conflict(msg) => WorkflowError::Conflict(msg),
            StoreError::Unavailable(e) => WorkflowError::Unavailable(format!("database unavailable: {e}")),
            other => WorkflowError::Store(other),
        }
    }
}

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// This replica's name on task leases.
    pub node_id: String,
    /// Step and compensation calls running at once on this replica.
    pub concurrency: usize,
    /// How long a claimed task is held; a replica that dies loses its tasks after this. Each task
    /// is held at least for its step's timeout plus this margin.
    pub lease: Duration,
    /// How often idle workers look for due tasks (they are also woken when this replica queues one).
    pub poll: Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            node_id: uuid::Uuid::new_v4().to_string(),
            concurrency: 64,
            lease: Duration::from_secs(10),
            poll: Duration::from_millis(250),
        }
    }
}

/// A registered definition version.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionInfo {
    pub id: String,
    pub version: i64,
    pub name: String,
    pub created_at: Option<DateTime<Utc>>,
    pub definition: serde_json::Value,
}

impl DefinitionInfo {
    fn from_stored(d: StoredDefinition) -> Result<Self, WorkflowError> {
        Ok(DefinitionInfo {
            definition: serde_json::from_str(&d.body).map_err(|e| WorkflowError::Corrupt(e.to_string()))?,
            id: d.id,
            version: d.version,
            name: d.name,
            created_at: DateTime::from_timestamp_millis(d.created_at_ms),
        })
    }
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub store: Store,
    /// Step calls go through the data plane's balancers, breakers and outlier detection, fed
    /// from this replica's registry (every service, with its traffic policy).
    pub upstreams: Arc<Upstreams>,
    pub options: EngineOptions,
    pub http: reqwest::Client,
    /// Compiled definitions by (id, version); versions never change once stored.
    definitions: Mutex<HashMap<(String, i64), Arc<Definition>>>,
    /// New runs waiting to be written (see [`creator`]).
    creates: tokio::sync::mpsc::Sender<PendingCreate>,
}

type CreateResult = Result<(String, bool), WorkflowError>;

struct PendingCreate {
    run: NewInstance,
    reply: tokio::sync::oneshot::Sender<CreateResult>,
}

/// Keeps the step calls' upstreams in step with the registry: every service, its healthy
/// instances and its traffic policy, rebuilt at each registry version this replica applies.
async fn follow_registry(registry: Registry, upstreams: Arc<Upstreams>) {
    let mut versions = registry.versions();
    let everything = crate::config_push::Wanted { all: true, services: Vec::new(), routes: false };
    loop {
        let config = crate::config_push::build(&registry.read(), &everything);
        if let Err(why) = upstreams.apply(config, "registry") {
            tracing::warn!(%why, "a service's traffic policy is not usable for step calls");
        }
        if versions.changed().await.is_err() {
            return;
        }
    }
}

/// Runs created at once, at most.
const MAX_CREATE_BATCH: usize = 256;

/// Writes new runs as they come: those that arrive while a batch is being written go into the next
/// one, so concurrent `execute`s share a transaction and a lone one is written at once. Ends when
/// the engine is dropped.
async fn creator(store: Store, mut queue: tokio::sync::mpsc::Receiver<PendingCreate>) {
    let mut batch = Vec::with_capacity(MAX_CREATE_BATCH);
    while queue.recv_many(&mut batch, MAX_CREATE_BATCH).await > 0 {
        let (runs, replies): (Vec<_>, Vec<_>) = batch.drain(..).map(|p| (p.run, p.reply)).unzip();
        match store.create_instances(&runs).await {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result.map_err(WorkflowError::from));
                }
            }
            Err(err) => {
                // The whole transaction failed (nothing was written): the caller may try again.
                let message = err.to_string();
                for reply in replies {
                    let _ = reply.send(Err(WorkflowError::Unavailable(message.clone())));
                }
            }
        }
    }
}

/// Turns the state machine's effects into what the store writes.
pub(super) fn transition_of(
    def: &Definition,
    run: &Run,
    effects: &[Effect],
    now_ms: i64,
) -> Result<Transition, WorkflowError> {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2);
    let mut t = Transition {
        status: status_name(run.status).to_string(),
        run: serde_json::to_string(run).map_err(|e| WorkflowError::Corrupt(e.to_string()))?,
        ..Default::default()
    };
    for effect in effects {
        match effect {
            Effect::Record(h) => {
                t.history.push(serde_json::to_string(h).map_err(|e| WorkflowError::Corrupt(e.to_string()))?)
            }
            Effect::RunStep { step, attempt, delay } => t.tasks.push(NewTask {
                kind: TaskKind::Step,
                step: *step,
                attempt: *attempt,
                run_at_ms: now_ms + ms(*delay),
                hold_ms: def.steps.get(*step).map_or(0, |s| ms(s.timeout)),
            }),
            Effect::RunCompensation { step, attempt, delay } => t.tasks.push(NewTask {
                kind: TaskKind::Compensate,
                step: *step,
                attempt: *attempt,
                run_at_ms: now_ms + ms(*delay),
                hold_ms: def.steps.get(*step).and_then(|s| s.compensate.as_ref()).map_or(0, |c| ms(c.timeout)),
            }),
            Effect::Finished(_) => t.finished = true,
        }
    }
    Ok(t)
}

pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Running => "RUNNING",
        Status::Compensating => "COMPENSATING",
        Status::Completed => "COMPLETED",
        Status::Failed => "FAILED",
        Status::Compensated => "COMPENSATED",
        Status::CompensationFailed => "COMPENSATION_FAILED",
        Status::Cancelled => "CANCELLED",
        Status::TimedOut => "TIMED_OUT",
    }
}

fn jitter() -> f64 {
    rand::random::<f64>()
}

fn check_input(def: &Definition, input: &serde_json::Value) -> Result<(), Invalid> {
    let Some(schema) = &def.spec.input_schema else {
        return Ok(());
    };
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| Invalid::one("inputSchema", format!("the workflow's schema is invalid: {e}")))?;
    let violations: Vec<_> = validator
        .iter_errors(input)
        .map(|e| {
            let pointer = e.instance_path().to_string();
            reskflow_proto::FieldViolation {
                field: if pointer.is_empty() { "input".into() } else { format!("input{pointer}") },
                description: e.to_string(),
            }
        })
        .collect();
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Invalid(violations))
    }
}

impl Engine {
    pub fn new(store: Store, registry: Registry, options: EngineOptions) -> Result<Engine, WorkflowError> {
        let http = reqwest::Client::builder()
            .user_agent("reskflow-workflow/1")
            .pool_max_idle_per_host(options.concurrency)
            .build()
            .map_err(|e| WorkflowError::Unavailable(format!("cannot build the HTTP client: {e}")))?;
        let (creates, queue) = tokio::sync::mpsc::channel(MAX_CREATE_BATCH * 4);
        tokio::spawn(creator(store.clone(), queue));
        let upstreams = Arc::new(Upstreams::new(Locality::default()));
        tokio::spawn(follow_registry(registry.clone(), upstreams.clone()));
        Ok(Engine {
            inner: Arc::new(Inner {
                store,
                upstreams,
                options,
                http,
                definitions: Mutex::new(HashMap::new()),
                creates,
            }),
        })
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Checks and stores a definition as the id's next version.
    pub async fn register(&self, json: &str) -> Result<DefinitionInfo, WorkflowError> {
        let def = Definition::parse(json)?;
        if let Some(schema) = &def.spec.input_schema {
            jsonschema::validator_for(schema).map_err(|e| Invalid::one("inputSchema", e.to_string()))?;
        }
        let body = serde_json::to_string(&def.spec).map_err(|e| WorkflowError::Corrupt(e.to_string()))?;
        let name = if def.spec.name.is_empty() { def.spec.id.clone() } else { def.spec.name.clone() };
        let version = self.inner.store.put_definition(&def.spec.id, &name, &body).await?;
        let stored = self
            .inner
            .store
            .definition(&def.spec.id, Some(version))
            .await?
            .ok_or_else(|| WorkflowError::Unavailable("the definition vanished after it was stored".into()))?;
        self.cache().insert((def.spec.id.clone(), version), Arc::new(def));
        DefinitionInfo::from_stored(stored)
    }

    pub async fn definition_info(&self, id: &str, version: Option<i64>) -> Result<DefinitionInfo, WorkflowError> {
        let stored = self
            .inner
            .store
            .definition(id, version)
            .await?
            .ok_or_else(|| WorkflowError::NotFound { kind: "workflow", id: id.to_string() })?;
        DefinitionInfo::from_stored(stored)
    }

    /// One page of definitions (latest versions, by id) and the token of the next page (empty at
    /// the end). The token is the last id of the page.
    pub async fn list_definitions(
        &self,
        page_token: &str,
        page_size: u32,
    ) -> Result<(Vec<DefinitionInfo>, String), WorkflowError> {
        let mut rows = self.inner.store.list_definitions(page_token, page_size + 1).await?;
        let more = rows.len() > page_size as usize;
        rows.truncate(page_size as usize);
        let next = match (more, rows.last()) {
            (true, Some(last)) => last.id.clone(),
            _ => String::new(),
        };
        Ok((rows.into_iter().map(DefinitionInfo::from_stored).collect::<Result<_, _>>()?, next))
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i64), Arc<Definition>>> {
        self.inner.definitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The compiled definition of a version (compiled once, then cached).
    pub(super) async fn compiled(&self, id: &str, version: i64) -> Result<Arc<Definition>, WorkflowError> {
        if let Some(def) = self.cache().get(&(id.to_string(), version)) {
            return Ok(def.clone());
        }
        let stored = self
            .inner
            .store
            .definition(id, Some(version))
            .await?
            .ok_or_else(|| WorkflowError::NotFound { kind: "workflow", id: format!("{id} v{version}") })?;
        let def = Arc::new(
            Definition::parse(&stored.body)
                .map_err(|e| WorkflowError::Corrupt(format!("workflow {id} v{version}: {e}")))?,
        );
        self.cache().insert((id.to_string(), version), def.clone());
        Ok(def)
    }

    /// Starts a run of the latest (or the given) version. With an idempotency key already used for
    /// this workflow, returns that run instead (`created` false).
    pub async fn execute(
        &self,
        workflow_id: &str,
        version: Option<i64>,
        input: serde_json::Value,
        idempotency_key: Option<String>,
    ) -> Result<(String, bool), WorkflowError> {
        let stored = self
            .inner
            .store
            .definition(workflow_id, version)
            .await?
            .ok_or_else(|| WorkflowError::NotFound { kind: "workflow", id: workflow_id.to_string() })?;
        if let Some(key) = &idempotency_key {
            if key.is_empty() || key.len() > 256 {
                return Err(Invalid::one("idempotencyKey", "must be 1-256 characters").into());
            }
        }
        let def = self.compiled(workflow_id, stored.version).await?;
        check_input(&def, &input)?;
        let id = uuid::Uuid::now_v7().to_string();
        let now = crate::store::now_ms();
        let mut run = Run::new(input);
        if reskflow_runtime::telemetry::enabled() {
            run.trace = reskflow_runtime::telemetry::traceparent_of(&tracing::Span::current());
        }
        let effects = run.on(&def, &id, Event::Start, &mut jitter);
        let mut t = transition_of(&def, &run, &effects, now)?;
        let deadline_ms = def.spec.timeout.map_or(0, |d| now + i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2));
        if deadline_ms > 0 && !t.finished {
            t.tasks.push(NewTask { kind: TaskKind::Deadline, step: 0, attempt: 0, run_at_ms: deadline_ms, hold_ms: 0 });
        }
        let row = InstanceRow {
            id,
            workflow_id: workflow_id.to_string(),
            version: stored.version,
            status: t.status.clone(),
            run: t.run.clone(),
            idempotency_key,
            created_at_ms: now,
            updated_at_ms: now,
            deadline_ms,
        };
        let (reply, created) = tokio::sync::oneshot::channel();
        let stopping = || WorkflowError::Unavailable("the engine is stopping".into());
        let run = NewInstance { row, history: t.history, tasks: t.tasks };
        self.inner.creates.send(PendingCreate { run, reply }).await.map_err(|_| stopping())?;
        created.await.map_err(|_| stopping())?
    }

    /// Runs an ad-hoc saga; with `wait`, waits up to that long for it to end. Returns the run's id,
    /// whether it is new, and its detail when it ended within the wait.
    pub async fn execute_saga(
        &self,
        json: &str,
    ) -> Result<(String, bool, Option<super::view::InstanceView>), WorkflowError> {
        let request = super::saga::SagaRequest::parse(json)?;
        let spec = request.workflow();
        // Check it as a definition (step names, calls, templates), naming fields as the saga does.
        let def = Definition::compile(spec.clone()).map_err(|invalid| {
            Invalid(
                invalid
                    .0
                    .into_iter()
                    .map(|mut v| {
                        v.field = super::saga::saga_field(&v.field);
                        v
                    })
                    .collect(),
            )
        })?;
        let body = serde_json::to_string(&def.spec).map_err(|e| WorkflowError::Corrupt(e.to_string()))?;
        let stored = self.inner.store.definition(&spec.id, None).await?;
        let version = match stored {
            Some(d) if d.body == body => d.version,
            _ => self.inner.store.put_definition(&spec.id, &spec.name, &body).await?,
        };
        let (id, created) = self
            .execute(
                &spec.id,
                Some(version),
                request.input.unwrap_or_else(|| serde_json::json!({})),
                request.idempotency_key,
            )
            .await?;
        let Some(wait) = request.wait else {
            return Ok((id, created, None));
        };
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let view = self.view(&id).await?;
            if !matches!(view.summary.status.as_str(), "RUNNING" | "COMPENSATING") {
                return Ok((id, created, Some(view)));
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok((id, created, None));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asks a run to stop: no new step starts, the step in flight is still recorded, completed
    /// steps are compensated, then the run ends CANCELLED.
    pub async fn cancel(&self, instance_id: &str) -> Result<(), WorkflowError> {
        let row = self.row(instance_id).await?;
        let def = self.compiled(&row.workflow_id, row.version).await?;
        let mut refused = None;
        let committed = self
            .inner
            .store
            .transition(instance_id, None, true, |stored| {
                let mut run: Run = serde_json::from_str(stored.run)
                    .map_err(|e| StoreError::Corrupt { what: format!("run {instance_id}"), why: e.to_string() })?;
                if run.status.is_final() {
                    refused = Some(status_name(run.status));
                    return Ok(None);
                }
                let in_flight = run.current.is_some() && !stored.withdrew_call;
                let effects = run.on(&def, instance_id, Event::Cancel { in_flight }, &mut jitter);
                transition_of(&def, &run, &effects, crate::store::now_ms())
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt { what: format!("run {instance_id}"), why: e.to_string() })
            })
            .await?;
        debug_assert_eq!(committed, Committed::Done);
        match refused {
            Some(status) => {
                Err(WorkflowError::Conflict(format!("workflow instance {instance_id} already ended {status}")))
            }
            None => Ok(()),
        }
    }

    async fn row(&self, instance_id: &str) -> Result<InstanceRow, WorkflowError> {
        self.inner
            .store
            .instance(instance_id)
            .await?
            .ok_or_else(|| WorkflowError::NotFound { kind: "workflow instance", id: instance_id.to_string() })
    }

    /// A run with its steps and history, as the API shows it.
    pub async fn view(&self, instance_id: &str) -> Result<super::view::InstanceView, WorkflowError> {
        let row = self.row(instance_id).await?;
        let def = self.compiled(&row.workflow_id, row.version).await?;
        let history = self.inner.store.history(instance_id).await?;
        super::view::InstanceView::build(&row, &def, &history)
    }

    /// One page of runs, newest first, and the token of the next page (empty at the end).
    pub async fn list(
        &self,
        workflow_id: &str,
        status: Option<&str>,
        page_token: &str,
        page_size: u32,
    ) -> Result<(Vec<super::view::InstanceSummary>, String), WorkflowError> {
        let after = if page_token.is_empty() {
            None
        } else {
            let parsed = page_token.split_once('.').and_then(|(ms, id)| Some((ms.parse::<i64>().ok()?, id)));
            Some(parsed.ok_or_else(|| Invalid::one("pageToken", "is not a token this API returned"))?)
        };
        let rows = self.inner.store.list_instances(workflow_id, status, after, page_size + 1).await?;
        let more = rows.len() > page_size as usize;
        let page: Vec<_> =
            rows.iter().take(page_size as usize).map(super::view::InstanceSummary::of).collect::<Result<_, _>>()?;
        let next = match (more, page.last()) {
            (true, Some(last)) => format!("{}.{}", last.created_at_ms, last.instance_id),
            _ => String::new(),
        };
        Ok((page, next))
    }

    /// Decodes a stored history entry (for views and tests).
    pub fn parse_history(body: &str) -> Result<History, WorkflowError> {
        serde_json::from_str(body).map_err(|e| WorkflowError::Corrupt(e.to_string()))
    }
}
