//! The sidecar as it runs: a real control plane, a real sidecar process and real backends. Config
//! changes reach it over the stream; killed and failing backends are ejected or broken off;
//! resets, control-plane outages and restarts behave as an operator expects.

use std::collections::HashSet;
use std::time::Duration;

use reskflow_e2e::harness::{eventually, ControlPlane, Gateway, Sidecar};
use reskflow_e2e::targets::EchoBackend;
use reskflow_proto::pb::config::v1 as cfg;
use reskflow_proto::registry::{Instance, Service};
use reskflow_proto::Client;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

async fn service(client: &Client, id: &str, policy: Value) {
    let mut body = json!({ "id": id });
    if !policy.is_null() {
        body["trafficPolicy"] = policy;
    }
    let s: Service = serde_json::from_value(body).expect("service");
    client.register_service(s).await.expect("register service");
}

async fn instance(client: &Client, service: &str, backend: &EchoBackend) {
    let i: Instance = serde_json::from_value(json!({
        "id": backend.name, "serviceId": service, "address": "127.0.0.1", "port": backend.port
    }))
    .expect("instance");
    client.register_instance(i).await.expect("register instance");
}

/// Which backends answer `n` GETs through the sidecar.
async fn backends_seen(sidecar: &Sidecar, path: &str, n: usize) -> HashSet<String> {
    let mut seen = HashSet::new();
    for _ in 0..n {
        let (status, _, body) = sidecar.get(path).await;
        if status == 200 {
            seen.insert(body["backend"].as_str().unwrap_or("").to_string());
        }
    }
    seen
}

async fn ready(sidecar: &Sidecar) -> Value {
    eventually("the sidecar is ready", WAIT, || async {
        let (status, body) = sidecar.admin("/ready").await;
        (status == 200).then_some(body)
    })
    .await
}

async fn clients(client: &Client) -> cfg::ListClientsResponse {
    client.config().list_clients(cfg::ListClientsRequest {}).await.expect("list clients").into_inner()
}

#[tokio::test]
async fn a_sidecar_registers_its_instance_routes_to_the_upstream_and_follows_new_instances() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    service(&client, "orders", Value::Null).await;
    service(&client, "payments", Value::Null).await;
    let (a, b, c) =
        (EchoBackend::start("pay-a").await, EchoBackend::start("pay-b").await, EchoBackend::start("pay-c").await);
    instance(&client, "payments", &a).await;
    instance(&client, "payments", &b).await;
    let sidecar =
        Sidecar::start(&cp, &[("UPSTREAMS", "payments"), ("SERVICE_ID", "orders"), ("SERVICE_PORT", "9999")]).await;
    ready(&sidecar).await;
    let (status, _) = sidecar.admin("/health").await;
    assert_eq!(status, 200, "the liveness path of deploy/k8s");

    // Path style: /<service>/<path>, the prefix removed; round robin over both instances.
    let (status, headers, body) = sidecar.get("/payments/charges/7?currency=eur").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["path"], "/charges/7?currency=eur");
    assert!(body["traceparent"].as_str().is_some_and(|t| t.starts_with("00-")), "a trace context is added: {body}");
    assert!(headers.contains_key("x-reskflow-endpoint"));

    // The upstream's answer fields pass as they came, but for the hop-by-hop ones (and those its
    // Connection names); the sidecar's own replaces one of its name.
    let fields = [
        "set-cookie:a%3D1",
        "set-cookie:b%3D2",
        "connection:x-hop",
        "x-hop:1",
        "keep-alive:timeout%3D5",
        "x-reskflow-endpoint:spoofed",
        "x-kept:yes",
    ];
    let query: Vec<String> = fields.iter().map(|f| format!("answer-header={f}")).collect();
    let (status, headers, body) = sidecar.get(&format!("/payments/fields?{}", query.join("&"))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers.get_all("set-cookie").iter().collect::<Vec<_>>(), ["a=1", "b=2"]);
    for gone in ["x-hop", "keep-alive"] {
        assert!(!headers.contains_key(gone), "{gone} is hop-by-hop: {headers:?}");
    }
    assert_eq!(headers["x-kept"], "yes");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers.get_all("date").iter().count(), 1, "the upstream's Date, not a second one");
    let endpoints: Vec<_> = headers.get_all("x-reskflow-endpoint").iter().collect();
    assert_eq!(endpoints.len(), 1, "{endpoints:?}");
    assert!(endpoints[0] == "pay-a" || endpoints[0] == "pay-b", "the sidecar's own: {endpoints:?}");
    assert_eq!(backends_seen(&sidecar, "/payments/x", 10).await, HashSet::from(["pay-a".into(), "pay-b".into()]));

    // Host style.
    let response = reqwest::Client::new()
        .get(format!("{}/health", sidecar.outbound))
        .header("host", "payments")
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 200);

    // A new instance reaches the sidecar over the stream.
    instance(&client, "payments", &c).await;
    eventually("the new instance gets traffic", WAIT, || async {
        backends_seen(&sidecar, "/payments/x", 6).await.contains("pay-c").then_some(())
    })
    .await;

    // The sidecar registered the instance it runs beside, and acked what it was sent.
    let orders = client.list_instances("orders").await.expect("instances");
    assert_eq!(orders.len(), 1);
    assert_eq!(orders[0].port, 9999);
    let listed = eventually("the sidecar acked its latest config", WAIT, || async {
        let list = clients(&client).await;
        let me = list.clients.into_iter().find(|c| c.role == "sidecar")?;
        (me.acked_version == me.sent_version && me.sent_version > 0).then_some(me)
    })
    .await;
    assert_eq!(listed.service_id, "orders");

    // Unknown upstreams are clear errors.
    let (status, _, body) = sidecar.get("/ghost/x").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["service"], "ghost");
}

