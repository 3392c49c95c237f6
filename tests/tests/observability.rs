//! What operators scrape: the control plane's Prometheus `/metrics` reflects real calls, runs and
//! connections.

use std::time::Duration;

use reskflow_e2e::harness::{eventually, ControlPlane, Gateway};
use reskflow_e2e::targets::ActionService;
use serde_json::json;

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

#[tokio::test]
async fn the_control_plane_exposes_grpc_store_registry_stream_and_workflow_metrics() {
    let cp = ControlPlane::start().await;
    let gw = Gateway::start(&cp).await;
    let actions = ActionService::start().await;
    let (status, _) = gw.post("/api/registry/services", json!({ "id": "payments" })).await;
    assert_eq!(status, 201);
    let (status, _) = gw
        .post(
            "/api/registry/instances",
            json!({ "serviceId": "payments", "address": "127.0.0.1", "port": actions.port }),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = gw.get("/api/registry/services/ghost").await;
    assert_eq!(status, 404);
    let workflow = json!({ "id": "pay", "steps": [{ "id": "charge", "service": "payments", "action": "charge" }] });
    let (status, _) = gw.post("/api/workflows", workflow).await;
    assert_eq!(status, 201);
    let (status, run) = gw.post("/api/workflows/pay/execute", json!({ "input": {} })).await;
    assert_eq!(status, 202, "{run}");
    let id = run["instanceId"].as_str().unwrap_or("").to_string();
    eventually("the run to complete", Duration::from_secs(20), || async {
        let (_, run) = gw.get(&format!("/api/workflows/instances/{id}")).await;
        (run["status"] == "COMPLETED").then_some(())
    })
    .await;

    let http = reqwest::Client::new();
    let text = eventually("the gateway's config stream to be counted", Duration::from_secs(20), || async {
        let text = http.get(format!("{}/metrics", cp.metrics_url())).send().await.ok()?.text().await.ok()?;
        (value(&text, "reskflow_config_streams") == Some(1.0)).then_some(text)
    })
    .await;
    let registry = r#"grpc_service="reskflow.registry.v1.Registry""#;
    assert_eq!(
        value(
            &text,
            &format!(r#"grpc_server_handled_total{{{registry},grpc_method="RegisterService",grpc_code="OK"}}"#)
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            &format!(r#"grpc_server_handled_total{{{registry},grpc_method="GetService",grpc_code="NotFound"}}"#)
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        value(&text, &format!(r#"grpc_server_handling_seconds_count{{{registry},grpc_method="RegisterInstance"}}"#))
            == Some(1.0),
        "{text}"
    );
    assert_eq!(value(&text, r#"reskflow_workflow_runs{status="COMPLETED"}"#), Some(1.0), "{text}");
    assert_eq!(value(&text, "reskflow_registry_services"), Some(1.0));
    assert_eq!(value(&text, r#"reskflow_registry_instances{status="passing"}"#), Some(1.0));
    assert!(
        value(&text, r#"reskflow_store_operation_seconds_count{operation="registry_write"}"#).is_some_and(|n| n >= 2.0),
        "{text}"
    );
    assert!(
        value(&text, r#"reskflow_store_operation_seconds_count{operation="workflow_commit"}"#)
            .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    assert!(value(&text, "reskflow_workflow_queue_due").is_some(), "{text}");
    assert!(text.contains("# TYPE grpc_server_handling_seconds histogram"));
    let health = http.get(format!("{}/health", cp.metrics_url())).send().await.expect("health");
    assert!(health.status().is_success());
}
