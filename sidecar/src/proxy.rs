//! The outbound proxy: the application calls `http://<outbound>/<service>/<path>` (or sends
//! `Host: <service>`), and the request goes to an instance of that service. Per request, top to
//! bottom: route to an upstream, ask its breaker (open: fallback or 503), pick an endpoint with its
//! balancer, send with a per-try timeout (HTTP/1.1, or HTTP/2 for HTTP/2 callers such as gRPC;
//! bodies stream both ways), feed the outcome to the endpoint's latency EWMA, outlier detection and
//! the breaker, and retry safe bodiless requests within the retry budget.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use reskflow_proto::policy::{FailureKind, Fallback};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::balance::PickContext;
use crate::breaker::{Outcome, Rejected};
use crate::client::{self, PooledBody, RequestBody};
use crate::clock;
use crate::fields::{Fields, Hop, HOPS};
use crate::health::outlier;
use crate::server::{serve_http, Answer, Handler, Inbound, ServeLimits};
use crate::upstreams::{Upstream, Upstreams};

/// An upstream's response body: HTTP/1.1 from the endpoint's pool, or HTTP/2.
pub type UpstreamBody = Either<PooledBody, Incoming>;
/// What the proxy answers: the upstream's body streamed through, or one it made (errors, fallbacks).
pub type ProxyBody = Either<UpstreamBody, Full<Bytes>>;

/// Set on responses the data plane made instead of the upstream (a response extension), so the
/// gateway can count them per route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The breaker refused the call (the response is the fallback or a 503).
    BreakerOpen,
    NoEndpoint,
    /// Connect error or reset.
    UpstreamError,
    Timeout,
}

#[derive(Debug, thiserror::Error)]
enum SendFailure {
    #[error(transparent)]
    Http1(client::SendError),
    #[error(transparent)]
    Legacy(hyper_util::client::legacy::Error),
    #[error("the endpoint's address is not a valid URI authority")]
    Authority,
    #[error("the upstream did not answer in time")]
    Timeout,
}

const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-reskflow-fallback");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

pub struct Proxy {
    upstreams: Arc<Upstreams>,
    /// Where requests that name no upstream go (path unchanged); empty: nowhere (404).
    default_upstream: String,
    /// HTTP/2 (gRPC) upstreams; HTTP/1.1 goes through each endpoint's own pool (`client`).
    http2: Client<HttpConnector, RequestBody>,
}

impl Handler for Proxy {
    type Body = ProxyBody;
    type Output = Answer<ProxyBody>;

    fn call(
        &self,
        req: Request<Inbound>,
        _peer: std::net::SocketAddr,
    ) -> impl Future<Output = Answer<ProxyBody>> + Send + '_ {
        self.handle(req)
    }
}

