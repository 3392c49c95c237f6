//! The gateway's front door: every request comes here first. Management endpoints of this project
//! (`/api/registry`, `/api/workflows`, `/api/saga`, `/api/circuit-breakers`, `/api/dataplane`, `/api/gateway`,
//! `/health`, `/ready`, `/metrics`) go to the REST API and take precedence over routes; everything
//! else is matched against the routes and proxied through the shared data plane (breaker,
//! balancer, retries) to the route's service. Per request, top to bottom: normalize the path, match
//! a route, check the body size, authenticate and authorize, then forward with `X-Forwarded-*`,
//! the caller's identity headers (incoming copies are always removed) and `traceparent`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full, Limited};
use reskflow_sidecar::proxy::{Proxy, ProxyBody};
use reskflow_sidecar::routing::{self, fill_target};
use reskflow_sidecar::server::{serve_http, Answer, Fields, Handler, Inbound, ServeLimits};
use reskflow_sidecar::upstreams::Upstreams;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::auth::{AuthError, Authenticator, Identity};
use crate::cache::{self, Cached, Entry, RequestDirective, ResponseCache, X_CACHE};
use crate::metrics::Metrics;
use crate::ratelimit::{Decision, Limits, RouteLimiter};
use crate::routes::{CompiledRoute, Routes};
use crate::shape::{Problem, RequestView, Shape};
use http::Method;
use http_body_util::BodyExt;
use reskflow_proto::route::LimitKey;
use reskflow_sidecar::client::RequestBody;
use reskflow_sidecar::clock;
use reskflow_sidecar::fields::IpText;
use reskflow_sidecar::proxy::Verdict;
use reskflow_sidecar::upstreams::Upstream;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// What the gateway answers: a proxied (or data-plane made) body, or the REST API's.
pub type EdgeBody = Either<ProxyBody, axum::body::Body>;

/// Identity headers the gateway sets for upstreams; a caller's own copies never pass.
pub const USER_ID: HeaderName = HeaderName::from_static("x-user-id");
pub const USER_ROLES: HeaderName = HeaderName::from_static("x-user-roles");
pub const AUTHENTICATED_VIA: HeaderName = HeaderName::from_static("x-authenticated-via");
const IDENTITY_HEADERS: [HeaderName; 3] = [USER_ID, USER_ROLES, AUTHENTICATED_VIA];
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const ROUTE_HEADER: HeaderName = HeaderName::from_static("x-reskflow-route");
const HTTP: HeaderValue = HeaderValue::from_static("http");

/// Every REST resource of `rest::*` (keep in step with the routers there).
const MANAGEMENT_PREFIXES: [&str; 6] =
    ["/api/registry", "/api/workflows", "/api/saga", "/api/circuit-breakers", "/api/dataplane", "/api/gateway"];
const OPEN_PATHS: [&str; 5] = ["/health", "/ready", "/metrics", "/api/openapi.json", "/ui"];

fn is_management(path: &str) -> bool {
    OPEN_PATHS.contains(&path)
        || MANAGEMENT_PREFIXES
            .iter()
            .any(|p| path.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with('/')))
}

pub struct Edge {
    pub upstreams: Arc<Upstreams>,
    pub proxy: Proxy,
    pub routes: Arc<Routes>,
    pub auth: Option<Arc<Authenticator>>,
    /// The REST API (its state applied).
    pub management: axum::Router,
    pub admin_role: String,
    pub trust_forwarded: bool,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub cache: Arc<ResponseCache>,
    /// Header read timeout and size.
    pub serve_limits: ServeLimits,
}

impl Handler for Edge {
    type Body = EdgeBody;
    type Output = Answer<EdgeBody>;

    fn call(
        &self,
        req: Request<Inbound>,
        peer: SocketAddr,
    ) -> impl std::future::Future<Output = Answer<EdgeBody>> + Send + '_ {
        self.handle(req, peer)
    }
}

