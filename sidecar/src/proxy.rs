//! The outbound proxy: the application calls `http://<outbound>/<service>/<path>` (or sends
//! `Host: <service>`), and the request goes to an instance of that service. Per request, top to
//! bottom: route to an upstream, ask its breaker (open: fallback or 503), pick an endpoint with its
//! balancer, send with a per-try timeout (HTTP/1.1, or HTTP/2 for HTTP/2 callers such as gRPC;
//! bodies stream both ways), feed the outcome to the endpoint's latency EWMA, outlier detection and
//! the breaker, and retry safe bodiless requests within the retry budget.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full, Limited};
use hyper::body::{Body, Incoming};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use reskflow_proto::policy::{FailureKind, Fallback};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::balance::PickContext;
use crate::breaker::{Outcome, Rejected};
use crate::client::{self, ExtraHeaders, PooledBody, RequestBody};
use crate::clock;
use crate::health::outlier::Answer;
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
}

/// Headers that belong to one connection, not to the request (RFC 9110 7.6.1).
const HOPS: usize = 6;
const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
];
const ENDPOINT_HEADER: HeaderName = HeaderName::from_static("x-reskflow-endpoint");
const FALLBACK_HEADER: HeaderName = HeaderName::from_static("x-reskflow-fallback");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

pub struct Proxy {
    upstreams: Arc<Upstreams>,
    /// Where requests that name no upstream go (path unchanged); empty: nowhere (404).
    default_upstream: String,
    /// HTTP/2 (gRPC) upstreams; HTTP/1.1 goes through each endpoint's own pool (`client`).
    http2: Client<HttpConnector, RequestBody>,
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
        serve_http(listener, shutdown, ServeLimits::default(), move |req, _| {
            let proxy = self.clone();
            async move { proxy.handle(req).await }
        })
        .await;
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let (upstream, path) = match route(&req, &self.upstreams, &self.default_upstream) {
            Route::To(upstream, path) => (upstream, path),
            Route::Unknown(service) => {
                return json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the sidecar has no config for this service (is it in UPSTREAMS and registered?)",
                    &service,
                    None,
                )
            }
            Route::Nowhere => {
                return json_error(
                    StatusCode::NOT_FOUND,
                    "no upstream named by the Host header or the first path segment",
                    "",
                    None,
                )
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
    ) -> impl std::future::Future<Output = Response<ProxyBody>> + Send + 'a {
        self.call_with(upstream, req, path, timeout, ExtraHeaders::default())
    }

    /// [`Proxy::call`] with headers to set on the request sent (see [`ExtraHeaders`]: they replace
    /// the request's own of the same names without an insert into its header map).
    pub async fn call_with(
        &self,
        upstream: &Upstream,
        req: Request<RequestBody>,
        path: Option<&str>,
        timeout: Option<Duration>,
        extra: ExtraHeaders,
    ) -> Response<ProxyBody> {
        upstream.stats.requests.fetch_add(1, Ordering::Relaxed);
        let now = clock::now_ms();
        let permit = match upstream.breaker.try_acquire_at(now) {
            Ok(permit) => permit,
            Err(rejected) => {
                upstream.stats.breaker_rejections.fetch_add(1, Ordering::Relaxed);
                // Boxed, as are the traced path and HTTP/2: what few requests do stays out of the
                // state every request's future carries (and is copied with it).
                let mut response = Box::pin(self.fallback(upstream, rejected, req, path, timeout, extra)).await;
                response.extensions_mut().insert(Verdict::BreakerOpen);
                return response;
            }
        };
        let started = clock::now_ns();
        let (response, outcome) = if reskflow_runtime::telemetry::enabled() {
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
            let (response, outcome) = Box::pin(forwarded).await;
            span.record("http.response.status_code", response.status().as_u16());
            (response, outcome)
        } else {
            self.forward(upstream, req, path, true, timeout, extra).await
        };
        let elapsed = Duration::from_nanos(clock::now_ns().saturating_sub(started));
        upstream.breaker.record_at(permit, outcome, elapsed, clock::now_ms());
        response
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
        mut extra: ExtraHeaders,
    ) -> (Response<ProxyBody>, Outcome) {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if !parts.headers.contains_key(&TRACEPARENT) && !extra.contains(&TRACEPARENT) {
            // With the caller's extra headers (the gateway's), beside them: their list is allocated
            // already. Alone (the sidecar's requests), into the map: one insert costs less than the
            // list's allocation.
            if extra.is_empty() {
                parts.headers.insert(TRACEPARENT, traceparent());
            } else {
                extra.push(TRACEPARENT, traceparent());
            }
        }
        let policy = &upstream.policy;
        let retry = &policy.retry;
        let http2 = parts.version == Version::HTTP_2;
        if http2 {
            // The HTTP/2 client takes the request whole: the headers go into its map.
            extra.apply_to(&mut parts.headers);
        }
        // Only a request without a body can be sent again as it was.
        let replayable = retries && body.is_end_stream() && is_safe(&parts.method, &parts.headers);
        let attempts = if replayable { retry.max_attempts.max(1) } else { 1 };
        let now = clock::now_ms();
        if replayable {
            upstream.budget.deposit(now);
        }
        let per_try = timeout.or(retry.per_try_timeout).unwrap_or_else(|| policy.timeout());
        let hash_key = policy
            .load_balancer
            .hash_header
            .as_ref()
            .and_then(|h| extra.get(h).or_else(|| parts.headers.get(h.as_str())).cloned());
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
                    return (response, Outcome::Success);
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
            let now = clock::now_ms();
            let pick = PickContext { hash_key: hash_key.as_ref().map(HeaderValue::as_bytes), now_ms: now };
            let Some(endpoint) = upstream.balancer.pick(pick).cloned() else {
                upstream.stats.no_endpoint.fetch_add(1, Ordering::Relaxed);
                let mut response =
                    json_error(StatusCode::SERVICE_UNAVAILABLE, "no healthy endpoint", &upstream.service, None);
                response.extensions_mut().insert(Verdict::NoEndpoint);
                return (response, Outcome::Failure(FailureKind::ConnectError));
            };
            endpoint.start();
            let started = clock::now_ns();
            let result = tokio::time::timeout(per_try, async {
                let body = match body.take() {
                    Some(b) if !replayable => b,
                    _ => Either::Right(Full::new(Bytes::new())),
                };
                if http2 {
                    // HTTP/2 needs the full URI, and the client takes the request whole.
                    let mut uri_parts = http::uri::Parts::default();
                    uri_parts.scheme = endpoint.uri_scheme.clone();
                    uri_parts.authority = endpoint.uri_authority.clone();
                    uri_parts.path_and_query = Some(path_and_query.clone());
                    let uri = Uri::from_parts(uri_parts).map_err(|_| SendFailure::Authority)?;
                    let mut request = Request::new(body);
                    *request.method_mut() = parts.method.clone();
                    *request.uri_mut() = uri;
                    *request.version_mut() = Version::HTTP_2;
                    // A request sent once takes the headers; one that may be retried keeps a copy.
                    *request.headers_mut() =
                        if replayable { parts.headers.clone() } else { std::mem::take(&mut parts.headers) };
                    let response = Box::pin(self.http2.request(request)).await.map_err(SendFailure::Legacy)?;
                    Ok::<_, SendFailure>(response.map(|b| Either::Left(Either::Right(b))))
                } else {
                    // HTTP/1.1 goes out in origin form on a pooled connection; the head is only
                    // read, so a retry sends it again without a copy.
                    let response =
                        client::send_parts(&endpoint, &parts, &extra, body).await.map_err(SendFailure::Http1)?;
                    Ok(response.map(|b| Either::Left(Either::Left(b))))
                }
            })
            .await;
            let done = clock::now_ms();
            endpoint.finish(Duration::from_nanos(clock::now_ns().saturating_sub(started)), done);
            let (answer, failure) = match &result {
                Ok(Ok(response)) if response.status().is_server_error() => {
                    (Answer::Status(response.status().as_u16()), Some(FailureKind::ServerError))
                }
                Ok(Ok(response)) if response.status().is_client_error() => (Answer::Ok, Some(FailureKind::ClientError)),
                Ok(Ok(_)) => (Answer::Ok, None),
                Ok(Err(_)) => (Answer::NoAnswer, Some(FailureKind::ConnectError)),
                Err(_) => (Answer::NoAnswer, Some(FailureKind::Timeout)),
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
            let response = match result {
                Ok(Ok(response)) => {
                    upstream.stats.count_status(response.status().as_u16());
                    let (mut head, body) = response.into_parts();
                    strip_hop_by_hop(&mut head.headers);
                    if let Some(v) = &endpoint.id_header {
                        head.headers.insert(ENDPOINT_HEADER, v.clone());
                    }
                    Response::from_parts(head, body)
                }
                Ok(Err(err)) => {
                    upstream.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(endpoint = %endpoint.spec.id, error = %err, "upstream request failed");
                    let message = match err {
                        SendFailure::Authority => "the endpoint's address is not a valid URI authority",
                        _ => "upstream connect error or reset",
                    };
                    let mut response =
                        json_error(StatusCode::BAD_GATEWAY, message, &upstream.service, Some(&endpoint.spec.id));
                    response.extensions_mut().insert(Verdict::UpstreamError);
                    response
                }
                Err(_) => {
                    upstream.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                    let mut response = json_error(
                        StatusCode::GATEWAY_TIMEOUT,
                        "upstream did not answer in time",
                        &upstream.service,
                        Some(&endpoint.spec.id),
                    );
                    response.extensions_mut().insert(Verdict::Timeout);
                    response
                }
            };
            return (response, outcome);
        }
    }

    /// The breaker refused the call: the policy's fallback, or 503 naming the open circuit.
    async fn fallback(
        &self,
        upstream: &Upstream,
        rejected: Rejected,
        req: Request<RequestBody>,
        path: Option<&str>,
        timeout: Option<Duration>,
        extra: ExtraHeaders,
    ) -> Response<ProxyBody> {
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
                response
            }
            Some(Fallback::Service { service_id }) => match self.upstreams.get(service_id) {
                Some(other) => {
                    upstream.stats.fallbacks.fetch_add(1, Ordering::Relaxed);
                    let (mut response, _) = self.forward(&other, req, path, false, timeout, extra).await;
                    if let Ok(v) = HeaderValue::from_str(service_id) {
                        response.headers_mut().insert(FALLBACK_HEADER, v);
                    }
                    response
                }
                None => breaker_open(upstream, rejected),
            },
            None => breaker_open(upstream, rejected),
        }
    }
}