impl Proxy {
    pub fn new(upstreams: Arc<Upstreams>, default_upstream: String) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let http2 = Client::builder(TokioExecutor::new()).http2_only(true).build(connector);
        Proxy { upstreams, default_upstream, http2 }
    }

    /// Serves the outbound port until `shutdown`, then lets open requests finish (bounded).
    pub async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        serve_http(listener, shutdown, ServeLimits::default(), self).await;
    }

    pub async fn handle(&self, req: Request<Inbound>) -> Answer<ProxyBody> {
        let (upstream, path) = match route(&req, &self.upstreams, &self.default_upstream) {
            Route::To(upstream, path) => (upstream, path),
            Route::Unknown(service) => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the sidecar has no config for this service (is it in UPSTREAMS and registered?)",
                    &service,
                    None,
                )
                .into()
            }
            Route::Nowhere => {
                return json_error(
                    StatusCode::NOT_FOUND,
                    "no upstream named by the Host header or the first path segment",
                    "",
                    None,
                )
                .into()
            }
        };
        let (mut parts, body) = req.into_parts();
        // HTTP/1.1 upstreams get the endpoint's Host from the client, which never copies the
        // caller's; an HTTP/2 request carries its own.
        if parts.version == Version::HTTP_2 {
            parts.headers.remove(header::HOST);
        }
        let body = Either::Left(Limited::new(body, usize::MAX));
        self.call(&upstream, Request::from_parts(parts, body), path.as_deref(), None).await
    }

    /// Calls `upstream` with `req` (its path replaced by `path` when given): asks the breaker (open:
    /// the fallback, or 503 naming the open circuit), sends to an endpoint picked by the balancer
    /// (retrying when the policy and the budget allow), and records the outcome. The request's
    /// `Host` is set to the endpoint's. `timeout` overrides the policy's per-try timeout.
    ///
    /// (A plain function returning [`Proxy::call_with`]'s future: an async wrapper would nest that
    /// future in its own and copy it.)
    pub fn call<'a>(
        &'a self,
        upstream: &'a Upstream,
        req: Request<RequestBody>,
        path: Option<&'a str>,
        timeout: Option<Duration>,
    ) -> impl std::future::Future<Output = Answer<ProxyBody>> + Send + 'a {
        self.call_with(upstream, req, path, timeout, Fields::default())
    }

    /// [`Proxy::call`] with header fields to set on the request sent (see [`Fields`]: they replace
    /// the request's own of the same names without an insert into its header map). The answer's
    /// own fields (`X-Reskflow-Endpoint`) are in its [`Fields`]; `Answer::into_response` puts them
    /// in the map for a caller that reads the headers.
    pub async fn call_with(
        &self,
        upstream: &Upstream,
        req: Request<RequestBody>,
        path: Option<&str>,
        timeout: Option<Duration>,
        extra: Fields,
    ) -> Answer<ProxyBody> {
        upstream.stats.requests.fetch_add(1, Ordering::Relaxed);
        let started = clock::now_ns();
        let permit = match upstream.breaker.try_acquire_at(clock::ms(started)) {
            Ok(permit) => permit,
            Err(rejected) => {
                upstream.stats.breaker_rejections.fetch_add(1, Ordering::Relaxed);
                // Boxed, as are the traced path and HTTP/2: what few requests do stays out of the
                // state every request's future carries (and is copied with it).
                let mut answer = Box::pin(self.fallback(upstream, rejected, req, path, timeout, extra)).await;
                answer.response.extensions_mut().insert(Verdict::BreakerOpen);
                return answer;
            }
        };
        let (answer, outcome) = if reskflow_runtime::telemetry::enabled() {
            // Exporting spans: the call is a span of the caller's trace, and the upstream sees it as
            // its parent. (Without export no span is made: this is every request's path.)
            let mut req = req;
            let span = tracing::info_span!(
                "proxy",
                otel.name = format!("proxy {}", upstream.service),
                otel.kind = "client",
                http.request.method = %req.method(),
                http.response.status_code = tracing::field::Empty,
            );
            reskflow_runtime::telemetry::continue_trace(&span, req.headers());
            reskflow_runtime::telemetry::inject(&span, req.headers_mut());
            let forwarded =
                tracing::Instrument::instrument(self.forward(upstream, req, path, true, timeout, extra), span.clone());
            let (answer, outcome) = Box::pin(forwarded).await;
            span.record("http.response.status_code", answer.response.status().as_u16());
            (answer, outcome)
        } else {
            self.forward(upstream, req, path, true, timeout, extra).await
        };
        let ended = clock::now_ns();
        let elapsed = Duration::from_nanos(ended.saturating_sub(started));
        upstream.breaker.record_at(permit, outcome, elapsed, clock::ms(ended));
        answer
    }

    /// Sends the request to an endpoint of `upstream`, retrying when allowed; the response and the
    /// outcome the breaker records.
    async fn forward(
        &self,
        upstream: &Upstream,
        req: Request<RequestBody>,
        path: Option<&str>,
        retries: bool,
        timeout: Option<Duration>,
        mut extra: Fields,
    ) -> (Answer<ProxyBody>, Outcome) {
        let (mut parts, body) = req.into_parts();
        let traced = strip_hop_by_hop(&mut parts.headers);
        if !traced && !extra.replaces(&TRACEPARENT) {
            push_traceparent(&mut extra);
        }
        let policy = &upstream.policy;
        let retry = &policy.retry;
        let http2 = parts.version == Version::HTTP_2;
        if http2 {
            // The HTTP/2 client takes the request whole: the fields go into its map.
            std::mem::take(&mut extra).apply_to(&mut parts.headers);
        }
        // Only a request without a body can be sent again as it was.
        let replayable = retries && body.is_end_stream() && is_safe(&parts.method, &parts.headers);
        let attempts = if replayable { retry.max_attempts.max(1) } else { 1 };
        if replayable {
            upstream.budget.deposit(clock::now_ms());
        }
        let per_try = timeout.or(retry.per_try_timeout).unwrap_or_else(|| policy.timeout());
        let hash_key = policy
            .load_balancer
            .hash_header
            .as_ref()
            .and_then(|h| extra.get(h).or_else(|| parts.headers.get(h.as_str()).map(HeaderValue::as_bytes)))
            .map(<[u8]>::to_vec);
        // The gateway passes the request's own path when no rewrite applies: kept, not parsed again.
        let unchanged = path.and_then(|p| parts.uri.path_and_query().filter(|pq| pq.as_str() == p).cloned());
        let path_and_query = match (unchanged, path) {
            (Some(pq), _) => pq,
            (None, Some(p)) => match PathAndQuery::try_from(p) {
                Ok(pq) => pq,
                Err(_) => {
                    let response = json_error(
                        StatusCode::BAD_REQUEST,
                        "the request path is not a valid URI",
                        &upstream.service,
                        None,
                    );
                    return (response.into(), Outcome::Success);
                }
            },
            (None, None) => parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")),
        };
        if !http2 {
            parts.uri = Uri::from(path_and_query.clone());
        }
        let mut body = Some(body);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let started = clock::now_ns();
            let pick = PickContext { hash_key: hash_key.as_deref(), now_ms: clock::ms(started) };
            let Some(endpoint) = upstream.balancer.pick(pick).cloned() else {
                upstream.stats.no_endpoint.fetch_add(1, Ordering::Relaxed);
                let mut response =
                    json_error(StatusCode::SERVICE_UNAVAILABLE, "no healthy endpoint", &upstream.service, None);
                response.extensions_mut().insert(Verdict::NoEndpoint);
                return (response.into(), Outcome::Failure(FailureKind::ConnectError));
            };
            endpoint.start();
            let body = match body.take() {
                Some(b) if !replayable => b,
                _ => Either::Right(Full::new(Bytes::new())),
            };
            let result = if http2 {
                // A request sent once takes the headers; one that may be retried keeps a copy.
                let headers = if replayable { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
                let sent = self.send_http2(&endpoint, &parts.method, &path_and_query, headers, body);
                // Boxed: what few requests do stays out of the state every request's future carries.
                match Box::pin(tokio::time::timeout(per_try, sent)).await {
                    Ok(result) => result,
                    Err(_) => Err(SendFailure::Timeout),
                }
            } else {
                // HTTP/1.1 goes out in origin form on a pooled connection; the head is only read, so
                // a retry sends it again without a copy. The answer's fields come as text, hop-by-hop
                // ones left out; the client keeps the per-try timer with the connection.
                match client::send_parts(&endpoint, &parts, &extra, body, per_try).await {
                    Ok(answer) => Ok(answer.map(|b| Either::Left(Either::Left(b)))),
                    Err(client::SendError::Timeout) => Err(SendFailure::Timeout),
                    Err(err) => Err(SendFailure::Http1(err)),
                }
            };
            let ended = clock::now_ns();
            let done = clock::ms(ended);
            endpoint.finish(Duration::from_nanos(ended.saturating_sub(started)), done);
            let (answer, failure) = match &result {
                Ok(answer) if answer.response.status().is_server_error() => {
                    (outlier::Answer::Status(answer.response.status().as_u16()), Some(FailureKind::ServerError))
                }
                Ok(answer) if answer.response.status().is_client_error() => {
                    (outlier::Answer::Ok, Some(FailureKind::ClientError))
                }
                Ok(_) => (outlier::Answer::Ok, None),
                Err(SendFailure::Timeout) => (outlier::Answer::NoAnswer, Some(FailureKind::Timeout)),
                Err(_) => (outlier::Answer::NoAnswer, Some(FailureKind::ConnectError)),
            };
            if upstream.outlier.observe(&upstream.balancer, &endpoint, answer, done) {
                upstream.stats.ejections.fetch_add(1, Ordering::Relaxed);
            }
            let again = failure.is_some_and(|kind| kind != FailureKind::ClientError && retry.retry_on.contains(&kind))
                && attempt < attempts
                && upstream.budget.withdraw(done);
            if again {
                upstream.stats.retries.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let outcome = failure.map_or(Outcome::Success, Outcome::Failure);
            let answer = match result {
                Ok(mut answer) => {
                    upstream.stats.count_status(answer.response.status().as_u16());
                    // After the upstream's fields (with room for a gateway's after it).
                    answer.fields.extend(&endpoint.answer_fields);
                    answer
                }
                Err(SendFailure::Timeout) => {
                    upstream.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    let mut response = json_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream did not answer in time",
                        &upstream.service,
                        Some(&endpoint.spec.id),
                    );
                    response.extensions_mut().insert(Verdict::Timeout);
                    response.into()
                }
                Err(err) => {
                    upstream.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(endpoint = %endpoint.spec.id, error = %err, "upstream request failed");
                    let message = match err {
                        SendFailure::Authority => "the endpoint's address is not a valid URI authority",
                        _ => "upstream connect error or reset",
                    };
                    let mut response =
                        json_error(StatusCode::BAD_GATEWAY, message, &upstream.service, Some(&endpoint.spec.id));
                    response.extensions_mut().insert(Verdict::UpstreamError);
                    response.into()
                }
            };
            return (answer, outcome);
        }
    }

    /// One try over HTTP/2 (the full URI, the request whole, as the pooled HTTP/2 client takes it).
    async fn send_http2(
        &self,
        endpoint: &crate::balance::Endpoint,
        method: &Method,
        path_and_query: &PathAndQuery,
        headers: HeaderMap,
        body: RequestBody,
    ) -> Result<Answer<ProxyBody>, SendFailure> {
        let mut uri_parts = http::uri::Parts::default();
        uri_parts.scheme = endpoint.uri_scheme.clone();
        uri_parts.authority = endpoint.uri_authority.clone();
        uri_parts.path_and_query = Some(path_and_query.clone());
        let uri = Uri::from_parts(uri_parts).map_err(|_| SendFailure::Authority)?;
        let mut request = Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = Version::HTTP_2;
        *request.headers_mut() = headers;
        let mut response = self.http2.request(request).await.map_err(SendFailure::Legacy)?;
        strip_hop_by_hop(response.headers_mut());
        Ok(Answer::from(response.map(|b| Either::Left(Either::Right(b)))))
    }

    /// The breaker refused the call: the policy's fallback, or 503 naming the open circuit.
    async fn fallback(
        &self,
        upstream: &Upstream,
        rejected: Rejected,
        req: Request<RequestBody>,
        path: Option<&str>,
        timeout: Option<Duration>,
        extra: Fields,
    ) -> Answer<ProxyBody> {
        match &upstream.policy.fallback {
            Some(Fallback::Static { status, headers, body }) => {
                upstream.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
                *response.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
                let h = response.headers_mut();
                h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                for (name, value) in headers {
                    if let (Ok(n), Ok(v)) = (HeaderName::try_from(name.as_str()), HeaderValue::from_str(value)) {
                        h.insert(n, v);
                    }
                }
                h.insert(FALLBACK_HEADER, HeaderValue::from_static("static"));
                response.into()
            }
            Some(Fallback::Service { service_id }) => match self.upstreams.get(service_id) {
                Some(other) => {
                    upstream.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                    let (mut answer, _) = self.forward(&other, req, path, false, timeout, extra).await;
                    answer.fields.push_bytes(&FALLBACK_HEADER, service_id.as_bytes());
                    answer
                }
                None => breaker_open(upstream, rejected).into(),
            },
            None => breaker_open(upstream, rejected).into(),
        }
    }
}

