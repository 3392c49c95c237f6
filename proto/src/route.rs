//! Gateway routes: what the gateway does with a request to `/api/...` that is not one of the
//! project's own endpoints. Stored by the control plane, streamed to every gateway with the config,
//! managed over REST (`/api/gateway/routes`) or loaded from a YAML/JSON file at the gateway's start.
//!
//! ```json
//! { "id": "order-by-id", "method": "GET", "path": "/api/orders/:id", "serviceId": "order-service",
//!   "targetPath": "/orders/:id", "authentication": true, "authorization": ["customer"],
//!   "rateLimit": { "requests": 10, "window": "1m" }, "cache": { "ttl": 300 },
//!   "validation": { "params": { "type": "object", "properties": { "id": { "type": "string" } } } },
//!   "transform": { "request": { "headers": { "add": { "x-order": "{{ params.id }}" } } } } }
//! ```
//!
//! This module checks the shape; the control plane also compiles the schemas and templates and
//! checks the route against the others before storing it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::invalid::{Invalid, Violations};

pub const METHODS: [&str; 10] = ["ALL", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Route {
    /// Unique; when absent, made from the method and path (`get-api-orders-id`).
    #[serde(default)]
    pub id: String,
    /// An HTTP method, or `ALL` (the default).
    #[serde(default = "all")]
    pub method: String,
    /// `/api/...`, with `:name` parameters and a trailing `*` (or `*name`) wildcard.
    pub path: String,
    /// The service requests go to (through discovery, its balancer and breaker).
    pub service_id: String,
    /// The upstream path, with the route's `:name` parameters and `*` substituted; without it the
    /// request's path goes upstream unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_path: Option<String>,
    /// Requires a valid JWT bearer token (or an API key when the gateway has consumers).
    #[serde(default)]
    pub authentication: bool,
    /// Any one of these roles is required (implies authentication).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authorization: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<Validation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transform: Option<Transforms>,
    /// Whole-request timeout; default: the service's traffic policy.
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Larger request bodies are refused with 413; default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Free-form, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

fn all() -> String {
    "ALL".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitKey {
    /// The token's subject or the API key's consumer; the client IP for anonymous callers.
    User,
    /// The client's IP address.
    Ip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    /// Requests allowed per window (also the burst).
    pub requests: u32,
    /// `30s`, `1m`, `1h`...
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// What one limit counts: per user (default), per IP, or both (each its own limit).
    #[serde(default = "per_user")]
    pub per: Vec<LimitKey>,
}

fn per_user() -> Vec<LimitKey> {
    vec![LimitKey::User]
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cache {
    /// Seconds a response is kept (a shorter `max-age` from upstream wins).
    pub ttl: u64,
    /// Request headers that are part of the cache key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vary_headers: Vec<String>,
    /// Larger responses are not cached; default 1 MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

/// JSON Schemas (draft 2020-12 unless `$schema` says otherwise).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Validation {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Validated against an object of the query parameters (strings, or numbers/booleans where the
    /// schema's property says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<Value>,
    /// The same for the route's path parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Transforms {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Transform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Transform>,
}

/// Changes to one message. Values are templates (`{{ claims.sub }}`, `{{ params.id }}`,
/// `{{ headers["x-a"] }}`) in the workflows' expression language.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Transform {
    #[serde(default, skip_serializing_if = "Edits::is_empty")]
    pub headers: Edits,
    /// Requests only.
    #[serde(default, skip_serializing_if = "Edits::is_empty")]
    pub query: Edits,
    /// JSON bodies: `add` sets fields (dotted paths: `customer.id`).
    #[serde(default, skip_serializing_if = "Edits::is_empty")]
    pub body: Edits,
}

/// Applied in this order: remove, rename, add.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Edits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
    /// from -> to
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// name -> template; `add` replaces an existing value. `set` is accepted as a synonym.
    #[serde(default, alias = "set", skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
}

impl Edits {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.rename.is_empty() && self.add.is_empty()
    }
}

/// A path segment of a route pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<'a> {
    Static(&'a str),
    Param(&'a str),
    /// A trailing `*` or `*name` (matches the rest, possibly empty); the name defaults to `*`.
    Wildcard(&'a str),
}

/// The segments of a route pattern, or why it is not one.
pub fn parse_pattern(path: &str) -> Result<Vec<Segment<'_>>, String> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err("must start with /".into());
    };
    if path.contains(['?', '#', '%', '\\']) || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be a plain path (no query, fragment, percent-encoding, backslash or spaces)".into());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let mut segments = Vec::with_capacity(parts.len());
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if part.is_empty() && !last {
            return Err("must not contain empty segments (//)".into());
        }
        if *part == "." || *part == ".." {
            return Err("must not contain . or .. segments".into());
        }
        if let Some(name) = part.strip_prefix(':') {
            if !is_name(name) {
                return Err(format!("parameter :{name} must be a name of letters, digits and _"));
            }
            segments.push(Segment::Param(name));
        } else if let Some(name) = part.strip_prefix('*') {
            if !last {
                return Err("a * wildcard must be the last segment".into());
            }
            if !name.is_empty() && !is_name(name) {
                return Err(format!("wildcard *{name} must be named with letters, digits and _"));
            }
            segments.push(Segment::Wildcard(if name.is_empty() { "*" } else { name }));
        } else if part.contains([':', '*', '{', '}']) {
            return Err(format!("segment {part} mixes text with : * {{ }}"));
        } else {
            segments.push(Segment::Static(part));
        }
    }
    let mut names: Vec<&str> = segments
        .iter()
        .filter_map(|s| match s {
            Segment::Param(n) | Segment::Wildcard(n) => Some(*n),
            Segment::Static(_) => None,
        })
        .collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err("parameter names must be unique".into());
    }
    Ok(segments)
}

