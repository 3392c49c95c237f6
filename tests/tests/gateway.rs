//! The API gateway as it runs: a real control plane, real gateway processes and real backends.
//! Routes are managed over REST (and from a file), reach every gateway over the config stream, and
//! proxy through the shared data plane; tokens and API keys are checked as an operator expects.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reskflow_e2e::harness::{eventually, register_at, ControlPlane, Gateway};
use reskflow_e2e::targets::EchoBackend;
use reskflow_proto::registry::{Instance, Service};
use reskflow_proto::Client;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(20);

async fn service_with(client: &Client, id: &str, backends: &[&EchoBackend]) {
    let s: Service = serde_json::from_value(json!({ "id": id })).expect("service");
    client.register_service(s).await.expect("register service");
    for backend in backends {
        let i: Instance = serde_json::from_value(json!({
            "id": backend.name, "serviceId": id, "address": "127.0.0.1", "port": backend.port
        }))
        .expect("instance");
        client.register_instance(i).await.expect("register instance");
    }
}

/// Sends raw HTTP/1.1 (no client-side path cleanup) and returns the status and the body.
/// Puts the route `/api/orders/*` -> orders and waits until it answers through `gw`.
async fn orders_route(gw: &Gateway) {
    let (status, body) =
        gw.put("/api/gateway/routes/orders", json!({ "path": "/api/orders/*", "serviceId": "orders" })).await;
    assert_eq!(status, 200, "{body}");
    eventually("the route", WAIT, || async {
        let (status, _, _) = get_with(gw, "/api/orders/1", &[]).await;
        (status == 200).then_some(())
    })
    .await;
}

