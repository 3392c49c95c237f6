//! The checks behind the fuzz targets in `fuzz/`. Each takes arbitrary bytes, hands them to one of
//! the parsers that face users the way the running system does, and panics only when an invariant
//! breaks: a panic inside the parser, a refusal that names no field, or an accepted input that the
//! next hop would refuse (a definition the store could not load back, a route the control plane
//! stores but a gateway would refuse to compile, a normalized path that normalizes differently a
//! second time, a registry object that does not survive the trip through gRPC).
//!
//! `tests/replay.rs` runs every file in `fuzz/corpus/` and `fuzz/regressions/` through these checks,
//! so an input a fuzzer once crashed on stays a test that runs without cargo-fuzz.

use std::collections::BTreeMap;

use bytes::BytesMut;
use std::sync::{Arc, OnceLock};

use reskflow_control_plane::registry::routes::{normalize_all, table_is_routable};
use reskflow_control_plane::workflow::definition::{Definition, SCOPE};
use reskflow_control_plane::workflow::saga::SagaRequest;
use reskflow_expr::{Expr, Template, Vars};
use reskflow_gateway::error::ApiError;
use reskflow_gateway::json::parse_json_body;
use reskflow_gateway::rest::workflows::ExecuteBody;
use reskflow_gateway::routes::{compile, Defaults};
use reskflow_proto::invalid::Invalid;
use reskflow_proto::pb::registry::v1 as pb;
use reskflow_proto::registry::{DiscoverQuery, Heartbeat, Instance, SearchQuery, Service};
use reskflow_proto::route::{Route, RouteFile};
use reskflow_sidecar::routing::{fill_target, normalize, RouteTable};
use reskflow_sidecar::server::parse::{parse_head, Decoded, Decoder, Framing, Head, HeadError, MAX_HEADERS};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::fmt::Debug;

/// A check: arbitrary bytes in, a panic when an invariant breaks.
pub type Check = fn(&[u8]);

/// The fuzz targets, by name: the directory names under `fuzz/corpus/` and `fuzz/regressions/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("workflow_definition", workflow_definition),
    ("expression", expression),
    ("route_config", route_config),
    ("path", path),
    ("rest_body", rest_body),
    ("http1_request", http1_request),
];

fn named(invalid: &Invalid, input: &str) {
    assert!(!invalid.0.is_empty(), "a refusal without a reason for {input:?}");
    for v in &invalid.0 {
        assert!(
            !v.field.is_empty() && !v.description.is_empty(),
            "a refusal that names no field or reason ({v:?}) for {input:?}"
        );
    }
}

fn named_api(err: &ApiError, input: &[u8]) {
    let body: Value = match serde_json::from_slice(&err.to_json()) {
        Ok(body) => body,
        Err(e) => panic!("an error body that is not JSON ({e}) for {input:?}"),
    };
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error without a message: {body} for {input:?}");
}

/// A workflow definition as `POST /api/workflows` takes it, and a saga as `POST /api/saga/execute`
/// does. A definition that is accepted is stored as its serialized spec and parsed again when a
/// worker loads it: that must succeed and give the same spec.
pub fn workflow_definition(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Definition::parse(text) {
        Err(invalid) => named(&invalid, text),
        Ok(def) => {
            let stored = serde_json::to_string(&def.spec).expect("a parsed spec serializes");
            match Definition::parse(&stored) {
                Ok(again) => {
                    let twice = serde_json::to_string(&again.spec).expect("a parsed spec serializes");
                    assert_eq!(stored, twice, "the stored definition changes when loaded back");
                }
                Err(invalid) => panic!("an accepted definition cannot be loaded back: {invalid}\n{stored}"),
            }
        }
    }
    saga(text);
}

