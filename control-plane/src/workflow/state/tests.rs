use serde_json::json;

use super::*;
use crate::workflow::definition::Definition;

fn def() -> Definition {
    Definition::parse(
        &json!({
            "id": "order", "steps": [
                {"id": "reserve", "service": "stock", "action": "reserve",
                 "compensate": {"service": "stock", "action": "release", "retry": {"maxAttempts": 2}}},
                {"id": "pay", "service": "payments", "action": "charge",
                 "retry": {"maxAttempts": 3, "backoff": {"initial": "100ms", "multiplier": 2, "max": "1s", "jitter": 0}},
                 "next": [{"when": "steps.pay.output.review", "goto": "review"}],
                 "compensate": {"service": "payments", "action": "refund"}},
                {"id": "gift", "service": "gifts", "action": "wrap", "condition": "input.gift"},
                {"id": "ship", "service": "shipping", "action": "create", "next": [{"goto": "$end"}]},
                {"id": "review", "service": "backoffice", "action": "review"}
            ],
            "output": {"charge": "{{steps.pay.output.id}}"}
        })
        .to_string(),
    )
    .unwrap()
}

fn err(kind: RetryOn) -> StepError {
    StepError { kind, message: format!("{kind:?}") }
}

fn runs(fx: &[Effect]) -> Vec<(usize, u32, u128)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::RunStep { step, attempt, delay } => Some((*step, *attempt, delay.as_millis())),
            _ => None,
        })
        .collect()
}

fn compensations(fx: &[Effect]) -> Vec<usize> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::RunCompensation { step, .. } => Some(*step),
            _ => None,
        })
        .collect()
}

fn finished(fx: &[Effect]) -> Option<Status> {
    fx.iter().find_map(|e| match e {
        Effect::Finished(s) => Some(*s),
        _ => None,
    })
}

struct Harness {
    def: Definition,
    run: Run,
}

impl Harness {
    fn start(input: serde_json::Value) -> (Harness, Vec<Effect>) {
        let mut h = Harness { def: def(), run: Run::new(input) };
        let fx = h.on(Event::Start);
        (h, fx)
    }

    fn on(&mut self, event: Event) -> Vec<Effect> {
        self.run.on(&self.def, "wf-1", event, &mut || 0.5)
    }

    fn ok(&mut self, step: usize, output: serde_json::Value) -> Vec<Effect> {
        self.on(Event::StepSucceeded { step, output })
    }
}

#[test]
fn a_run_goes_through_its_steps_skipping_false_conditions_and_maps_its_output() {
    let (mut h, fx) = Harness::start(json!({"gift": false}));
    assert_eq!(runs(&fx), [(0, 1, 0)]);
    assert_eq!(runs(&h.ok(0, json!({}))), [(1, 1, 0)]);
    let fx = h.ok(1, json!({"id": "ch_1", "review": false}));
    assert_eq!(runs(&fx), [(3, 1, 0)], "gift skipped");
    assert!(fx.contains(&Effect::Record(History::StepSkipped { step: "gift".into() })));
    let fx = h.ok(3, json!({}));
    assert_eq!(finished(&fx), Some(Status::Completed));
    assert_eq!(h.run.output, Some(json!({"charge": "ch_1"})));
}

#[test]
fn routes_on_results_send_the_run_elsewhere() {
    let (mut h, _) = Harness::start(json!({"gift": true}));
    h.ok(0, json!({}));
    let fx = h.ok(1, json!({"id": "ch_1", "review": true}));
    assert_eq!(runs(&fx), [(4, 1, 0)]);
}

#[test]
fn retryable_failures_retry_with_backoff_then_compensate_in_reverse() {
    let (mut h, _) = Harness::start(json!({"gift": false}));
    h.ok(0, json!({}));
    let fx = h.on(Event::StepFailed { step: 1, attempt: 1, error: err(RetryOn::ServerError) });
    assert_eq!(runs(&fx), [(1, 2, 100)]);
    let fx = h.on(Event::StepFailed { step: 1, attempt: 2, error: err(RetryOn::Timeout) });
    assert_eq!(runs(&fx), [(1, 3, 200)]);
    let fx = h.on(Event::StepFailed { step: 1, attempt: 3, error: err(RetryOn::ServerError) });
    assert!(runs(&fx).is_empty());
    assert_eq!(compensations(&fx), [0], "only the completed step is undone");
    assert_eq!(h.run.status, Status::Compensating);
    let fx = h.on(Event::CompensationSucceeded { step: 0 });
    assert_eq!(finished(&fx), Some(Status::Compensated));
    assert!(matches!(h.run.stop, Some(Stop::Failed { ref step, .. }) if step.as_deref() == Some("pay")));
}

#[test]
fn client_errors_are_not_retried_by_default() {
    let (mut h, _) = Harness::start(json!({}));
    h.ok(0, json!({}));
    let fx = h.on(Event::StepFailed { step: 1, attempt: 1, error: err(RetryOn::ClientError) });
    assert_eq!(compensations(&fx), [0]);
}

