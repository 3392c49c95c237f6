use serde_json::json;

use super::*;

fn order_processing() -> serde_json::Value {
    json!({
        "id": "order-processing", "name": "Order processing", "timeout": "10m",
        "inputSchema": {"type": "object", "required": ["orderId"]},
        "steps": [
            {"id": "reserve-stock", "service": "inventory", "action": "reserve",
             "input": {"orderId": "{{input.orderId}}", "items": "{{input.items}}"},
             "compensate": {"service": "inventory", "action": "release", "input": {"orderId": "{{input.orderId}}"}}},
            {"id": "process-payment", "service": "payments", "action": "charge",
             "input": {"amount": "{{input.total}}", "note": "order {{input.orderId}}"}, "timeout": "5s",
             "retry": {"maxAttempts": 5, "backoff": {"initial": "200ms", "multiplier": 2, "max": "5s", "jitter": 0.2}},
             "next": [{"when": "steps.process-payment.output.status == 'review'", "goto": "manual-review"}],
             "onFailure": "notify-customer",
             "compensate": {"service": "payments", "action": "refund",
                            "input": {"chargeId": "{{steps.process-payment.output.chargeId}}"}}},
            {"id": "ship", "service": "shipping", "action": "create",
             "condition": "input.total > 0", "next": [{"goto": "$end"}]},
            {"id": "manual-review", "service": "backoffice", "action": "review", "next": [{"goto": "$end"}]},
            {"id": "notify-customer", "service": "mail", "action": "send"}
        ],
        "output": {"chargeId": "{{steps.process-payment.output.chargeId}}"}
    })
}

fn parse(value: serde_json::Value) -> Result<Definition, Invalid> {
    Definition::parse(&value.to_string())
}

fn fields(err: Invalid) -> Vec<String> {
    err.0.into_iter().map(|v| v.field).collect()
}

#[test]
fn the_order_processing_example_compiles() {
    let d = parse(order_processing()).unwrap();
    assert_eq!(d.steps.len(), 5);
    let pay = &d.steps[d.index["process-payment"]];
    assert_eq!(pay.routes.len(), 1);
    assert_eq!(pay.routes[0].1, Target::Step(3));
    assert_eq!(pay.on_failure, Some(Target::Step(4)));
    assert_eq!(pay.retry.max_attempts, 5);
    assert_eq!(pay.timeout, Duration::from_secs(5));
    assert_eq!(d.steps[2].routes[0].1, Target::End);
    assert_eq!(d.steps[0].timeout, DEFAULT_STEP_TIMEOUT);
    assert_eq!(d.steps[0].compensate.as_ref().unwrap().retry.max_attempts, 10);
}

#[test]
fn duplicate_step_ids_and_unknown_targets_name_their_fields() {
    let mut def = order_processing();
    def["steps"][4]["id"] = json!("ship");
    def["steps"][1]["next"][0]["goto"] = json!("nowhere");
    let err = parse(def).unwrap_err();
    let fields = fields(err);
    assert!(fields.contains(&"steps[4].id".to_string()), "{fields:?}");
    assert!(fields.contains(&"steps[1].next[0].goto".to_string()), "{fields:?}");
}

#[test]
fn unreachable_steps_are_refused() {
    let def = json!({"id": "w", "steps": [
        {"id": "a", "service": "s", "action": "x", "next": [{"goto": "c"}]},
        {"id": "b", "service": "s", "action": "x"},
        {"id": "c", "service": "s", "action": "x"}
    ]});
    let err = parse(def).unwrap_err();
    assert_eq!(fields(err.clone()), ["steps[1]"]);
    assert!(err.0[0].description.contains("'b' can never run"));
}

#[test]
fn conditional_routes_fall_through_so_the_next_step_stays_reachable() {
    let def = json!({"id": "w", "steps": [
        {"id": "a", "service": "s", "action": "x", "next": [{"when": "input.fast", "goto": "c"}]},
        {"id": "b", "service": "s", "action": "x"},
        {"id": "c", "service": "s", "action": "x"}
    ]});
    assert!(parse(def).is_ok());
}

#[test]
fn expression_errors_and_unknown_references_name_the_step_and_field() {
    let mut def = order_processing();
    def["steps"][2]["condition"] = json!("input.total >");
    def["steps"][0]["input"]["items"] = json!("{{steps.check-fraud.output.items}}");
    def["output"] = json!({"x": "{{ secret.key }}"});
    let fields = fields(parse(def).unwrap_err());
    assert_eq!(fields, ["steps[0].input", "steps[2].condition", "output.x"]);
}

#[test]
fn unknown_fields_and_wrong_types_name_their_path() {
    let mut def = order_processing();
    def["steps"][1]["retries"] = json!(3);
    assert_eq!(fields(parse(def).unwrap_err()), ["steps[1].retries"]);
    let mut def = order_processing();
    def["steps"][1]["timeout"] = json!("soon");
    assert_eq!(fields(parse(def).unwrap_err()), ["steps[1].timeout"]);
    assert_eq!(fields(Definition::parse("{not json").unwrap_err()), ["definition"]);
}

#[test]
fn retry_policies_are_bounded() {
    let mut def = order_processing();
    def["steps"][1]["retry"] =
        json!({"maxAttempts": 0, "backoff": {"multiplier": 0.5, "jitter": 2, "initial": "1m", "max": "1s"}});
    let fields = fields(parse(def).unwrap_err());
    assert_eq!(
        fields,
        [
            "steps[1].retry.maxAttempts",
            "steps[1].retry.backoff.multiplier",
            "steps[1].retry.backoff.jitter",
            "steps[1].retry.backoff.initial"
        ]
    );
}

#[test]
fn backoff_grows_by_the_multiplier_up_to_the_cap_and_jitter_spreads_it() {
    let b =
        Backoff { initial: Duration::from_millis(100), multiplier: 2.0, max: Duration::from_millis(500), jitter: 0.2 };
    let delays: Vec<_> = (1..=5).map(|a| b.delay(a).as_millis()).collect();
    assert_eq!(delays, [100, 200, 400, 500, 500]);
    assert_eq!(b.jittered(2, 0.0).as_millis(), 160);
    assert_eq!(b.jittered(2, 0.5).as_millis(), 200);
    assert!(b.jittered(2, 0.999).as_millis() <= 240);
}
