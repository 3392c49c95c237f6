//! The control plane outside dev mode: its gRPC API needs tokens, and a sidecar's token lets it act
//! only for its own service.

use reskflow_e2e::harness::{binary, eventually, ControlPlane, ControlPlaneOptions, Gateway, Sidecar};
use reskflow_proto::pb::config::v1 as cfg;
use reskflow_proto::registry::{Instance, Service};
use reskflow_proto::{Client, ClientOptions};
use serde_json::json;
use tonic::Code;

const SECRET: &str = "control-plane-secret-of-32-bytes-or-more";

fn token(args: &[&str]) -> String {
    let out = std::process::Command::new(binary("control-plane"))
        .arg("token")
        .args(args)
        .env_clear()
        .env("AUTH_SECRET", SECRET)
        .output()
        .expect("control-plane token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn client(cp: &ControlPlane, token: Option<&str>) -> Client {
    let options = ClientOptions { token: token.map(str::to_string), ..ClientOptions::default() };
    Client::connect_lazy(&cp.grpc_url, options).expect("client")
}

fn instance(id: &str, service: &str) -> Instance {
    serde_json::from_value(json!({ "id": id, "serviceId": service, "address": "127.0.0.1", "port": 9 }))
        .expect("instance")
}

#[tokio::test]
async fn tokens_are_required_and_a_sidecar_acts_only_for_its_own_service() {
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        env: vec![("AUTH_SECRET".into(), SECRET.into())],
        ..ControlPlaneOptions::default()
    })
    .await;
    let (admin, gateway, orders) = (
        token(&["--role", "admin"]),
        token(&["--role", "gateway"]),
        token(&["--role", "sidecar", "--service", "orders"]),
    );
    let out = std::process::Command::new(binary("control-plane"))
        .args(["token", "--role", "sidecar"])
        .env_clear()
        .env("AUTH_SECRET", SECRET)
        .output()
        .expect("run");
    assert!(!out.status.success(), "a sidecar token needs its service");

    // No token, a bad token: UNAUTHENTICATED.
    let err = client(&cp, None).list_services(Default::default()).await.expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    let err = client(&cp, Some("not-a-token")).list_services(Default::default()).await.expect_err("refused");
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");

    let admin_client = client(&cp, Some(&admin));
    for id in ["orders", "payments"] {
        let s: Service = serde_json::from_value(json!({ "id": id })).expect("service");
        admin_client.register_service(s).await.expect("admin registers");
    }
    admin_client.register_instance(instance("payments-1", "payments")).await.expect("admin registers");

    // A sidecar of orders: reads, and writes its own instances only.
    let sidecar_client = client(&cp, Some(&orders));
    sidecar_client.list_services(Default::default()).await.expect("reads");
    sidecar_client.register_instance(instance("orders-1", "orders")).await.expect("its own instance");
    let err = sidecar_client.register_instance(instance("payments-2", "payments")).await.expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let err = sidecar_client.deregister_instance("payments-1").await.expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let s: Service = serde_json::from_value(json!({ "id": "evil" })).expect("service");
    let err = sidecar_client.register_service(s).await.expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    // Its config stream only as orders.
    let hello = cfg::Hello {
        node_id: "impostor".into(),
        role: "sidecar".into(),
        service_id: "payments".into(),
        services: vec!["payments".into()],
        ..Default::default()
    };
    let first = cfg::StreamRequest { kind: Some(cfg::stream_request::Kind::Hello(hello)) };
    let err = sidecar_client.config().stream(tokio_stream::iter(vec![first])).await.expect_err("refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // Real processes with their tokens: a gateway and a sidecar of orders.
    let gw = Gateway::start_with(&cp, &[("CONTROL_PLANE_TOKEN", &gateway)]).await;
    let (status, body) = gw.post("/api/registry/services", json!({ "id": "shipping" })).await;
    assert_eq!(status, 201, "the gateway writes with its token: {body}");
    let sidecar = Sidecar::start(
        &cp,
        &[
            ("CONTROL_PLANE_TOKEN", orders.as_str()),
            ("SERVICE_ID", "orders"),
            ("SERVICE_PORT", "9999"),
            ("UPSTREAMS", "payments"),
        ],
    )
    .await;
    eventually("the sidecar's stream to be accepted (ready)", std::time::Duration::from_secs(20), || async {
        let (status, _) = sidecar.admin("/ready").await;
        (status == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn instances_can_be_kept_to_allowed_networks() {
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        env: vec![("ALLOWED_INSTANCE_NETWORKS".into(), "127.0.0.0/8, ::1".into())],
        ..ControlPlaneOptions::default()
    })
    .await;
    let admin = client(&cp, None);
    let s: Service = serde_json::from_value(json!({ "id": "orders" })).expect("service");
    admin.register_service(s).await.expect("register");
    admin.register_instance(instance("orders-1", "orders")).await.expect("127.0.0.1 is allowed");
    let outside: Instance = serde_json::from_value(
        json!({ "id": "orders-2", "serviceId": "orders", "address": "169.254.169.254", "port": 80 }),
    )
    .expect("instance");
    let err = admin.register_instance(outside).await.expect_err("refused");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let invalid = reskflow_proto::invalid::Invalid::from_status(&err).expect("field violations");
    assert_eq!(invalid.0[0].field, "instance.address", "{invalid}");
    assert!(invalid.0[0].description.contains("169.254.169.254"), "{invalid}");
}
