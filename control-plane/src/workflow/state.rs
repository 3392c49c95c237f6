//! A workflow run as a state machine: [`Run::on`] takes an event and returns the effects the engine
//! must carry out (schedule a step or a compensation, record history, finish). It does no I/O: the
//! caller stores the new state, the history and the next tasks in one transaction, so a crash
//! between two events loses nothing and repeats nothing that was committed.
//!
//! ```text
//! Running --step ok--> Running (next step: route, else the following one; $end -> Completed)
//! Running --step failed, retryable, attempts left--> Running (same step, attempt + 1, after backoff)
//! Running --step failed for good--> Running (onFailure target) | Compensating | Failed
//! Running --cancel / deadline--> (step in flight: wait for its result) -> Compensating | Cancelled | TimedOut
//! Compensating --compensation ok--> Compensating (next, in reverse completion order)
//!              --all done--> Compensated | Cancelled | TimedOut   (CompensationFailed if any failed for good)
//! Completed, Failed, Compensated, CompensationFailed, Cancelled, TimedOut: final; late events are absorbed.
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::definition::{Definition, RetryOn, RetrySpec, Target};
use reskflow_expr::Vars;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Running,
    Compensating,
    Completed,
    Failed,
    Compensated,
    CompensationFailed,
    Cancelled,
    TimedOut,
}

impl Status {
    pub fn is_final(self) -> bool {
        !matches!(self, Status::Running | Status::Compensating)
    }
}

/// Why a run stopped going forward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "reason")]
pub enum Stop {
    Failed { step: Option<String>, error: String },
    Cancelled,
    TimedOut,
}

/// How a step call failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StepError {
    pub kind: RetryOn,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub status: Status,
    pub input: serde_json::Value,
    /// The step whose call is scheduled or in flight, and its attempt.
    pub current: Option<(usize, u32)>,
    /// Completed steps, in completion order (compensations run in reverse).
    pub completed: Vec<usize>,
    /// Step id -> {"output": ...} for templates (`steps.<id>.output`).
    pub steps: BTreeMap<String, serde_json::Value>,
    /// A cancel or deadline arrived while a step was in flight.
    pub stopping: Option<Stop>,
    pub stop: Option<Stop>,
    /// Compensations still to run (step indexes, next first) and the attempt of the first.
    pub compensations: Vec<usize>,
    pub compensation_attempt: u32,
    pub compensation_failures: u32,
    pub output: Option<serde_json::Value>,
    /// How many times each step (by index) was entered; a step a workflow loops back to is called
    /// again under a new idempotency key. Absent: once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub visits: BTreeMap<usize, u32>,
    /// The W3C traceparent of the call that started the run, when tracing is on: each step's call
    /// is a span of that trace, across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start,
    StepSucceeded {
        step: usize,
        output: serde_json::Value,
    },
    StepFailed {
        step: usize,
        attempt: u32,
        error: StepError,
    },
    CompensationSucceeded {
        step: usize,
    },
    CompensationFailed {
        step: usize,
        attempt: u32,
        error: StepError,
    },
    /// `in_flight`: the current step's call may be running and its result must be awaited.
    Cancel {
        in_flight: bool,
    },
    Deadline {
        in_flight: bool,
    },
}

/// What the engine records in the run's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "type")]
pub enum History {
    WorkflowStarted,
    StepScheduled { step: String, attempt: u32 },
    StepSkipped { step: String },
    AttemptFailed { step: String, attempt: u32, error: StepError },
    StepRetrying { step: String, attempt: u32, delay_ms: u64 },
    StepCompleted { step: String, output: serde_json::Value },
    StepFailed { step: String, error: String },
    CancelRequested,
    DeadlineReached,
    CompensationScheduled { step: String, attempt: u32 },
    CompensationCompleted { step: String },
    CompensationAttemptFailed { step: String, attempt: u32, error: StepError },
    CompensationFailed { step: String, error: String },
    WorkflowFinished { status: Status },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Record(History),
    /// Call step `step` (attempt `attempt`) after `delay`.
    RunStep {
        step: usize,
        attempt: u32,
        delay: Duration,
    },
    RunCompensation {
        step: usize,
        attempt: u32,
        delay: Duration,
    },
    /// The run reached a final state.
    Finished(Status),
}

/// A uniform number in [0, 1) for jitter; injected so transitions stay deterministic in tests.
pub type Jitter<'a> = &'a mut dyn FnMut() -> f64;

fn retryable(policy: &RetrySpec, attempt: u32, error: &StepError) -> bool {
    attempt < policy.max_attempts && policy.retry_on.contains(&error.kind)
}

impl Run {
    pub fn new(input: serde_json::Value) -> Run {
        Run {
            status: Status::Running,
            input,
            current: None,
            completed: Vec::new(),
            steps: BTreeMap::new(),
            stopping: None,
            stop: None,
            compensations: Vec::new(),
            compensation_attempt: 0,
            compensation_failures: 0,
            output: None,
            visits: BTreeMap::new(),
            trace: None,
        }
    }