impl Edge {
    /// Serves until `shutdown`, then lets open requests finish (bounded).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let limits = self.serve_limits;
        serve_http(listener, shutdown, limits, self).await;
    }

    /// The answer to one request: management API, proxied route or a JSON error. Fields the
    /// gateway adds to a proxied answer (RateLimit, route id) go in the answer's [`Fields`].
    pub async fn handle(&self, req: Request<Inbound>, peer: SocketAddr) -> Answer<EdgeBody> {
        let path = match routing::normalize(req.uri().path()) {
            Ok(path) => path,
            Err(err) => return error(StatusCode::BAD_REQUEST, "invalid_path", &err.to_string()).into(),
        };
        if is_management(&path) {
            let path = path.into_owned();
            // Boxed: the REST API's future stays out of every proxied request's state.
            return Box::pin(self.management(req, &path)).await.into();
        }
        let started = clock::now_ns();
        let set = self.routes.load();
        let Some(matched) = set.table.lookup(req.method(), &path) else {
            self.metrics.unmatched.fetch_add(1, Ordering::Relaxed);
            let message = format!("no route for {} {}", req.method(), path);
            return error(StatusCode::NOT_FOUND, "no_route", &message).into();
        };
        let route = matched.value.clone();
        // Listed once, and only for a route that uses them.
        let raw =
            if route.shape.is_some() || route.route.target_path.is_some() { matched.params() } else { Vec::new() };
        // Validation and templates see the parameters decoded.
        let params: Vec<(String, String)> = if route.shape.is_some() {
            raw.iter().map(|(k, v)| (k.to_string(), routing::decode_param(v).into_owned())).collect()
        } else {
            Vec::new()
        };
        let mut upstream_path = match &route.route.target_path {
            Some(target) => fill_target(target, &raw),
            None => path.into_owned(),
        };
        drop(set);
        if let Some(query) = req.uri().query() {
            upstream_path.push('?');
            upstream_path.push_str(query);
        }
        let mut fields = Fields::default();
        let response = self.through(&route, req, upstream_path, params, peer, &mut fields).await;
        let m = &route.metrics;
        m.count(response.status().as_u16(), Duration::from_nanos(clock::now_ns().saturating_sub(started)));
        let counter = match response.extensions().get::<Refused>() {
            Some(Refused::Unauthenticated) => Some(&m.auth_failures),
            Some(Refused::Forbidden) => Some(&m.forbidden),
            Some(Refused::RateLimited) => Some(&m.rate_limited),
            Some(Refused::Invalid) => Some(&m.validation_failures),
            None => match response.extensions().get::<Verdict>() {
                Some(Verdict::BreakerOpen) => Some(&m.breaker_rejections),
                Some(Verdict::NoEndpoint | Verdict::UpstreamError | Verdict::Timeout) => Some(&m.upstream_errors),
                None => None,
            },
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        Answer { response, fields }
    }

    /// A matched request from the body check to the upstream's answer; the fields the gateway
    /// adds to a proxied answer go into `fields`.
    async fn through(
        &self,
        route: &CompiledRoute,
        req: Request<Inbound>,
        mut upstream_path: String,
        params: Vec<(String, String)>,
        peer: SocketAddr,
        fields: &mut Fields,
    ) -> Response<EdgeBody> {
        let (mut parts, body) = req.into_parts();
        // The declared length as the server read it (no lookup in the map).
        if hyper::body::Body::size_hint(&body).exact().is_some_and(|len| len > route.max_body as u64) {
            let message = format!("the body may be at most {} bytes on this route", route.max_body);
            return refused(Refused::Invalid, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &message);
        }

        if parts.headers.keys().any(|name| IDENTITY_HEADERS.contains(name)) {
            for name in &IDENTITY_HEADERS {
                parts.headers.remove(name);
            }
        }
        // The client as the rate limits and templates see it (before this hop joins X-Forwarded-For).
        let ip = client_ip(&parts.headers, peer.ip(), self.trust_forwarded);
        // Identity and forwarding fields for the upstream, written into the request head rather than
        // inserted into the map (see Fields); routes that read headers back get them inserted.
        // Room for three identity, three forwarding fields and the data plane's traceparent.
        let mut extra = Fields::with_capacity(320);
        let mut identity = None;
        if route.route.needs_identity() {
            let caller = match self.authenticate(&parts.headers).await {
                Ok(identity) => identity,
                Err(response) => return response,
            };
            if !route.route.authorization.is_empty() && !caller.has_any_role(&route.route.authorization) {
                let message = format!("this route needs one of the roles: {}", route.route.authorization.join(", "));
                return refused(Refused::Forbidden, StatusCode::FORBIDDEN, "forbidden", &message);
            }
            extra.extend(&caller.upstream_fields);
            identity = Some(caller);
        }
        let mut limited = None;
        if let Some(limiter) = &route.limiter {
            match self.rate_limit(route, limiter, identity.as_ref(), ip).await {
                Ok(state) => limited = Some(state),
                Err(response) => return response,
            }
        }

        let Some(upstream) = self.upstreams.get(&route.route.service_id) else {
            let message = format!("service {} has no configuration yet (is it registered?)", route.route.service_id);
            return error(StatusCode::SERVICE_UNAVAILABLE, "no_upstream", &message);
        };
        forwarded_headers(&mut parts.headers, &mut extra, peer.ip(), self.trust_forwarded);
        if route.shape.is_some() {
            // Validation and transforms read the request's headers as the upstream gets them. (A
            // cache key reads them from `extra` too: on a hit nothing is inserted into the map,
            // which cost ~7,000 instructions per request.)
            std::mem::take(&mut extra).apply_to(&mut parts.headers);
        }
        let mut body: RequestBody = Either::Left(Limited::new(body, route.max_body));
        // Validation and transforms: what templates see of the request, for the response too.
        let mut seen = None;
        if let Some(shape) = &route.shape {
            let (json, read) = match Box::pin(self.read_json_body(shape, route, &parts.headers, body)).await {
                Ok(read) => read,
                Err(response) => return response,
            };
            body = read;
            let query = parts.uri.query().map(str::to_string);
            let problems = shape.validate(&params, query.as_deref(), &json);
            if !problems.is_empty() {
                return invalid(problems);
            }
            // What templates see is kept only for routes with transforms (validation alone needs none).
            if shape.transforms_request() || shape.transforms_response() {
                let request = Seen {
                    claims: identity.as_ref().map(|i| i.claims.clone()),
                    params,
                    headers: parts.headers.clone(),
                    query,
                    body: json,
                    method: parts.method.to_string(),
                    path: parts.uri.path().to_string(),
                    ip: ip.to_string(),
                };
                if shape.transforms_request() {
                    let mut edited = request.body.clone();
                    let reads = shape.reads_request_body() && !matches!(edited, Value::Null);
                    let view = request.view(&route.route.id);
                    match shape.transform_request(&view, &mut parts.headers, reads.then_some(&mut edited)) {
                        Ok(new_query) => {
                            if let Some(q) = new_query {
                                let path_only = upstream_path.split('?').next().unwrap_or("/").to_string();
                                upstream_path = if q.is_empty() { path_only } else { format!("{path_only}?{q}") };
                            }
                        }
                        Err(why) => return error(StatusCode::INTERNAL_SERVER_ERROR, "transform_failed", &why),
                    }
                    if reads {
                        parts.headers.remove(header::CONTENT_LENGTH);
                        body = Either::Right(Full::new(Bytes::from(serde_json::to_vec(&edited).unwrap_or_default())));
                    }
                }
                seen = Some(request);
            }
        }
        let request = Request::from_parts(parts, body);
        let mut response = match &route.route.cache {
            Some(cache) if matches!(*request.method(), Method::GET | Method::HEAD) => {
                // Boxed (as are the body reads and transforms): what only some routes do stays out of the
                // state every request carries.
                let outgoing = Outgoing { request, path: &upstream_path, extra };
                Box::pin(self.cached(route, cache, &upstream, outgoing, identity.as_ref(), fields)).await
            }
            // Boxed too: the call's future is most of this one's size, and this one is moved (copied
            // whole) twice on its way to the connection; the box is one allocation.
            _ => {
                let answer =
                    Box::pin(self.proxy.call_with(&upstream, request, Some(&upstream_path), route.timeout, extra))
                        .await;
                // The answer's own fields (the endpoint's id) come first among the gateway's.
                *fields = answer.fields;
                answer.response.map(Either::Left)
            }
        };
        if let (Some(shape), Some(seen)) = (&route.shape, &seen) {
            if shape.transforms_response() {
                // Transforms see (and may remove) every field the answer has so far.
                std::mem::take(fields).apply_to(response.headers_mut());
                response = Box::pin(transform_response(shape, seen, &route.route.id, route.max_body, response)).await;
            }
        }
        fields.extend(&route.answer_fields);
        if let Some((remaining, reset)) = limited {
            rate_limit_fields(fields, remaining, reset);
        }
        response
    }

    /// Reads the request body whole when the route validates or edits it: its JSON (`Null` when
    /// empty or not read) and the body to send on.
    async fn read_json_body(
        &self,
        shape: &Shape,
        route: &CompiledRoute,
        headers: &HeaderMap,
        body: RequestBody,
    ) -> Result<(Value, RequestBody), Response<EdgeBody>> {
        if !shape.reads_request_body() {
            return Ok((Value::Null, body));
        }
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(err) if err.is::<http_body_util::LengthLimitError>() => {
                let message = format!("the body may be at most {} bytes on this route", route.max_body);
                return Err(refused(Refused::Invalid, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &message));
            }
            Err(_) => return Err(error(StatusCode::BAD_REQUEST, "bad_request", "the request body could not be read")),
        };
        if bytes.is_empty() {
            return Ok((Value::Null, Either::Right(Full::new(bytes))));
        }
        if !is_json(headers) {
            return Err(refused(
                Refused::Invalid,
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "this route reads the body as JSON: send Content-Type: application/json",
            ));
        }
        match serde_json::from_slice(&bytes) {
            Ok(json) => Ok((json, Either::Right(Full::new(bytes)))),
            Err(err) => Err(invalid(vec![Problem {
                field: "body".into(),
                part: "body",
                pointer: String::new(),
                description: format!("is not valid JSON: {err}"),
            }])),
        }
    }

    /// A GET or HEAD on a cached route: from the cache, or from the upstream (one request per key
    /// at a time) and stored when the answer allows. A stored answer's fields go into `fields`.
    async fn cached(
        &self,
        route: &CompiledRoute,
        config: &reskflow_proto::route::Cache,
        upstream: &Upstream,
        outgoing: Outgoing<'_>,
        identity: Option<&Arc<Identity>>,
        fields: &mut Fields,
    ) -> Response<EdgeBody> {
        let Outgoing { request: req, path, extra } = outgoing;
        let m = &route.metrics;
        let directive = cache::request_directive(req.headers());
        if directive == RequestDirective::Bypass {
            let answer = self.proxy.call_with(upstream, req, Some(path), route.timeout, extra).await;
            let mut response = answer.into_response().map(Either::Left);
            response.headers_mut().insert(X_CACHE, HeaderValue::from_static("BYPASS"));
            return response;
        }
        let user = identity.map(|i| i.subject.as_str());
        let key =
            ResponseCache::key(&route.route.id, req.method(), path, &config.vary_headers, req.headers(), &extra, user);
        let head_only = req.method() == Method::HEAD;
        if directive == RequestDirective::Normal {
            if let Some(hit) = self.cache.entries().get(&key).await {
                m.cache_hits.fetch_add(1, Ordering::Relaxed);
                return from_cache(&hit, "HIT", head_only, fields);
            }
        }
        // A GET's body is not sent on (it has no meaning); keep the head for a request of our own.
        let (parts, _) = req.into_parts();
        let ttl = Duration::from_secs(config.ttl);
        let limit = config.max_body_bytes.map_or(DEFAULT_CACHE_ENTRY, |b| usize::try_from(b).unwrap_or(usize::MAX));
        let slot = std::sync::Mutex::new(None);
        let ran = std::sync::atomic::AtomicBool::new(false);
        let shared_hit = std::sync::atomic::AtomicBool::new(false);
        let fetch = async {
            ran.store(true, Ordering::Relaxed);
            if directive == RequestDirective::Normal {
                if let Some(entry) = self.cache.fetch_shared(&route.route.id, key).await {
                    shared_hit.store(true, Ordering::Relaxed);
                    return Ok(entry);
                }
            }
            let request = Request::from_parts(parts.clone(), Either::Right(Full::new(Bytes::new())));
            let answer = self.proxy.call_with(upstream, request, Some(path), route.timeout, extra.clone()).await;
            let response = answer.into_response();
            let entry = store(&route.route.id, path, response, ttl, limit, &slot).await?;
            self.cache.store_shared(key, &entry).await;
            Ok(entry)
        };
        let result = if directive == RequestDirective::Refresh {
            match fetch.await {
                Ok(entry) => {
                    self.cache.entries().insert(key, entry.clone()).await;
                    Ok(entry)
                }
                Err(()) => Err(()),
            }
        } else {
            self.cache.entries().try_get_with(key, fetch).await.map_err(|_| ())
        };
        let ours = ran.load(Ordering::Relaxed) && !shared_hit.load(Ordering::Relaxed);
        let counter = if ours { &m.cache_misses } else { &m.cache_hits };
        counter.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok(entry) => from_cache(&entry, if ours { "MISS" } else { "HIT" }, head_only, fields),
            Err(()) if ran.load(Ordering::Relaxed) => {
                slot.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_else(|| {
                    error(StatusCode::BAD_GATEWAY, "upstream_error", "the upstream's answer could not be read")
                })
            }
            // Waited for another request whose answer could not be stored: ask on our own.
            Err(()) => {
                let request = Request::from_parts(parts, Either::Right(Full::new(Bytes::new())));
                let mut response = self
                    .proxy
                    .call_with(upstream, request, Some(path), route.timeout, extra)
                    .await
                    .into_response()
                    .map(Either::Left);
                response.headers_mut().insert(X_CACHE, HeaderValue::from_static("MISS"));
                response
            }
        }
    }

    /// Checks each of the route's limits (per user, per IP); the tightest remaining allowance, or
    /// the 429 (503 when Redis is down and the failure mode is closed).
    async fn rate_limit(
        &self,
        route: &CompiledRoute,
        limiter: &Arc<RouteLimiter>,
        identity: Option<&Arc<Identity>>,
        ip: IpAddr,
    ) -> Result<(u32, Duration), Response<EdgeBody>> {
        let mut tightest: Option<(u32, Duration)> = None;
        for per in &limiter.config.per {
            let mut key = String::with_capacity(route.redis_prefix.len() + 48);
            key.push_str(&route.redis_prefix);
            match (per, identity) {
                (LimitKey::User, Some(caller)) => {
                    key.push_str("u:");
                    key.push_str(&caller.subject);
                }
                _ => {
                    key.push_str("ip:");
                    key.push_str(IpText::new(ip).as_str());
                }
            }
            match self.limits.check(limiter, key).await {
                Decision::Allowed { remaining, reset } => {
                    if tightest.is_none_or(|(r, _)| remaining < r) {
                        tightest = Some((remaining, reset));
                    }
                }
                Decision::Limited { retry_after, reset } => {
                    let mut response = refused(
                        Refused::RateLimited,
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        &format!(
                            "rate limit of {} requests per {} exceeded",
                            limiter.config.requests,
                            humantime::format_duration(limiter.config.window)
                        ),
                    );
                    let headers = response.headers_mut();
                    headers.insert(header::RETRY_AFTER, HeaderValue::from(ceil_secs(retry_after).max(1)));
                    rate_limit_headers(headers, limiter, 0, reset);
                    return Err(response);
                }
                Decision::Unavailable => {
                    return Err(error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "rate_limit_unavailable",
                        "the shared rate limit store is unreachable",
                    ))
                }
            }
        }
        Ok(tightest.unwrap_or((limiter.config.requests, Duration::ZERO)))
    }

    async fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Identity>, Response<EdgeBody>> {
        let Some(auth) = &self.auth else {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "authentication_unavailable",
                "this route needs authentication but the gateway has no JWT_SECRET, JWKS or API keys configured",
            ));
        };
        auth.authenticate(headers).await.map_err(|err| unauthorized(&err))
    }

    /// The REST API; with authentication on, callers need the admin role (health, readiness and
    /// metrics stay open).
    async fn management(&self, mut req: Request<Inbound>, path: &str) -> Response<EdgeBody> {
        if req.uri().path() != path {
            // The REST API routes on the normalized path, as the routes do.
            let target = match req.uri().query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            match http::uri::PathAndQuery::try_from(target) {
                Ok(pq) => *req.uri_mut() = http::Uri::from(pq),
                Err(_) => return error(StatusCode::BAD_REQUEST, "invalid_path", "the path is not a valid URI"),
            }
        }
        if self.auth.is_some() && !OPEN_PATHS.contains(&path) {
            match self.authenticate(req.headers()).await {
                Err(response) => return response,
                Ok(identity) if !identity.roles.contains(&self.admin_role) => {
                    let message = format!("the management API needs the {} role", self.admin_role);
                    return error(StatusCode::FORBIDDEN, "forbidden", &message);
                }
                Ok(_) => {}
            }
        }
        let response = match self.management.clone().oneshot(req.map(axum::body::Body::new)).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        response.map(Either::Right)
    }
}