fn breaker_open(upstream: &Upstream, rejected: Rejected) -> Response<ProxyBody> {
    let mut response = json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("circuit breaker {} is {}", upstream.service, rejected.state.as_str()),
        &upstream.service,
        None,
    );
    if let Some(after) = rejected.retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// Where a request goes.
enum Route {
    /// To this upstream, with this path (None: the request's, unchanged).
    To(Arc<Upstream>, Option<String>),
    /// The first path segment names a service this sidecar has no config for.
    Unknown(String),
    /// Nothing names a service and there is no default upstream.
    Nowhere,
}

/// Which upstream a request names: `Host: <service>[:port]`, else the first path segment (removed
/// from the path), else the default upstream. Each candidate is looked up once.
fn route(req: &Request<Inbound>, upstreams: &Upstreams, default: &str) -> Route {
    let host = req.uri().host().or_else(|| {
        req.headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| h.rsplit_once(':').map_or(h, |(name, _)| name))
    });
    if let Some(upstream) = host.and_then(|h| upstreams.get(h)) {
        return Route::To(upstream, None);
    }
    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let rest = path_and_query.strip_prefix('/').unwrap_or(path_and_query);
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let service = &rest[..end];
    if !service.is_empty() {
        if let Some(upstream) = upstreams.get(service) {
            let tail = &rest[end..];
            let path = if tail.starts_with('/') { tail.to_string() } else { format!("/{tail}") };
            return Route::To(upstream, Some(path));
        }
    }
    if !default.is_empty() {
        return match upstreams.get(default) {
            Some(upstream) => Route::To(upstream, None),
            None => Route::Unknown(default.to_string()),
        };
    }
    if service.is_empty() {
        Route::Nowhere
    } else {
        Route::Unknown(service.to_string())
    }
}

