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
use reskflow_e2e::harness::{eventually, ControlPlane, ControlPlaneOptions, Gateway};
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

#[tokio::test]
async fn a_rest_call_is_one_trace_across_the_gateway_and_the_control_plane() {
    let spans: Spans = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let collector = format!("http://{}", listener.local_addr().expect("addr"));
    let app = axum::Router::new().route("/v1/traces", post(collect)).with_state(spans.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let otel = vec![
        ("OTEL_EXPORTER_OTLP_ENDPOINT".to_string(), collector.clone()),
        ("OTEL_BSP_SCHEDULE_DELAY".to_string(), "100".to_string()),
    ];
    let cp = ControlPlane::start_with(ControlPlaneOptions { env: otel.clone(), ..Default::default() }).await;
    let env: Vec<(&str, &str)> = otel.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gw = Gateway::start_with(&cp, &env).await;

    // The caller's trace: its id and the caller's span id.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let response = gw
        .http()
        .post(format!("{}/api/registry/services", gw.url))
        .header("traceparent", format!("00-{trace_id}-{caller}-01"))
        .json(&json!({ "id": "traced" }))
        .send()
        .await
        .expect("the gateway answers");
    assert_eq!(response.status(), 201);

    let trace = eventually("the spans of both processes", Duration::from_secs(20), || {
        let spans = spans.clone();
        async move {
            let trace: Vec<Span> =
                spans.lock().expect("spans").iter().filter(|s| s.trace_id == trace_id).cloned().collect();
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