/// Limits on what a client may send before its request is handled.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// A client that has not sent a whole request head within this is disconnected (slowloris).
    pub header_read_timeout: Duration,
    /// Largest request head (HTTP/1.1); larger ones get 431.
    pub max_header_bytes: usize,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits { header_read_timeout: Duration::from_secs(10), max_header_bytes: 64 * 1024 }
    }
}

/// Accepts HTTP/1.1 and HTTP/2 (prior knowledge) connections on `listener` and answers each request
/// with `handle(request, peer)`, until `shutdown`; then lets open requests finish (at most 10 s).
///
/// An HTTP/1.1 connection must send each request head within `limits.header_read_timeout` of the
/// moment the server is ready for it (accepted, or the previous answer sent): a client that trickles
/// a head (slowloris) or leaves a keep-alive connection idle that long is disconnected. One timer
/// per connection, re-armed only when it fires ([`Watched`]), enforces this; hyper's own header
/// timeout would arm and cancel a timer (a boxed sleep in the timer wheel) for every request.
pub async fn serve_http<F, Fut, B>(listener: TcpListener, shutdown: CancellationToken, limits: ServeLimits, handle: F)
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<B>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let handle = handle.clone();
        let activity = Arc::new(Activity::new());
        let seen = activity.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let open = Open::new(&seen);
            // Boxed once here: the connection keeps a pointer to the request's state rather than
            // moving the whole state machine into place on every request.
            let answer = Box::pin(handle(req, peer));
            answer.map(move |response| Ok::<_, Infallible>(response.map(|body| Tracked { body, open })))
        });
        let stream = Sniffed { io: stream, activity: activity.clone(), first: true };
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service).into_owned());
        let connection = Watched::new(connection, activity, limits.header_read_timeout);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                debug!(error = %err, "connection ended with an error");
            }
        });
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await;
}