#[tokio::test]
async fn a_killed_backend_is_ejected_and_safe_requests_are_retried_elsewhere() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let policy = json!({"outlierDetection": {"consecutiveGatewayFailure": 2, "maxEjectionPercent": 50}});
    service(&client, "stock", policy).await;
    let mut backends = Vec::new();
    for name in ["stock-a", "stock-b", "stock-c"] {
        let b = EchoBackend::start(name).await;
        instance(&client, "stock", &b).await;
        backends.push(b);
    }
    // Requests that name no upstream go to the default one, path unchanged.
    let sidecar = Sidecar::start(&cp, &[("UPSTREAMS", "stock"), ("DEFAULT_UPSTREAM", "stock")]).await;
    ready(&sidecar).await;
    assert_eq!(backends_seen(&sidecar, "/x", 9).await.len(), 3);
    let (_, _, body) = sidecar.get("/items/1").await;
    assert_eq!(body["path"], "/items/1");

    backends[0].kill();
    for _ in 0..30 {
        let (status, _, body) = sidecar.get("/x").await;
        assert_eq!(status, 200, "retried on another instance: {body}");
        assert_ne!(body["backend"], "stock-a");
    }
    let metrics = sidecar.metrics().await;
    assert!(metrics.contains("reskflow_sidecar_upstream_ejections_total{service=\"stock\"} 1"), "{metrics}");
    assert!(metrics.contains("reskflow_sidecar_endpoints{service=\"stock\",ejected=\"true\"} 1"), "{metrics}");
}