/// A saga is checked as a definition of its own (its steps, calls and templates).
fn saga(text: &str) {
    match SagaRequest::parse(text) {
        Err(invalid) => named(&invalid, text),
        Ok(saga) => {
            if let Err(invalid) = Definition::compile(saga.workflow()) {
                named(&invalid, text);
            }
        }
    }
}

/// A registry object's body (`T`, whose gRPC message is `P`): read as the gateway reads it, checked
/// as the control plane checks it, and, when accepted, unchanged by the trip through gRPC.
fn registry_body<T, P>(body: &[u8], check: impl FnOnce(&mut T) -> Result<(), Invalid>)
where
    T: DeserializeOwned + Clone + PartialEq + Debug + Into<P> + TryFrom<P>,
    <T as TryFrom<P>>::Error: Debug,
{
    match parse_json_body::<T>(Some("application/json"), body) {
        Err(e) => named_api(&e, body),
        Ok(mut value) => match check(&mut value) {
            Err(invalid) => named(&invalid, &String::from_utf8_lossy(body)),
            Ok(()) => {
                let back = T::try_from(value.clone().into());
                assert_eq!(
                    back.as_ref().ok(),
                    Some(&value),
                    "{} changes through gRPC: {back:?}",
                    std::any::type_name::<T>()
                );
            }
        },
    }
}

/// An expression (conditions, `next[].when`) on the first line, and on the rest a JSON document:
/// the variables it is evaluated with, and a template (step `input`) compiled and rendered.
pub fn expression(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (source, rest) = text.split_once('\n').unwrap_or((text, ""));
    let doc: Value = serde_json::from_str(rest).unwrap_or(Value::Null);
    let mut vars = Vars::new();
    for name in SCOPE.variables {
        vars.set(name, doc.get(name).unwrap_or(&Value::Null));
    }
    match Expr::compile(source, &SCOPE) {
        Ok(expr) => {
            let _ = expr.eval(&vars);
            let _ = expr.eval_bool(&vars);
        }
        Err(err) => assert!(!err.to_string().is_empty(), "a refused expression without a reason: {source:?}"),
    }
    match Template::compile(&doc, &SCOPE) {
        Ok(template) => {
            let _ = template.render(&vars);
        }
        Err(err) => assert!(!err.error.to_string().is_empty(), "a refused template without a reason: {doc}"),
    }
}

/// The routes a gateway gets, as `ROUTES_FILE` (JSON or YAML) or `PUT /api/gateway/routes`. What the
/// control plane accepts and stores must compile on every gateway (a gateway that refuses it
/// would NACK the config and keep serving old routes), and survive being streamed as JSON.
pub fn route_config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let parsed = match serde_json::from_str::<RouteFile>(text) {
        Ok(file) => Some(file),
        Err(_) => serde_yaml_ng::from_str::<RouteFile>(text).ok(),
    };
    if let Some(file) = parsed {
        routes_accepted_everywhere(file.into_routes(), false, text);
    }
}

fn routes_accepted_everywhere(routes: Vec<Route>, single: bool, input: &str) {
    let routes = match normalize_all(routes, single) {
        Ok(routes) => routes,
        Err(invalid) => return named(&invalid, input),
    };
    let table: BTreeMap<&str, &Route> = routes.iter().map(|r| (r.id.as_str(), r)).collect();
    if let Err(invalid) = table_is_routable(&table) {
        return named(&invalid, input);
    }
    // What the control plane stores, it streams as JSON; gateways read it back.
    let streamed = serde_json::to_string(&routes).expect("routes serialize");
    let received: Vec<Route> = match serde_json::from_str(&streamed) {
        Ok(r) => r,
        Err(e) => panic!("stored routes do not read back ({e}): {streamed}"),
    };
    assert_eq!(received, routes, "routes change on the way to the gateway");
    let defaults = Defaults { max_body: 1 << 20 };
    for route in &received {
        if let Err(why) = compile(route, &defaults, None, Arc::default()) {
            panic!("the control plane accepted route {} but a gateway refuses it: {why}\n{input}", route.id);
        }
    }
    let entries = received.iter().map(|r| (r.id.as_str(), r.method.as_str(), r.path.as_str(), ()));
    if let Err(conflicts) = RouteTable::build(entries) {
        panic!("an accepted route set does not build a gateway table: {conflicts:?}");
    }
}