#[test]
fn a_failure_with_nothing_to_undo_ends_failed() {
    let (mut h, _) = Harness::start(json!({}));
    let fx = h.on(Event::StepFailed { step: 0, attempt: 1, error: err(RetryOn::ClientError) });
    assert_eq!(finished(&fx), Some(Status::Failed));
}

#[test]
fn compensations_that_fail_for_good_end_compensation_failed_after_undoing_the_rest() {
    let (mut h, _) = Harness::start(json!({"gift": false}));
    h.ok(0, json!({}));
    h.ok(1, json!({"id": "c", "review": false}));
    let fx = h.on(Event::Cancel { in_flight: false });
    assert_eq!(compensations(&fx), [1], "the latest completed step first");
    // The refund has the default compensation policy: 10 attempts, then the run moves on.
    for attempt in 1..10 {
        let fx = h.on(Event::CompensationFailed { step: 1, attempt, error: err(RetryOn::ServerError) });
        assert_eq!(compensations(&fx), [1], "attempt {attempt} is retried");
    }
    let fx = h.on(Event::CompensationFailed { step: 1, attempt: 10, error: err(RetryOn::ServerError) });
    assert!(fx.iter().any(|e| matches!(e, Effect::Record(History::CompensationFailed { step, .. }) if step == "pay")));
    assert_eq!(compensations(&fx), [0], "moves on to the next compensation");
    let fx = h.on(Event::CompensationSucceeded { step: 0 });
    assert_eq!(finished(&fx), Some(Status::CompensationFailed));
}

#[test]
fn a_cancel_waits_for_the_step_in_flight_records_it_and_undoes_it() {
    let (mut h, _) = Harness::start(json!({}));
    h.ok(0, json!({}));
    let fx = h.on(Event::Cancel { in_flight: true });
    assert!(runs(&fx).is_empty() && compensations(&fx).is_empty());
    let fx = h.ok(1, json!({"id": "ch_9", "review": false}));
    assert!(runs(&fx).is_empty(), "no new step starts");
    assert_eq!(compensations(&fx), [1]);
    h.on(Event::CompensationSucceeded { step: 1 });
    let fx = h.on(Event::CompensationSucceeded { step: 0 });
    assert_eq!(finished(&fx), Some(Status::Cancelled));
}

#[test]
fn a_deadline_ends_timed_out() {
    let (mut h, _) = Harness::start(json!({}));
    let fx = h.on(Event::Deadline { in_flight: false });
    assert_eq!(finished(&fx), Some(Status::TimedOut));
}

#[test]
fn final_states_and_stale_results_absorb_events() {
    let (mut h, _) = Harness::start(json!({}));
    h.ok(0, json!({}));
    assert!(h.ok(0, json!({})).is_empty(), "a duplicate result of a finished step changes nothing");
    assert!(h.on(Event::StepFailed { step: 1, attempt: 7, error: err(RetryOn::Timeout) }).is_empty());
    h.on(Event::Deadline { in_flight: false });
    h.on(Event::CompensationSucceeded { step: 0 });
    assert_eq!(h.run.status, Status::TimedOut);
    let before = h.run.clone();
    assert!(h.on(Event::Cancel { in_flight: false }).is_empty());
    assert!(h.ok(1, json!({})).is_empty());
    assert_eq!(h.run, before);
}

#[test]
fn a_step_entered_again_by_a_loop_gets_a_new_idempotency_key_and_each_visit_its_own_undo() {
    let def = Definition::parse(
        &json!({
            "id": "poll", "steps": [
                {"id": "check", "service": "s", "action": "check",
                 "next": [{"when": "!steps.check.output.done", "goto": "check"}],
                 "compensate": {"service": "s", "action": "undo"}},
                {"id": "fail", "service": "s", "action": "fail"}
            ]
        })
        .to_string(),
    )
    .unwrap();
    let mut run = Run::new(json!({}));
    let on = |run: &mut Run, event| run.on(&def, "wf", event, &mut || 0.5);
    on(&mut run, Event::Start);
    assert_eq!(run.step_key("wf", &def, 0), "wf:check", "the first visit keeps the plain key");
    let fx = on(&mut run, Event::StepSucceeded { step: 0, output: json!({"done": false}) });
    assert_eq!(runs(&fx), [(0, 1, 0)], "looped back");
    assert_eq!(run.step_key("wf", &def, 0), "wf:check#2");
    on(&mut run, Event::StepSucceeded { step: 0, output: json!({"done": true}) });
    let fx = on(
        &mut run,
        Event::StepFailed {
            step: 1,
            attempt: 1,
            error: StepError { kind: RetryOn::ClientError, message: "no".into() },
        },
    );
    assert_eq!(compensations(&fx), [0]);
    assert_eq!(run.compensation_key("wf", &def, 0), "wf:check:compensate#2", "the latest visit is undone first");
    on(&mut run, Event::CompensationSucceeded { step: 0 });
    assert_eq!(run.compensation_key("wf", &def, 0), "wf:check:compensate");
    let fx = on(&mut run, Event::CompensationSucceeded { step: 0 });
    assert_eq!(finished(&fx), Some(Status::Compensated));
}