async fn raw(gateway: &Gateway, request_line: &str, headers: &str) -> (u16, Value) {
    let addr = gateway.url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!("{request_line} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.expect("read");
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // Chunked answers: take the JSON between the chunk sizes.
    let json = body.find('{').and_then(|start| body.rfind('}').map(|end| &body[start..=end])).unwrap_or("");
    (status, serde_json::from_str(json).unwrap_or(Value::Null))
}

async fn get_with(gateway: &Gateway, path: &str, headers: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut request = gateway.http().get(format!("{}{path}", gateway.url));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("gateway answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.json::<Value>().await.unwrap_or(Value::Null);
    (status, headers, body)
}

#[tokio::test]
async fn routes_are_managed_over_rest_streamed_to_the_gateway_and_matched_most_specific_first() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let orders = EchoBackend::start("orders-1").await;
    let catalog = EchoBackend::start("catalog-1").await;
    service_with(&client, "orders", &[&orders]).await;
    service_with(&client, "catalog", &[&catalog]).await;
    let gw = Gateway::start(&cp).await;

    // Replace the whole table: a specific route with a rewrite and a catch-all.
    let (status, body) = gw
        .put(
            "/api/gateway/routes",
            json!({ "routes": [
                { "method": "GET", "path": "/api/orders/:id", "serviceId": "orders", "targetPath": "/v2/orders/:id" },
                { "id": "everything", "path": "/api/*", "serviceId": "catalog" },
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["routes"][0]["id"], "get-api-orders-id");
    let (_, listed) = gw.get("/api/gateway/routes").await;
    assert_eq!(listed["routes"].as_array().map(Vec::len), Some(2), "{listed}");

    // The routes reach the gateway over the config stream.
    let body = eventually("the order route to work", WAIT, || async {
        let (status, headers, body) = get_with(
            &gw,
            "/api/orders/42?full=1",
            &[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-proto", "gopher"), ("x-forwarded-host", "evil.example")],
        )
        .await;
        (status == 200).then_some((headers, body))
    })
    .await;
    let (headers, body) = body;
    assert_eq!(body["backend"], "orders-1");
    assert_eq!(body["path"], "/v2/orders/42?full=1");
    assert_eq!(headers["x-reskflow-route"], "get-api-orders-id");
    assert_eq!(body["headers"]["x-forwarded-for"], "127.0.0.1", "an untrusted X-Forwarded-For is replaced");
    assert_eq!(body["headers"]["x-forwarded-proto"], "http");
    assert!(body["headers"]["x-forwarded-host"].as_str().is_some_and(|h| h.starts_with("127.0.0.1:")), "{body}");
    assert_eq!(body["repeated"], json!([]), "set headers replace the caller's: {body}");
    assert!(body["traceparent"].as_str().is_some_and(|t| t.starts_with("00-")), "{body}");

    // Less specific: the wildcard, path unchanged; POST to the GET-only route falls to it too.
    let (status, _, body) = get_with(&gw, "/api/orders", &[]).await;
    assert_eq!((status, body["backend"].as_str()), (200, Some("catalog-1")));
    let (status, body) = gw.post("/api/orders/42", json!({"qty": 2})).await;
    assert_eq!(
        (status, body["backend"].as_str(), body["path"].as_str()),
        (200, Some("catalog-1"), Some("/api/orders/42"))
    );
    assert_eq!(body["body"], r#"{"qty":2}"#, "the body streams through");

    // Normalization: dot segments and doubled slashes resolve before matching; encoded slashes are refused.
    let (status, body) = raw(&gw, "GET /api//orders/./7/../8", "").await;
    assert_eq!((status, body["path"].as_str()), (200, Some("/v2/orders/8")), "{body}");
    let (status, body) = raw(&gw, "GET /api/orders/%2e%2e/registry/services", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["services"].is_array(), "resolves to the management API, not to a route: {body}");
    let (status, body) = raw(&gw, "GET /api/orders/1%2F..%2F..%2Fadmin", "").await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_path")), "{body}");

    // Unmatched: a JSON 404.
    let (status, body) = gw.get("/nothing/here").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("no_route")), "{body}");

    // Management endpoints take precedence over the catch-all.
    let (status, body) = gw.get("/api/registry/services").await;
    assert_eq!(status, 200);
    assert!(body["services"].is_array());

    // Create one route; a conflicting one and an invalid one are refused, naming the field.
    let (status, body) = gw
        .post(
            "/api/gateway/routes",
            json!({ "id": "items", "method": "GET", "path": "/api/items/:sku", "serviceId": "orders" }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        gw.post("/api/gateway/routes", json!({ "id": "items", "path": "/api/x", "serviceId": "orders" })).await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = gw
        .post(
            "/api/gateway/routes",
            json!({ "id": "items2", "method": "GET", "path": "/api/items/:id", "serviceId": "orders" }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "routes[items2].path", "{body}");
    let (status, body) = gw
        .put(
            "/api/gateway/routes/limited",
            json!({ "path": "/api/l", "serviceId": "orders", "rateLimit": { "requests": 5, "window": "soon" } }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "rateLimit.window", "{body}");

    eventually("the items route to work", WAIT, || async {
        let (status, _, body) = get_with(&gw, "/api/items/abc", &[]).await;
        (status == 200 && body["backend"] == "orders-1").then_some(())
    })
    .await;

    // Delete the specific order route: its paths fall to the catch-all.
    let (status, _) = gw.delete("/api/gateway/routes/get-api-orders-id").await;
    assert_eq!(status, 204);
    let (status, _) = gw.delete("/api/gateway/routes/get-api-orders-id").await;
    assert_eq!(status, 404);
    eventually("the order route to be gone", WAIT, || async {
        let (status, _, body) = get_with(&gw, "/api/orders/42", &[]).await;
        (status == 200 && body["backend"] == "catalog-1").then_some(())
    })
    .await;

    // A route to a service with no instances answers from the data plane, not a hang.
    let (status, _) =
        gw.put("/api/gateway/routes/ghost", json!({ "path": "/api/ghost/*", "serviceId": "ghost" })).await;
    assert_eq!(status, 200);
    eventually("the ghost route to answer 503", WAIT, || async {
        let (status, _, body) = get_with(&gw, "/api/ghost/1", &[]).await;
        (status == 503).then_some(body)
    })
    .await;
}

#[tokio::test]
async fn routes_from_a_file_reach_a_second_replica_and_a_body_limit_answers_413() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let orders = EchoBackend::start("orders-1").await;
    service_with(&client, "orders", &[&orders]).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("routes.yaml");
    std::fs::write(
        &file,
        "routes:\n  - id: orders\n    path: /api/orders/*\n    serviceId: orders\n    maxBodyBytes: 16\n    timeout: 2s\n",
    )
    .expect("write");
    let path = file.to_string_lossy().to_string();
    let first = Gateway::start_with(&cp, &[("ROUTES_FILE", &path)]).await;
    let second = Gateway::start(&cp).await;
    for gw in [&first, &second] {
        eventually("the file's route on every replica", WAIT, || async {
            let (status, _, body) = get_with(gw, "/api/orders/1", &[]).await;
            (status == 200 && body["backend"] == "orders-1").then_some(())
        })
        .await;
    }
    let (status, body) = second.post("/api/orders/1", json!({"note": "far more than sixteen bytes"})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (413, Some("payload_too_large")), "{body}");

    // A file the control plane refuses stops the start, naming the field.
    std::fs::write(&file, "- path: /api/x\n  serviceId: orders\n  rateLimit: {requests: 0, window: 1m}\n")
        .expect("write");
    let dir2 = tempfile::tempdir().expect("dir");
    let out = std::process::Command::new(reskflow_e2e::harness::binary("gateway"))
        .env("PORT", reskflow_e2e::harness::free_port().to_string())
        .env("BIND_ADDR", "127.0.0.1")
        .env("ORCHESTRATION_URL", &cp.grpc_url)
        .env("ROUTES_FILE", &path)
        .current_dir(dir2.path())
        .output()
        .expect("run gateway");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rateLimit.requests"), "{stderr}");
}

const EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3OI44GflcDtciUJH
2nBWvwRh8Qp7OcMX4PwdU4YC4EKhRANCAAQWJov8t2r1jExClgh/9i0pHIP8ipLo
aO9bQvLiOKzBXW0nwSdiFZ6GvrcEf3fl2dUB8VfyIAk1eS0sXzhDgUC0
-----END PRIVATE KEY-----";
const EC_X: &str = "FiaL_Ldq9YxMQpYIf_YtKRyD_IqS6GjvW0Ly4jiswV0";
const EC_Y: &str = "bSfBJ2IVnoa-twR_d-XZ1QHxV_IgCTV5LSxfOEOBQLQ";
/// Another P-256 key, whose public half the gateway does not know.
const OTHER_EC_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgUmy8NYfcFCgZrXUz
cVna2kvaDvG4Wua6GMR6YREid8ahRANCAAQUjUl1tKcP3pDXE8GsJk9rJ7JYhO+l
ebp7yia51axvTNb0T0tkVQLY/nIAsc7+HiZD3Ub6WrBvvddf+8ujJjR3
-----END PRIVATE KEY-----";
const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn hs256(claims: &Value, secret: &str) -> String {
    encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(secret.as_bytes()).expect("key"))
        .expect("token")
}

fn es256(claims: &Value, pem: &str, kid: &str) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_string());
    encode(&header, claims, &EncodingKey::from_ec_pem(pem.as_bytes()).expect("pem")).expect("token")
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn tokens_and_api_keys_authenticate_roles_authorize_and_identity_headers_cannot_be_spoofed() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let orders = EchoBackend::start("orders-1").await;
    service_with(&client, "orders", &[&orders]).await;
    let dir = tempfile::tempdir().expect("dir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        json!({ "keys": [{ "kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig", "x": EC_X, "y": EC_Y }] })
            .to_string(),
    )
    .expect("jwks");
    let keys = dir.path().join("keys.yaml");
    std::fs::write(&keys, "consumers:\n  - id: partner-acme\n    roles: [customer]\n    keys: [acme-key-1]\n")
        .expect("keys");
    let gw = Gateway::start_with(
        &cp,
        &[
            ("JWT_SECRET", SECRET),
            ("JWT_JWKS_FILE", &jwks.to_string_lossy()),
            ("JWT_ALGORITHMS", "HS256,ES256"),
            ("JWT_ISSUER", "https://id.example"),
            ("API_KEYS_FILE", &keys.to_string_lossy()),
        ],
    )
    .await;
    let admin =
        hs256(&json!({ "sub": "ops", "roles": ["admin"], "iss": "https://id.example", "exp": now() + 600 }), SECRET);
    let bearer = |t: &str| format!("Bearer {t}");

    // Management needs the admin role now.
    let (status, headers, _) = get_with(&gw, "/api/gateway/routes", &[]).await;
    assert_eq!(status, 401);
    assert!(headers["www-authenticate"].to_str().unwrap_or("").starts_with("Bearer"));
    let response = gw
        .http()
        .put(format!("{}/api/gateway/routes", gw.url))
        .header("authorization", bearer(&admin))
        .json(&json!([
            { "id": "orders", "path": "/api/orders/:id", "serviceId": "orders", "authentication": true, "authorization": ["customer"] },
            { "id": "public", "path": "/api/public/*", "serviceId": "orders" },
        ]))
        .send()
        .await
        .expect("put routes");
    assert_eq!(response.status(), 200);
    let (status, _, _) = get_with(&gw, "/health", &[]).await;
    assert_eq!(status, 200, "health stays open");

    let customer = es256(
        &json!({ "sub": "user-7", "roles": ["customer"], "iss": "https://id.example", "exp": now() + 600 }),
        EC_KEY,
        "k1",
    );
    let body = eventually("the protected route to admit a customer", WAIT, || {
        let auth = bearer(&customer);
        let gw = &gw;
        async move {
            let (status, _, body) = get_with(
                gw,
                "/api/orders/1",
                &[("authorization", &auth), ("x-user-id", "spoofed"), ("x-user-roles", "admin")],
            )
            .await;
            (status == 200).then_some(body)
        }
    })
    .await;
    assert_eq!(body["headers"]["x-user-id"], "user-7");
    assert_eq!(body["repeated"], json!([]), "identity headers replace the caller's: {body}");
    assert_eq!(body["headers"]["x-user-roles"], "customer");
    assert_eq!(body["headers"]["x-authenticated-via"], "jwt");

    // Public routes pass, but a caller's identity headers never do.
    let (status, _, body) = get_with(&gw, "/api/public/x", &[("x-user-id", "spoofed")]).await;
    assert_eq!(status, 200);
    assert!(body["headers"].get("x-user-id").is_none(), "{body}");

    // An API key of a consumer with the role.
    let (status, _, body) = get_with(&gw, "/api/orders/1", &[("x-api-key", "acme-key-1")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["headers"]["x-user-id"], "partner-acme");
    assert_eq!(body["headers"]["x-authenticated-via"], "api-key");
    let (status, _, _) = get_with(&gw, "/api/orders/1", &[("x-api-key", "wrong")]).await;
    assert_eq!(status, 401);

    // Every bad token is a 401; a good one without the role is a 403.
    let claims = |exp: u64| json!({ "sub": "u", "roles": ["customer"], "iss": "https://id.example", "exp": exp });
    let expired = hs256(&claims(now() - 120), SECRET);
    let wrong_secret = hs256(&claims(now() + 600), "another-secret-that-is-also-32-bytes-long");
    let wrong_key = es256(&claims(now() + 600), OTHER_EC_KEY, "k1");
    let unknown_kid = es256(&claims(now() + 600), EC_KEY, "k9");
    let wrong_issuer =
        hs256(&json!({ "sub": "u", "roles": ["customer"], "iss": "https://evil.example", "exp": now() + 600 }), SECRET);
    let no_exp = hs256(&json!({ "sub": "u", "roles": ["customer"], "iss": "https://id.example" }), SECRET);
    let none =
        format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), b64(claims(now() + 600).to_string().as_bytes()));
    // Key confusion: HS256 "signed" with the public key's bytes as the secret.
    let confused = hs256(&claims(now() + 600), &format!("{EC_X}{EC_Y}"));
    let garbage = "not.a.token".to_string();
    for (what, token) in [
        ("expired", &expired),
        ("wrong secret", &wrong_secret),
        ("wrong key", &wrong_key),
        ("unknown kid", &unknown_kid),
        ("wrong issuer", &wrong_issuer),
        ("no exp", &no_exp),
        ("alg none", &none),
        ("key confusion", &confused),
        ("garbage", &garbage),
    ] {
        let (status, headers, body) = get_with(&gw, "/api/orders/1", &[("authorization", &bearer(token))]).await;
        assert_eq!(status, 401, "{what}: {body}");
        assert!(headers["www-authenticate"].to_str().unwrap_or("").contains("invalid_token"), "{what}");
        assert_eq!(body["error"]["code"], "unauthenticated", "{what}");
    }
    let (status, _, body) = get_with(&gw, "/api/orders/1", &[]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")));
    // The scheme is case-insensitive and the token may be padded; another scheme is refused.
    let (status, _, body) = get_with(&gw, "/api/orders/1", &[("authorization", &format!("BEARER  {customer} "))]).await;
    assert_eq!((status, body["headers"]["x-user-id"].as_str()), (200, Some("user-7")), "{body}");
    for other in [format!("Basic {customer}"), "Bearer".to_string(), "Bearer ".to_string()] {
        let (status, _, body) = get_with(&gw, "/api/orders/1", &[("authorization", &other)]).await;
        assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")), "{other}: {body}");
    }
    let courier =
        hs256(&json!({ "sub": "c", "roles": ["courier"], "iss": "https://id.example", "exp": now() + 600 }), SECRET);
    let (status, _, body) = get_with(&gw, "/api/orders/1", &[("authorization", &bearer(&courier))]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("forbidden")), "{body}");
    // A customer is not an admin.
    let (status, _, _) = get_with(&gw, "/api/registry/services", &[("authorization", &bearer(&customer))]).await;
    assert_eq!(status, 403);

    // Each refusal is counted on its route.
    let (status, _, metrics) = get_with(&gw, "/api/gateway/metrics", &[("authorization", &bearer(&admin))]).await;
    assert_eq!(status, 200, "{metrics}");
    let orders = metrics["routes"].as_array().and_then(|r| r.iter().find(|r| r["route"] == "orders")).cloned();
    let orders = orders.unwrap_or_default();
    assert_eq!(orders["authFailures"], 14, "{orders}");
    assert_eq!(orders["forbidden"], 1, "{orders}");
    assert!(orders["status"]["2xx"].as_u64().is_some_and(|n| n >= 2), "{orders}");
    assert!(orders["latencyMs"]["p99"].as_f64().is_some_and(|ms| ms > 0.0), "{orders}");
    let text = gw.http().get(format!("{}/metrics", gw.url)).send().await.expect("metrics").text().await.expect("text");
    assert!(text.contains("reskflow_gateway_route_auth_failures_total{route=\"orders\"} 14"), "{text}");
    assert!(text.contains("reskflow_gateway_breaker_state{service=\"orders\",state=\"CLOSED\"} 1"), "{text}");
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A name no earlier run used (limits in Redis outlive a test run).
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

#[tokio::test]
async fn two_replicas_share_one_per_user_limit_through_redis() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let orders = EchoBackend::start("orders-1").await;
    service_with(&client, "orders", &[&orders]).await;
    let env = [("JWT_SECRET", SECRET), ("REDIS_URL", &redis_url())];
    let a = Gateway::start_with(&cp, &env).await;
    let b = Gateway::start_with(&cp, &env).await;
    let admin = hs256(&json!({ "sub": "ops", "roles": ["admin"], "exp": now() + 600 }), SECRET);
    let route = unique("limited");
    let response = a
        .http()
        .put(format!("{}/api/gateway/routes/{route}", a.url))
        .header("authorization", format!("Bearer {admin}"))
        .json(&json!({ "path": "/api/limited/*", "serviceId": "orders", "authentication": true,
                       "rateLimit": { "requests": 5, "window": "1m" } }))
        .send()
        .await
        .expect("put route");
    assert_eq!(response.status(), 200);
    let alice = format!("Bearer {}", hs256(&json!({ "sub": unique("alice"), "exp": now() + 600 }), SECRET));
    let bob = format!("Bearer {}", hs256(&json!({ "sub": unique("bob"), "exp": now() + 600 }), SECRET));
    for gw in [&a, &b] {
        eventually("the limited route on both replicas", WAIT, || async {
            let (status, _, _) = get_with(gw, "/api/limited/x", &[("authorization", &bob)]).await;
            (status == 200).then_some(())
        })
        .await;
    }

    // Alice's five requests, alternating replicas, are all the allowance there is between them.
    // (The upstream sends RateLimit fields of its own: the gateway's replace them.)
    let spoofing = "/api/limited/x?answer-header=ratelimit-limit:999&answer-header=ratelimit-remaining:999";
    let mut remaining = Vec::new();
    for i in 0..5 {
        let gw = if i % 2 == 0 { &a } else { &b };
        let (status, headers, body) = get_with(gw, spoofing, &[("authorization", &alice)]).await;
        assert_eq!(status, 200, "request {i}: {body}");
        assert_eq!(headers.get_all("ratelimit-limit").iter().collect::<Vec<_>>(), ["5"]);
        assert_eq!(headers.get_all("ratelimit-remaining").iter().count(), 1);
        assert_eq!(headers["ratelimit-policy"], "5;w=60");
        remaining.push(headers["ratelimit-remaining"].to_str().unwrap_or("").to_string());
    }
    assert_eq!(remaining, ["4", "3", "2", "1", "0"]);
    for gw in [&a, &b] {
        let (status, headers, body) = get_with(gw, "/api/limited/x", &[("authorization", &alice)]).await;
        assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
        let retry_after: u64 = headers["retry-after"].to_str().ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        assert!((1..=12).contains(&retry_after), "one request every 12 s: {retry_after}");
        assert_eq!(headers["ratelimit-remaining"], "0");
    }
    // Bob has his own allowance (he used one above on each replica).
    let (status, headers, _) = get_with(&b, "/api/limited/x", &[("authorization", &bob)]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["ratelimit-remaining"], "2");

    // A burst all at once, over both replicas (decided in batches, one caller many times in a
    // batch): still exactly the allowance.
    let carol = format!("Bearer {}", hs256(&json!({ "sub": unique("carol"), "exp": now() + 600 }), SECRET));
    let as_carol = [("authorization", carol.as_str())];
    let burst = (0..40).map(|i| get_with(if i % 2 == 0 { &a } else { &b }, "/api/limited/x", &as_carol));
    let statuses: Vec<u16> = futures::future::join_all(burst).await.into_iter().map(|(status, _, _)| status).collect();
    let allowed = statuses.iter().filter(|&&s| s == 200).count();
    let limited = statuses.iter().filter(|&&s| s == 429).count();
    assert_eq!((allowed, limited), (5, 35), "{statuses:?}");

    // A replica reports its calls to Redis and their round trips, in JSON and for Prometheus.
    let as_admin = format!("Bearer {admin}");
    let (_, _, m) = get_with(&a, "/api/gateway/metrics", &[("authorization", &as_admin)]).await;
    let (calls, micros) = (m["redis"]["calls"].as_u64().unwrap_or(0), m["redis"]["callMicros"].as_u64().unwrap_or(0));
    assert!(calls >= 3 && micros > 0, "{m}");
    assert_eq!(m["redis"]["errors"], 0, "{m}");
    let text = a.http().get(format!("{}/metrics", a.url)).send().await.expect("metrics").text().await.expect("text");
    let counter = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.split(' ').next() == Some(name));
        line.and_then(|l| l.split(' ').nth(1)).and_then(|v| v.parse().ok()).unwrap_or(-1.0)
    };
    assert!(counter("reskflow_gateway_redis_calls_total") >= calls as f64, "{text}");
    assert!(counter("reskflow_gateway_redis_call_seconds_total") >= micros as f64 / 1e6, "{text}");
    assert_eq!(counter("reskflow_gateway_redis_up"), 1.0, "{text}");
}

#[tokio::test]
async fn without_redis_limits_are_local_per_ip_or_closed_as_configured() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let orders = EchoBackend::start("orders-1").await;
    service_with(&client, "orders", &[&orders]).await;
    // Nothing listens on this port: Redis is down from the start.
    let dead = format!("redis://127.0.0.1:{}", reskflow_e2e::harness::free_port());
    let local = Gateway::start_with(&cp, &[("REDIS_URL", &dead)]).await;
    let closed = Gateway::start_with(&cp, &[("REDIS_URL", &dead), ("RATE_LIMIT_REDIS_FAILURE", "closed")]).await;
    let (status, body) = local
        .put(
            "/api/gateway/routes/by-ip",
            json!({ "path": "/api/by-ip/*", "serviceId": "orders", "rateLimit": { "requests": 3, "window": "1h", "per": ["ip"] } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("the route on the local replica", WAIT, || async {
        let (status, _, _) = get_with(&local, "/api/by-ip/x", &[]).await;
        (status == 200).then_some(())
    })
    .await;
    let (status, _, _) = get_with(&local, "/api/by-ip/x", &[]).await;
    assert_eq!(status, 200);
    let (status, _, _) = get_with(&local, "/api/by-ip/x", &[]).await;
    assert_eq!(status, 200);
    let (status, headers, _) = get_with(&local, "/api/by-ip/x", &[]).await;
    assert_eq!(status, 429, "the fourth request of this IP in an hour");
    assert!(headers.contains_key("retry-after"));

    let body = eventually("the closed replica refuses", WAIT, || async {
        let (status, _, body) = get_with(&closed, "/api/by-ip/x", &[]).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["error"]["code"], "rate_limit_unavailable");

    // The metrics say Redis is down and how many decisions were made without it.
    let (_, metrics) = local.get("/api/gateway/metrics").await;
    assert_eq!(metrics["redis"]["healthy"], false, "{metrics}");
    assert!(metrics["redis"]["fallbackDecisions"].as_u64().is_some_and(|n| n >= 4), "{metrics}");
    let route = &metrics["routes"][0];
    assert_eq!((route["route"].as_str(), route["rateLimited"].as_u64()), (Some("by-ip"), Some(1)), "{metrics}");
}

#[tokio::test]
async fn cached_routes_answer_from_the_cache_per_key_and_user_and_coalesce_concurrent_misses() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let catalog = EchoBackend::start("catalog-1").await;
    service_with(&client, "catalog", &[&catalog]).await;
    let gw = Gateway::start_with(&cp, &[("JWT_SECRET", SECRET)]).await;
    let admin = format!("Bearer {}", hs256(&json!({ "sub": "ops", "roles": ["admin"], "exp": now() + 600 }), SECRET));
    let response = gw
        .http()
        .put(format!("{}/api/gateway/routes", gw.url))
        .header("authorization", &admin)
        .json(&json!([
            { "id": "cat", "path": "/api/cat/*", "serviceId": "catalog", "cache": { "ttl": 60, "varyHeaders": ["accept-language"] } },
            { "id": "mine", "path": "/api/mine/*", "serviceId": "catalog", "authentication": true, "cache": { "ttl": 60 } },
        ]))
        .send()
        .await
        .expect("put routes");
    assert_eq!(response.status(), 200);
    let x_cache =
        |h: &reqwest::header::HeaderMap| h.get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let first = eventually("the cached route", WAIT, || async {
        let (status, headers, body) = get_with(&gw, "/api/cat/a?x=1", &[]).await;
        (status == 200).then_some((headers, body))
    })
    .await;
    assert_eq!(x_cache(&first.0), "MISS");
    let served = catalog.served();

    let (status, headers, body) = get_with(&gw, "/api/cat/a?x=1", &[]).await;
    assert_eq!((status, x_cache(&headers)), (200, "HIT".into()));
    assert_eq!(body, first.1, "the same answer");
    assert!(headers.contains_key("age"));
    assert_eq!(catalog.served(), served, "a hit does not reach the backend");

    // Another query, another varied header value: misses; the same again: hits.
    let (_, headers, _) = get_with(&gw, "/api/cat/a?x=2", &[]).await;
    assert_eq!(x_cache(&headers), "MISS");
    let (_, headers, _) = get_with(&gw, "/api/cat/a?x=1", &[("accept-language", "fr")]).await;
    assert_eq!(x_cache(&headers), "MISS");
    let (_, headers, _) = get_with(&gw, "/api/cat/a?x=1", &[("accept-language", "fr")]).await;
    assert_eq!(x_cache(&headers), "HIT");

    // The caller's Cache-Control: no-cache refreshes, no-store bypasses.
    let before = catalog.served();
    let (_, headers, _) = get_with(&gw, "/api/cat/a?x=1", &[("cache-control", "no-cache")]).await;
    assert_eq!(x_cache(&headers), "MISS");
    let (_, headers, _) = get_with(&gw, "/api/cat/a?x=1", &[("cache-control", "no-store")]).await;
    assert_eq!(x_cache(&headers), "BYPASS");
    assert_eq!(catalog.served(), before + 2);

    // The upstream's no-store and private are obeyed; a short max-age expires.
    for cc in ["no-store", "private,%20max-age=60"] {
        let path = format!("/api/cat/b?cache-control={cc}");
        get_with(&gw, &path, &[]).await;
        let (_, headers, _) = get_with(&gw, &path, &[]).await;
        assert_eq!(x_cache(&headers), "MISS", "{cc}");
    }
    let (_, headers, _) = get_with(&gw, "/api/cat/c?cache-control=max-age%3D1", &[]).await;
    assert_eq!(x_cache(&headers), "MISS");
    let (_, headers, _) = get_with(&gw, "/api/cat/c?cache-control=max-age%3D1", &[]).await;
    assert_eq!(x_cache(&headers), "HIT");
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let (_, headers, _) = get_with(&gw, "/api/cat/c?cache-control=max-age%3D1", &[]).await;
    assert_eq!(x_cache(&headers), "MISS", "max-age=1 has passed");

    // Ten concurrent misses of one key: one backend request.
    let before = catalog.served();
    let calls = (0..10).map(|_| get_with(&gw, "/api/cat/slow?delay-ms=300", &[]));
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(|(status, _, _)| *status == 200));
    assert_eq!(catalog.served(), before + 1, "concurrent misses share one upstream request");
    let misses = answers.iter().filter(|(_, h, _)| x_cache(h) == "MISS").count();
    assert_eq!(misses, 1);

    // POST is never cached.
    let (status, _) = gw.post("/api/cat/a", json!({})).await;
    assert_eq!(status, 200);

    // On an authenticated route each user has their own entries.
    let alice = format!("Bearer {}", hs256(&json!({ "sub": "alice", "exp": now() + 600 }), SECRET));
    let bob = format!("Bearer {}", hs256(&json!({ "sub": "bob", "exp": now() + 600 }), SECRET));
    let (_, h1, _) = get_with(&gw, "/api/mine/orders", &[("authorization", &alice)]).await;
    let (_, h2, _) = get_with(&gw, "/api/mine/orders", &[("authorization", &alice)]).await;
    let (_, h3, _) = get_with(&gw, "/api/mine/orders", &[("authorization", &bob)]).await;
    assert_eq!([x_cache(&h1), x_cache(&h2), x_cache(&h3)], ["MISS", "HIT", "MISS"]);

    // Purging a route empties its entries.
    let purged = gw
        .http()
        .delete(format!("{}/api/gateway/cache?route=cat", gw.url))
        .header("authorization", &admin)
        .send()
        .await
        .expect("purge");
    assert_eq!(purged.status(), 204);
    let (_, headers, _) = get_with(&gw, "/api/cat/a?x=1", &[]).await;
    assert_eq!(x_cache(&headers), "MISS", "purged");
    let (_, h, _) = get_with(&gw, "/api/mine/orders", &[("authorization", &alice)]).await;
    assert_eq!(x_cache(&h), "HIT", "other routes keep theirs");

    let (_, _, metrics) = get_with(&gw, "/api/gateway/metrics", &[("authorization", &admin)]).await;
    let cat =
        metrics["routes"].as_array().and_then(|r| r.iter().find(|r| r["route"] == "cat")).cloned().unwrap_or_default();
    assert!(cat["cache"]["hits"].as_u64().is_some_and(|h| h >= 12), "{cat}");
    assert!(cat["cache"]["hitRatio"].as_f64().is_some_and(|r| r > 0.3), "{cat}");
}

#[tokio::test]
async fn validation_names_every_error_and_transforms_reshape_requests_and_responses() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let orders = EchoBackend::start("orders-1").await;
    service_with(&client, "orders", &[&orders]).await;
    let gw = Gateway::start_with(&cp, &[("JWT_SECRET", SECRET)]).await;
    let admin = format!("Bearer {}", hs256(&json!({ "sub": "ops", "roles": ["admin"], "exp": now() + 600 }), SECRET));
    let route = json!({
        "id": "place-order", "method": "POST", "path": "/api/orders/:customerId", "serviceId": "orders",
        "authentication": true, "maxBodyBytes": 4096,
        "validation": {
            "params": { "type": "object", "properties": { "customerId": { "type": "integer", "minimum": 1 } } },
            "query": { "type": "object", "properties": { "priority": { "enum": ["low", "high"] } }, "additionalProperties": false },
            "body": { "type": "object", "required": ["items"], "properties": {
                "items": { "type": "array", "minItems": 1, "items": { "type": "object", "required": ["sku", "qty"],
                    "properties": { "sku": { "type": "string" }, "qty": { "type": "integer", "minimum": 1 } } } },
                "note": { "type": "string", "maxLength": 20 } } }
        },
        "transform": {
            "request": {
                "headers": { "remove": ["x-debug"], "add": { "x-customer": "{{ params.customerId }}", "x-placed-by": "{{ claims.sub }}" } },
                "query": { "rename": { "priority": "p" }, "add": { "source": "gateway" } },
                "body": { "remove": ["note"], "add": { "placedBy": "{{ claims.sub }}", "itemCount": "{{ size(body.items) }}" } }
            },
            "response": {
                "headers": { "remove": ["x-reskflow-endpoint"], "add": { "x-order-status": "{{ string(response.status) }}" } },
                "body": { "rename": { "backend": "handledBy" }, "remove": ["headers"] }
            }
        }
    });
    let response = gw
        .http()
        .put(format!("{}/api/gateway/routes/place-order", gw.url))
        .header("authorization", &admin)
        .json(&route)
        .send()
        .await
        .expect("put route");
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap_or_default());
    let token = format!("Bearer {}", hs256(&json!({ "sub": "user-9", "exp": now() + 600 }), SECRET));
    let post = |path: &str, body: Value| {
        gw.http().post(format!("{}{path}", gw.url)).header("authorization", &token).header("x-debug", "1").json(&body)
    };

    let good = json!({ "items": [{ "sku": "tea", "qty": 2 }], "note": "ring twice" });
    let response = eventually("the validated route", WAIT, || async {
        let r = post("/api/orders/17?priority=high", good.clone()).send().await.expect("post");
        (r.status() == 200).then_some(r)
    })
    .await;
    assert_eq!(response.headers()["x-order-status"], "200");
    assert!(!response.headers().contains_key("x-reskflow-endpoint"));
    let answer: Value = response.json().await.expect("json");
    assert_eq!(answer["handledBy"], "orders-1", "{answer}");
    assert!(answer.get("headers").is_none() && answer.get("backend").is_none(), "{answer}");
    // What the backend saw (it echoes the body as text; headers were removed from the answer, so
    // ask again on a route without the response transform is not needed: the path and body say it).
    assert_eq!(answer["path"], "/api/orders/17?p=high&source=gateway");
    let sent: Value = serde_json::from_str(answer["body"].as_str().unwrap_or("")).expect("sent body");
    assert_eq!(sent, json!({ "items": [{ "sku": "tea", "qty": 2 }], "placedBy": "user-9", "itemCount": 1 }));

    // Every error at once, each with where it is and its pointer.
    let bad = json!({ "items": [{ "sku": "tea", "qty": 0 }, { "qty": 1 }], "note": "this note is far too long" });
    let response = post("/api/orders/0?priority=urgent&debug=1", bad).send().await.expect("post");
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "validation_failed", "{body}");
    let mut fields: Vec<String> = body["error"]["fields"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["field"].as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    fields.sort();
    assert_eq!(
        fields,
        ["body/items/0/qty", "body/items/1", "body/note", "params/customerId", "query", "query/priority"],
        "{body}"
    );
    assert_eq!(body["error"]["fields"][0]["pointer"].as_str().map(|p| p.starts_with('/') || p.is_empty()), Some(true));

    // Not JSON, not a JSON content type, too large.
    let response = gw
        .http()
        .post(format!("{}/api/orders/17", gw.url))
        .header("authorization", &token)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 400);
    let response = gw
        .http()
        .post(format!("{}/api/orders/17", gw.url))
        .header("authorization", &token)
        .header("content-type", "text/plain")
        .body("items")
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 415);
    let huge = json!({ "items": [{ "sku": "x".repeat(5000), "qty": 1 }] });
    let response = post("/api/orders/17", huge).send().await.expect("post");
    assert_eq!(response.status(), 413);
    // A chunked body (no Content-Length) over the limit is refused too.
    let chunks = futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1000])));
    let response = gw
        .http()
        .post(format!("{}/api/orders/17", gw.url))
        .header("authorization", &token)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .expect("post");
    assert_eq!(response.status(), 413);
    let (_, _, metrics) = get_with(&gw, "/api/gateway/metrics", &[("authorization", &admin)]).await;
    let route = metrics["routes"].as_array().and_then(|r| r.iter().find(|r| r["route"] == "place-order")).cloned();
    assert_eq!(route.unwrap_or_default()["validationFailures"], 5, "{metrics}");
}

