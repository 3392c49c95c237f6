//! Every registry endpoint through the real gateway and control plane, on SQLite and PostgreSQL.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use reskflow_e2e::harness::{backends, ControlPlane, Gateway};
use serde_json::{json, Value};

async fn system(backend: reskflow_e2e::harness::Backend) -> (ControlPlane, Gateway) {
    let cp = ControlPlane::start_on(backend).await;
    let gw = Gateway::start(&cp).await;
    (cp, gw)
}

fn fields(body: &Value) -> Vec<String> {
    body["error"]["fields"]
        .as_array()
        .map(|a| a.iter().map(|f| f["field"].as_str().unwrap_or_default().to_string()).collect())
        .unwrap_or_default()
}

async fn register(gw: &Gateway, service: Value) {
    let (status, body) = gw.post("/api/registry/services", service).await;
    assert_eq!(status, 201, "{body}");
}

async fn instance(gw: &Gateway, body: Value) -> Value {
    let (status, created) = gw.post("/api/registry/instances", body).await;
    assert_eq!(status, 201, "{created}");
    created
}

#[tokio::test]
async fn services_are_registered_read_listed_updated_and_removed() {
    for backend in backends() {
        let (_cp, gw) = system(backend).await;
        let (status, created) = gw
            .post(
                "/api/registry/services",
                json!({
                    "id": "orders", "name": "Order service", "version": "1.4.0", "description": "takes orders",
                    "tags": ["core", "checkout"], "capabilities": ["create-order"],
                    "metadata": {"team": "checkout"},
                    "sla": {"latencyP99Ms": 200.0, "availabilityPercent": 99.9},
                    "dependencies": ["payments", {"serviceId": "mail", "optional": true}],
                    "healthCheck": {"kind": "http", "path": "/healthz", "interval": "10s", "timeout": "1s"},
                    "apiContract": {"kind": "openapi", "location": "https://example.test/orders.json"}
                }),
            )
            .await;
        assert_eq!(status, 201, "{backend:?}: {created}");
        assert_eq!(created["healthCheck"]["method"], "GET");
        assert!(created["createdAt"].is_string());

        let (status, body) = gw.post("/api/registry/services", json!({"id": "orders"})).await;
        assert_eq!((status, body["error"]["code"].as_str()), (409, Some("conflict")));

        let (status, got) = gw.get("/api/registry/services/orders").await;
        assert_eq!(status, 200);
        assert_eq!(got["name"], "Order service");
        assert_eq!((got["instanceCount"].as_u64(), got["health"]["status"].as_str()), (Some(0), Some("critical")));

        let mut replaced = created.clone();
        let object = replaced.as_object_mut().unwrap();
        object.remove("createdAt");
        object.remove("updatedAt");
        object.insert("version".into(), json!("1.5.0"));
        let (status, updated) = gw.put("/api/registry/services/orders", replaced).await;
        assert_eq!(status, 200, "{updated}");
        assert_eq!(updated["version"], "1.5.0");
        assert_eq!(updated["createdAt"], created["createdAt"]);

        let (status, body) = gw.put("/api/registry/services/other", json!({"id": "orders"})).await;
        assert_eq!((status, fields(&body)), (400, vec!["id".to_string()]));

        for n in 0..5 {
            register(&gw, json!({"id": format!("svc-{n}")})).await;
        }
        let (status, page1) = gw.get("/api/registry/services?pageSize=4").await;
        assert_eq!(status, 200);
        assert_eq!(page1["total"], 6);
        assert_eq!(page1["services"].as_array().unwrap().len(), 4);
        let token = page1["nextPageToken"].as_str().unwrap().to_string();
        let (_, page2) = gw.get(&format!("/api/registry/services?pageSize=4&pageToken={token}")).await;
        let ids: Vec<_> = page2["services"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["svc-3", "svc-4"]);
        assert!(page2.get("nextPageToken").is_none());

        instance(&gw, json!({"serviceId": "orders", "address": "127.0.0.1", "port": 9001})).await;
        let (status, removed) = gw.delete("/api/registry/services/orders").await;
        assert_eq!((status, removed["instancesRemoved"].as_u64()), (200, Some(1)));
        let (status, _) = gw.get("/api/registry/services/orders").await;
        assert_eq!(status, 404);
    }
}

