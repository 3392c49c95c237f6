//! The control plane checks real HTTP, TCP and gRPC targets whose health flips during the test,
//! expires TTL checks, and deregisters instances that stay critical.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::time::Duration;

use reskflow_e2e::harness::{eventually, ControlPlane, Gateway};
use reskflow_e2e::targets::{GrpcTarget, HttpTarget, TcpTarget};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

async fn register(gw: &Gateway, service: Value) {
    let (status, body) = gw.post("/api/registry/services", service).await;
    assert_eq!(status, 201, "{body}");
}

async fn add_instance(gw: &Gateway, id: &str, service: &str, port: u16) {
    let (status, body) = gw
        .post("/api/registry/instances", json!({"id": id, "serviceId": service, "address": "127.0.0.1", "port": port}))
        .await;
    assert_eq!(status, 201, "{body}");
}

/// The instance's status in the health endpoint.
async fn status_of(gw: &Gateway, service: &str, instance: &str) -> (String, Value) {
    let (code, health) = gw.get(&format!("/api/registry/services/{service}/health")).await;
    assert_eq!(code, 200, "{health}");
    let found = health["instances"].as_array().unwrap().iter().find(|i| i["id"] == instance).cloned();
    let found = found.unwrap_or(Value::Null);
    (found["status"].as_str().unwrap_or("gone").to_string(), found)
}

async fn wait_for(gw: &Gateway, service: &str, instance: &str, want: &str) -> Value {
    eventually(&format!("{instance} becomes {want}"), WAIT, || async {
        let (status, body) = status_of(gw, service, instance).await;
        (status == want).then_some(body)
    })
    .await
}

#[tokio::test]
async fn http_checks_follow_the_targets_answers() {
    let cp = ControlPlane::start().await;
    let gw = Gateway::start(&cp).await;
    let target = HttpTarget::start().await;
    let other = HttpTarget::start().await;
    register(
        &gw,
        json!({"id": "web", "healthCheck": {"kind": "http", "path": "/health", "interval": "100ms",
                                             "timeout": "100ms", "failureThreshold": 2}}),
    )
    .await;
    add_instance(&gw, "web-1", "web", target.port()).await;
    add_instance(&gw, "web-2", "web", other.port()).await;

    let passing = wait_for(&gw, "web", "web-1", "passing").await;
    assert!(passing["statusOutput"].as_str().unwrap().contains("200 OK"), "{passing}");
    assert!(passing["lastCheckedAt"].is_string());
    wait_for(&gw, "web", "web-2", "passing").await;

    target.answer(429);
    let warning = wait_for(&gw, "web", "web-1", "warning").await;
    assert!(warning["statusOutput"].as_str().unwrap().contains("429"), "{warning}");

    target.answer(503);
    wait_for(&gw, "web", "web-1", "critical").await;
    let (_, health) = gw.get("/api/registry/services/web/health").await;
    assert_eq!((health["status"].as_str(), health["critical"].as_u64()), (Some("warning"), Some(1)));
    for _ in 0..5 {
        let (status, found) = gw.post("/api/registry/discover", json!({"serviceId": "web"})).await;
        assert_eq!((status, found["instance"]["id"].as_str()), (200, Some("web-2")), "only passing instances");
    }
    let (status, found) = gw
        .post(
            "/api/registry/discover",
            json!({"serviceId": "web", "health": "any", "strategy": "consistent_hash", "hashKey": "k"}),
        )
        .await;
    assert_eq!(status, 200, "{found}");

    target.answer(200);
    wait_for(&gw, "web", "web-1", "passing").await;
    drop(other);
    let gone = wait_for(&gw, "web", "web-2", "critical").await;
    assert!(gone["statusOutput"].as_str().unwrap().contains("connection failed"), "{gone}");
}