fn is_name(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl Route {
    /// The id made from the method and path when none is given: `get-api-orders-id`.
    pub fn default_id(&self) -> String {
        let mut id = self.method.to_ascii_lowercase();
        for c in self.path.chars() {
            if c.is_ascii_alphanumeric() || c == '_' {
                id.push(c.to_ascii_lowercase());
            } else if !id.ends_with('-') {
                id.push('-');
            }
        }
        id.trim_end_matches('-').to_string()
    }

    /// Fills defaults (id, upper-case method) and checks the shape; every problem at once.
    pub fn normalize(mut self) -> Result<Route, Invalid> {
        self.method = self.method.trim().to_ascii_uppercase();
        if self.id.is_empty() {
            self.id = self.default_id();
        }
        self.validate()?;
        Ok(self)
    }

    pub fn validate(&self) -> Result<(), Invalid> {
        let mut v = Violations::default();
        if !is_id(&self.id) {
            v.add("id", "must be 1-128 characters of letters, digits, '-', '_' and '.'");
        }
        if !METHODS.contains(&self.method.as_str()) {
            v.add("method", format!("must be one of {}", METHODS.join(", ")));
        }
        let params = match parse_pattern(&self.path) {
            Ok(segments) => {
                if !matches!(segments.first(), Some(Segment::Static("api"))) {
                    v.add("path", "must start with /api/ (the gateway proxies /api/*)");
                }
                segments
                    .iter()
                    .filter_map(|s| match s {
                        Segment::Param(n) | Segment::Wildcard(n) => Some(n.to_string()),
                        Segment::Static(_) => None,
                    })
                    .collect::<Vec<_>>()
            }
            Err(why) => {
                v.add("path", why);
                Vec::new()
            }
        };
        if !is_id(&self.service_id) {
            v.add("serviceId", "must name a service (letters, digits, '-', '_' and '.')");
        }
        if let Some(target) = &self.target_path {
            match parse_pattern(target) {
                Ok(segments) => {
                    for s in segments {
                        if let Segment::Param(n) | Segment::Wildcard(n) = s {
                            if !params.iter().any(|p| p == n) {
                                v.add("targetPath", format!("uses {n}, which the path does not define"));
                            }
                        }
                    }
                }
                Err(why) => v.add("targetPath", why),
            }
        }
        for (i, role) in self.authorization.iter().enumerate() {
            if role.trim().is_empty() {
                v.add(format!("authorization[{i}]"), "must not be empty");
            }
        }
        if let Some(limit) = &self.rate_limit {
            if limit.requests == 0 {
                v.add("rateLimit.requests", "must be at least 1");
            }
            if limit.window < Duration::from_millis(1) || limit.window > Duration::from_secs(86_400 * 31) {
                v.add("rateLimit.window", "must be between 1ms and 31 days");
            }
            if limit.per.is_empty() {
                v.add("rateLimit.per", "must name user, ip or both");
            }
        }
        if let Some(cache) = &self.cache {
            if cache.ttl == 0 || cache.ttl > 86_400 * 365 {
                v.add("cache.ttl", "must be 1 second to 1 year");
            }
            if matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE") {
                v.add("cache", "only GET and HEAD responses are cached; this route is not for them");
            }
            for (i, h) in cache.vary_headers.iter().enumerate() {
                if http_header_name(h).is_err() {
                    v.add(format!("cache.varyHeaders[{i}]"), "must be a header name");
                }
            }
        }
        if let Some(validation) = &self.validation {
            for (field, schema) in
                [("body", &validation.body), ("query", &validation.query), ("params", &validation.params)]
            {
                if let Some(schema) = schema {
                    if !schema.is_object() && !schema.is_boolean() {
                        v.add(format!("validation.{field}"), "must be a JSON Schema (an object or a boolean)");
                    }
                }
            }
        }
        if let Some(transform) = &self.transform {
            for (which, t) in [("request", &transform.request), ("response", &transform.response)] {
                let Some(t) = t else { continue };
                let at = format!("transform.{which}");
                for name in t
                    .headers
                    .remove
                    .iter()
                    .chain(t.headers.rename.keys())
                    .chain(t.headers.rename.values())
                    .chain(t.headers.add.keys())
                {
                    if http_header_name(name).is_err() {
                        v.add(format!("{at}.headers"), format!("{name:?} is not a header name"));
                    }
                }
                if which == "response" && !t.query.is_empty() {
                    v.add(format!("{at}.query"), "responses have no query");
                }
                for path in t
                    .body
                    .remove
                    .iter()
                    .chain(t.body.rename.keys())
                    .chain(t.body.rename.values())
                    .chain(t.body.add.keys())
                {
                    if path.is_empty() || path.split('.').any(str::is_empty) {
                        v.add(format!("{at}.body"), format!("{path:?} is not a field path (a.b.c)"));
                    }
                }
            }
        }
        if self.timeout.is_some_and(|t| t.is_zero()) {
            v.add("timeout", "must be positive");
        }
        if self.max_body_bytes == Some(0) {
            v.add("maxBodyBytes", "must be positive");
        }
        v.finish()
    }

    /// Whether the route needs a verified caller.
    pub fn needs_identity(&self) -> bool {
        self.authentication || !self.authorization.is_empty()
    }
}