#[tokio::test]
async fn instances_are_registered_and_deregistered() {
    for backend in backends() {
        let (_cp, gw) = system(backend).await;
        register(&gw, json!({"id": "payments", "version": "2.0.0"})).await;
        let created = instance(
            &gw,
            json!({"id": "payments-1", "serviceId": "payments", "address": "10.0.0.7", "port": 8080,
                   "scheme": "https", "region": "eu-west", "zone": "eu-west-1a", "weight": 3,
                   "tags": ["canary"], "metadata": {"pod": "p-1"}}),
        )
        .await;
        assert_eq!(created["version"], "2.0.0", "the service's version by default");
        assert_eq!(created["status"], "passing", "no check: passing while registered");
        let generated = instance(&gw, json!({"serviceId": "payments", "address": "10.0.0.8", "port": 8080})).await;
        assert!(generated["id"].as_str().unwrap().starts_with("payments-"));

        let (status, body) = gw
            .post(
                "/api/registry/instances",
                json!({"id": "payments-1", "serviceId": "payments", "address": "10.0.0.9", "port": 1}),
            )
            .await;
        assert_eq!(status, 409, "{body}");
        let (status, body) =
            gw.post("/api/registry/instances", json!({"serviceId": "ghost", "address": "10.0.0.9", "port": 1})).await;
        assert_eq!(status, 404, "{body}");

        let (status, list) = gw.get("/api/registry/services/payments/instances").await;
        assert_eq!((status, list["instances"].as_array().unwrap().len()), (200, 2));

        let (status, _) = gw.delete("/api/registry/instances/payments-1").await;
        assert_eq!(status, 204);
        let (status, body) = gw.delete("/api/registry/instances/payments-1").await;
        assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));
        let (_, list) = gw.get("/api/registry/services/payments/instances").await;
        assert_eq!(list["instances"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn bad_input_is_a_400_naming_every_field_and_writes_nothing() {
    let (_cp, gw) = system(reskflow_e2e::harness::Backend::Sqlite).await;
    register(&gw, json!({"id": "orders"})).await;

    let (status, body) = gw
        .post("/api/registry/instances", json!({"serviceId": "orders", "address": "http://x", "port": 0, "weight": 0}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(fields(&body), ["address", "port", "weight"]);

    let (status, body) =
        gw.post("/api/registry/instances", json!({"serviceId": "orders", "address": "x", "port": 70000})).await;
    assert_eq!((status, fields(&body)), (400, vec!["port".to_string()]));

    let (status, body) = gw.post("/api/registry/services", json!({"id": "x", "colour": "red"})).await;
    assert_eq!(status, 400);
    assert!(body["error"]["message"].as_str().unwrap().contains("unknown field `colour`"), "{body}");

    let (status, body) = gw
        .post(
            "/api/registry/services",
            json!({"id": "bad id!", "tags": ["a", "a"], "healthCheck": {"kind": "ttl"},
                   "sla": {"availabilityPercent": 140.0}}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(fields(&body), ["id", "tags[1]", "sla.availabilityPercent", "healthCheck.ttl"]);

    let (status, body) = gw.post("/api/registry/services", json!({"id": "x", "healthCheck": {"kind": "smoke"}})).await;
    assert_eq!((status, fields(&body)), (400, vec!["healthCheck.kind".to_string()]));

    let response = gw
        .http()
        .post(format!("{}/api/registry/services", gw.url))
        .header("content-type", "application/json")
        .body("{\"id\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = gw.http().post(format!("{}/api/registry/services", gw.url)).body("id=x").send().await.unwrap();
    assert_eq!(response.status(), 415);

    // A body declared larger than the limit is refused before it is sent.
    let mut stream = tokio::net::TcpStream::connect(gw.url.trim_start_matches("http://")).await.unwrap();
    let head = "POST /api/registry/services HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: 4194304\r\n\r\n{";
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");

    let (status, body) = gw.get("/api/registry/services?pageSize=0").await;
    assert_eq!((status, fields(&body)), (400, vec!["pageSize".to_string()]));
    let (status, _) = gw.get("/api/registry/services?colour=red").await;
    assert_eq!(status, 400);
    let (status, body) = gw.get("/api/registry/services/bad%20id/health").await;
    assert_eq!((status, fields(&body)), (400, vec!["id".to_string()]));
    let (status, body) = gw.get("/api/registry/nothing-here").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")));

    let (_, list) = gw.get("/api/registry/services").await;
    assert_eq!(list["total"], 1, "nothing was written by the bad requests: {list}");
}

#[tokio::test]
async fn discovery_balances_filters_and_says_503_when_nothing_is_healthy() {
    for backend in backends() {
        let (_cp, gw) = system(backend).await;
        register(&gw, json!({"id": "stock", "capabilities": ["reserve"], "tags": ["core"]})).await;
        for (id, zone, tags, version) in
            [("s1", "a", json!([]), "1"), ("s2", "b", json!(["canary"]), "2"), ("s3", "b", json!([]), "1")]
        {
            instance(
                &gw,
                json!({"id": id, "serviceId": "stock", "address": "127.0.0.1", "port": 9000,
                       "region": "eu", "zone": zone, "tags": tags, "version": version}),
            )
            .await;
        }
        let discover = |body: Value| {
            let gw = &gw;
            async move { gw.post("/api/registry/discover", body).await }
        };

        let mut seen = Vec::new();
        for _ in 0..3 {
            let (status, found) = discover(json!({"serviceId": "stock"})).await;
            assert_eq!(status, 200, "{found}");
            assert_eq!(found["candidates"], 3);
            seen.push(found["instance"]["id"].as_str().unwrap().to_string());
        }
        seen.sort();
        assert_eq!(seen, ["s1", "s2", "s3"], "round robin visits each instance once per cycle");

        let (_, found) =
            discover(json!({"serviceId": "stock", "strategy": "zone_aware", "region": "eu", "zone": "a"})).await;
        assert_eq!((found["instance"]["id"].as_str(), found["locality"].as_str()), (Some("s1"), Some("zone")));
        let (_, found) = discover(json!({"serviceId": "stock", "tags": ["canary"]})).await;
        assert_eq!(found["instance"]["id"], "s2");
        let (_, found) = discover(json!({"serviceId": "stock", "version": "1", "strategy": "random"})).await;
        assert_eq!(found["candidates"], 2);
        let (_, first) =
            discover(json!({"serviceId": "stock", "strategy": "consistent_hash", "hashKey": "user-42"})).await;
        for _ in 0..5 {
            let (_, again) =
                discover(json!({"serviceId": "stock", "strategy": "consistent_hash", "hashKey": "user-42"})).await;
            assert_eq!(again["instance"]["id"], first["instance"]["id"]);
        }
        let (status, _) = discover(json!({"serviceId": "stock", "strategy": "weighted"})).await;
        assert_eq!(status, 200);

        let (status, body) = discover(json!({"serviceId": "stock", "capabilities": ["refund"]})).await;
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("no_healthy_instance")));
        let (status, body) = discover(json!({"serviceId": "ghost"})).await;
        assert_eq!(status, 404, "{body}");
        let (status, body) = discover(json!({"serviceId": "stock", "strategy": "consistent_hash"})).await;
        assert_eq!((status, fields(&body)), (400, vec!["hashKey".to_string()]));
        let (status, _) = discover(json!({"serviceId": "stock", "strategy": "fastest"})).await;
        assert_eq!(status, 400);

        register(&gw, json!({"id": "empty"})).await;
        let (status, body) = discover(json!({"serviceId": "empty"})).await;
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("no_healthy_instance")), "{body}");
    }
}

#[tokio::test]
async fn search_matches_text_tags_capabilities_metadata_and_health() {
    for backend in backends() {
        let (_cp, gw) = system(backend).await;
        register(
            &gw,
            json!({"id": "orders", "description": "Takes ORDERS", "tags": ["core", "checkout"],
                             "capabilities": ["create"], "metadata": {"team": "checkout", "tier": "1"}}),
        )
        .await;
        register(
            &gw,
            json!({"id": "payments", "tags": ["core"], "capabilities": ["charge", "refund"],
                             "metadata": {"team": "money"}}),
        )
        .await;
        register(&gw, json!({"id": "mail", "tags": ["edge"]})).await;
        instance(&gw, json!({"serviceId": "mail", "address": "127.0.0.1", "port": 25})).await;

        let ids = |body: &Value| -> Vec<String> {
            body["services"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap().to_string()).collect()
        };
        let search = |body: Value| {
            let gw = &gw;
            async move {
                let (status, found) = gw.post("/api/registry/search", body).await;
                assert_eq!(status, 200, "{found}");
                found
            }
        };
        assert_eq!(ids(&search(json!({"text": "orders"})).await), ["orders"]);
        assert_eq!(ids(&search(json!({"tags": ["core", "checkout"]})).await), ["orders"]);
        assert_eq!(ids(&search(json!({"tags": ["checkout", "edge"], "tagsMatch": "any"})).await), ["mail", "orders"]);
        assert_eq!(ids(&search(json!({"capabilities": ["refund"]})).await), ["payments"]);
        assert_eq!(ids(&search(json!({"metadata": {"team": "checkout"}})).await), ["orders"]);
        assert_eq!(ids(&search(json!({"metadata": {"team": "*"}})).await), ["orders", "payments"]);
        assert_eq!(ids(&search(json!({"health": "passing"})).await), ["mail"]);
        let page = search(json!({"tags": ["core"], "pageSize": 1})).await;
        assert_eq!((ids(&page), page["total"].as_u64()), (vec!["orders".to_string()], Some(2)));
        let next = search(json!({"tags": ["core"], "pageSize": 1, "pageToken": page["nextPageToken"]})).await;
        assert_eq!(ids(&next), ["payments"]);
        let (status, _) = gw.post("/api/registry/search", json!({"health": "sleepy"})).await;
        assert_eq!(status, 400);
    }
}

#[tokio::test]
async fn the_dependency_graph_flags_cycles_and_unregistered_services() {
    for backend in backends() {
        let (_cp, gw) = system(backend).await;
        register(&gw, json!({"id": "web", "dependencies": ["orders"]})).await;
        register(&gw, json!({"id": "orders", "dependencies": ["payments", "stock"]})).await;
        register(&gw, json!({"id": "payments", "dependencies": ["ledger", {"serviceId": "fraud", "optional": true}]}))
            .await;
        register(&gw, json!({"id": "ledger", "dependencies": ["payments"]})).await;

        let (status, graph) = gw.get("/api/registry/services/orders/dependencies").await;
        assert_eq!(status, 200, "{graph}");
        assert_eq!(graph["directDependencies"], json!(["payments", "stock"]));
        assert_eq!(graph["transitiveDependencies"], json!(["fraud", "ledger", "payments", "stock"]));
        assert_eq!(graph["directDependents"], json!(["web"]));
        assert_eq!(graph["transitiveDependents"], json!(["web"]));
        assert_eq!(graph["cycles"], json!([["ledger", "payments"]]));
        assert_eq!(graph["unregistered"], json!(["fraud", "stock"]));
        let edge = graph["edges"].as_array().unwrap().iter().find(|e| e["from"] == "payments" && e["to"] == "fraud");
        assert_eq!(edge.unwrap()["optional"], true);
        let stock = graph["nodes"].as_array().unwrap().iter().find(|n| n["id"] == "stock").unwrap();
        assert_eq!(stock["registered"], false);

        let (status, _) = gw.get("/api/registry/services/ghost/dependencies").await;
        assert_eq!(status, 404);
    }
}

#[tokio::test]
async fn the_registry_survives_a_restart_of_the_control_plane() {
    for backend in backends() {
        let (mut cp, gw) = system(backend).await;
        register(&gw, json!({"id": "orders"})).await;
        instance(&gw, json!({"id": "o-1", "serviceId": "orders", "address": "127.0.0.1", "port": 1})).await;
        cp.process.kill().await;
        let (status, body) = gw.get("/api/registry/services").await;
        assert_eq!((status, body["error"]["code"].as_str()), (503, Some("control_plane_unavailable")), "{body}");
        cp.restart().await;
        let found =
            reskflow_e2e::harness::eventually("the gateway reconnects", std::time::Duration::from_secs(10), || async {
                let (status, body) = gw.post("/api/registry/discover", json!({"serviceId": "orders"})).await;
                (status == 200).then_some(body)
            })
            .await;
        assert_eq!(found["instance"]["id"], "o-1");
    }
}

#[tokio::test]
async fn zone_aware_discovery_defaults_to_the_gateways_own_location() {
    let cp = ControlPlane::start().await;
    let gw = Gateway::start_with(&cp, &[("REGION", "eu"), ("ZONE", "eu-b")]).await;
    register(&gw, json!({"id": "stock"})).await;
    for (id, zone) in [("s-a", "eu-a"), ("s-b", "eu-b")] {
        instance(
            &gw,
            json!({"id": id, "serviceId": "stock", "address": "127.0.0.1", "port": 1, "region": "eu", "zone": zone}),
        )
        .await;
    }
    for _ in 0..3 {
        let (status, found) =
            gw.post("/api/registry/discover", json!({"serviceId": "stock", "strategy": "zone_aware"})).await;
        assert_eq!(status, 200, "{found}");
        assert_eq!((found["instance"]["id"].as_str(), found["locality"].as_str()), (Some("s-b"), Some("zone")));
    }
}