/// The request as validation and templates saw it (kept for the response transform).
struct Seen {
    claims: Option<Arc<Value>>,
    params: Vec<(String, String)>,
    headers: HeaderMap,
    query: Option<String>,
    body: Value,
    method: String,
    path: String,
    ip: String,
}

impl Seen {
    fn view<'a>(&'a self, route: &'a str) -> RequestView<'a> {
        RequestView {
            claims: self.claims.as_deref(),
            params: &self.params,
            headers: &self.headers,
            query: self.query.as_deref(),
            body: &self.body,
            method: &self.method,
            path: &self.path,
            ip: self.ip.clone(),
            route,
        }
    }
}

/// A request as it goes to the upstream: its head and body, the path it is sent to, and the fields
/// the gateway adds (they replace the request's own of their names).
struct Outgoing<'a> {
    request: Request<RequestBody>,
    path: &'a str,
    extra: Fields,
}

fn is_json(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        essence == "application/json" || essence.ends_with("+json")
    })
}

/// 400 listing every validation error with where it is and its JSON pointer.
fn invalid(problems: Vec<Problem>) -> Response<EdgeBody> {
    let message = problems.iter().map(|p| format!("{}: {}", p.field, p.description)).collect::<Vec<_>>().join("; ");
    let body = serde_json::json!({ "error": { "code": "validation_failed", "message": message, "fields": problems } });
    let mut response = Response::new(Either::Left(Either::Right(Full::new(Bytes::from(body.to_string())))));
    *response.status_mut() = StatusCode::BAD_REQUEST;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response.extensions_mut().insert(Refused::Invalid);
    response
}

