//! The OpenAPI document a running gateway serves at `/api/openapi.json` describes its whole REST
//! API: it is OpenAPI 3.1, its references resolve, every documented operation is served (not the
//! router's fallback, not 405), and no route is added outside the documenting router.

use std::path::Path;

use reskflow_e2e::harness::{ControlPlane, Gateway};
use serde_json::{json, Value};

fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(list) => list.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a source directory") {
        let path = entry.expect("an entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[tokio::test]
async fn the_served_document_is_openapi_3_1_and_covers_every_route_the_gateway_serves() {
    let cp = ControlPlane::start().await;
    let gw = Gateway::start(&cp).await;
    let (status, doc) = gw.get("/api/openapi.json").await;
    assert_eq!(status, 200, "{doc}");
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    assert!(doc["info"]["title"].as_str().is_some_and(|t| !t.is_empty()));

    // Every reference points at a component that exists.
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r.strip_prefix('#').unwrap_or_else(|| panic!("{r} is not a local reference"));
        assert!(doc.pointer(pointer).is_some(), "{r} points at nothing");
    }

    // Every documented operation is served by its handler.
    let paths = doc["paths"].as_object().expect("paths");
    let mut operations = 0;
    for (path, item) in paths {
        let concrete =
            path.split('/').map(|s| if s.starts_with('{') { "doc-probe" } else { s }).collect::<Vec<_>>().join("/");
        for method in ["get", "post", "put", "delete", "patch"] {
            let Some(op) = item.get(method) else { continue };
            operations += 1;
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}: no responses");
            let body = op.get("requestBody").map(|_| json!({}));
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let (status, answer) = gw.call(m, &concrete, body).await;
            assert_ne!(status, 405, "{method} {path} is documented but not routed");
            let fallback = status == 404 && answer["error"]["message"] == "no such endpoint";
            assert!(!fallback, "{method} {path} is documented but not routed");
        }
    }
    assert!(operations >= 35, "{operations} operations");

    // An undocumented path or method is not served.
    let (status, _) = gw.get("/api/registry/not-an-endpoint").await;
    assert_eq!(status, 404);
    let (status, _) = gw.call(reqwest::Method::PATCH, "/api/registry/services", Some(json!({}))).await;
    assert_eq!(status, 405);

    // Routes reach the router only through utoipa-axum's `routes!`, which documents what it serves:
    // a plain axum `.route(` would serve an undocumented endpoint.
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../gateway/src"), &mut files);
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a source file");
        assert!(!text.contains(".route(\""), "{} adds a route outside the documented router", file.display());
    }
}
