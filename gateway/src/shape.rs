//! Request validation and request/response transforms of a route, compiled once per route.
//!
//! Validation: JSON Schemas for the path `params`, the `query` and the JSON `body`. Path and query
//! values arrive as text; a value whose schema property asks for an integer, number or boolean is
//! converted first (as joi does), and a repeated query parameter is an array. Every error is
//! reported with where it is (`params`, `query`, `body`) and its JSON pointer.
//!
//! Transforms: `remove`, `rename` and `add` of headers, query parameters (requests) and JSON body
//! fields (dotted paths such as `customer.id`), applied in that order. `add` values are templates
//! in the workflow expression language over `claims`, `params`, `headers`, `query`, `body`,
//! `request` (`method`, `path`, `ip`, `routeId`) and, for responses, `response` (`status`,
//! `headers`, `body`).

use http::header::{HeaderMap, HeaderName, HeaderValue};
use jsonschema::Validator;
use reskflow_expr::{Template, Vars, GATEWAY_SCOPE};
use reskflow_proto::route::{Edits, Route, Transform};
use serde::Serialize;
use serde_json::{Map, Value};

/// One validation error.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// `params`, `query` or `body` followed by the pointer (`body/items/0/qty`).
    pub field: String,
    #[serde(rename = "in")]
    pub part: &'static str,
    pub pointer: String,
    pub description: String,
}

struct Schema {
    validator: Validator,
    source: Value,
}

impl Schema {
    fn compile(source: &Value) -> Result<Schema, String> {
        let validator = jsonschema::validator_for(source).map_err(|e| e.to_string())?;
        Ok(Schema { validator, source: source.clone() })
    }

    fn check(&self, part: &'static str, instance: &Value, out: &mut Vec<Problem>) {
        for err in self.validator.iter_errors(instance) {
            let pointer = err.instance_path().to_string();
            out.push(Problem { field: format!("{part}{pointer}"), part, pointer, description: err.to_string() });
        }
    }

    /// The JSON type(s) the schema's `properties.<name>` asks for.
    fn wants(&self, name: &str, ty: &str) -> bool {
        match self.source.get("properties").and_then(|p| p.get(name)).and_then(|p| p.get("type")) {
            Some(Value::String(t)) => t == ty,
            Some(Value::Array(ts)) => ts.iter().any(|t| t == ty),
            _ => false,
        }
    }

    /// A text value as the schema wants it (integer, number, boolean), else as text.
    fn coerce(&self, name: &str, text: &str) -> Value {
        if self.wants(name, "integer") {
            if let Ok(n) = text.parse::<i64>() {
                return n.into();
            }
        }
        if self.wants(name, "number") {
            if let Some(n) = text.parse::<f64>().ok().and_then(serde_json::Number::from_f64) {
                return Value::Number(n);
            }
        }
        if self.wants(name, "boolean") {
            match text {
                "true" => return Value::Bool(true),
                "false" => return Value::Bool(false),
                _ => {}
            }
        }
        Value::String(text.to_string())
    }
}

struct CompiledEdits {
    remove: Vec<String>,
    rename: Vec<(String, String)>,
    add: Vec<(String, Template)>,
}