fn sample_table() -> &'static RouteTable<&'static str> {
    static TABLE: OnceLock<RouteTable<&'static str>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let routes = [
            ("orders", "GET", "/api/orders/:id", "/v1/orders/:id"),
            ("order-items", "GET", "/api/orders/:id/items/*rest", "/items/*rest"),
            ("files", "ALL", "/api/files/*path", "/files/*path"),
            ("admin", "POST", "/api/admin/users", "/users"),
            ("root", "ALL", "/api/*rest", "/*rest"),
        ];
        RouteTable::build(routes.iter().map(|(id, m, p, t)| (*id, *m, *p, *t))).expect("the sample routes build")
    })
}

/// A request path as the gateway's front door gets it: normalized (or refused), then matched.
/// A normal path is stable (normalizing it again changes nothing), absolute, and has no empty,
/// `.` or `..` segment and no encoded slash left.
pub fn path(data: &[u8]) {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(normal) = normalize(raw) else { return };
    assert!(normal.starts_with('/'), "{raw:?} normalized to {normal:?}, which is not absolute");
    match normalize(&normal) {
        Ok(again) => assert_eq!(again, normal, "normalizing {raw:?} twice gives two answers"),
        Err(e) => panic!("{raw:?} normalized to {normal:?}, which is refused: {e}"),
    }
    let inner = normal.strip_suffix('/').unwrap_or(&normal);
    for segment in inner.split('/').skip(1) {
        assert!(!matches!(segment, "" | "." | ".."), "{raw:?} normalized to {normal:?}, with a {segment:?} segment");
    }
    let upper = normal.to_ascii_uppercase();
    assert!(!upper.contains("%2F") && !upper.contains("%5C"), "{raw:?} kept an encoded slash: {normal:?}");
    for method in [http::Method::GET, http::Method::POST, http::Method::HEAD] {
        if let Some(matched) = sample_table().lookup(&method, &normal) {
            let target = fill_target(matched.value, &matched.params());
            assert!(target.starts_with('/'), "{normal:?} was sent to {target:?}");
        }
    }
}

/// Bytes as an HTTP/1.1 client sends them, read by the data plane's server ([`parse_head`], then
/// the body's decoder): no panic; a head is read the same whether its bytes come at once or in
/// two pieces split anywhere; a body decodes to the same bytes (or the same refusal) at once or
/// one byte at a time, and never takes more bytes than it was given.
pub fn http1_request(data: &[u8]) {
    const MAX: usize = 8 * 1024;
    let whole = parse_head(&mut BytesMut::from(data), MAX);
    let split = data.len() / 2 + usize::from(data.first().copied().unwrap_or(0)) % (data.len() / 2 + 1);
    let split = split.min(data.len());
    let mut piecewise = BytesMut::from(&data[..split]);
    let first = parse_head(&mut piecewise, MAX);
    let two = match first {
        Ok(None) => {
            piecewise.extend_from_slice(&data[split..]);
            parse_head(&mut piecewise, MAX)
        }
        other => other,
    };
    let describe = |r: &Result<Option<Head>, HeadError>| match r {
        Ok(Some(h)) => {
            format!("{:?} {:?} {} {:?}", h.request.method(), h.request.uri(), h.request.headers().len(), h.framing)
        }
        Ok(None) => "incomplete".to_string(),
        Err(e) => format!("refused: {e}"),
    };
    assert_eq!(
        describe(&whole),
        describe(&two),
        "{:?} read at once and split at {split}",
        String::from_utf8_lossy(data)
    );
    let Ok(Some(head)) = whole else { return };
    assert!(head.request.headers().len() <= MAX_HEADERS);
    let body_start = data.len() - parse_rest(data, MAX);
    let rest = &data[body_start..];
    let at_once = decode_body(head.framing, rest, rest.len().max(1));
    let by_byte = decode_body(head.framing, rest, 1);
    assert_eq!(at_once, by_byte, "the body of {:?} decodes differently by piece size", String::from_utf8_lossy(data));
}