    /// The `Idempotency-Key` of the current visit of `step`: the same on every attempt and after any
    /// restart, new on a later visit (`<run>:<step>`, then `<run>:<step>#2`, ...).
    pub fn step_key(&self, instance_id: &str, def: &Definition, step: usize) -> String {
        let id = def.steps.get(step).map_or("", |s| s.id.as_str());
        match self.visits.get(&step).copied().unwrap_or(1) {
            0 | 1 => format!("{instance_id}:{id}"),
            visit => format!("{instance_id}:{id}#{visit}"),
        }
    }

    /// The `Idempotency-Key` of the compensation of `step` that runs now: one per completed visit
    /// (the latest visit is undone first), stable across restarts.
    pub fn compensation_key(&self, instance_id: &str, def: &Definition, step: usize) -> String {
        let id = def.steps.get(step).map_or("", |s| s.id.as_str());
        match self.compensations.iter().filter(|&&s| s == step).count() {
            0 | 1 => format!("{instance_id}:{id}:compensate"),
            n => format!("{instance_id}:{id}:compensate#{n}"),
        }
    }

    /// The variables templates and conditions see.
    pub fn vars(&self, instance_id: &str) -> Vars {
        let steps = serde_json::Value::Object(self.steps.clone().into_iter().collect());
        Vars::new()
            .with("input", &self.input)
            .with("steps", &steps)
            .with("workflow", &serde_json::json!({ "instanceId": instance_id }))
    }

