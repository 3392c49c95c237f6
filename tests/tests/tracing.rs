//! One trace follows a REST call through the gateway into the control plane: both export their
//! spans over OTLP (configured by the standard `OTEL_*` variables) to an in-process collector, and
//! the spans form one connected trace under the caller's `traceparent`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;
use reskflow_e2e::harness::{eventually, register_at, ControlPlane, ControlPlaneOptions, Gateway};
use serde_json::json;

#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
}

type Spans = Arc<Mutex<Vec<Span>>>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn collect(State(spans): State<Spans>, body: Bytes) -> Vec<u8> {
    let request = ExportTraceServiceRequest::decode(body).expect("an OTLP trace export");
    let mut out = spans.lock().expect("the span list");
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|a| a.key == "service.name")
            .and_then(|a| a.value.as_ref()?.value.as_ref())
            .map(|v| match v {
                AnyValue::StringValue(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .unwrap_or_default();
        for scope in resource_spans.scope_spans {
            for span in scope.spans {
                out.push(Span {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
    }
    ExportTraceServiceResponse::default().encode_to_vec()
}

/// An OTLP/HTTP collector in this process: the spans it receives, and the variables that point a
/// binary at it (export batched every 100 ms).
async fn collector() -> (Spans, Vec<(String, String)>) {
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route("/v1/traces", post(collect)).with_state(spans.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let otel = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), url),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
    ];
    (spans, otel)
}

/// The spans received so far of trace `trace_id`.
fn spans_of(spans: &Spans, trace_id: &str) -> Vec<Span> {
    spans.lock().expect("spans").iter().filter(|s| s.trace_id == trace_id).cloned().collect()
}

/// POSTs `body` to the gateway as a caller in trace `trace_id` whose span is `caller`.
async fn post_traced(
    gw: &Gateway,
    path: &str,
    body: serde_json::Value,
    trace_id: &str,
    caller: &str,
) -> reqwest::Response {
    gw.http()
        .post(format!("{}{path}", gw.url))
        .header("traceparent", format!("00-{trace_id}-{caller}-01"))
        .json(&body)
        .send()
        .await
        .expect("the gateway answers")
}

#[tokio::test]
async fn a_rest_call_is_one_trace_across_the_gateway_and_the_control_plane() {
    let (spans, otel) = collector().await;
    let cp = ControlPlane::start_with(ControlPlaneOptions { env: otel.clone(), ..Default::default() }).await;
    let env: Vec<(&str, &str)> = otel.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gw = Gateway::start_with(&cp, &env).await;

    // The caller's trace: its id and the caller's span id.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let response = post_traced(&gw, "/api/registry/services", json!({ "id": "traced" }), trace_id, caller).await;
    assert_eq!(response.status(), 201);

    let trace = eventually("the spans of both processes", Duration::from_secs(20), || {
        let spans = spans.clone();
        async move {
            let trace = spans_of(&spans, trace_id);
            let has = |service: &str| trace.iter().any(|s| s.service == service);
            (has("gateway") && has("control-plane")).then_some(trace)
        }
    })
    .await;

    // The gateway's span continues the caller's; the control plane's is the gateway's child.
    let rest = trace
        .iter()
        .find(|s| s.service == "gateway" && s.name == "POST /api/registry/services")
        .unwrap_or_else(|| panic!("no span for the REST call: {trace:#?}"));
    assert_eq!(rest.parent_span_id, caller, "{trace:#?}");
    let grpc = trace
        .iter()
        .find(|s| s.service == "control-plane" && s.name == "reskflow.registry.v1.Registry/RegisterService")
        .unwrap_or_else(|| panic!("no span for the gRPC call: {trace:#?}"));
    assert_eq!(grpc.parent_span_id, rest.span_id, "{trace:#?}");
    // Connected: every span's parent is the caller or another span of the trace.
    for span in &trace {
        let known = span.parent_span_id == caller || trace.iter().any(|p| p.span_id == span.parent_span_id);
        assert!(known, "{span:?} hangs loose in {trace:#?}");
    }

    // A call without a traceparent starts a trace of its own.
    let (status, _) = gw.get("/api/registry/services/traced").await;
    assert_eq!(status, 200);
    let own = eventually("a new trace for a call without traceparent", Duration::from_secs(20), || {
        let spans = spans.clone();
        async move {
            spans
                .lock()
                .expect("spans")
                .iter()
                .find(|s| s.service == "gateway" && s.name == "GET /api/registry/services/{id}")
                .cloned()
        }
    })
    .await;
    assert_ne!(own.trace_id, trace_id);
    assert!(own.parent_span_id.is_empty() || own.parent_span_id == "0000000000000000", "{own:?}");
}

/// The orders service of the next test: its action calls the inventory service through its
/// sidecar, passing on the traceparent it was called with, and answers what inventory saw.
async fn orders_app(sidecar_outbound: String) -> u16 {
    use axum::http::HeaderMap;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let app = axum::Router::new().route(
        "/actions/reserve",
        post(move |headers: HeaderMap| {
            let outbound = sidecar_outbound.clone();
            async move {
                let mut call = reqwest::Client::new().get(format!("{outbound}/inventory/check"));
                if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
                    call = call.header("traceparent", tp);
                }
                let seen: serde_json::Value = match call.send().await {
                    Ok(r) => r.json().await.unwrap_or_default(),
                    Err(e) => json!({ "error": e.to_string() }),
                };
                axum::Json(json!({ "inventoryTraceparent": seen["traceparent"] }))
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

#[tokio::test]
async fn a_workflow_run_is_one_trace_from_the_gateway_through_its_steps_and_a_sidecar_to_the_service() {
    use reskflow_e2e::harness::Sidecar;
    use reskflow_e2e::targets::EchoBackend;

    let (spans, otel) = collector().await;
    let env: Vec<(&str, &str)> = otel.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let cp = ControlPlane::start_with(ControlPlaneOptions { env: otel.clone(), ..Default::default() }).await;
    let client = cp.client();

    // inventory: an echo backend (it answers the traceparent it got); orders: the app above,
    // calling inventory through its sidecar.
    let inventory = EchoBackend::start("inventory-1").await;
    let mut sidecar_env = env.clone();
    sidecar_env.push(("UPSTREAMS", "inventory"));
    let sidecar = Sidecar::start(&cp, &sidecar_env).await;
    let orders_port = orders_app(sidecar.outbound.clone()).await;
    register_at(&client, "inventory", inventory.port).await;
    register_at(&client, "orders", orders_port).await;
    eventually("the sidecar routes to inventory", Duration::from_secs(20), || async {
        let (status, _, _) = sidecar.get("/inventory/ping").await;
        (status == 200).then_some(())
    })
    .await;

    let gw = Gateway::start_with(&cp, &env).await;
    let definition =
        json!({ "id": "traced", "steps": [{ "id": "reserve", "service": "orders", "action": "reserve" }] });
    let (status, body) = gw.post("/api/workflows", definition).await;
    assert_eq!(status, 201, "{body}");

    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let caller = "b7ad6b7169203331";
    let response = post_traced(&gw, "/api/workflows/traced/execute", json!({ "input": {} }), trace_id, caller).await;
    assert_eq!(response.status(), 202);
    let started: serde_json::Value = response.json().await.expect("JSON");
    let run_id = started["instanceId"].as_str().expect("an instance id").to_string();
    let done = eventually("the run ends", Duration::from_secs(20), || async {
        let (_, run) = gw.get(&format!("/api/workflows/instances/{run_id}")).await;
        (run["status"] != "RUNNING").then_some(run)
    })
    .await;
    assert_eq!(done["status"], "COMPLETED", "{done}");

    let wanted = ["gateway", "control-plane", "sidecar"];
    let trace = eventually("spans of the gateway, the control plane and the sidecar", Duration::from_secs(20), || {
        let spans = spans.clone();
        async move {
            let trace = spans_of(&spans, trace_id);
            let step = trace.iter().any(|s| s.name == "orders/reserve");
            (step && wanted.iter().all(|w| trace.iter().any(|s| s.service == *w))).then_some(trace)
        }
    })
    .await;
    let find = |service: &str, name: &str| {
        trace
            .iter()
            .find(|s| s.service == service && s.name == name)
            .unwrap_or_else(|| panic!("no {service} span {name}: {trace:#?}"))
            .clone()
    };
    let rest = find("gateway", "POST /api/workflows/{workflow_id}/execute");
    let execute = find("control-plane", "reskflow.workflow.v1.Workflows/Execute");
    let step = find("control-plane", "orders/reserve");
    let proxy = find("sidecar", "proxy inventory");
    assert_eq!(rest.parent_span_id, caller);
    assert_eq!(execute.parent_span_id, rest.span_id, "{trace:#?}");
    assert_eq!(step.parent_span_id, execute.span_id, "the step continues the run's trace: {trace:#?}");
    assert_eq!(proxy.parent_span_id, step.span_id, "the sidecar continues the step's call: {trace:#?}");
    // The service behind the sidecar was called as a child of the sidecar's span.
    let seen = done["output"]["inventoryTraceparent"]
        .as_str()
        .or_else(|| done["steps"][0]["output"]["inventoryTraceparent"].as_str())
        .unwrap_or_else(|| panic!("inventory saw no traceparent: {done}"))
        .to_string();
    assert_eq!(seen, format!("00-{trace_id}-{}-01", proxy.span_id));
}
