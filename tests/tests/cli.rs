//! `reskctl` against a running system: every command group through the real binary, tables and
//! `--json`, exit codes and error messages.

use std::process::Output;

use reskflow_e2e::harness::{binary, eventually, ControlPlane, Gateway};
use reskflow_e2e::targets::ActionService;
use serde_json::{json, Value};

async fn reskctl(gw: &Gateway, args: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(binary("reskctl"));
    command.arg("--url").arg(&gw.url).args(args).env_remove("RESKFLOW_TOKEN");
    command.output().await.expect("run reskctl")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "reskctl failed: {}\n{}", stderr(out), stdout(out));
    stdout(out)
}

#[tokio::test]
async fn reskctl_drives_the_registry_workflows_breakers_and_routes() {
    let cp = ControlPlane::start().await;
    let gw = Gateway::start(&cp).await;
    let actions = ActionService::start().await;
    let dir = tempfile::tempdir().expect("dir");

    // Services and instances.
    let service = dir.path().join("payments.yaml");
    std::fs::write(
        &service,
        "id: payments\nversion: 2.1.0\ntags: [core]\ncapabilities: [charge]\ndependencies: [ledger]\n",
    )
    .expect("write");
    let out = ok(&reskctl(&gw, &["services", "register", &service.to_string_lossy()]).await);
    assert!(out.contains("registered service payments"), "{out}");
    let address = format!("127.0.0.1:{}", actions.port);
    ok(&reskctl(&gw, &["instances", "register", "payments", &address, "--id", "payments-1"]).await);
    let out = ok(&reskctl(&gw, &["services", "list"]).await);
    assert!(out.contains("payments") && out.contains("2.1.0") && out.contains("passing"), "{out}");
    let out = ok(&reskctl(&gw, &["instances", "list", "payments"]).await);
    assert!(out.contains("payments-1") && out.contains(&address), "{out}");
    let out = ok(&reskctl(&gw, &["discover", "payments"]).await);
    assert!(out.starts_with("payments-1 "), "{out}");
    let out = ok(&reskctl(&gw, &["health", "payments"]).await);
    assert!(out.contains("payments: passing (1 passing"), "{out}");
    let out = ok(&reskctl(&gw, &["deps", "payments"]).await);
    assert!(out.contains("ledger") && out.contains("not registered: ledger"), "{out}");
    let out = ok(&reskctl(&gw, &["services", "search", "pay", "--capability", "charge"]).await);
    assert!(out.contains("payments"), "{out}");
    let listed: Value = serde_json::from_str(&ok(&reskctl(&gw, &["--json", "services", "list"]).await)).expect("json");
    assert_eq!(listed["services"][0]["id"], "payments");

    // A bad file: exit code 2 and the API's message with the field.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, json!({ "id": "x", "port": 1 }).to_string()).expect("write");
    let out = reskctl(&gw, &["services", "register", &bad.to_string_lossy()]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("400") && stderr(&out).contains("port"), "{}", stderr(&out));

    // Workflows: register, execute and wait, show, list runs.
    let workflow = dir.path().join("charge.json");
    std::fs::write(
        &workflow,
        json!({ "id": "charge-order", "steps": [
            { "id": "charge", "service": "payments", "action": "charge", "input": { "amount": "{{input.total}}" } }
        ]})
        .to_string(),
    )
    .expect("write");
    let out = ok(&reskctl(&gw, &["workflows", "register", &workflow.to_string_lossy()]).await);
    assert!(out.contains("registered workflow charge-order version 1"), "{out}");
    let out =
        ok(&reskctl(&gw, &["workflows", "execute", "charge-order", "--input", r#"{"total": 12}"#, "--wait"]).await);
    assert!(out.contains("status COMPLETED") && out.contains("payments.charge"), "{out}");
    let run_id = out.split_whitespace().nth(2).unwrap_or("").to_string();
    let out = ok(&reskctl(&gw, &["workflows", "runs", "--workflow", "charge-order"]).await);
    assert!(out.contains(&run_id) && out.contains("COMPLETED"), "{out}");
    let shown: Value =
        serde_json::from_str(&ok(&reskctl(&gw, &["--json", "workflows", "show", &run_id]).await)).expect("json");
    assert_eq!(shown["steps"][0]["status"], "completed", "{shown}");
    let out = ok(&reskctl(&gw, &["workflows", "list"]).await);
    assert!(out.contains("charge-order"), "{out}");
    let out = reskctl(&gw, &["workflows", "cancel", &run_id]).await;
    assert_eq!(out.status.code(), Some(2), "an ended run cannot be cancelled");
    assert!(stderr(&out).contains("409"), "{}", stderr(&out));

    // A run that fails: --wait exits 1.
    actions.fail("charge", 10, 500);
    let out = reskctl(&gw, &["workflows", "execute", "charge-order", "--input", r#"{"total": 1}"#, "--wait"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));

    // Breakers and routes.
    let out = ok(&reskctl(&gw, &["breakers", "list"]).await);
    assert!(out.contains("breaker"), "a table, even when empty: {out}");
    let out = reskctl(&gw, &["breakers", "reset", "ghost"]).await;
    assert_eq!(out.status.code(), Some(2));
    let routes = dir.path().join("routes.yaml");
    std::fs::write(
        &routes,
        "routes:\n  - id: pay\n    path: /api/pay/*\n    serviceId: payments\n    cache: {ttl: 30}\n",
    )
    .expect("write");
    let out = ok(&reskctl(&gw, &["routes", "apply", &routes.to_string_lossy()]).await);
    assert!(out.contains("applied 1 routes"), "{out}");
    let out = ok(&reskctl(&gw, &["routes", "list"]).await);
    assert!(out.contains("/api/pay/*") && out.contains("cache=30s"), "{out}");
    ok(&reskctl(&gw, &["routes", "delete", "pay"]).await);
    let listed: Value = serde_json::from_str(&ok(&reskctl(&gw, &["--json", "routes", "list"]).await)).expect("json");
    assert_eq!(listed["routes"], json!([]));

    // Deregister.
    let out = ok(&reskctl(&gw, &["services", "deregister", "payments"]).await);
    assert!(out.contains("1 instances removed"), "{out}");
    eventually("the service to be gone", std::time::Duration::from_secs(5), || async {
        let out = reskctl(&gw, &["services", "get", "payments"]).await;
        (out.status.code() == Some(2)).then_some(())
    })
    .await;
}