/// Applies the response transform; a JSON body within `limit` is read whole when the transform
/// edits it, any other body streams on unchanged.
async fn transform_response(
    shape: &Shape,
    seen: &Seen,
    route: &str,
    limit: usize,
    response: Response<EdgeBody>,
) -> Response<EdgeBody> {
    let (mut head, body) = response.into_parts();
    let declared = declared_length(&head.headers, &body);
    let read = shape.reads_response_body() && is_json(&head.headers) && declared.is_none_or(|n| n <= limit);
    let view = seen.view(route);
    if !read {
        if let Err(why) = shape.transform_response(&view, head.status.as_u16(), &mut head.headers, None) {
            return error(StatusCode::BAD_GATEWAY, "transform_failed", &why);
        }
        return Response::from_parts(head, body);
    }
    let bytes = match cache::collect_within(body, limit).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err((read, rest))) => {
            // Larger than announced: streamed on untouched.
            use futures::StreamExt;
            let read = futures::stream::iter(read.into_iter().map(|b| Ok(hyper::body::Frame::data(b))));
            let rest = rest.into_data_stream().map(|r| r.map(hyper::body::Frame::data));
            let body = axum::body::Body::new(http_body_util::StreamBody::new(read.chain(rest)));
            return Response::from_parts(head, Either::Right(body));
        }
        Err(_) => return error(StatusCode::BAD_GATEWAY, "upstream_error", "the upstream's answer broke off"),
    };
    let mut json: Option<Value> = serde_json::from_slice(&bytes).ok();
    if let Err(why) = shape.transform_response(&view, head.status.as_u16(), &mut head.headers, json.as_mut()) {
        return error(StatusCode::BAD_GATEWAY, "transform_failed", &why);
    }
    let bytes = match json {
        Some(json) => Bytes::from(serde_json::to_vec(&json).unwrap_or_default()),
        None => bytes,
    };
    head.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(head, Either::Left(Either::Right(Full::new(bytes))))
}