fn is_safe(method: &Method, headers: &HeaderMap) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) || headers.contains_key("idempotency-key")
}

/// Removes the hop-by-hop fields; whether the message carries a `traceparent` (noted on the same
/// pass over the names).
fn strip_hop_by_hop(headers: &mut HeaderMap) -> bool {
    // The hop-by-hop names (Hop::HOP_BY_HOP) go, with the names Connection lists and a TE other
    // than "trailers". One pass over the names finds which are there (most messages carry none,
    // or only `Connection: keep-alive`), so only those are looked up. Bit i: `HOPS[i]` is there.
    let mut present = 0u16;
    let mut traced = false;
    for name in headers.keys() {
        let name = name.as_str().as_bytes();
        match Hop::index(name) {
            Some(i) => present |= 1 << i,
            None => traced |= name == TRACEPARENT.as_str().as_bytes(),
        }
    }
    if present & (Hop::HOP_BY_HOP | Hop::Te.bits()) == 0 {
        return traced;
    }
    let connection = present & Hop::Connection.bits() != 0;
    // Headers named by Connection are hop-by-hop too.
    if connection {
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for token in first.iter().chain(&more).flat_map(|v| v.as_bytes().split(|b| *b == b',')) {
            let token = token.trim_ascii();
            // Those removed below anyway, and `close`, which names no field.
            let listed = token.is_empty() || token.eq_ignore_ascii_case(b"close") || Hop::is_in(token, Hop::HOP_BY_HOP);
            if !listed {
                if let Ok(name) = std::str::from_utf8(token) {
                    // A token that is not a header name names nothing to remove.
                    headers.remove(name);
                }
            }
        }
    }
    for (i, (name, _)) in HOPS.iter().enumerate() {
        if present & Hop::HOP_BY_HOP & 1 << i != 0 {
            headers.remove(*name);
        }
    }
    // `TE: trailers` is what gRPC needs end to end; any other TE is hop-by-hop.
    if present & Hop::Te.bits() != 0 && headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
    // (Connection may have named it.)
    traced && (!connection || headers.contains_key(&TRACEPARENT))
}