#[tokio::test]
async fn a_failing_backend_opens_the_breaker_fallbacks_are_served_and_half_open_probes_close_it() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let policy = json!({
        "circuitBreaker": {"slidingWindowSize": 10, "minimumNumberOfCalls": 10, "failureRateThreshold": 50,
                           "waitDurationInOpenState": "1s", "permittedNumberOfCallsInHalfOpenState": 2},
        "outlierDetection": {"enabled": false},
        "retry": {"maxAttempts": 1},
        "fallback": {"type": "static", "status": 200, "body": {"fallback": true}}
    });
    service(&client, "quotes", policy).await;
    let backend = EchoBackend::start("quotes-a").await;
    instance(&client, "quotes", &backend).await;
    let sidecar = Sidecar::start(&cp, &[("UPSTREAMS", "quotes")]).await;
    ready(&sidecar).await;

    backend.fail_per_10(6);
    let mut fallbacks = 0;
    for _ in 0..30 {
        let (_, headers, body) = sidecar.get("/quotes/x").await;
        if headers.get("x-reskflow-fallback").is_some() {
            assert_eq!(body, json!({"fallback": true}));
            fallbacks += 1;
        }
    }
    assert!(fallbacks >= 15, "the breaker opened after the window filled: {fallbacks} fallbacks");
    let (_, breakers) = sidecar.admin("/breakers").await;
    assert_eq!(breakers["quotes"]["state"], "OPEN", "{breakers}");
    let served_while_open = backend.served();

    // The backend recovers; after the wait, the half-open probes pass and the breaker closes.
    backend.fail_per_10(0);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(backend.served(), served_while_open, "nothing reached the backend while open");
    eventually("the breaker closes", WAIT, || async {
        let (status, headers, _) = sidecar.get("/quotes/x").await;
        let (_, breakers) = sidecar.admin("/breakers").await;
        (status == 200 && headers.get("x-reskflow-fallback").is_none() && breakers["quotes"]["state"] == "CLOSED")
            .then_some(())
    })
    .await;
    // The control plane has the sidecar's breaker report.
    eventually("the breaker report reaches the control plane", WAIT, || async {
        let list = clients(&client).await;
        let report: Value = serde_json::from_str(&list.clients.first()?.breakers_json).ok()?;
        (report["quotes"]["transitions"].as_u64()? >= 3).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_operator_reset_closes_an_open_breaker_everywhere() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let policy = json!({
        "circuitBreaker": {"slidingWindowSize": 5, "minimumNumberOfCalls": 5, "waitDurationInOpenState": "1h"},
        "outlierDetection": {"enabled": false},
        "retry": {"maxAttempts": 1}
    });
    service(&client, "mail", policy).await;
    let backend = EchoBackend::start("mail-a").await;
    instance(&client, "mail", &backend).await;
    let sidecar = Sidecar::start(&cp, &[("UPSTREAMS", "mail")]).await;
    ready(&sidecar).await;
    backend.fail_per_10(10);
    for _ in 0..5 {
        sidecar.get("/mail/x").await;
    }
    let (status, headers, body) = sidecar.get("/mail/x").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["service"], "mail");
    assert!(body["error"].as_str().is_some_and(|e| e.contains("OPEN")), "{body}");
    assert!(headers.contains_key("retry-after"));

    // Operators see it through the REST API, aggregated and per holder, and reset it there.
    let gw = Gateway::start(&cp).await;
    let shown = eventually("the open breaker is reported", WAIT, || async {
        let (_, body) = gw.get("/api/circuit-breakers/mail").await;
        (body["state"] == "OPEN" && body["holders"] == 2).then_some(body)
    })
    .await;
    // The gateway is a data plane too: it holds a (closed) breaker for every service.
    assert_eq!(shown["holders"], 2, "{shown}");
    assert_eq!(shown["holdersNotClosed"], 1, "{shown}");
    let holder = |role: &str| {
        shown["perHolder"].as_array().and_then(|h| h.iter().find(|h| h["role"] == role)).cloned().unwrap_or_default()
    };
    assert_eq!(holder("sidecar")["state"], "OPEN", "{shown}");
    assert_eq!(holder("gateway")["state"], "CLOSED", "{shown}");
    let (_, all) = gw.get("/api/circuit-breakers").await;
    assert_eq!(all["breakers"][0]["name"], "mail", "{all}");

    backend.fail_per_10(0);
    let (status, body) = gw.post("/api/circuit-breakers/mail/reset", json!({})).await;
    assert_eq!(status, 202, "{body}");
    eventually("the reset reaches the sidecar", WAIT, || async {
        let (status, _, _) = sidecar.get("/mail/x").await;
        (status == 200).then_some(())
    })
    .await;
    let (status, _) = gw.post("/api/circuit-breakers/ghost/reset", json!({})).await;
    assert_eq!(status, 404);
    let (_, clients) = gw.get("/api/dataplane/clients").await;
    let mut roles: Vec<&str> = clients["clients"]
        .as_array()
        .map(|c| c.iter().filter_map(|c| c["role"].as_str()).collect())
        .unwrap_or_default();
    roles.sort_unstable();
    assert_eq!(roles, ["gateway", "sidecar"], "{clients}");
}