/// Largest answer stored when the route does not say.
const DEFAULT_CACHE_ENTRY: usize = 1 << 20;

/// Turns an upstream answer into a cache entry when it may be stored; otherwise leaves the answer
/// (streamed on as it is) in `slot`.
async fn store(
    route: &str,
    path: &str,
    response: Response<ProxyBody>,
    ttl: Duration,
    limit: usize,
    slot: &std::sync::Mutex<Option<Response<EdgeBody>>>,
) -> Result<Entry, ()> {
    let (mut head, body) = response.into_parts();
    let keep = |head: http::response::Parts, body: EdgeBody| {
        let mut response = Response::from_parts(head, body);
        response.headers_mut().insert(X_CACHE, HeaderValue::from_static("MISS"));
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(response);
        Err(())
    };
    let declared = declared_length(&head.headers, &body);
    let Some(ttl) = cache::freshness(head.status, &head.headers, ttl).filter(|_| declared.is_none_or(|n| n <= limit))
    else {
        return keep(head, Either::Left(body));
    };
    match cache::collect_within(body, limit).await {
        Ok(Ok(bytes)) => {
            head.headers.remove(X_CACHE);
            Ok(Arc::new(Cached {
                route: route.to_string(),
                path: path.to_string(),
                status: head.status,
                fields: Fields::received_from(&head.headers),
                body: bytes,
                stored_at: std::time::Instant::now(),
                ttl,
            }))
        }
        Ok(Err((read, rest))) => {
            use futures::StreamExt;
            use http_body_util::BodyExt;
            let read = futures::stream::iter(read.into_iter().map(|b| Ok(hyper::body::Frame::data(b))));
            let rest = rest.into_data_stream().map(|r| r.map(hyper::body::Frame::data));
            let body = axum::body::Body::new(http_body_util::StreamBody::new(read.chain(rest)));
            keep(head, Either::Right(body))
        }
        Err(err) => {
            tracing::debug!(error = %err, "upstream answer broke off while being cached");
            *slot.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(error(StatusCode::BAD_GATEWAY, "upstream_error", "the upstream's answer broke off"));
            Err(())
        }
    }
}