    /// Applies one event. Final states absorb every event.
    pub fn on(&mut self, def: &Definition, instance_id: &str, event: Event, jitter: Jitter<'_>) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.status.is_final() {
            return fx;
        }
        match event {
            Event::Start => {
                fx.push(Effect::Record(History::WorkflowStarted));
                self.enter(def, instance_id, Target::Step(0), &mut fx);
            }
            Event::StepSucceeded { step, output } => {
                if self.current.map(|(s, _)| s) != Some(step) {
                    return fx; // a duplicate or stale result: already recorded
                }
                self.current = None;
                let id = def.steps[step].id.clone();
                self.steps.insert(id.clone(), serde_json::json!({ "output": output.clone() }));
                self.completed.push(step);
                fx.push(Effect::Record(History::StepCompleted { step: id, output }));
                if let Some(stop) = self.stopping.take() {
                    self.begin_compensation(def, stop, &mut fx);
                } else {
                    match self.route(def, instance_id, step) {
                        Ok(target) => self.enter(def, instance_id, target, &mut fx),
                        Err(error) => self.fail(def, Some(step), error, &mut fx),
                    }
                }
            }
            Event::StepFailed { step, attempt, error } => {
                if self.current != Some((step, attempt)) {
                    return fx;
                }
                let spec = &def.steps[step];
                fx.push(Effect::Record(History::AttemptFailed {
                    step: spec.id.clone(),
                    attempt,
                    error: error.clone(),
                }));
                if self.stopping.is_none() && retryable(&spec.retry, attempt, &error) {
                    let delay = spec.retry.backoff.jittered(attempt, jitter());
                    self.current = Some((step, attempt + 1));
                    fx.push(Effect::Record(History::StepRetrying {
                        step: spec.id.clone(),
                        attempt: attempt + 1,
                        delay_ms: u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    }));
                    fx.push(Effect::RunStep { step, attempt: attempt + 1, delay });
                    return fx;
                }
                self.current = None;
                let message = format!("{} after {attempt} attempt(s)", error.message);
                fx.push(Effect::Record(History::StepFailed { step: spec.id.clone(), error: message.clone() }));
                if let Some(stop) = self.stopping.take() {
                    self.begin_compensation(def, stop, &mut fx);
                } else if let Some(target) = spec.on_failure {
                    self.steps.insert(spec.id.clone(), serde_json::json!({ "error": message }));
                    self.enter(def, instance_id, target, &mut fx);
                } else {
                    self.fail(def, Some(step), message, &mut fx);
                }
            }
            Event::Cancel { in_flight } | Event::Deadline { in_flight } => {
                let (stop, record) = match event {
                    Event::Cancel { .. } => (Stop::Cancelled, History::CancelRequested),
                    _ => (Stop::TimedOut, History::DeadlineReached),
                };
                if self.status == Status::Compensating || self.stopping.is_some() {
                    return fx; // already on the way out
                }
                fx.push(Effect::Record(record));
                if in_flight && self.current.is_some() {
                    self.stopping = Some(stop);
                } else {
                    self.current = None;
                    self.begin_compensation(def, stop, &mut fx);
                }
            }
            Event::CompensationSucceeded { step } => {
                if self.status != Status::Compensating || self.compensations.first() != Some(&step) {
                    return fx;
                }
                fx.push(Effect::Record(History::CompensationCompleted { step: def.steps[step].id.clone() }));
                self.compensations.remove(0);
                self.next_compensation(def, &mut fx);
            }
            Event::CompensationFailed { step, attempt, error } => {
                if self.status != Status::Compensating
                    || self.compensations.first() != Some(&step)
                    || self.compensation_attempt != attempt
                {
                    return fx;
                }
                let id = def.steps[step].id.clone();
                fx.push(Effect::Record(History::CompensationAttemptFailed {
                    step: id.clone(),
                    attempt,
                    error: error.clone(),
                }));
                let Some(comp) = def.steps[step].compensate.as_ref() else {
                    return fx;
                };
                if retryable(&comp.retry, attempt, &error) {
                    self.compensation_attempt = attempt + 1;
                    let delay = comp.retry.backoff.jittered(attempt, jitter());
                    fx.push(Effect::RunCompensation { step, attempt: attempt + 1, delay });
                } else {
                    // Keep undoing the other steps; the run ends COMPENSATION_FAILED for an operator.
                    fx.push(Effect::Record(History::CompensationFailed {
                        step: id,
                        error: format!("{} after {attempt} attempt(s)", error.message),
                    }));
                    self.compensation_failures += 1;
                    self.compensations.remove(0);
                    self.next_compensation(def, &mut fx);
                }
            }
        }
        fx
    }

    /// Where the run goes after `step` succeeded: the first route that holds, else the next step.
    fn route(&self, def: &Definition, instance_id: &str, step: usize) -> Result<Target, String> {
        let spec = &def.steps[step];
        let vars = self.vars(instance_id);
        for (when, target) in &spec.routes {
            let holds = match when {
                None => true,
                Some(expr) => expr.eval_bool(&vars).map_err(|e| format!("routing of step {}: {e}", spec.id))?,
            };
            if holds {
                return Ok(*target);
            }
        }
        Ok(if step + 1 < def.steps.len() { Target::Step(step + 1) } else { Target::End })
    }

    /// Starts `target`, skipping steps whose condition is false (a skipped step falls through).
    fn enter(&mut self, def: &Definition, instance_id: &str, mut target: Target, fx: &mut Vec<Effect>) {
        loop {
            let step = match target {
                Target::End => return self.complete(def, instance_id, fx),
                Target::Step(step) => step,
            };
            let spec = &def.steps[step];
            let run = match &spec.condition {
                None => Ok(true),
                Some(cond) => cond.eval_bool(&self.vars(instance_id)),
            };
            match run {
                Ok(true) => {
                    *self.visits.entry(step).or_insert(0) += 1;
                    self.current = Some((step, 1));
                    fx.push(Effect::Record(History::StepScheduled { step: spec.id.clone(), attempt: 1 }));
                    fx.push(Effect::RunStep { step, attempt: 1, delay: Duration::ZERO });
                    return;
                }
                Ok(false) => {
                    fx.push(Effect::Record(History::StepSkipped { step: spec.id.clone() }));
                    target = if step + 1 < def.steps.len() { Target::Step(step + 1) } else { Target::End };
                }
                Err(err) => return self.fail(def, Some(step), format!("condition of step {}: {err}", spec.id), fx),
            }
        }
    }

    fn complete(&mut self, def: &Definition, instance_id: &str, fx: &mut Vec<Effect>) {
        match def.output.as_ref().map(|t| t.render(&self.vars(instance_id))) {
            None => self.output = Some(serde_json::Value::Object(Default::default())),
            Some(Ok(output)) => self.output = Some(output),
            Some(Err(err)) => return self.fail(def, None, format!("output mapping: {err}"), fx),
        }
        self.finish(Status::Completed, fx);
    }

    fn fail(&mut self, def: &Definition, step: Option<usize>, error: String, fx: &mut Vec<Effect>) {
        let step = step.map(|s| def.steps[s].id.clone());
        self.begin_compensation(def, Stop::Failed { step, error }, fx);
    }

    fn begin_compensation(&mut self, def: &Definition, stop: Stop, fx: &mut Vec<Effect>) {
        self.current = None;
        self.stop = Some(stop);
        self.compensations =
            self.completed.iter().rev().copied().filter(|&s| def.steps[s].compensate.is_some()).collect();
        self.status = Status::Compensating;
        self.next_compensation(def, fx);
    }

    fn next_compensation(&mut self, def: &Definition, fx: &mut Vec<Effect>) {
        if let Some(&step) = self.compensations.first() {
            self.compensation_attempt = 1;
            fx.push(Effect::Record(History::CompensationScheduled { step: def.steps[step].id.clone(), attempt: 1 }));
            fx.push(Effect::RunCompensation { step, attempt: 1, delay: Duration::ZERO });
            return;
        }
        let compensated_any = self.completed.iter().any(|&s| def.steps[s].compensate.is_some());
        let status = match (&self.stop, self.compensation_failures > 0) {
            (_, true) => Status::CompensationFailed,
            (Some(Stop::Cancelled), false) => Status::Cancelled,
            (Some(Stop::TimedOut), false) => Status::TimedOut,
            (_, false) if compensated_any => Status::Compensated,
            (_, false) => Status::Failed,
        };
        self.finish(status, fx);
    }

    fn finish(&mut self, status: Status, fx: &mut Vec<Effect>) {
        self.status = status;
        self.current = None;
        fx.push(Effect::Record(History::WorkflowFinished { status }));
        fx.push(Effect::Finished(status));
    }
}

#[cfg(test)]
mod tests;