#[tokio::test]
async fn the_sidecar_routes_without_the_control_plane_and_restarts_from_its_saved_config() {
    let mut cp = ControlPlane::start().await;
    let client = cp.client();
    service(&client, "search", Value::Null).await;
    let backend = EchoBackend::start("search-a").await;
    instance(&client, "search", &backend).await;
    let mut sidecar = Sidecar::start(&cp, &[("UPSTREAMS", "search")]).await;
    ready(&sidecar).await;

    cp.process.kill().await;
    for _ in 0..5 {
        let (status, _, body) = sidecar.get("/search/q").await;
        assert_eq!(status, 200, "keeps routing while the control plane is down: {body}");
    }
    // Restarted while the control plane is still down: it serves its saved config.
    sidecar.process.kill().await;
    sidecar.restart().await;
    let state = ready(&sidecar).await;
    assert_eq!(state["source"], "disk", "{state}");
    let (status, _, _) = sidecar.get("/search/q").await;
    assert_eq!(status, 200);

    // The control plane comes back: the stream resumes.
    cp.restart().await;
    let client = cp.client();
    eventually("the stream resumes", WAIT, || async {
        let (_, state) = sidecar.admin("/ready").await;
        let listed = clients(&client).await.clients.len();
        (state["source"] == "control-plane" && listed == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn grpc_goes_through_the_sidecar_over_http2_and_sigterm_deregisters_the_instance() {
    use reskflow_e2e::targets::GrpcTarget;
    let cp = ControlPlane::start().await;
    let client = cp.client();
    service(&client, "inventory", Value::Null).await;
    service(&client, "health-api", Value::Null).await;
    let target = GrpcTarget::start("inventory.v1.Stock").await;
    let i: Instance = serde_json::from_value(json!({
        "id": "health-api-1", "serviceId": "health-api", "address": "127.0.0.1", "port": target.port
    }))
    .expect("instance");
    client.register_instance(i).await.expect("register");
    let mut sidecar = Sidecar::start(
        &cp,
        &[("UPSTREAMS", "health-api"), ("SERVICE_ID", "inventory"), ("SERVICE_PORT", "7000"), ("DRAIN_TIME", "1s")],
    )
    .await;
    ready(&sidecar).await;

    // A gRPC client talks HTTP/2 to the sidecar and names the service in :authority.
    let origin: tonic::transport::Uri = "http://health-api".parse().expect("uri");
    let channel = tonic::transport::Endpoint::from_shared(sidecar.outbound.clone())
        .expect("endpoint")
        .origin(origin)
        .connect()
        .await
        .expect("connect to the sidecar");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest { service: "inventory.v1.Stock".into() })
        .await
        .expect("a gRPC answer through the sidecar")
        .into_inner();
    assert_eq!(reply.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    let unknown = health.check(tonic_health::pb::HealthCheckRequest { service: "nope".into() }).await;
    assert_eq!(unknown.expect_err("unknown service").code(), tonic::Code::NotFound, "gRPC statuses pass through");

    // SIGTERM: the instance is deregistered first, then the sidecar drains and exits.
    assert_eq!(client.list_instances("inventory").await.expect("instances").len(), 1);
    let status = sidecar.process.terminate().await.expect("the sidecar exits");
    assert!(status.success(), "{status:?}");
    assert!(client.list_instances("inventory").await.expect("instances").is_empty());
}

#[tokio::test]
async fn bodies_stream_through_the_sidecar_both_ways_whatever_their_framing() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    service(&client, "files", Value::Null).await;
    let backend = EchoBackend::start("files-a").await;
    instance(&client, "files", &backend).await;
    let sidecar = Sidecar::start(&cp, &[("UPSTREAMS", "files")]).await;
    ready(&sidecar).await;
    eventually("the sidecar routes to files", WAIT, || async {
        (sidecar.get("/files/x").await.0 == 200).then_some(())
    })
    .await;
    let http = reqwest::Client::new();

    // Answers: with a Content-Length (small: read whole; large: streamed) and chunked (small, large).
    for (query, n, chunked) in [
        ("bytes=10", 10, false),
        ("bytes=300000", 300_000, false),
        ("stream-bytes=100", 100, true),
        ("stream-bytes=300000", 300_000, true),
    ] {
        let response = http.get(format!("{}/files/x?{query}", sidecar.outbound)).send().await.expect("answer");
        assert_eq!(response.status(), 200, "{query}");
        assert_eq!(response.headers().contains_key("content-length"), !chunked, "{query}");
        let body = response.bytes().await.expect("body");
        assert!(body.len() == n && body.iter().all(|&b| b == b'x'), "{query}: {} bytes", body.len());
    }

    // Uploads: with a Content-Length, and chunked (a stream of unknown length), large and empty.
    let big = "y".repeat(200_000);
    let response = http.post(format!("{}/files/up", sidecar.outbound)).body(big.clone()).send().await.expect("answer");
    let echoed: Value = response.json().await.expect("json");
    assert_eq!(echoed["bodyBytes"], 200_000);
    assert_eq!(echoed["headers"]["content-length"], "200000");
    let pieces: Vec<Result<String, std::io::Error>> = (0..50).map(|i| Ok(format!("{i:04}-").repeat(1000))).collect();
    let response = http
        .put(format!("{}/files/up", sidecar.outbound))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(pieces)))
        .send()
        .await
        .expect("answer");
    let echoed: Value = response.json().await.expect("json");
    assert_eq!(echoed["method"], "PUT");
    assert_eq!(echoed["bodyBytes"], 250_000);
    assert_eq!(echoed["headers"]["transfer-encoding"], "chunked");
    let body = echoed["body"].as_str().unwrap_or("");
    assert!(body.starts_with("0000-0000-") && body.ends_with("0049-0049-"), "in order");
    let response = http.post(format!("{}/files/empty", sidecar.outbound)).send().await.expect("answer");
    let echoed: Value = response.json().await.expect("json");
    assert_eq!((echoed["bodyBytes"].clone(), echoed["headers"]["content-length"].clone()), (json!(0), json!("0")));

    // HEAD: the head only, with the length a GET would have.
    let response = http.head(format!("{}/files/x?bytes=1234", sidecar.outbound)).send().await.expect("answer");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], "1234");
    assert!(response.bytes().await.expect("body").is_empty());
}