/// An answer body's length as its framing states it (a proxied answer's fields carry none), else
/// as its `Content-Length` does.
fn declared_length<B: hyper::body::Body>(headers: &HeaderMap, body: &B) -> Option<usize> {
    body.size_hint()
        .exact()
        .and_then(|n| usize::try_from(n).ok())
        .or_else(|| headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok()))
}

/// The answer from a stored entry: its fields (as text, into the answer's `fields`) with `Age` and
/// `X-Cache`.
fn from_cache(entry: &Cached, label: &'static str, head_only: bool, fields: &mut Fields) -> Response<EdgeBody> {
    let body = if head_only { Bytes::new() } else { entry.body.clone() };
    let mut response = Response::new(Either::Left(Either::Right(Full::new(body))));
    *response.status_mut() = entry.status;
    // The answer's own fields, as a proxied answer's are (received: what is added replaces them).
    *fields = entry.fields.clone();
    fields.push_number(&header::AGE, entry.stored_at.elapsed().as_secs());
    fields.push(&X_CACHE, &HeaderValue::from_static(label));
    if head_only {
        // The length a GET's body has (the body itself is left out).
        response.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(entry.body.len()));
    }
    response
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

pub(crate) const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub(crate) const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub(crate) const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
pub(crate) const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// The IETF RateLimit fields: limit, remaining, seconds until the allowance is whole again, policy.
fn rate_limit_fields(fields: &mut Fields, remaining: u32, reset: Duration) {
    fields.push_number(&RATELIMIT_REMAINING, u64::from(remaining));
    fields.push_number(&RATELIMIT_RESET, ceil_secs(reset));
}