impl CompiledEdits {
    fn compile(edits: &Edits, field: &str) -> Result<CompiledEdits, String> {
        let add = edits
            .add
            .iter()
            .map(|(name, value)| {
                Template::compile(&Value::String(value.clone()), &GATEWAY_SCOPE)
                    .map(|t| (name.clone(), t))
                    .map_err(|e| format!("{field}.add.{name}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        Ok(CompiledEdits {
            remove: edits.remove.clone(),
            rename: edits.rename.iter().map(|(a, b)| (a.clone(), b.clone())).collect(),
            add,
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.rename.is_empty() && self.add.is_empty()
    }
}

struct CompiledTransform {
    headers: CompiledEdits,
    query: CompiledEdits,
    body: CompiledEdits,
}

impl CompiledTransform {
    fn compile(t: &Transform, side: &str) -> Result<CompiledTransform, String> {
        Ok(CompiledTransform {
            headers: CompiledEdits::compile(&t.headers, &format!("transform.{side}.headers"))?,
            query: CompiledEdits::compile(&t.query, &format!("transform.{side}.query"))?,
            body: CompiledEdits::compile(&t.body, &format!("transform.{side}.body"))?,
        })
    }

    fn templated(&self) -> bool {
        !(self.headers.add.is_empty() && self.query.add.is_empty() && self.body.add.is_empty())
    }
}

/// A route's validation and transforms.
pub struct Shape {
    params: Option<Schema>,
    query: Option<Schema>,
    body: Option<Schema>,
    request: Option<CompiledTransform>,
    response: Option<CompiledTransform>,
}

impl std::fmt::Debug for Shape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shape").finish_non_exhaustive()
    }
}

/// What templates see of a request.
pub struct RequestView<'a> {
    pub claims: Option<&'a Value>,
    pub params: &'a [(String, String)],
    pub headers: &'a HeaderMap,
    pub query: Option<&'a str>,
    pub body: &'a Value,
    pub method: &'a str,
    pub path: &'a str,
    pub ip: String,
    pub route: &'a str,
}

impl Shape {
    /// None when the route has neither validation nor transforms.
    pub fn compile(route: &Route) -> Result<Option<Shape>, String> {
        let schema = |v: &Option<Value>, field: &str| {
            v.as_ref().map(|s| Schema::compile(s).map_err(|e| format!("validation.{field}: {e}"))).transpose()
        };
        let (params, query, body) = match &route.validation {
            Some(v) => (schema(&v.params, "params")?, schema(&v.query, "query")?, schema(&v.body, "body")?),
            None => (None, None, None),
        };
        let (request, response) = match &route.transform {
            Some(t) => (
                t.request.as_ref().map(|r| CompiledTransform::compile(r, "request")).transpose()?,
                t.response.as_ref().map(|r| CompiledTransform::compile(r, "response")).transpose()?,
            ),
            None => (None, None),
        };
        let shape = Shape { params, query, body, request, response };
        Ok((shape.params.is_some()
            || shape.query.is_some()
            || shape.body.is_some()
            || shape.request.is_some()
            || shape.response.is_some())
        .then_some(shape))
    }

    /// Whether the request body must be read whole (validated or edited).
    pub fn reads_request_body(&self) -> bool {
        self.body.is_some() || self.request.as_ref().is_some_and(|t| !t.body.is_empty() || t.templated())
    }

    pub fn transforms_response(&self) -> bool {
        self.response.is_some()
    }

    /// Whether the response body must be read whole.
    pub fn reads_response_body(&self) -> bool {
        self.response.as_ref().is_some_and(|t| !t.body.is_empty() || t.templated())
    }

    pub fn transforms_request(&self) -> bool {
        self.request.is_some()
    }

    /// Every validation error of the request (its body already parsed; `Null` when empty).
    pub fn validate(&self, params: &[(String, String)], query: Option<&str>, body: &Value) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Some(schema) = &self.params {
            let object: Map<String, Value> = params.iter().map(|(k, v)| (k.clone(), schema.coerce(k, v))).collect();
            schema.check("params", &Value::Object(object), &mut out);
        }
        if let Some(schema) = &self.query {
            schema.check("query", &query_object(query, Some(schema)), &mut out);
        }
        if let Some(schema) = &self.body {
            schema.check("body", body, &mut out);
        }
        out
    }

    /// Applies the request transform to the headers, the query and the JSON body (when read).
    /// Returns the new query (None: unchanged).
    pub fn transform_request(
        &self,
        view: &RequestView<'_>,
        headers: &mut HeaderMap,
        body: Option<&mut Value>,
    ) -> Result<Option<String>, String> {
        let Some(t) = &self.request else { return Ok(None) };
        let vars = t.templated().then(|| request_vars(view));
        edit_headers(&t.headers, headers, vars.as_ref())?;
        let query = if t.query.is_empty() {
            None
        } else {
            let mut pairs: Vec<(String, String)> = form_urlencoded::parse(view.query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            pairs.retain(|(k, _)| !t.query.remove.contains(k));
            for (from, to) in &t.query.rename {
                for (k, _) in pairs.iter_mut().filter(|(k, _)| k == from) {
                    *k = to.clone();
                }
            }
            for (name, template) in &t.query.add {
                let value = render_text(template, vars.as_ref())?;
                pairs.retain(|(k, _)| k != name);
                pairs.push((name.clone(), value));
            }
            let mut out = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &pairs {
                out.append_pair(k, v);
            }
            Some(out.finish())
        };
        if let Some(body) = body {
            edit_body(&t.body, body, vars.as_ref())?;
        }
        Ok(query)
    }

    /// Applies the response transform; `body` is the parsed JSON body when it was read.
    pub fn transform_response(
        &self,
        view: &RequestView<'_>,
        status: u16,
        headers: &mut HeaderMap,
        body: Option<&mut Value>,
    ) -> Result<(), String> {
        let Some(t) = &self.response else { return Ok(()) };
        let vars = t.templated().then(|| {
            let mut vars = request_vars(view);
            let response = serde_json::json!({
                "status": status,
                "headers": header_object(headers),
                "body": body.as_deref().cloned().unwrap_or(Value::Null),
            });
            vars.set("response", &response);
            vars
        });
        edit_headers(&t.headers, headers, vars.as_ref())?;
        if let Some(body) = body {
            edit_body(&t.body, body, vars.as_ref())?;
        }
        Ok(())
    }
}

fn header_object(headers: &HeaderMap) -> Value {
    let mut object = Map::new();
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            object.entry(name.as_str()).or_insert_with(|| Value::String(v.to_string()));
        }
    }
    Value::Object(object)
}

