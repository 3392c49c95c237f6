//! The gRPC Watch stream (snapshot, ordered changes, resume from a version across a restart) and
//! several control-plane replicas sharing one PostgreSQL database.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::time::Duration;

use reskflow_e2e::harness::{eventually, fresh_postgres_url, ControlPlane, ControlPlaneOptions, Gateway};
use reskflow_e2e::targets::HttpTarget;
use reskflow_proto::pb::registry::v1::watch_event::Event;
use reskflow_proto::pb::registry::v1::WatchEvent;
use reskflow_proto::registry::{Instance, Service};
use serde_json::json;
use tonic::Streaming;

const WAIT: Duration = Duration::from_secs(15);

fn service(id: &str) -> Service {
    serde_json::from_value(json!({ "id": id })).unwrap()
}

fn instance(id: &str, service_id: &str) -> Instance {
    serde_json::from_value(json!({"id": id, "serviceId": service_id, "address": "127.0.0.1", "port": 1})).unwrap()
}

async fn next(stream: &mut Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(WAIT, stream.message()).await.expect("an event in time").expect("stream ok").expect("open")
}

fn describe(event: &WatchEvent) -> String {
    match event.event.as_ref().expect("event") {
        Event::Snapshot(s) => format!("snapshot {}s/{}i", s.services.len(), s.instances.len()),
        Event::ServiceUpserted(s) => format!("service+ {}", s.id),
        Event::ServiceDeleted(id) => format!("service- {id}"),
        Event::InstanceUpserted(i) => format!("instance+ {}", i.id),
        Event::InstanceDeleted(i) => format!("instance- {}", i.id),
        Event::BreakerReset(id) => format!("reset {id}"),
        Event::RouteUpsertedJson(r) => format!("route+ {r}"),
        Event::RouteDeleted(id) => format!("route- {id}"),
    }
}

/// PostgreSQL tests need DATABASE_URL; the test command sets it, and CI must not skip them.
fn postgres_available() -> bool {
    let set = std::env::var("DATABASE_URL").is_ok_and(|u| u.starts_with("postgres"));
    if !set {
        assert!(std::env::var("CI").is_err(), "CI runs without DATABASE_URL: run the README's test command");
        eprintln!("skipped: DATABASE_URL does not name a PostgreSQL database");
    }
    set
}

#[tokio::test]
async fn a_watch_sends_a_snapshot_then_each_change_in_version_order() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    client.register_service(service("orders")).await.unwrap();
    let mut stream = client.watch(0, vec![]).await.unwrap();
    let snapshot = next(&mut stream).await;
    assert_eq!(describe(&snapshot), "snapshot 1s/0i");

    client.register_instance(instance("o-1", "orders")).await.unwrap();
    client.register_service(service("mail")).await.unwrap();
    client.deregister_instance("o-1").await.unwrap();
    client.deregister_service("orders").await.unwrap();
    let mut seen = Vec::new();
    let mut version = snapshot.version;
    for _ in 0..4 {
        let event = next(&mut stream).await;
        assert!(event.version > version, "versions grow");
        version = event.version;
        seen.push(describe(&event));
    }
    assert_eq!(seen, ["instance+ o-1", "service+ mail", "instance- o-1", "service- orders"]);
}