/// The RateLimit fields inserted into `headers` (a refusal's).
fn rate_limit_headers(headers: &mut HeaderMap, limit: &RouteLimiter, remaining: u32, reset: Duration) {
    let mut fields = limit.fixed_fields.clone();
    rate_limit_fields(&mut fields, remaining, reset);
    fields.apply_to(headers);
}

/// Appends the peer to `X-Forwarded-For` (a trusted proxy's chain, every line of it, is kept; an
/// untrusted one is replaced); sets `X-Forwarded-Proto` and `X-Forwarded-Host` unless a trusted
/// proxy in front already did. The values go into `extra`, which replaces the request's own.
fn forwarded_headers(headers: &mut HeaderMap, extra: &mut Fields, peer: IpAddr, trusted: bool) {
    // (A custom name's lookup hashes it byte by byte: only a trusted chain is looked for.)
    let mut priors =
        trusted.then(|| headers.get_all(&X_FORWARDED_FOR).iter().filter(|v| !v.is_empty() && v.to_str().is_ok()));
    match priors.as_mut().and_then(Iterator::next) {
        Some(first) => {
            let peer = IpText::new(peer);
            let mut chain = Vec::with_capacity(first.len() + 2 + peer.as_bytes().len());
            for prior in std::iter::once(first).chain(priors.into_iter().flatten()) {
                chain.extend_from_slice(prior.as_bytes());
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(peer.as_bytes());
            extra.push_bytes(&X_FORWARDED_FOR, &chain);
        }
        None => extra.push_ip(&X_FORWARDED_FOR, peer),
    }
    if !trusted || !headers.contains_key(&X_FORWARDED_PROTO) {
        extra.push(&X_FORWARDED_PROTO, &HTTP);
    }
    if !trusted || !headers.contains_key(&X_FORWARDED_HOST) {
        match headers.get(header::HOST) {
            Some(host) => extra.push(&X_FORWARDED_HOST, host),
            None => {
                headers.remove(&X_FORWARDED_HOST);
            }
        }
    }
}

/// The client's address: the peer, or with `TRUST_FORWARDED` the last address a trusted proxy
/// added to `X-Forwarded-For`.
pub fn client_ip(headers: &HeaderMap, peer: IpAddr, trusted: bool) -> IpAddr {
    if trusted {
        // Only the entry the trusted proxy appended: earlier ones are whatever the client sent.
        let last = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|ip| ip.trim().parse::<IpAddr>().ok());
        if let Some(ip) = last {
            return ip;
        }
    }
    peer
}

