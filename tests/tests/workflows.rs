//! Workflows through the real gateway and control plane: definitions and versions, runs with
//! retries and compensations, cancel, listing, bad input, and a control plane killed with SIGKILL
//! in the middle of runs.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::collections::HashMap;
use std::time::Duration;

use reskflow_e2e::harness::{
    backends, eventually, fresh_postgres_url, Backend, ControlPlane, ControlPlaneOptions, Gateway,
};
use reskflow_e2e::targets::ActionService;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

fn fields(body: &Value) -> Vec<String> {
    body["error"]["fields"]
        .as_array()
        .map(|a| a.iter().map(|f| f["field"].as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default()
}

async fn system(backend: Backend) -> (ControlPlane, Gateway, ActionService) {
    let cp = ControlPlane::start_on(backend).await;
    let gw = Gateway::start(&cp).await;
    let service = ActionService::start().await;
    for id in ["stock", "payments", "shipping"] {
        let (status, body) = gw.post("/api/registry/services", json!({"id": id})).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = gw
            .post("/api/registry/instances", json!({"serviceId": id, "address": "127.0.0.1", "port": service.port}))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    (cp, gw, service)
}

fn order_workflow() -> Value {
    json!({
        "id": "order-processing", "name": "Order processing", "timeout": "1m",
        "inputSchema": {"type": "object", "required": ["orderId", "total"],
                        "properties": {"orderId": {"type": "string"}, "total": {"type": "number"}}},
        "steps": [
            {"id": "reserve-stock", "service": "stock", "action": "reserve", "input": {"orderId": "{{input.orderId}}"},
             "compensate": {"service": "stock", "action": "release", "input": {"orderId": "{{input.orderId}}"}}},
            {"id": "process-payment", "service": "payments", "action": "charge", "input": {"amount": "{{input.total}}"},
             "retry": {"maxAttempts": 3, "backoff": {"initial": "20ms", "max": "100ms"}},
             "next": [{"when": "input.total > 1000", "goto": "manual-review"}],
             "compensate": {"service": "payments", "action": "refund",
                            "input": {"chargeId": "{{steps.process-payment.output.id}}"}}},
            {"id": "ship", "service": "shipping", "action": "ship", "retry": {"maxAttempts": 1},
             "next": [{"goto": "$end"}]},
            {"id": "manual-review", "service": "payments", "action": "review"}
        ],
        "output": {"chargeId": "{{steps.process-payment.output.id}}", "total": "{{input.total}}"}
    })
}

async fn run_to_end(gw: &Gateway, instance_id: &str) -> Value {
    eventually(&format!("run {instance_id} ends"), WAIT, || async {
        let (status, body) = gw.get(&format!("/api/workflows/instances/{instance_id}")).await;
        assert_eq!(status, 200, "{body}");
        (!matches!(body["status"].as_str(), Some("RUNNING" | "COMPENSATING"))).then_some(body)
    })
    .await
}

#[tokio::test]
async fn runs_complete_retry_route_and_compensate_through_the_rest_api() {
    for backend in backends() {
        let (_cp, gw, service) = system(backend).await;
        let (status, registered) = gw.post("/api/workflows", order_workflow()).await;
        assert_eq!(status, 201, "{registered}");
        assert_eq!(registered["version"], 1);
        let (_, again) = gw.post("/api/workflows", order_workflow()).await;
        assert_eq!(again["version"], 2, "registering an id again makes a new version");
        let (status, got) = gw.get("/api/workflows/order-processing?version=1").await;
        assert_eq!((status, got["version"].as_i64()), (200, Some(1)));

        // A run that retries a flaky payment and completes.
        service.fail("charge", 1, 503);
        let (status, started) =
            gw.post("/api/workflows/order-processing/execute", json!({"input": {"orderId": "o-1", "total": 40}})).await;
        assert_eq!(status, 202, "{started}");
        let id = started["instanceId"].as_str().unwrap().to_string();
        let done = run_to_end(&gw, &id).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        assert_eq!(done["output"], json!({"chargeId": "charge-ok", "total": 40}));
        let pay = done["steps"].as_array().unwrap().iter().find(|s| s["id"] == "process-payment").unwrap();
        assert_eq!(pay["attempts"].as_array().unwrap().len(), 2);
        let types: Vec<_> = done["history"].as_array().unwrap().iter().map(|h| h["type"].as_str().unwrap()).collect();
        assert!(types.contains(&"stepRetrying") && types.ends_with(&["workflowFinished"]), "{types:?}");

        // Routing on results: a large order goes to manual review.
        let (_, big) = gw
            .post("/api/workflows/order-processing/execute", json!({"input": {"orderId": "o-2", "total": 5000}}))
            .await;
        let big = run_to_end(&gw, big["instanceId"].as_str().unwrap()).await;
        let statuses: Vec<_> = big["steps"].as_array().unwrap().iter().map(|s| s["status"].as_str().unwrap()).collect();
        assert_eq!(statuses, ["completed", "completed", "pending", "completed"]);

        // A failing step compensates the completed ones in reverse.
        service.fail("ship", 1, 400);
        let (_, failed) =
            gw.post("/api/workflows/order-processing/execute", json!({"input": {"orderId": "o-3", "total": 7}})).await;
        let failed_id = failed["instanceId"].as_str().unwrap().to_string();
        let failed = run_to_end(&gw, &failed_id).await;
        assert_eq!(failed["status"], "COMPENSATED", "{failed}");
        let tail: Vec<_> = service.calls().iter().rev().take(3).map(|c| c.0.clone()).collect();
        assert_eq!(tail, ["release", "refund", "ship"]);

        // Cancelling a finished run is a conflict.
        let (status, body) = gw.post(&format!("/api/workflows/instances/{failed_id}/cancel"), json!({})).await;
        assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")), "{body}");

        // Listing by workflow and status, paginated.
        let (status, page) = gw.get("/api/workflows/instances?workflowId=order-processing&pageSize=2").await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(page["instances"].as_array().unwrap().len(), 2);
        let token = page["nextPageToken"].as_str().unwrap().to_string();
        let (_, rest) =
            gw.get(&format!("/api/workflows/instances?workflowId=order-processing&pageSize=2&pageToken={token}")).await;
        assert_eq!(rest["instances"].as_array().unwrap().len(), 1);
        let (_, compensated) = gw.get("/api/workflows/instances?status=COMPENSATED").await;
        assert_eq!(compensated["instances"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn bad_definitions_and_inputs_are_400s_naming_the_field() {
    let (_cp, gw, _service) = system(Backend::Sqlite).await;
    let mut bad = order_workflow();
    bad["steps"][1]["next"][0]["goto"] = json!("nowhere");
    bad["steps"][0]["input"]["orderId"] = json!("{{input.orderId +}}");
    let (status, body) = gw.post("/api/workflows", bad).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(fields(&body), ["steps[0].input.orderId", "steps[1].next[0].goto"]);

    gw.post("/api/workflows", order_workflow()).await;
    let (status, body) = gw.post("/api/workflows/order-processing/execute", json!({"input": {"orderId": 7}})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(fields(&body), ["input", "input/orderId"]);
    let (status, _) = gw.post("/api/workflows/ghost/execute", json!({})).await;
    assert_eq!(status, 404);
    let (status, _) = gw.get("/api/workflows/instances/no-such-run").await;
    assert_eq!(status, 404);
    let (status, _) = gw.post("/api/workflows/order-processing/execute", json!({"inputs": {}})).await;
    assert_eq!(status, 400, "unknown fields are errors");
    let (status, _) = gw.get("/api/workflows/instances?status=SLEEPING").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn an_ad_hoc_saga_runs_forward_then_compensates_in_reverse_and_can_be_awaited() {
    let (_cp, gw, service) = system(Backend::Sqlite).await;
    let saga = |key: &str| {
        json!({"name": "book-trip", "input": {"trip": "t-1"}, "idempotencyKey": key, "wait": "10s",
        "steps": [
          {"name": "reserve-flight",
           "forward": {"service": "stock", "action": "reserve-flight", "input": {"trip": "{{input.trip}}"}},
           "compensate": {"service": "stock", "action": "cancel-flight", "input": {"trip": "{{input.trip}}"}}},
          {"name": "charge", "forward": {"service": "payments", "action": "charge-trip", "retry": {"maxAttempts": 1}},
           "compensate": {"service": "payments", "action": "refund-trip"}}
        ]})
    };
    let (status, done) = gw.post("/api/saga/execute", saga("trip-1")).await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["status"], "COMPLETED");

    service.fail("charge-trip", 1, 500);
    let (status, failed) = gw.post("/api/saga/execute", saga("trip-2")).await;
    assert_eq!((status, failed["status"].as_str()), (200, Some("COMPENSATED")), "{failed}");
    let tail: Vec<_> = service.calls().iter().rev().take(2).map(|c| c.0.clone()).collect();
    assert_eq!(tail, ["cancel-flight", "charge-trip"], "only the completed step is undone");

    let mut no_wait = saga("trip-3");
    no_wait.as_object_mut().unwrap().remove("wait");
    let (status, queued) = gw.post("/api/saga/execute", no_wait).await;
    assert_eq!(status, 202, "{queued}");
    assert!(queued["instanceId"].is_string());

    let (status, bad) = gw
        .post("/api/saga/execute", json!({"steps": [{"name": "x", "forward": {"service": "stock", "action": "a b"}}]}))
        .await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(fields(&bad), ["steps[0].forward.action"]);
}

#[tokio::test]
async fn the_same_idempotency_key_answers_the_same_run() {
    let (_cp, gw, _service) = system(Backend::Sqlite).await;
    gw.post("/api/workflows", order_workflow()).await;
    let input = json!({"input": {"orderId": "o-9", "total": 1}, "idempotencyKey": "order-o-9"});
    let (_, first) = gw.post("/api/workflows/order-processing/execute", input.clone()).await;
    let (_, second) = gw.post("/api/workflows/order-processing/execute", input).await;
    assert_eq!(first["instanceId"], second["instanceId"]);
    assert_eq!((first["created"].as_bool(), second["created"].as_bool()), (Some(true), Some(false)));
}

#[tokio::test]
async fn runs_survive_a_sigkill_of_the_control_plane_without_losing_or_doubling_a_completion() {
    for backend in backends() {
        let (mut cp, gw, service) = system(backend).await;
        gw.post("/api/workflows", order_workflow()).await;
        service.delay(150);
        let mut ids = Vec::new();
        for n in 0..8 {
            let (status, started) = gw
                .post(
                    "/api/workflows/order-processing/execute",
                    json!({"input": {"orderId": format!("o-{n}"), "total": 10}}),
                )
                .await;
            assert_eq!(status, 202, "{started}");
            ids.push(started["instanceId"].as_str().unwrap().to_string());
        }
        // Kill it while calls are in flight, then bring it back on the same database.
        eventually("some steps ran", WAIT, || async { (service.calls().len() >= 6).then_some(()) }).await;
        cp.crash_and_restart().await;

        for id in &ids {
            let done = run_to_end(&gw, id).await;
            assert_eq!(done["status"], "COMPLETED", "{backend:?} {done}");
            let completions: Vec<_> = done["history"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|h| h["type"] == "stepCompleted")
                .map(|h| h["step"].as_str().unwrap().to_string())
                .collect();
            assert_eq!(completions, ["reserve-stock", "process-payment", "ship"], "exactly one completion per step");
        }
        // Every call of a step carried the same key, before and after the crash.
        let mut keys: HashMap<String, Vec<String>> = HashMap::new();
        for (action, key, _) in service.calls() {
            keys.entry(key).or_default().push(action);
        }
        for id in &ids {
            for step in ["reserve-stock", "process-payment", "ship"] {
                let calls = keys.get(&format!("{id}:{step}")).map_or(0, Vec::len);
                assert!(calls >= 1, "{step} of {id} was called");
            }
        }
        assert!(keys.keys().all(|k| ids.iter().any(|id| k.starts_with(id.as_str()))), "no call without a stable key");
    }
}

#[tokio::test]
async fn two_replicas_share_the_queue_and_one_takes_over_when_the_other_dies() {
    if std::env::var("DATABASE_URL").map_or(true, |u| !u.starts_with("postgres")) {
        assert!(std::env::var("CI").is_err(), "CI runs without DATABASE_URL: run the README's test command");
        eprintln!("skipped: DATABASE_URL does not name a PostgreSQL database");
        return;
    }
    let url = fresh_postgres_url().await;
    // Two calls at a time each, so both replicas must work; short leases so takeover is quick.
    let options = |node: &str| ControlPlaneOptions {
        database_url: Some(url.clone()),
        env: vec![
            ("NODE_ID".into(), node.into()),
            ("WORKFLOW_CONCURRENCY".into(), "2".into()),
            ("WORKFLOW_LEASE".into(), "1s".into()),
        ],
    };
    let mut a = ControlPlane::start_with(options("a")).await;
    let b = ControlPlane::start_with(options("b")).await;
    let gw = Gateway::start(&b).await;
    let service = ActionService::start().await;
    for id in ["stock", "payments", "shipping"] {
        gw.post("/api/registry/services", json!({"id": id})).await;
        gw.post("/api/registry/instances", json!({"serviceId": id, "address": "127.0.0.1", "port": service.port}))
            .await;
    }
    let mut workflow = order_workflow();
    for step in workflow["steps"].as_array_mut().unwrap() {
        step["timeout"] = json!("1s");
    }
    let (status, body) = gw.post("/api/workflows", workflow).await;
    assert_eq!(status, 201, "{body}");
    service.delay(100);
    let mut ids = Vec::new();
    for n in 0..12 {
        let (_, started) = gw
            .post(
                "/api/workflows/order-processing/execute",
                json!({"input": {"orderId": format!("o-{n}"), "total": 3}}),
            )
            .await;
        ids.push(started["instanceId"].as_str().unwrap().to_string());
    }
    eventually("both replicas claim tasks", WAIT, || async {
        let claimed = |cp: &ControlPlane| cp.process.log().contains("claimed workflow tasks");
        (claimed(&a) && claimed(&b)).then_some(())
    })
    .await;
    a.process.kill().await;

    for id in &ids {
        let done = run_to_end(&gw, id).await;
        assert_eq!(done["status"], "COMPLETED", "{done}");
        let completions = done["history"].as_array().unwrap().iter().filter(|h| h["type"] == "stepCompleted").count();
        assert_eq!(completions, 3, "each step recorded once: {done}");
    }
}

#[tokio::test]
async fn a_step_a_workflow_loops_back_to_is_called_again_under_a_new_idempotency_key() {
    let (_cp, gw, service) = system(Backend::Sqlite).await;
    let workflow = json!({
        "id": "recheck",
        "steps": [
            {"id": "check", "service": "stock", "action": "check",
             "next": [{"when": "!has(steps.again)", "goto": "again"}, {"goto": "$end"}]},
            {"id": "again", "service": "stock", "action": "again", "next": [{"goto": "check"}]}
        ]
    });
    let (status, body) = gw.post("/api/workflows", workflow).await;
    assert_eq!(status, 201, "{body}");
    let (_, started) = gw.post("/api/workflows/recheck/execute", json!({})).await;
    let id = started["instanceId"].as_str().expect("instance id").to_string();
    let ended = run_to_end(&gw, &id).await;
    assert_eq!(ended["status"], "COMPLETED", "{ended}");
    let keys: Vec<_> = service.calls().into_iter().map(|(action, key, _)| format!("{action} {key}")).collect();
    assert_eq!(keys, [format!("check {id}:check"), format!("again {id}:again"), format!("check {id}:check#2")]);
}

#[tokio::test]
async fn definitions_are_listed_a_page_at_a_time_with_their_latest_version() {
    let (_cp, gw, _service) = system(Backend::Sqlite).await;
    for id in ["alpha", "beta", "gamma", "beta"] {
        let (status, body) = gw
            .post("/api/workflows", json!({"id": id, "steps": [{"id": "s", "service": "stock", "action": "a"}]}))
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, first) = gw.get("/api/workflows?pageSize=2").await;
    assert_eq!(status, 200, "{first}");
    let ids = |page: &Value| -> Vec<(String, i64)> {
        page["workflows"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|w| (w["id"].as_str().unwrap_or("").to_string(), w["version"].as_i64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(ids(&first), [("alpha".to_string(), 1), ("beta".to_string(), 2)]);
    let token = first["nextPageToken"].as_str().expect("a next page").to_string();
    let (_, second) = gw.get(&format!("/api/workflows?pageSize=2&pageToken={token}")).await;
    assert_eq!(ids(&second), [("gamma".to_string(), 1)]);
    assert!(second.get("nextPageToken").is_none(), "{second}");
    let (status, body) = gw.get("/api/workflows?pageSize=100000").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(fields(&body), ["pageSize"]);
}