#[tokio::test]
async fn a_watch_filtered_to_services_sees_only_those() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    client.register_service(service("orders")).await.unwrap();
    client.register_service(service("mail")).await.unwrap();
    let mut stream = client.watch(0, vec!["mail".into()]).await.unwrap();
    assert_eq!(describe(&next(&mut stream).await), "snapshot 1s/0i");
    client.register_instance(instance("o-1", "orders")).await.unwrap();
    client.register_instance(instance("m-1", "mail")).await.unwrap();
    assert_eq!(describe(&next(&mut stream).await), "instance+ m-1");
    let err = client.watch(0, vec!["bad id!".into()]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn a_watch_resumes_from_its_version_after_the_control_plane_restarts() {
    let mut cp = ControlPlane::start().await;
    let client = cp.client();
    client.register_service(service("orders")).await.unwrap();
    let mut stream = client.watch(0, vec![]).await.unwrap();
    let seen_version = next(&mut stream).await.version;
    drop(stream);

    cp.crash_and_restart().await;
    let client = cp.client();
    client.register_instance(instance("o-1", "orders")).await.unwrap();
    client.register_instance(instance("o-2", "orders")).await.unwrap();

    let mut resumed = client.watch(seen_version, vec![]).await.unwrap();
    let first = next(&mut resumed).await;
    let second = next(&mut resumed).await;
    assert_eq!((describe(&first), describe(&second)), ("instance+ o-1".into(), "instance+ o-2".into()));
    assert!(first.version > seen_version);

    let mut from_future = client.watch(second.version + 1000, vec![]).await.unwrap();
    assert_eq!(describe(&next(&mut from_future).await), "snapshot 1s/2i", "an unknown version gets a snapshot");
}

#[tokio::test]
async fn replicas_on_one_postgres_see_each_others_changes() {
    if !postgres_available() {
        return;
    }
    let url = fresh_postgres_url().await;
    let options = ControlPlaneOptions { database_url: Some(url), ..Default::default() };
    let a = ControlPlane::start_with(options.clone()).await;
    let b = ControlPlane::start_with(options).await;
    let gw_b = Gateway::start(&b).await;
    let mut watch_b = b.client().watch(0, vec![]).await.unwrap();
    assert_eq!(describe(&next(&mut watch_b).await), "snapshot 0s/0i");

    a.client().register_service(service("orders")).await.unwrap();
    a.client().register_instance(instance("o-1", "orders")).await.unwrap();
    assert_eq!(describe(&next(&mut watch_b).await), "service+ orders");
    assert_eq!(describe(&next(&mut watch_b).await), "instance+ o-1");

    let (status, found) = gw_b.post("/api/registry/discover", json!({"serviceId": "orders"})).await;
    assert_eq!((status, found["instance"]["id"].as_str()), (200, Some("o-1")), "{found}");

    // Both replicas write; each change is seen once, in one order, by both.
    b.client().register_service(service("mail")).await.unwrap();
    let err = a.client().register_service(service("mail")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    assert_eq!(describe(&next(&mut watch_b).await), "service+ mail");
    let mut watch_a = a.client().watch(0, vec![]).await.unwrap();
    assert_eq!(describe(&next(&mut watch_a).await), "snapshot 2s/1i");
}

#[tokio::test]
async fn another_replica_takes_over_health_checks_when_the_checker_dies() {
    if !postgres_available() {
        return;
    }
    let url = fresh_postgres_url().await;
    let options = |node: &str| ControlPlaneOptions {
        database_url: Some(url.clone()),
        env: vec![("NODE_ID".into(), node.into()), ("HEALTH_LEASE_TTL".into(), "1s".into())],
    };
    let mut a = ControlPlane::start_with(options("a")).await;
    let b = ControlPlane::start_with(options("b")).await;
    let gw = Gateway::start(&b).await;
    let target = HttpTarget::start().await;
    let (status, _) = gw
        .post(
            "/api/registry/services",
            json!({"id": "web", "healthCheck": {"kind": "http", "interval": "100ms", "timeout": "100ms"}}),
        )
        .await;
    assert_eq!(status, 201);
    let (status, _) = gw
        .post(
            "/api/registry/instances",
            json!({"id": "web-1", "serviceId": "web", "address": "127.0.0.1", "port": target.port()}),
        )
        .await;
    assert_eq!(status, 201);
    let health = |want: &'static str| {
        let gw = &gw;
        async move {
            let (_, h) = gw.get("/api/registry/services/web/health").await;
            (h["instances"][0]["status"] == want).then_some(())
        }
    };
    eventually("web-1 passing", WAIT, || health("passing")).await;

    // Whichever replica holds the lease dies; the survivor must notice the target going down.
    let a_checks = a.process.log().contains("leader=true");
    if a_checks {
        a.process.kill().await;
    } else {
        drop(b);
        panic!("expected replica a, started first, to hold the health-check lease:\n{}", a.process.log());
    }
    target.answer(500);
    eventually("the surviving replica marks web-1 critical", WAIT, || health("critical")).await;
}