/// Why the gateway itself refused a request (a response extension, for the route's metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Unauthenticated,
    Forbidden,
    RateLimited,
    /// Validation failed or the body is too large.
    Invalid,
}

fn refused(why: Refused, status: StatusCode, code: &'static str, message: &str) -> Response<EdgeBody> {
    let mut response = error(status, code, message);
    response.extensions_mut().insert(why);
    response
}

fn unauthorized(err: &AuthError) -> Response<EdgeBody> {
    let mut response = refused(Refused::Unauthenticated, StatusCode::UNAUTHORIZED, "unauthenticated", err.message());
    let challenge = match err {
        AuthError::Missing => HeaderValue::from_static("Bearer realm=\"reskflow\""),
        AuthError::Invalid(_) => HeaderValue::from_static("Bearer realm=\"reskflow\", error=\"invalid_token\""),
    };
    response.headers_mut().insert(header::WWW_AUTHENTICATE, challenge);
    response
}

/// A JSON error in the REST API's shape: `{"error": {"code", "message"}}`.
pub fn error(status: StatusCode, code: &'static str, message: &str) -> Response<EdgeBody> {
    let body = crate::error::ApiError::new(status, code, message).to_json();
    let mut response = Response::new(Either::Left(Either::Right(Full::new(Bytes::from(body)))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_endpoint_is_served_by_the_management_api_not_proxied() {
        let doc = crate::openapi_document();
        let paths = doc["paths"].as_object().expect("the document has paths");
        assert!(paths.len() >= 25, "{} paths", paths.len());
        for path in paths.keys() {
            let concrete: String =
                path.split('/').map(|s| if s.starts_with('{') { "x" } else { s }).collect::<Vec<_>>().join("/");
            assert!(is_management(&concrete), "{path} is documented but the front door would proxy it");
        }
    }

    #[test]
    fn management_paths_take_precedence() {
        assert!(is_management("/api/registry"));
        assert!(is_management("/api/registry/services/x"));
        assert!(is_management("/api/gateway/routes"));
        assert!(is_management("/health"));
        assert!(!is_management("/api/registryx"));
        assert!(!is_management("/api/orders/1"));
        assert!(!is_management("/healthz"));
    }

    #[test]
    fn forwarded_for_is_appended_only_when_trusted() {
        let peer: IpAddr = "10.0.0.9".parse().expect("ip");
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("1.2.3.4"));
        h.insert(header::HOST, HeaderValue::from_static("shop.example"));
        let forward = |h: &mut HeaderMap, trusted: bool| {
            let mut extra = Fields::default();
            forwarded_headers(h, &mut extra, peer, trusted);
            extra.apply_to(h);
        };
        let mut untrusted = h.clone();
        forward(&mut untrusted, false);
        assert_eq!(untrusted.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["10.0.0.9"]);
        assert_eq!(untrusted[&X_FORWARDED_HOST], "shop.example");
        assert_eq!(untrusted[&X_FORWARDED_PROTO], "http");
        assert_eq!(client_ip(&h, peer, false), peer);
        let mut two_lines = h.clone();
        two_lines.append(X_FORWARDED_FOR, HeaderValue::from_static("5.6.7.8"));
        two_lines.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        forward(&mut h, true);
        assert_eq!(h[&X_FORWARDED_FOR], "1.2.3.4, 10.0.0.9");
        assert_eq!(client_ip(&h, peer, true), peer);
        // Every line of a trusted chain is kept, in order, in one value; what the proxy said stays.
        assert_eq!(client_ip(&two_lines, peer, true), "5.6.7.8".parse::<IpAddr>().expect("ip"));
        forward(&mut two_lines, true);
        assert_eq!(two_lines.get_all(&X_FORWARDED_FOR).iter().collect::<Vec<_>>(), ["1.2.3.4, 5.6.7.8, 10.0.0.9"]);
        assert_eq!(two_lines[&X_FORWARDED_PROTO], "https");
        let mut only_lb = HeaderMap::new();
        only_lb.insert(X_FORWARDED_FOR, HeaderValue::from_static("7.7.7.7"));
        assert_eq!(client_ip(&only_lb, peer, true), "7.7.7.7".parse::<IpAddr>().expect("ip"));
    }
}