fn http_header_name(name: &str) -> Result<(), ()> {
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

/// A file of routes: a list, or `{ "routes": [...] }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RouteFile {
    List(Vec<Route>),
    Object { routes: Vec<Route> },
}

impl RouteFile {
    pub fn into_routes(self) -> Vec<Route> {
        match self {
            RouteFile::List(r) | RouteFile::Object { routes: r } => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(v: Value) -> Result<Route, Invalid> {
        serde_json::from_value::<Route>(v).map_err(|e| Invalid::one("route", e.to_string()))?.normalize()
    }

    #[test]
    fn seed_example_parses_with_defaults() {
        let r = route(json!({
            "method": "get", "path": "/api/orders/:id", "serviceId": "order-service",
            "targetPath": "/orders/:id", "authentication": true, "authorization": ["customer"],
            "rateLimit": { "requests": 10, "window": "1m" }, "cache": { "ttl": 300 }
        }))
        .expect("test input is valid");
        assert_eq!(r.id, "get-api-orders-id");
        assert_eq!(r.method, "GET");
        assert_eq!(r.rate_limit.as_ref().expect("test input is valid").window, Duration::from_secs(60));
        assert_eq!(r.rate_limit.expect("test input is valid").per, vec![LimitKey::User]);
    }

    #[test]
    fn every_problem_is_named() {
        let err = route(json!({
            "id": "bad id", "method": "FETCH", "path": "/orders/:id/:id", "serviceId": "",
            "targetPath": "/x/:other", "rateLimit": { "requests": 0, "window": "0s" },
            "cache": { "ttl": 0 }, "timeout": "0s"
        }))
        .unwrap_err();
        let fields: Vec<&str> = err.0.iter().map(|v| v.field.as_str()).collect();
        for f in [
            "id",
            "method",
            "path",
            "serviceId",
            "targetPath",
            "rateLimit.requests",
            "rateLimit.window",
            "cache.ttl",
            "timeout",
        ] {
            assert!(fields.contains(&f), "{f} missing from {fields:?}");
        }
    }

    #[test]
    fn patterns() {
        assert_eq!(
            parse_pattern("/api/a/:id/*rest").expect("test input is valid"),
            vec![Segment::Static("api"), Segment::Static("a"), Segment::Param("id"), Segment::Wildcard("rest")]
        );
        assert_eq!(parse_pattern("/api/*").expect("test input is valid").last(), Some(&Segment::Wildcard("*")));
        for bad in ["api", "/api//x", "/api/../x", "/api/*/x", "/api/a:b", "/api/%2e", "/api/x?y", "/api/:"] {
            assert!(parse_pattern(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn route_files_are_lists_or_objects() {
        let list: RouteFile =
            serde_json::from_value(json!([{ "path": "/api/a", "serviceId": "a" }])).expect("test input is valid");
        let object: RouteFile = serde_json::from_value(json!({ "routes": [{ "path": "/api/a", "serviceId": "a" }] }))
            .expect("test input is valid");
        assert_eq!(list.into_routes(), object.into_routes());
    }
}

/// Hostile input: any JSON a client could send as a route parses or is refused, and a parsed route
/// normalizes or is refused with fields, never a panic.
#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            "(/[:*a-z.%]{0,5}){0,4}".prop_map(serde_json::Value::from),
            "[a-zA-Z0-9 _-]{0,8}".prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            Just(serde_json::Value::Null),
        ]
    }

    fn route() -> impl Strategy<Value = serde_json::Value> {
        (
            text(),
            prop_oneof![Just("GET"), Just("ALL"), Just("get"), Just("BREW"), Just("")],
            text(),
            text(),
            proptest::option::of((any::<u32>(), "[0-9]{0,4}(ms|s|m|h|d|x)?")),
            proptest::option::of(any::<u64>()),
            proptest::option::of(("[a-z:{} .]{0,12}", "[a-z-]{0,6}")),
            any::<bool>(),
        )
            .prop_map(|(path, method, service, target, limit, ttl, add, auth)| {
                let mut r =
                    serde_json::json!({ "path": path, "method": method, "serviceId": service, "authentication": auth });
                if !target.is_null() {
                    r["targetPath"] = target;
                }
                if let Some((requests, window)) = limit {
                    r["rateLimit"] = serde_json::json!({ "requests": requests, "window": window });
                }
                if let Some(ttl) = ttl {
                    r["cache"] = serde_json::json!({ "ttl": ttl });
                }
                if let Some((value, name)) = add {
                    r["transform"] = serde_json::json!({ "request": { "headers": { "add": { name: value } } } });
                }
                r
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn routes_parse_and_normalize_or_are_refused(json in route()) {
            if let Ok(route) = serde_json::from_value::<Route>(json) {
                match route.normalize() {
                    Ok(r) => prop_assert!(r.validate().is_ok() && !r.id.is_empty()),
                    Err(invalid) => prop_assert!(!invalid.0.is_empty()),
                }
            }
        }
    }
}
