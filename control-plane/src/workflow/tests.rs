//! The engine end to end in-process: a real store (SQLite, and PostgreSQL when configured), the
//! registry, the workers, and a real HTTP service that records every call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::engine::WorkflowError;
use super::{Engine, EngineOptions};
use crate::registry::{sync, Registry};
use crate::store::testing::{stores, Guard};
use crate::store::Store;

/// (action, idempotency key, body) of every call, and how many times each action must fail first.
#[derive(Clone, Default)]
struct Service {
    calls: Arc<Mutex<Vec<(String, String, Value)>>>,
    fail_first: Arc<Mutex<HashMap<String, (u32, u16)>>>,
}

impl Service {
    fn calls(&self) -> Vec<(String, String, Value)> {
        self.calls.lock().unwrap().clone()
    }
    fn actions(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.0).collect()
    }
    fn fail(&self, action: &str, times: u32, status: u16) {
        self.fail_first.lock().unwrap().insert(action.to_string(), (times, status));
    }
}

async fn action(
    State(s): State<Service>,
    Path(action): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    s.calls.lock().unwrap().push((action.clone(), key, body.clone()));
    if let Some((left, status)) = s.fail_first.lock().unwrap().get_mut(&action) {
        if *left > 0 {
            *left -= 1;
            return (StatusCode::from_u16(*status).unwrap(), Json(json!({"error": "injected"})));
        }
    }
    (StatusCode::OK, Json(json!({"action": action, "id": format!("{action}-1"), "echo": body})))
}

struct System {
    engine: Engine,
    registry: Registry,
    service: Service,
    stop: CancellationToken,
    _guard: Guard,
}

