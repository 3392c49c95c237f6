//! An in-process saga runner: named steps, each a forward action and an optional compensation,
//! run in order inside the caller's process; when a step fails, the compensations of the steps
//! that completed run in reverse order. For sagas that must survive the caller's crash, run them
//! on the control plane instead (`POST /api/saga/execute`, or a registered workflow).
//!
//! ```
//! # async fn demo() {
//! use reskflow_proto::saga::Saga;
//! let outcome = Saga::new("book-trip")
//!     .step("reserve-flight", |_| async { Ok(serde_json::json!({"seat": "12A"})) }, |_seat| async { Ok(()) })
//!     .step_without_compensation("charge", |ctx| async move { Err(format!("declined for {}", ctx.saga).into()) })
//!     .run()
//!     .await;
//! assert!(outcome.is_err());
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;

/// Errors a step or compensation may return.
pub type StepError = Box<dyn std::error::Error + Send + Sync>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Forward = Box<dyn Fn(StepContext) -> BoxFuture<Result<serde_json::Value, StepError>> + Send + Sync>;
type Compensate = Box<dyn Fn(serde_json::Value) -> BoxFuture<Result<(), StepError>> + Send + Sync>;

/// What a forward action sees: the saga's name and the outputs of the steps before it.
#[derive(Debug, Clone)]
pub struct StepContext {
    pub saga: String,
    pub step: String,
    pub previous: Vec<(String, serde_json::Value)>,
}

struct Step {
    name: String,
    forward: Forward,
    compensate: Option<Compensate>,
}

pub struct Saga {
    name: String,
    steps: Vec<Step>,
}

/// A saga that failed: which step, why, and which compensations failed in turn.
#[derive(Debug, thiserror::Error)]
#[error("saga {saga} failed at step {step}: {error}{}", compensation_summary(.compensation_failures))]
pub struct SagaFailed {
    pub saga: String,
    pub step: String,
    pub error: StepError,
    /// Steps that were undone, in the order their compensations ran.
    pub compensated: Vec<String>,
    pub compensation_failures: Vec<(String, StepError)>,
}

fn compensation_summary(failures: &[(String, StepError)]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        let list: Vec<_> = failures.iter().map(|(s, e)| format!("{s}: {e}")).collect();
        format!("; compensations failed: {}", list.join(", "))
    }
}

impl Saga {
    pub fn new(name: impl Into<String>) -> Saga {
        Saga { name: name.into(), steps: Vec::new() }
    }

    /// Adds a step: `forward` does the work and returns its output; `compensate`, given that
    /// output, undoes it.
    pub fn step<F, FFut, C, CFut>(self, name: impl Into<String>, forward: F, compensate: C) -> Saga
    where
        F: Fn(StepContext) -> FFut + Send + Sync + 'static,
        FFut: Future<Output = Result<serde_json::Value, StepError>> + Send + 'static,
        C: Fn(serde_json::Value) -> CFut + Send + Sync + 'static,
        CFut: Future<Output = Result<(), StepError>> + Send + 'static,
    {
        self.push(name.into(), forward, Some(Box::new(move |out| Box::pin(compensate(out)))))
    }

    /// Adds a step with nothing to undo (a read, a notification).
    pub fn step_without_compensation<F, FFut>(self, name: impl Into<String>, forward: F) -> Saga
    where
        F: Fn(StepContext) -> FFut + Send + Sync + 'static,
        FFut: Future<Output = Result<serde_json::Value, StepError>> + Send + 'static,
    {
        self.push(name.into(), forward, None)
    }

    fn push<F, FFut>(mut self, name: String, forward: F, compensate: Option<Compensate>) -> Saga
    where
        F: Fn(StepContext) -> FFut + Send + Sync + 'static,
        FFut: Future<Output = Result<serde_json::Value, StepError>> + Send + 'static,
    {
        let forward: Forward = Box::new(move |ctx| Box::pin(forward(ctx)));
        self.steps.push(Step { name, forward, compensate });
        self
    }

    /// Runs the steps in order. On success, every step's output by name; on failure, the completed
    /// steps' compensations have run (in reverse) before this returns.
    pub async fn run(self) -> Result<Vec<(String, serde_json::Value)>, SagaFailed> {
        let mut done: Vec<(usize, serde_json::Value)> = Vec::new();
        for (i, step) in self.steps.iter().enumerate() {
            let ctx = StepContext {
                saga: self.name.clone(),
                step: step.name.clone(),
                previous: done.iter().map(|(j, out)| (self.steps[*j].name.clone(), out.clone())).collect(),
            };
            match (step.forward)(ctx).await {
                Ok(output) => done.push((i, output)),
                Err(error) => {
                    let mut compensated = Vec::new();
                    let mut compensation_failures = Vec::new();
                    for (j, output) in done.into_iter().rev() {
                        let Some(compensate) = &self.steps[j].compensate else { continue };
                        match compensate(output).await {
                            Ok(()) => compensated.push(self.steps[j].name.clone()),
                            Err(e) => compensation_failures.push((self.steps[j].name.clone(), e)),
                        }
                    }
                    return Err(SagaFailed {
                        saga: self.name,
                        step: step.name.clone(),
                        error,
                        compensated,
                        compensation_failures,
                    });
                }
            }
        }
        Ok(done.into_iter().map(|(i, out)| (self.steps[i].name.clone(), out)).collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    type Log = Arc<Mutex<Vec<String>>>;

    fn saga(log: &Log, fail_at: &'static str) -> Saga {
        let mut saga = Saga::new("trip");
        for name in ["flight", "hotel", "charge"] {
            let (forward_log, undo_log) = (log.clone(), log.clone());
            let forward = move |ctx: StepContext| {
                let log = forward_log.clone();
                async move {
                    log.lock().unwrap().push(format!("do {}", ctx.step));
                    if ctx.step == fail_at {
                        return Err(format!("{} is full", ctx.step).into());
                    }
                    Ok(serde_json::json!({ "step": ctx.step, "seen": ctx.previous.len() }))
                }
            };
            let undo = move |output: serde_json::Value| {
                let log = undo_log.clone();
                async move {
                    log.lock().unwrap().push(format!("undo {}", output["step"].as_str().unwrap_or("?")));
                    Ok(())
                }
            };
            saga = if name == "hotel" {
                saga.step_without_compensation(name, forward)
            } else {
                saga.step(name, forward, undo)
            };
        }
        saga
    }

    #[tokio::test]
    async fn a_saga_runs_its_steps_in_order_and_returns_their_outputs() {
        let log = Log::default();
        let outputs = saga(&log, "none").run().await.unwrap();
        assert_eq!(outputs.len(), 3);
        assert_eq!(outputs[2].1["seen"], 2, "each step sees the outputs before it");
        assert_eq!(*log.lock().unwrap(), ["do flight", "do hotel", "do charge"]);
    }

    #[tokio::test]
    async fn a_failed_step_undoes_the_completed_ones_in_reverse() {
        let log = Log::default();
        let failed = saga(&log, "charge").run().await.unwrap_err();
        assert_eq!(failed.step, "charge");
        assert_eq!(failed.compensated, ["flight"], "hotel has no compensation");
        assert_eq!(*log.lock().unwrap(), ["do flight", "do hotel", "do charge", "undo flight"]);
        assert!(failed.to_string().contains("charge is full"));
    }
}