/// The query as an object; a repeated name is an array; values converted as `schema` asks.
fn query_object(query: Option<&str>, schema: Option<&Schema>) -> Value {
    let mut object = Map::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = match schema {
            Some(s) if s.wants(&k, "array") => Value::String(v.into_owned()),
            Some(s) => s.coerce(&k, &v),
            None => Value::String(v.into_owned()),
        };
        match object.get_mut(k.as_ref()) {
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None => {
                let wants_array = schema.is_some_and(|s| s.wants(&k, "array"));
                object.insert(k.into_owned(), if wants_array { Value::Array(vec![value]) } else { value });
            }
        }
    }
    Value::Object(object)
}

fn request_vars(view: &RequestView<'_>) -> Vars {
    let params: Map<String, Value> = view.params.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    let request = serde_json::json!({ "method": view.method, "path": view.path, "ip": view.ip, "routeId": view.route });
    Vars::new()
        .with("claims", view.claims.unwrap_or(&Value::Object(Map::new())))
        .with("params", &Value::Object(params))
        .with("headers", &header_object(view.headers))
        .with("query", &query_object(view.query, None))
        .with("body", view.body)
        .with("request", &request)
        .with("response", &Value::Null)
}

fn render_text(template: &Template, vars: Option<&Vars>) -> Result<String, String> {
    let empty = Vars::new();
    let value = template.render(vars.unwrap_or(&empty)).map_err(|e| e.to_string())?;
    Ok(match value {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    })
}

fn edit_headers(edits: &CompiledEdits, headers: &mut HeaderMap, vars: Option<&Vars>) -> Result<(), String> {
    for name in &edits.remove {
        headers.remove(name.as_str());
    }
    for (from, to) in &edits.rename {
        let values: Vec<HeaderValue> = headers.get_all(from.as_str()).iter().cloned().collect();
        headers.remove(from.as_str());
        let to = HeaderName::try_from(to.as_str()).map_err(|e| format!("header {to}: {e}"))?;
        for v in values {
            headers.append(to.clone(), v);
        }
    }
    for (name, template) in &edits.add {
        let value = render_text(template, vars)?;
        let name = HeaderName::try_from(name.as_str()).map_err(|e| format!("header {name}: {e}"))?;
        let value = HeaderValue::from_str(&value).map_err(|_| format!("header {name}: the value is not valid text"))?;
        headers.insert(name, value);
    }
    Ok(())
}

fn edit_body(edits: &CompiledEdits, body: &mut Value, vars: Option<&Vars>) -> Result<(), String> {
    if edits.is_empty() || !body.is_object() {
        return Ok(());
    }
    for path in &edits.remove {
        take_path(body, path);
    }
    for (from, to) in &edits.rename {
        if let Some(v) = take_path(body, from) {
            set_path(body, to, v);
        }
    }
    for (path, template) in &edits.add {
        let empty = Vars::new();
        let value = template.render(vars.unwrap_or(&empty)).map_err(|e| e.to_string())?;
        set_path(body, path, value);
    }
    Ok(())
}

/// Removes and returns the field at a dotted path.
fn take_path(value: &mut Value, path: &str) -> Option<Value> {
    let (parent, last) = match path.rsplit_once('.') {
        Some((parent, last)) => {
            let mut at = &mut *value;
            for part in parent.split('.') {
                at = at.get_mut(part)?;
            }
            (at, last)
        }
        None => (value, path),
    };
    parent.as_object_mut()?.remove(last)
}

