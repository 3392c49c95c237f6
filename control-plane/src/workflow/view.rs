//! What the API shows of a run: its status, input and output, every step with its attempts and
//! timings, and the history. Built from the stored run and its append-only history.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::definition::Definition;
use super::engine::WorkflowError;
use super::state::{History, Run, Stop};
use crate::store::InstanceRow;

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSummary {
    pub instance_id: String,
    pub workflow_id: String,
    pub version: i64,
    pub status: String,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
    #[serde(skip)]
    pub created_at_ms: i64,
}

impl InstanceSummary {
    pub fn of(row: &InstanceRow) -> Result<Self, WorkflowError> {
        Ok(InstanceSummary {
            instance_id: row.id.clone(),
            workflow_id: row.workflow_id.clone(),
            version: row.version,
            status: row.status.clone(),
            created_at: DateTime::from_timestamp_millis(row.created_at_ms),
            updated_at: DateTime::from_timestamp_millis(row.updated_at_ms),
            created_at_ms: row.created_at_ms,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: u32,
    pub at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepView {
    pub id: String,
    pub service: String,
    pub action: String,
    /// pending, scheduled, completed, failed, skipped, compensating, compensated, compensation_failed
    pub status: &'static str,
    pub attempts: Vec<Attempt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub compensation_attempts: Vec<Attempt>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    pub at: Option<DateTime<Utc>>,
    #[serde(flatten)]
    pub event: History,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    #[serde(flatten)]
    pub summary: InstanceSummary,
    pub input: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop: Option<Stop>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub current_step: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deadline: Option<DateTime<Utc>>,
    pub steps: Vec<StepView>,
    pub history: Vec<HistoryEntry>,
}

impl InstanceView {
    pub fn build(row: &InstanceRow, def: &Definition, history: &[(i64, String)]) -> Result<Self, WorkflowError> {
        let run: Run = serde_json::from_str(&row.run).map_err(|e| WorkflowError::Corrupt(e.to_string()))?;
        let mut steps: Vec<StepView> = def
            .steps
            .iter()
            .map(|s| StepView {
                id: s.id.clone(),
                service: s.service.clone(),
                action: s.action.clone(),
                status: "pending",
                attempts: Vec::new(),
                output: None,
                error: None,
                started_at: None,
                finished_at: None,
                compensation_attempts: Vec::new(),
            })
            .collect();
        let index: BTreeMap<&str, usize> = def.steps.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
        let mut entries = Vec::with_capacity(history.len());
        for (at_ms, body) in history {
            let event: History = serde_json::from_str(body).map_err(|e| WorkflowError::Corrupt(e.to_string()))?;
            let at = DateTime::from_timestamp_millis(*at_ms);
            let step_of = |id: &str| index.get(id).copied();
            match &event {
                History::StepScheduled { step, attempt } | History::StepRetrying { step, attempt, .. } => {
                    if let Some(i) = step_of(step) {
                        let s = &mut steps[i];
                        s.status = "scheduled";
                        s.started_at.get_or_insert(at.unwrap_or_default());
                        s.attempts.push(Attempt { attempt: *attempt, at, error: None });
                    }
                }
                History::AttemptFailed { step, attempt, error } => {
                    if let Some(a) =
                        step_of(step).and_then(|i| steps[i].attempts.iter_mut().find(|a| a.attempt == *attempt))
                    {
                        a.error = Some(error.message.clone());
                    }
                }
                History::StepCompleted { step, output } => {
                    if let Some(i) = step_of(step) {
                        steps[i].status = "completed";
                        steps[i].output = Some(output.clone());
                        steps[i].finished_at = at;
                    }
                }
                History::StepFailed { step, error } => {
                    if let Some(i) = step_of(step) {
                        steps[i].status = "failed";
                        steps[i].error = Some(error.clone());
                        steps[i].finished_at = at;
                    }
                }
                History::StepSkipped { step } => {
                    if let Some(i) = step_of(step) {
                        steps[i].status = "skipped";
                    }
                }
                History::CompensationScheduled { step, .. } => {
                    if let Some(i) = step_of(step) {
                        steps[i].status = "compensating";
                    }
                }
                History::CompensationAttemptFailed { step, attempt, error } => {
                    if let Some(i) = step_of(step) {
                        steps[i].compensation_attempts.push(Attempt {
                            attempt: *attempt,
                            at,
                            error: Some(error.message.clone()),
                        });
                    }
                }
                History::CompensationCompleted { step } => {
                    if let Some(i) = step_of(step) {
                        let s = &mut steps[i];
                        s.status = "compensated";
                        let attempt = u32::try_from(s.compensation_attempts.len()).unwrap_or(0) + 1;
                        s.compensation_attempts.push(Attempt { attempt, at, error: None });
                    }
                }
                History::CompensationFailed { step, error } => {
                    if let Some(i) = step_of(step) {
                        steps[i].status = "compensation_failed";
                        steps[i].error = Some(error.clone());
                    }
                }
                History::WorkflowStarted
                | History::CancelRequested
                | History::DeadlineReached
                | History::WorkflowFinished { .. } => {}
            }
            entries.push(HistoryEntry { at, event });
        }
        Ok(InstanceView {
            summary: InstanceSummary::of(row)?,
            input: run.input.clone(),
            output: run.output.clone(),
            stop: run.stop.clone(),
            current_step: run.current.and_then(|(s, _)| def.steps.get(s)).map(|s| s.id.clone()),
            deadline: (row.deadline_ms > 0).then(|| DateTime::from_timestamp_millis(row.deadline_ms)).flatten(),
            steps,
            history: entries,
        })
    }
}