/// How many bytes follow the head in `data` (the head parsed once more to find its end).
fn parse_rest(data: &[u8], max: usize) -> usize {
    let mut buf = BytesMut::from(data);
    match parse_head(&mut buf, max) {
        Ok(Some(_)) => buf.len(),
        _ => 0,
    }
}

/// A body's bytes and how many input bytes it took, or its refusal; `Need` at the end of the input
/// counts as incomplete.
fn decode_body(framing: Framing, wire: &[u8], step: usize) -> Result<(Vec<u8>, usize), String> {
    let mut decoder = Decoder::new(framing);
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf) {
            Err(e) => return Err(e.to_string()),
            Ok(Decoded::Data(data)) => {
                assert!(!data.is_empty(), "an empty data piece");
                body.extend_from_slice(&data);
            }
            Ok(Decoded::End) => return Ok((body, fed - buf.len())),
            Ok(Decoded::Need) if fed == wire.len() => return Err("incomplete".to_string()),
            Ok(Decoded::Need) => {
                let next = (fed + step).min(wire.len());
                buf.extend_from_slice(&wire[fed..next]);
                fed = next;
            }
        }
    }
}

/// The JSON body of each REST endpoint that takes one (the first byte picks it), read as the
/// gateway reads it and checked as the control plane checks it. Errors name a field; registry
/// objects the control plane accepts survive the trip through gRPC unchanged.
pub fn rest_body(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else { return };
    let json = Some("application/json");
    let text = String::from_utf8_lossy(body);
    match which % 9 {
        // POST /api/registry/services, PUT /api/registry/services/{id}
        0 => registry_body::<Service, pb::Service>(body, Service::normalize),
        // POST /api/registry/instances
        1 => registry_body::<Instance, pb::Instance>(body, |i| i.normalize(None)),
        // POST|PUT /api/registry/instances/{id}/heartbeat
        2 => {
            if let Err(e) = parse_json_body::<Heartbeat>(json, body) {
                named_api(&e, body);
            }
        }
        // POST /api/registry/discover
        3 => registry_body::<DiscoverQuery, pb::DiscoverRequest>(body, |q| q.validate()),
        // POST /api/registry/search
        4 => registry_body::<SearchQuery, pb::SearchRequest>(body, |q| q.validate()),
        // POST /api/gateway/routes (one route) and PUT /api/gateway/routes (all of them)
        5 => match parse_json_body::<Value>(json, body) {
            Err(e) => named_api(&e, body),
            Ok(value) => {
                let (list, single) = match value {
                    Value::Array(list) => (list, false),
                    other => (vec![other], true),
                };
                match serde_json::from_value::<Vec<Route>>(Value::Array(list)) {
                    Ok(routes) => routes_accepted_everywhere(routes, single, &text),
                    Err(e) => assert!(!e.to_string().is_empty()),
                }
            }
        },
        // POST /api/workflows
        6 => match parse_json_body::<Value>(json, body) {
            Err(e) => named_api(&e, body),
            Ok(value) => workflow_definition(value.to_string().as_bytes()),
        },
        // POST /api/workflows/{id}/execute
        8 => {
            if let Err(e) = parse_json_body::<ExecuteBody>(json, body) {
                named_api(&e, body);
            }
        }
        // POST /api/saga/execute
        _ => match parse_json_body::<Value>(json, body) {
            Err(e) => named_api(&e, body),
            Ok(value) => saga(&value.to_string()),
        },
    }
}