/// Sets the field at a dotted path, making the objects on the way.
fn set_path(value: &mut Value, path: &str, new: Value) {
    let mut at = value;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        let Some(object) = at.as_object_mut() else { return };
        if parts.peek().is_none() {
            object.insert(part.to_string(), new);
            return;
        }
        let next = object.entry(part.to_string()).or_insert_with(|| Value::Object(Map::new()));
        if !next.is_object() {
            *next = Value::Object(Map::new());
        }
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(json: Value) -> Route {
        serde_json::from_value(json).expect("route")
    }

    #[test]
    fn validation_converts_text_and_names_every_error() {
        let r = route(json!({"path": "/api/orders/:id", "serviceId": "o", "validation": {
            "params": {"type": "object", "properties": {"id": {"type": "integer", "minimum": 1}}},
            "query": {"type": "object", "properties": {"limit": {"type": "integer", "maximum": 50}, "tag": {"type": "array"}},
                      "additionalProperties": false},
            "body": {"type": "object", "required": ["qty"], "properties": {"qty": {"type": "integer", "minimum": 1}}}
        }}));
        let shape = Shape::compile(&r).expect("compiles").expect("some");
        let ok = shape.validate(&[("id".into(), "42".into())], Some("limit=10&tag=a&tag=b"), &json!({"qty": 2}));
        assert!(ok.is_empty(), "{ok:?}");
        let bad = shape.validate(&[("id".into(), "0".into())], Some("limit=500&other=1"), &json!({"qty": "two"}));
        let fields: Vec<&str> = bad.iter().map(|p| p.field.as_str()).collect();
        assert!(fields.contains(&"params/id"), "{fields:?}");
        assert!(fields.contains(&"query/limit"), "{fields:?}");
        assert!(fields.contains(&"query"), "additionalProperties: {fields:?}");
        assert!(fields.contains(&"body/qty"), "{fields:?}");
        assert!(bad.iter().all(|p| !p.description.is_empty()));
    }

    #[test]
    fn transforms_edit_headers_query_and_body_with_templates() {
        let r = route(json!({"path": "/api/orders/:id", "serviceId": "o", "transform": {
            "request": {
                "headers": {"remove": ["x-debug"], "rename": {"x-old": "x-new"}, "add": {"x-order": "{{ params.id }}", "x-user": "{{ claims.sub }}"}},
                "query": {"remove": ["secret"], "rename": {"q": "search"}, "add": {"source": "gateway"}},
                "body": {"remove": ["internal"], "rename": {"customer.name": "customerName"}, "add": {"meta.user": "{{ claims.sub }}", "meta.qty2": "{{ body.qty * 2 }}"}}
            },
            "response": {"headers": {"add": {"x-status": "{{ response.status }}"}}, "body": {"remove": ["cost"]}}
        }}));
        let shape = Shape::compile(&r).expect("compiles").expect("some");
        let mut headers = HeaderMap::new();
        headers.insert("x-debug", HeaderValue::from_static("1"));
        headers.insert("x-old", HeaderValue::from_static("v"));
        let claims = json!({"sub": "u-1"});
        let mut body = json!({"qty": 3, "internal": true, "customer": {"name": "Ada"}});
        let original = body.clone();
        let params = [("id".to_string(), "42".to_string())];
        let view = RequestView {
            claims: Some(&claims),
            params: &params,
            headers: &headers.clone(),
            query: Some("q=shoes&secret=x&page=2"),
            body: &original,
            method: "POST",
            path: "/api/orders/42",
            ip: "127.0.0.1".into(),
            route: "r",
        };
        let query = shape.transform_request(&view, &mut headers, Some(&mut body)).expect("transform");
        assert_eq!(query.as_deref(), Some("search=shoes&page=2&source=gateway"));
        assert!(!headers.contains_key("x-debug") && !headers.contains_key("x-old"));
        assert_eq!(headers["x-new"], "v");
        assert_eq!(headers["x-order"], "42");
        assert_eq!(headers["x-user"], "u-1");
        assert_eq!(body, json!({"qty": 3, "customer": {}, "customerName": "Ada", "meta": {"user": "u-1", "qty2": 6}}));

        let mut response_headers = HeaderMap::new();
        let mut response_body = json!({"id": 1, "cost": 9});
        shape.transform_response(&view, 201, &mut response_headers, Some(&mut response_body)).expect("transform");
        assert_eq!(response_headers["x-status"], "201");
        assert_eq!(response_body, json!({"id": 1}));
    }
}