/// Two hex digits per byte value, for trace ids.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0; 2]; 256];
    let mut i = 0;
    while i < 256 {
        pairs[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    pairs
};

/// A new W3C trace context for a request that came without one (version 00, random trace and
/// parent ids, sampled) as `traceparent`'s value, written without formatting machinery: it is on
/// every such request's path.
fn new_traceparent() -> [u8; 55] {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let mut put = |at: usize, v: u64| {
        for (i, byte) in v.to_be_bytes().into_iter().enumerate() {
            buf[at + 2 * i..at + 2 * i + 2].copy_from_slice(&HEX_PAIRS[usize::from(byte)]);
        }
    };
    // Neither id may be all zeros: the trace id's low half and the parent id are never 0.
    put(3, fastrand::u64(..));
    put(19, fastrand::u64(1..));
    put(36, fastrand::u64(1..));
    buf
}

/// Pushes a new trace context as `traceparent`, written straight into the fields' text.
fn push_traceparent(fields: &mut Fields) {
    fields.push_valid(&TRACEPARENT, &new_traceparent());
}

pub fn json_error(status: StatusCode, error: &str, service: &str, endpoint: Option<&str>) -> Response<ProxyBody> {
    let mut body = serde_json::json!({ "error": error, "status": status.as_u16() });
    if !service.is_empty() {
        body["service"] = service.into();
    }
    if let Some(e) = endpoint {
        body["endpoint"] = e.into();
    }
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        headers
    }

    fn names(headers: &HeaderMap) -> Vec<&str> {
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        names
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_stripped() {
        let mut headers = map(&[
            ("connection", "keep-alive, X-Session"),
            ("connection", "close,x-other ,, not a name"),
            ("keep-alive", "timeout=5"),
            ("x-session", "1"),
            ("x-other", "2"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("trailer", "x-sum"),
            ("te", "gzip"),
            ("content-type", "application/json"),
            ("x-kept", "3"),
        ]);
        assert!(!strip_hop_by_hop(&mut headers), "no traceparent among them");
        assert_eq!(names(&headers), ["content-type", "x-kept"]);
    }

    #[test]
    fn a_traceparent_is_noticed_on_the_pass_over_the_names() {
        let mut headers = map(&[("connection", "close"), ("traceparent", "00-1-2-01"), ("x-other", "1")]);
        assert!(strip_hop_by_hop(&mut headers));
        assert_eq!(names(&headers), ["traceparent", "x-other"]);
        // Same length (11), another name.
        assert!(!strip_hop_by_hop(&mut map(&[("x-something", "1")])));
        // Named hop-by-hop by Connection: removed, so not there.
        assert!(!strip_hop_by_hop(&mut map(&[("connection", "traceparent"), ("traceparent", "00-1-2-01")])));
    }

    #[test]
    fn new_trace_contexts_are_well_formed_and_random() {
        let mut fields = Fields::default();
        push_traceparent(&mut fields);
        push_traceparent(&mut fields);
        let names: Vec<&[u8]> = fields.iter().map(|(name, _)| name).collect();
        assert_eq!(names, [b"traceparent", b"traceparent"]);
        let values: Vec<&[u8]> = fields.iter().map(|(_, value)| value).collect();
        assert_ne!(values[0], values[1]);
        for value in values {
            let text = std::str::from_utf8(value).expect("ascii");
            let parts: Vec<&str> = text.split('-').collect();
            assert_eq!(parts.len(), 4, "{text}");
            assert_eq!((parts[0], parts[3]), ("00", "01"), "{text}");
            assert_eq!((parts[1].len(), parts[2].len()), (32, 16), "{text}");
            for id in &parts[1..3] {
                assert!(id.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{text}");
                assert!(id.bytes().any(|c| c != b'0'), "an all-zero id is invalid: {text}");
            }
        }
    }

    #[test]
    fn te_trailers_passes_unless_connection_names_it() {
        let mut grpc = map(&[("te", "trailers"), ("content-type", "application/grpc")]);
        strip_hop_by_hop(&mut grpc);
        assert_eq!(names(&grpc), ["content-type", "te"]);
        let mut named = map(&[("connection", "TE"), ("te", "trailers")]);
        strip_hop_by_hop(&mut named);
        assert!(named.is_empty(), "{named:?}");
        let mut plain = map(&[("host", "x"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut plain);
        assert_eq!(names(&plain), ["accept", "host"]);
    }
}