#[tokio::test]
async fn tcp_checks_see_a_port_close_and_reopen() {
    let cp = ControlPlane::start().await;
    let gw = Gateway::start(&cp).await;
    let mut target = TcpTarget::start();
    register(&gw, json!({"id": "db", "healthCheck": {"kind": "tcp", "interval": "100ms", "timeout": "100ms"}})).await;
    add_instance(&gw, "db-1", "db", target.port).await;
    wait_for(&gw, "db", "db-1", "passing").await;
    target.close();
    let down = wait_for(&gw, "db", "db-1", "critical").await;
    assert!(down["statusOutput"].as_str().unwrap().starts_with("TCP connect"), "{down}");
    let (status, body) = gw.post("/api/registry/discover", json!({"serviceId": "db"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("no_healthy_instance")));
    target.reopen();
    wait_for(&gw, "db", "db-1", "passing").await;
}

#[tokio::test]
async fn grpc_checks_use_the_standard_health_protocol() {
    let cp = ControlPlane::start().await;
    let gw = Gateway::start(&cp).await;
    let target = GrpcTarget::start("inventory.v1.Stock").await;
    register(
        &gw,
        json!({"id": "inventory", "healthCheck": {"kind": "grpc", "grpcService": "inventory.v1.Stock",
                                                   "interval": "200ms", "timeout": "200ms"}}),
    )
    .await;
    add_instance(&gw, "inv-1", "inventory", target.port).await;
    let up = wait_for(&gw, "inventory", "inv-1", "passing").await;
    assert!(up["statusOutput"].as_str().unwrap().contains("SERVING"), "{up}");
    target.set_serving("inventory.v1.Stock", false).await;
    let down = wait_for(&gw, "inventory", "inv-1", "critical").await;
    assert!(down["statusOutput"].as_str().unwrap().contains("NOT_SERVING"), "{down}");
    target.set_serving("inventory.v1.Stock", true).await;
    wait_for(&gw, "inventory", "inv-1", "passing").await;
}

#[tokio::test]
async fn ttl_checks_pass_on_heartbeats_and_expire_without_them() {
    let cp = ControlPlane::start().await;
    let gw = Gateway::start(&cp).await;
    register(&gw, json!({"id": "worker", "healthCheck": {"kind": "ttl", "ttl": "600ms"}})).await;
    register(&gw, json!({"id": "plain"})).await;
    add_instance(&gw, "w-1", "worker", 1).await;
    add_instance(&gw, "p-1", "plain", 1).await;
    let (status, _) = status_of(&gw, "worker", "w-1").await;
    assert_eq!(status, "critical", "critical until the first heartbeat");

    let (code, beat) = gw.post("/api/registry/instances/w-1/heartbeat", json!({})).await;
    assert_eq!((code, beat["status"].as_str()), (200, Some("passing")), "{beat}");
    let (code, beat) =
        gw.put("/api/registry/instances/w-1/heartbeat", json!({"status": "warning", "output": "disk 91%"})).await;
    assert_eq!(
        (code, beat["status"].as_str(), beat["statusOutput"].as_str()),
        (200, Some("warning"), Some("disk 91%"))
    );

    let expired = wait_for(&gw, "worker", "w-1", "critical").await;
    assert!(expired["statusOutput"].as_str().unwrap().contains("ttl expired"), "{expired}");

    let (code, body) = gw.post("/api/registry/instances/p-1/heartbeat", json!({})).await;
    assert_eq!(code, 400, "no ttl check: {body}");
    let (code, _) = gw.post("/api/registry/instances/ghost/heartbeat", json!({})).await;
    assert_eq!(code, 404);
    let (code, _) = gw.post("/api/registry/instances/w-1/heartbeat", json!({"status": "great"})).await;
    assert_eq!(code, 400);
}

#[tokio::test]
async fn instances_critical_for_too_long_are_deregistered() {
    let cp = ControlPlane::start().await;
    let gw = Gateway::start(&cp).await;
    let mut target = TcpTarget::start();
    register(
        &gw,
        json!({"id": "cache", "healthCheck": {"kind": "tcp", "interval": "100ms", "timeout": "100ms",
                                               "deregisterCriticalAfter": "500ms"}}),
    )
    .await;
    add_instance(&gw, "c-1", "cache", target.port).await;
    wait_for(&gw, "cache", "c-1", "passing").await;
    target.close();
    wait_for(&gw, "cache", "c-1", "critical").await;
    eventually("c-1 is deregistered", WAIT, || async {
        let (_, list) = gw.get("/api/registry/services/cache/instances").await;
        list["instances"].as_array().unwrap().is_empty().then_some(())
    })
    .await;
    assert!(cp.process.log().contains("critical for too long; deregistered"));
}

#[tokio::test]
async fn many_hanging_instances_do_not_delay_the_others_or_the_api() {
    let cp = ControlPlane::start().await;
    let gw = Gateway::start(&cp).await;
    // Listeners that accept and never answer: every HTTP probe of them runs into its timeout.
    let hanging: Vec<std::net::TcpListener> =
        (0..50).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    register(&gw, json!({"id": "slow", "healthCheck": {"kind": "http", "interval": "2s", "timeout": "2s"}})).await;
    register(&gw, json!({"id": "fast", "healthCheck": {"kind": "http", "interval": "100ms", "timeout": "100ms"}}))
        .await;
    for (n, l) in hanging.iter().enumerate() {
        add_instance(&gw, &format!("slow-{n}"), "slow", l.local_addr().unwrap().port()).await;
    }
    let target = HttpTarget::start().await;
    add_instance(&gw, "fast-1", "fast", target.port()).await;
    wait_for(&gw, "fast", "fast-1", "passing").await;
    let (status, _) = gw.get("/api/registry/services").await;
    assert_eq!(status, 200);
}