const RSA_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCw1WvjE9BM0nFh
Kyt56cczeTYuqwlvmRQM3rwS1TYtUYvRmiy9IoCvlWGL8d592Up3HN+d8i33iSK9
cstT4/FmKI3Ap0rlSZuwre5yGZ325YvOVhq2zotr3Q+PAKatfuT7j1vwT8UsjfPW
DIc0gCfgwup3Gx/PYdusF4Yi117IrGD//btKE0mAcLZsL1U/ih/zSKn+w/PuclIp
s1fbczPWINyDCkshfvRRjaWadxp3MOmTaSeejDZphrSM5Qh6K3bCxO96f38k67CW
de3i1uP+ZMwMXG/ij33ARIhyr/Ac9OaYbj1qgieYVuICiAS+J1tj8xdf1318t43U
9AxsYcHRAgMBAAECggEAEx+pkL+yTbSOhWslQwR4wgTQSsC9fv+njvLBlSnQt5rz
i4HoZ7XlA9gcWgWYwbRvnK0XM94egYAnrSROf+6NSzaEifqtm1lYCIXu3REPJ8XQ
VkqyjeWNZ2dbSORRoj6wZdItp7IAyV46qgHl11Qqu+BoeeQJjyRunNBYdckj24C2
hPNdZDs2Hi9/j3I0PlYAOlN8zCyIvfj84tS/X+BDaX7WZ0BOjhrmb3oI8jGEV1gK
ZHEYz/oHboUWK/19iVeyQaMOqpnUT53fwAF+NNGUfavK59e+T9dXsyguc8pLamAd
X4cYJY6OuwIexkjkad7uRUSuwj+b8JX+xzC0Wy9ZZwKBgQDxMLq/gWlu2AROGrHl
YeamEEyQMnZHpv/A9Y1hM32gONJzU39lIdLpM1fHBZDq2W4QQokTzuwAGJ4FNMss
AnihMzwx/c4Tuj6u/N+gmTzEuOBy/5mRO26a3sMAZd0TkxV0JHuiho0+YaKP3eT2
UH/1QVZJ8O3WKgMS+xZCYGDp0wKBgQC7sRHP28kH9L2dQQu+Hj+Q61tYNRyI6t0k
55ZX3lCWo6LmKE+dVB8/GVp2NHE12hqOvzjZ2pys/H75GSf7rmTPxPr1YIBodPH7
aOOAJrMo/y5l0DgE5pqJZM5kBYAfELm6mOrnuurE20pMdSkJPFHYA5+QjjvD9Yk2
j0LjItwbSwKBgG84RlV7CrBngoy1uKULIT4gs/2ml25xLuy/DuPsx5hzu3Ac59kt
4MFSwL5w7aOugheTZvywZZmhwHSsJKh1t0S2iKKQ5E+qia9Nwp2fLCuXCUFeZmVX
X6ig4pEzZ9/X6oO1MyH+I/HJOhpXe3auJmNlLrJIHJSuqN4+1MPlB6urAoGAYl3T
svdCLaxDr+XGLLaXo/DlZ542PT+x9MR208hMvhY2qp8X0qGi2qQD+A1WA94xqvxm
5C4hjLusJAreHJZyeT2INQ+FXLlllNiM2r3tiZ/rhiqRIWhmN3mgfWUwl5dhb3zz
J82bet5e2yFQB2oYjrifaNhSVEobxn9gk7/SUW8CgYEA7tj+MuclID2GzlAn9ITt
hxKytJi+z5Iuz0Us1a28AkRwra/ICOwTsBXnBIZUjzl/ZpmXWdg2BewC45/lLl3W
T1Yd4lzwsQz3kkh8LqarENqx2417CizHOByLE/6M+1lXH2xzs6WewMn4WF/SInvL
6kQaM/oAhaAjdhNLGf06H5Q=
-----END PRIVATE KEY-----";
const RSA_N: &str = "sNVr4xPQTNJxYSsreenHM3k2LqsJb5kUDN68EtU2LVGL0ZosvSKAr5Vhi_HefdlKdxzfnfIt94kivXLLU-PxZiiNwKdK5UmbsK3uchmd9uWLzlYats6La90PjwCmrX7k-49b8E_FLI3z1gyHNIAn4MLqdxsfz2HbrBeGItdeyKxg__27ShNJgHC2bC9VP4of80ip_sPz7nJSKbNX23Mz1iDcgwpLIX70UY2lmncadzDpk2knnow2aYa0jOUIeit2wsTven9_JOuwlnXt4tbj_mTMDFxv4o99wESIcq_wHPTmmG49aoInmFbiAogEvidbY_MXX9d9fLeN1PQMbGHB0Q";