impl Drop for System {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn system(store: Store, guard: Guard) -> System {
    let service = Service::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new().route("/actions/{action}", post(action)).with_state(service.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let registry = Registry::load(store.clone()).await.unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(sync::run(registry.clone(), stop.clone()));
    for id in ["stock", "payments", "shipping"] {
        registry.register_service(serde_json::from_value(json!({"id": id})).unwrap()).await.unwrap();
        registry
            .register_instance(
                serde_json::from_value(json!({"serviceId": id, "address": "127.0.0.1", "port": port})).unwrap(),
            )
            .await
            .unwrap();
    }
    let options = EngineOptions { poll: Duration::from_millis(20), ..EngineOptions::default() };
    let engine = Engine::new(store, registry.clone(), options).unwrap();
    tokio::spawn(super::worker::run(engine.clone(), stop.clone()));
    System { engine, registry, service, stop, _guard: guard }
}

fn order_workflow() -> String {
    json!({
        "id": "order", "inputSchema": {"type": "object", "required": ["orderId"],
                                        "properties": {"orderId": {"type": "string"}, "total": {"type": "number"}}},
        "steps": [
            {"id": "reserve-stock", "service": "stock", "action": "reserve", "input": {"orderId": "{{input.orderId}}"},
             "compensate": {"service": "stock", "action": "release", "input": {"orderId": "{{input.orderId}}"}}},
            {"id": "process-payment", "service": "payments", "action": "charge",
             "input": {"amount": "{{input.total}}"},
             "retry": {"maxAttempts": 3, "backoff": {"initial": "10ms", "max": "50ms", "jitter": 0}},
             "compensate": {"service": "payments", "action": "refund",
                            "input": {"chargeId": "{{steps.process-payment.output.id}}"}}},
            {"id": "ship", "service": "shipping", "action": "ship", "retry": {"maxAttempts": 1}}
        ],
        "output": {"chargeId": "{{steps.process-payment.output.id}}", "amount": "{{steps.process-payment.output.echo.amount}}"}
    })
    .to_string()
}

async fn wait_final(engine: &Engine, id: &str) -> super::view::InstanceView {
    for _ in 0..400 {
        let view = engine.view(id).await.unwrap();
        if !matches!(view.summary.status.as_str(), "RUNNING" | "COMPENSATING") {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("run {id} did not finish: {:?}", engine.view(id).await.unwrap().summary.status);
}

#[tokio::test]
async fn a_run_calls_each_step_retries_with_the_same_key_and_maps_its_output() {
    for (store, guard) in stores().await {
        let s = system(store, guard).await;
        s.engine.register(&order_workflow()).await.unwrap();
        s.service.fail("charge", 2, 503);
        let (id, created) =
            s.engine.execute("order", None, json!({"orderId": "o-1", "total": 42}), None).await.unwrap();
        assert!(created);
        let view = wait_final(&s.engine, &id).await;
        assert_eq!(view.summary.status, "COMPLETED", "{:?}", view.history);
        assert_eq!(view.output, Some(json!({"chargeId": "charge-1", "amount": 42})), "numbers stay numbers");
        assert_eq!(s.service.actions(), ["reserve", "charge", "charge", "charge", "ship"]);
        let keys: Vec<_> = s.service.calls().into_iter().filter(|c| c.0 == "charge").map(|c| c.1).collect();
        assert_eq!(keys, vec![format!("{id}:process-payment"); 3], "one idempotency key across retries");
        let pay = view.steps.iter().find(|st| st.id == "process-payment").unwrap();
        assert_eq!(pay.attempts.len(), 3);
        assert!(pay.attempts[0].error.as_deref().unwrap_or_default().contains("503"));
    }
}

#[tokio::test]
async fn a_failing_step_compensates_the_completed_ones_in_reverse() {
    for (store, guard) in stores().await {
        let s = system(store, guard).await;
        s.engine.register(&order_workflow()).await.unwrap();
        s.service.fail("ship", 1, 400);
        let (id, _) = s.engine.execute("order", None, json!({"orderId": "o-2", "total": 5}), None).await.unwrap();
        let view = wait_final(&s.engine, &id).await;
        assert_eq!(view.summary.status, "COMPENSATED");
        assert_eq!(s.service.actions(), ["reserve", "charge", "ship", "refund", "release"]);
        let refund = s.service.calls().into_iter().find(|c| c.0 == "refund").unwrap();
        assert_eq!(refund.2, json!({"chargeId": "charge-1"}));
        assert_eq!(refund.1, format!("{id}:process-payment:compensate"));
        let statuses: Vec<_> = view.steps.iter().map(|st| st.status).collect();
        assert_eq!(statuses, ["compensated", "compensated", "failed"]);
    }
}

#[tokio::test]
async fn execute_checks_the_input_and_honours_idempotency_keys() {
    for (store, guard) in stores().await {
        let s = system(store, guard).await;
        s.engine.register(&order_workflow()).await.unwrap();
        let err = s.engine.execute("order", None, json!({"total": "lots"}), None).await.unwrap_err();
        let WorkflowError::Invalid(invalid) = err else { panic!("{err}") };
        let fields: Vec<_> = invalid.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["input", "input/total"]);
        let (a, created) =
            s.engine.execute("order", None, json!({"orderId": "o-3"}), Some("k-1".into())).await.unwrap();
        let (b, again) = s.engine.execute("order", None, json!({"orderId": "o-3"}), Some("k-1".into())).await.unwrap();
        assert_eq!((a.as_str(), created, again), (b.as_str(), true, false));
        assert!(matches!(s.engine.execute("ghost", None, json!({}), None).await, Err(WorkflowError::NotFound { .. })));
    }
}

#[tokio::test]
async fn a_cancelled_run_compensates_and_a_finished_one_refuses_cancel() {
    for (store, guard) in stores().await {
        let s = system(store, guard).await;
        s.engine.register(&order_workflow()).await.unwrap();
        // The charge fails for long enough that the run sits in a retry backoff.
        s.service.fail("charge", 100, 503);
        let slow = order_workflow()
            .replace("\"initial\":\"10ms\"", "\"initial\":\"5s\"")
            .replace("\"max\":\"50ms\"", "\"max\":\"5s\"");
        assert_ne!(slow, order_workflow(), "the backoff was made slow");
        s.engine.register(&slow).await.unwrap();
        let (id, _) = s.engine.execute("order", None, json!({"orderId": "o-4", "total": 1}), None).await.unwrap();
        for _ in 0..200 {
            if s.service.actions().contains(&"charge".to_string()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.engine.cancel(&id).await.unwrap();
        let view = wait_final(&s.engine, &id).await;
        assert_eq!(view.summary.status, "CANCELLED", "{:?}", view.history);
        assert_eq!(s.service.actions(), ["reserve", "charge", "release"], "the waiting retry never ran");
        assert!(matches!(s.engine.cancel(&id).await, Err(WorkflowError::Conflict(_))));
    }
}

#[tokio::test]
async fn step_calls_go_through_the_services_circuit_breaker() {
    for (store, guard) in stores().await {
        let s = system(store, guard).await;
        // Two failed calls open the payments breaker for an hour; later attempts are refused by the
        // breaker without reaching the service, and the run compensates.
        let mut payments: reskflow_proto::registry::Service = serde_json::from_value(json!({
            "id": "payments",
            "trafficPolicy": {
                "circuitBreaker": {"slidingWindowSize": 2, "minimumNumberOfCalls": 2, "waitDurationInOpenState": "1h"},
                "outlierDetection": {"enabled": false}
            }
        }))
        .unwrap();
        payments.normalize().unwrap();
        s.registry.update_service(payments).await.unwrap();
        let workflow = order_workflow().replace("\"maxAttempts\":3", "\"maxAttempts\":5");
        assert_ne!(workflow, order_workflow());
        s.engine.register(&workflow).await.unwrap();
        s.service.fail("charge", 100, 503);
        let (id, _) = s.engine.execute("order", None, json!({"orderId": "o-9", "total": 3}), None).await.unwrap();
        let view = wait_final(&s.engine, &id).await;
        assert_eq!(view.summary.status, "COMPENSATED", "{:?}", view.history);
        let charges = s.service.actions().iter().filter(|a| *a == "charge").count();
        assert_eq!(charges, 2, "the breaker kept attempts 3-5 from the service");
        let pay = view.steps.iter().find(|st| st.id == "process-payment").unwrap();
        assert_eq!(pay.attempts.len(), 5);
        let last = pay.attempts[4].error.as_deref().unwrap_or_default();
        assert!(last.contains("circuit breaker payments is OPEN"), "{last}");
    }
}