/// What a connection's watchdog ([`Watched`]) needs to know: requests open on it (from the head
/// read to the answer's body sent or dropped) and when the last one ended.
struct Activity {
    open: AtomicU32,
    idle_since_ms: AtomicU64,
    /// HTTP/2 (seen in the connection's first bytes) has its own keep-alive and no head timeout:
    /// the watchdog stands down.
    http2: AtomicBool,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            open: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(clock::now_ms()),
            http2: AtomicBool::new(false),
        }
    }
}

/// One open request of a connection; dropped with the answer's body (or the handler, if the
/// connection ends first).
struct Open(Arc<Activity>);

impl Open {
    fn new(activity: &Arc<Activity>) -> Open {
        activity.open.fetch_add(1, Ordering::Relaxed);
        Open(activity.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.idle_since_ms.store(clock::now_ms(), Ordering::Relaxed);
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n";

pin_project_lite::pin_project! {
    /// A client connection that tells its watchdog whether it speaks HTTP/2 (its first bytes are the
    /// HTTP/2 preface): an HTTP/2 connection idle before its first request is not a slow head.
    struct Sniffed {
        #[pin]
        io: tokio::net::TcpStream,
        activity: Arc<Activity>,
        first: bool,
    }
}

impl tokio::io::AsyncRead for Sniffed {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.project();
        if !*this.first {
            return this.io.poll_read(cx, buf);
        }
        let before = buf.filled().len();
        std::task::ready!(this.io.poll_read(cx, buf))?;
        let read = &buf.filled()[before..];
        if !read.is_empty() {
            *this.first = false;
            let n = read.len().min(HTTP2_PREFACE.len());
            if read[..n] == HTTP2_PREFACE[..n] {
                this.activity.http2.store(true, Ordering::Relaxed);
            }
        }
        std::task::Poll::Ready(Ok(()))
    }
}

impl tokio::io::AsyncWrite for Sniffed {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// An answer's body, holding its request open until it is sent or dropped.
    struct Tracked<B> {
        #[pin]
        body: B,
        open: Open,
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// A connection with its head-read watchdog: one sleep, armed for the earliest moment the
    /// connection could have waited too long for a head, and polled only when armed anew or
    /// elapsed, so requests cost it nothing. When it fires: HTTP/2: the watchdog stops; requests
    /// open: re-armed a full timeout later; idle for the whole timeout: the connection is dropped
    /// (closed); idle for less: re-armed for the rest.
    struct Watched<C> {
        #[pin]
        connection: C,
        #[pin]
        sleep: tokio::time::Sleep,
        activity: Arc<Activity>,
        timeout: Duration,
        armed: bool,
        off: bool,
    }
}

impl<C> Watched<C> {
    fn new(connection: C, activity: Arc<Activity>, timeout: Duration) -> Watched<C> {
        Watched { connection, sleep: tokio::time::sleep(timeout), activity, timeout, armed: true, off: false }
    }
}

impl<C, E> std::future::Future for Watched<C>
where
    C: std::future::Future<Output = Result<(), E>>,
{
    type Output = Result<(), E>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let mut this = self.project();
        if let Poll::Ready(done) = this.connection.poll(cx) {
            return Poll::Ready(done);
        }
        if *this.off || !(*this.armed || this.sleep.is_elapsed()) {
            return Poll::Pending;
        }
        *this.armed = false;
        while this.sleep.as_mut().poll(cx).is_ready() {
            let activity = &**this.activity;
            if activity.http2.load(Ordering::Relaxed) {
                *this.off = true;
                return Poll::Pending;
            }
            let wait = if activity.open.load(Ordering::Relaxed) > 0 {
                *this.timeout
            } else {
                let idle = clock::now_ms().saturating_sub(activity.idle_since_ms.load(Ordering::Relaxed));
                let timeout_ms = u64::try_from(this.timeout.as_millis()).unwrap_or(u64::MAX);
                if idle >= timeout_ms {
                    debug!(timeout = ?this.timeout, "no request head in time: closing the connection");
                    return Poll::Ready(Ok(()));
                }
                Duration::from_millis(timeout_ms - idle)
            };
            this.sleep.as_mut().reset(tokio::time::Instant::now() + wait);
        }
        Poll::Pending
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
fn route(req: &Request<Incoming>, upstreams: &Upstreams, default: &str) -> Route {
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

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names finds which are there (most messages carry none, or only
    // `Connection: keep-alive`), so only those are looked up.
    let mut present = [false; HOPS];
    let mut te = false;
    for name in headers.keys() {
        // Hop-by-hop names are 2, 7, 10, 16 or 17 bytes long: most names are passed over on
        // their length alone.
        if !matches!(name.as_str().len(), 2 | 7 | 10 | 16 | 17) {
            continue;
        }
        match HOP_BY_HOP.iter().position(|h| h == name) {
            Some(i) => present[i] = true,
            None => te |= name == header::TE,
        }
    }
    // Headers named by Connection are hop-by-hop too (HOP_BY_HOP[0] is Connection).
    if present[0] {
        let mut values = headers.get_all(header::CONNECTION).iter();
        let first = values.next().cloned();
        let more: Vec<HeaderValue> = values.cloned().collect();
        for token in first.iter().chain(&more).flat_map(|v| v.as_bytes().split(|b| *b == b',')) {
            let token = token.trim_ascii();
            let listed = token.is_empty()
                || token.eq_ignore_ascii_case(b"close")
                || HOP_BY_HOP.iter().any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()));
            if !listed {
                if let Ok(name) = std::str::from_utf8(token) {
                    // A token that is not a header name names nothing to remove.
                    headers.remove(name);
                }
            }
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, here)| *here) {
        headers.remove(name);
    }
    // `TE: trailers` is what gRPC needs end to end; any other TE is hop-by-hop.
    if te && headers.get(header::TE).is_some_and(|v| v != "trailers") {
        headers.remove(header::TE);
    }
}

/// A new W3C trace context for a request that came without one (random trace and parent ids,
/// sampled), written without formatting machinery: it is on every such request's path.
fn traceparent() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-01";
    let mut put = |at: usize, v: u64| {
        for (i, byte) in v.to_be_bytes().into_iter().enumerate() {
            buf[at + 2 * i] = HEX[usize::from(byte >> 4)];
            buf[at + 2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
    };
    put(3, fastrand::u64(..));
    put(19, fastrand::u64(1..));
    put(36, fastrand::u64(1..));
    HeaderValue::from_bytes(&buf)
        .unwrap_or(HeaderValue::from_static("00-00000000000000000000000000000001-0000000000000001-01"))
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
        strip_hop_by_hop(&mut headers);
        assert_eq!(names(&headers), ["content-type", "x-kept"]);
    }

    #[test]
    fn new_trace_contexts_are_well_formed_and_random() {
        let a = traceparent();
        let b = traceparent();
        assert_ne!(a, b);
        for value in [a, b] {
            let text = value.to_str().expect("ascii");
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

    mod head_timeout {
        use std::time::Duration;

        use bytes::Bytes;
        use http::{Request, Response};
        use http_body_util::StreamBody;
        use hyper::body::{Frame, Incoming};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::{TcpListener, TcpStream};
        use tokio_util::sync::CancellationToken;

        use super::super::{serve_http, ServeLimits};

        const TIMEOUT: Duration = Duration::from_millis(300);
        /// Far longer than TIMEOUT: how long a test waits for something that must happen.
        const PATIENCE: Duration = Duration::from_secs(10);

        type Streamed = StreamBody<futures::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>>;

        /// A server whose `/slow` answers after 3 timeouts, `/stream` sends its body over 3 timeouts,
        /// and anything else answers at once.
        async fn server() -> (String, CancellationToken) {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            let shutdown = CancellationToken::new();
            let limits = ServeLimits { header_read_timeout: TIMEOUT, ..ServeLimits::default() };
            tokio::spawn(serve_http(listener, shutdown.clone(), limits, |req: Request<Incoming>, _| async move {
                let body: Streamed = match req.uri().path() {
                    "/slow" => {
                        tokio::time::sleep(TIMEOUT * 3).await;
                        StreamBody::new(Box::pin(futures::stream::iter([Ok(Frame::data(Bytes::from("slow")))])))
                    }
                    "/stream" => StreamBody::new(Box::pin(futures::stream::unfold(0, |n| async move {
                        if n == 6 {
                            return None;
                        }
                        tokio::time::sleep(TIMEOUT / 2).await;
                        Some((Ok(Frame::data(Bytes::from("x"))), n + 1))
                    }))),
                    _ => StreamBody::new(Box::pin(futures::stream::iter([Ok(Frame::data(Bytes::from("ok")))]))),
                };
                Response::new(body)
            }));
            (addr, shutdown)
        }

        /// Sends one request on `stream` and reads its whole (chunked) answer.
        async fn exchange(stream: &mut TcpStream, path: &str) -> String {
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            stream.write_all(request.as_bytes()).await.expect("write");
            let mut answer = Vec::new();
            let mut buf = [0u8; 4096];
            while !answer.ends_with(b"0\r\n\r\n") {
                let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.expect("an answer").expect("read");
                assert!(n > 0, "closed before the answer ended: {}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&buf[..n]);
            }
            String::from_utf8_lossy(&answer).into_owned()
        }

        /// Whether the server closes `stream` (read reaches its end) within PATIENCE.
        async fn closed(stream: &mut TcpStream) -> bool {
            let mut rest = Vec::new();
            matches!(tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest)).await, Ok(Ok(_)))
        }

        #[tokio::test]
        async fn a_trickled_head_and_an_idle_keep_alive_connection_are_closed() {
            let (addr, _shutdown) = server().await;
            let mut slow = TcpStream::connect(&addr).await.expect("connect");
            slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.expect("write");
            for _ in 0..4 {
                tokio::time::sleep(TIMEOUT / 2).await;
                if slow.write_all(b"a").await.is_err() {
                    break;
                }
            }
            assert!(closed(&mut slow).await, "a head still unfinished after the timeout closes the connection");

            let mut idle = TcpStream::connect(&addr).await.expect("connect");
            assert!(exchange(&mut idle, "/").await.starts_with("HTTP/1.1 200"));
            assert!(closed(&mut idle).await, "no next request within the timeout closes the connection");
        }

        #[tokio::test]
        async fn an_http2_connection_idle_before_its_first_request_is_left_alone() {
            let (addr, _shutdown) = server().await;
            let mut h2 = TcpStream::connect(&addr).await.expect("connect");
            // The preface and an empty SETTINGS frame, then nothing.
            h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.expect("write");
            let until = tokio::time::Instant::now() + TIMEOUT * 4;
            let mut buf = [0u8; 1024];
            while let Ok(read) = tokio::time::timeout_at(until, h2.read(&mut buf)).await {
                assert!(matches!(read, Ok(n) if n > 0), "the server closed an HTTP/2 connection: {read:?}");
            }
        }

        #[tokio::test]
        async fn requests_longer_than_the_timeout_and_a_busy_connection_are_left_alone() {
            let (addr, _shutdown) = server().await;
            let mut conn = TcpStream::connect(&addr).await.expect("connect");
            let answer = exchange(&mut conn, "/slow").await;
            assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("slow"), "{answer}");
            let answer = exchange(&mut conn, "/stream").await;
            assert!(answer.starts_with("HTTP/1.1 200") && answer.matches("\r\nx\r\n").count() == 6, "{answer}");
            // Requests a third of the timeout apart for four timeouts, all on the same connection.
            for _ in 0..12 {
                tokio::time::sleep(TIMEOUT / 3).await;
                assert!(exchange(&mut conn, "/").await.starts_with("HTTP/1.1 200"));
            }
        }
    }
}