#[tokio::test]
async fn rs256_tokens_verify_with_keys_fetched_from_a_jwks_url() {
    use axum::routing::get;
    let jwks =
        json!({ "keys": [{ "kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "n": RSA_N, "e": "AQAB" }] });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let jwks_url = format!("http://{}/.well-known/jwks.json", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route(
        "/.well-known/jwks.json",
        get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let cp = ControlPlane::start().await;
    let client = cp.client();
    let orders = EchoBackend::start("orders-1").await;
    service_with(&client, "orders", &[&orders]).await;
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("routes.json");
    let routes = json!([{ "id": "orders", "path": "/api/orders/*", "serviceId": "orders", "authentication": true }]);
    std::fs::write(&file, routes.to_string()).expect("write");
    let gw = Gateway::start_with(
        &cp,
        &[("JWT_JWKS_URL", &jwks_url), ("JWT_AUDIENCE", "orders-api"), ("ROUTES_FILE", &file.to_string_lossy())],
    )
    .await;
    let rs256 = |claims: &Value, kid: &str| {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_string());
        encode(&header, claims, &EncodingKey::from_rsa_pem(RSA_KEY.as_bytes()).expect("pem")).expect("token")
    };
    let good = format!("Bearer {}", rs256(&json!({ "sub": "r-user", "aud": "orders-api", "exp": now() + 600 }), "r1"));
    let body = eventually("an RS256 token to pass", WAIT, || async {
        let (status, _, body) = get_with(&gw, "/api/orders/1", &[("authorization", &good)]).await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(body["headers"]["x-user-id"], "r-user");
    let wrong_audience =
        format!("Bearer {}", rs256(&json!({ "sub": "r", "aud": "billing", "exp": now() + 600 }), "r1"));
    let unknown_kid =
        format!("Bearer {}", rs256(&json!({ "sub": "r", "aud": "orders-api", "exp": now() + 600 }), "r2"));
    // HS256 is not accepted without a secret (the public key is never an HMAC secret).
    let hs = format!("Bearer {}", hs256(&json!({ "sub": "r", "aud": "orders-api", "exp": now() + 600 }), RSA_N));
    for (what, token) in [("wrong audience", &wrong_audience), ("unknown kid", &unknown_kid), ("hs256", &hs)] {
        let (status, _, body) = get_with(&gw, "/api/orders/1", &[("authorization", token)]).await;
        assert_eq!(status, 401, "{what}: {body}");
    }
}

#[tokio::test]
async fn with_the_cache_in_redis_replicas_share_entries_and_a_purge() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let catalog = EchoBackend::start("catalog-1").await;
    service_with(&client, "catalog", &[&catalog]).await;
    let env = [("REDIS_URL", redis_url()), ("CACHE_STORE", "redis".to_string())];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = Gateway::start_with(&cp, &env).await;
    let b = Gateway::start_with(&cp, &env).await;
    let route = unique("shared-cache");
    let (status, body) = a
        .put(
            &format!("/api/gateway/routes/{route}"),
            json!({ "path": format!("/api/{route}/*"), "serviceId": "catalog", "cache": { "ttl": 60 } }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let path = format!("/api/{route}/item");
    let x_cache =
        |h: &reqwest::header::HeaderMap| h.get("x-cache").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    for gw in [&a, &b] {
        eventually("the cached route on both replicas", WAIT, || async {
            let (status, _, _) = get_with(gw, &format!("/api/{route}/warm"), &[]).await;
            (status == 200).then_some(())
        })
        .await;
    }
    let (_, headers, _) = get_with(&a, &path, &[]).await;
    assert_eq!(x_cache(&headers), "MISS");
    let served = catalog.served();
    let (_, headers, _) = get_with(&b, &path, &[]).await;
    assert_eq!(x_cache(&headers), "HIT", "the other replica finds it in Redis");
    assert_eq!(catalog.served(), served);

    let (status, _) = a.delete(&format!("/api/gateway/cache?route={route}")).await;
    assert_eq!(status, 204);
    eventually("the purge to reach the other replica", WAIT, || async {
        let (_, headers, _) = get_with(&b, &path, &[("x-probe", "1")]).await;
        (x_cache(&headers) == "MISS").then_some(())
    })
    .await;
}

#[tokio::test]
async fn smuggling_oversized_heads_and_slow_clients_are_refused() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let orders = EchoBackend::start("orders-1").await;
    service_with(&client, "orders", &[&orders]).await;
    let gw = Gateway::start_with(&cp, &[("HEADER_READ_TIMEOUT", "1s"), ("MAX_HEADER_BYTES", "16384")]).await;
    orders_route(&gw).await;
    let addr = gw.url.trim_start_matches("http://").to_string();
    let exchange = |request: Vec<u8>| {
        let addr = addr.clone();
        async move {
            let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
            stream.write_all(&request).await.expect("write");
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
            String::from_utf8_lossy(&answer).to_string()
        }
    };
    // Content-Length and Transfer-Encoding together (request smuggling): refused with 400 and the
    // connection closed (RFC 9112 6.3 allows either this or reading by Transfer-Encoding and
    // closing; Envoy refuses too), so neither request reaches the backend.
    let served = orders.served();
    let answer = exchange(
        b"POST /api/orders/1 HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /api/orders/2 HTTP/1.1\r\nHost: x\r\n\r\n"
            .to_vec(),
    )
    .await;
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one answer, then the connection closes: {answer}");
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("both Transfer-Encoding and Content-Length"), "the answer names the problem: {answer}");
    assert_eq!(orders.served(), served, "neither request reached the backend");
    let served = orders.served();
    // A head larger than MAX_HEADER_BYTES: 431.
    let big = format!("GET /api/orders/1 HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(32 * 1024));
    let answer = exchange(big.into_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{}", &answer[..answer.len().min(200)]);
    // A client that never finishes its head is disconnected after HEADER_READ_TIMEOUT.
    let mut slow = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    slow.write_all(b"GET /api/orders/1 HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("write");
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the gateway closed the slow connection");
    assert_eq!(orders.served(), served);
}

#[tokio::test]
async fn with_the_control_plane_down_a_gateway_keeps_routing_and_restarts_from_its_saved_config() {
    let mut cp = ControlPlane::start().await;
    let client = cp.client();
    let orders = EchoBackend::start("orders-1").await;
    service_with(&client, "orders", &[&orders]).await;
    let mut gw = Gateway::start(&cp).await;
    orders_route(&gw).await;

    cp.process.kill().await;
    let (status, _, body) = get_with(&gw, "/api/orders/2", &[]).await;
    assert_eq!((status, body["backend"].as_str()), (200, Some("orders-1")), "routes keep working");
    let (status, body) = gw.get("/api/gateway/routes").await;
    assert_eq!(status, 503, "management says the control plane is away: {body}");

    // A gateway started while the control plane is down routes with its saved config.
    gw.restart().await;
    let (status, _, body) = get_with(&gw, "/api/orders/3", &[]).await;
    assert_eq!((status, body["backend"].as_str()), (200, Some("orders-1")), "{body}");

    // The control plane returns: the stream resumes and new routes arrive.
    cp.restart().await;
    eventually("management to answer again", WAIT, || async {
        let (status, _) =
            gw.put("/api/gateway/routes/more", json!({ "path": "/api/more/*", "serviceId": "orders" })).await;
        (status == 200).then_some(())
    })
    .await;
    eventually("the new route", WAIT, || async {
        let (status, _, _) = get_with(&gw, "/api/more/1", &[]).await;
        (status == 200).then_some(())
    })
    .await;
}

/// A Redis of the test's own on a port (so it can be stopped and started again); killed on drop.
struct OwnRedis(std::process::Child);

impl OwnRedis {
    fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

fn own_redis(port: u16) -> OwnRedis {
    OwnRedis(
        std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server"),
    )
}

#[tokio::test]
async fn when_redis_goes_away_limits_fall_back_to_local_and_return_to_redis_when_it_comes_back() {
    let port = reskflow_e2e::harness::free_port();
    let mut redis = own_redis(port);
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let orders = EchoBackend::start("orders-1").await;
    service_with(&client, "orders", &[&orders]).await;
    let gw = Gateway::start_with(&cp, &[("REDIS_URL", &format!("redis://127.0.0.1:{port}"))]).await;
    let (status, _) = gw
        .put(
            "/api/gateway/routes/lim",
            json!({ "path": "/api/lim/*", "serviceId": "orders",
                                                "rateLimit": { "requests": 1000, "window": "1h", "per": ["ip"] } }),
        )
        .await;
    assert_eq!(status, 200);
    eventually("the route, limited in Redis", WAIT, || async {
        let (status, _, _) = get_with(&gw, "/api/lim/1", &[]).await;
        let (_, m) = gw.get("/api/gateway/metrics").await;
        (status == 200 && m["redis"]["healthy"] == true).then_some(())
    })
    .await;
    let keys = || {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string(), "--raw", "keys", "reskflow:rl:lim:*"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).count()
    };
    assert_eq!(keys(), 1, "the limit lives in Redis");

    // Redis goes away: requests keep being served on the local limit, and the metrics say so.
    redis.stop();
    for n in 0..5 {
        let (status, _, _) = get_with(&gw, "/api/lim/1", &[]).await;
        assert_eq!(status, 200, "request {n} with Redis down");
    }
    let (_, m) = gw.get("/api/gateway/metrics").await;
    assert_eq!(m["redis"]["healthy"], false, "{m}");
    assert!(m["redis"]["fallbackDecisions"].as_u64().is_some_and(|n| n >= 5), "{m}");

    // It comes back (empty): within seconds the limit is decided in Redis again.
    let _redis = own_redis(port);
    eventually("the limit back in Redis", WAIT, || async {
        let (status, _, _) = get_with(&gw, "/api/lim/1", &[]).await;
        let (_, m) = gw.get("/api/gateway/metrics").await;
        (status == 200 && m["redis"]["healthy"] == true && keys() == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn hanging_resetting_and_late_backends_cost_their_routes_a_bounded_time_and_leave_other_routes_alone() {
    let cp = ControlPlane::start().await;
    let client = cp.client();
    let orders = EchoBackend::start("orders-1").await;
    service_with(&client, "orders", &[&orders]).await;
    // A backend that accepts connections and never answers.
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hang_port = hang.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = hang.accept().await {
            held.push(socket);
        }
    });
    // One that reads the request and resets the connection (RST, not FIN).
    let reset = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let reset_port = reset.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = reset.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
                // A zero linger resets at once (the deprecation is about blocking on a non-zero one).
                #[allow(deprecated)]
                let _ = socket.set_linger(Some(Duration::ZERO));
                drop(socket);
            });
        }
    });
    // One that answers, but only after two seconds.
    let late = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let late_port = late.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = late.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await.is_ok_and(|n| n > 0) {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if tokio::io::AsyncWriteExt::write_all(&mut socket, answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    for (service, port) in [("slow", hang_port), ("resets", reset_port), ("late", late_port)] {
        register_at(&client, service, port).await;
    }
    let gw = Gateway::start(&cp).await;
    let (status, _) = gw
        .put(
            "/api/gateway/routes",
            json!([
                { "id": "slow", "path": "/api/slow/*", "serviceId": "slow", "timeout": "300ms" },
                { "id": "resets", "path": "/api/resets/*", "serviceId": "resets", "timeout": "300ms" },
                { "id": "late", "path": "/api/late/*", "serviceId": "late", "timeout": "300ms" },
                { "id": "orders", "path": "/api/orders/*", "serviceId": "orders" },
            ]),
        )
        .await;
    assert_eq!(status, 200);
    eventually("the routes", WAIT, || async {
        let (status, _, _) = get_with(&gw, "/api/orders/1", &[]).await;
        (status == 200).then_some(())
    })
    .await;

    // Twenty callers on each bad route at once; the good route answers meanwhile.
    let gw = &gw;
    let bad = |path: &'static str| futures::future::join_all((0..20).map(move |_| get_with(gw, path, &[])));
    let fast = async {
        let mut statuses = Vec::new();
        for _ in 0..20 {
            statuses.push(get_with(gw, "/api/orders/1", &[]).await.0);
        }
        statuses
    };
    let (slow, resets, late, fast) = tokio::join!(bad("/api/slow/x"), bad("/api/resets/x"), bad("/api/late/x"), fast);
    assert!(fast.iter().all(|s| *s == 200), "{fast:?}");
    // 504 from the timeout or 502 from the reset; 503 once the breaker has opened on them.
    for (route, answers, expected) in [("slow", &slow, 504), ("late", &late, 504), ("resets", &resets, 502)] {
        for (status, _, body) in answers {
            assert!(*status == expected || *status == 503, "{route}: {status} {body}");
        }
    }
    let (_, metrics) = gw.get("/api/gateway/metrics").await;
    for route in ["slow", "resets", "late"] {
        let m = metrics["routes"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["route"] == route))
            .cloned()
            .unwrap_or_default();
        let counted = m["upstreamErrors"].as_u64().unwrap_or(0) + m["breakerRejections"].as_u64().unwrap_or(0);
        assert_eq!(counted, 20, "{route}: {m}");
    }
}
