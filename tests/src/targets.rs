//! Real services for the registry to check: an HTTP server whose health answer can be switched, a
//! TCP listener that can be closed and reopened on its port, and a gRPC server with the standard
//! health service.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// An HTTP service whose `/health` answers the status code it is told to.
pub struct HttpTarget {
    pub addr: SocketAddr,
    health: Arc<AtomicU16>,
    task: JoinHandle<()>,
}

impl HttpTarget {
    pub async fn start() -> HttpTarget {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let health = Arc::new(AtomicU16::new(200));
        let app = Router::new()
            .route(
                "/health",
                get(|State(code): State<Arc<AtomicU16>>| async move {
                    StatusCode::from_u16(code.load(Ordering::Relaxed)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                }),
            )
            .with_state(health.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        HttpTarget { addr, health, task }
    }

    /// From now on `/health` answers `code`.
    pub fn answer(&self, code: u16) {
        self.health.store(code, Ordering::Relaxed);
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for HttpTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A TCP port that accepts connections while open.
pub struct TcpTarget {
    pub port: u16,
    listener: Option<std::net::TcpListener>,
}

impl TcpTarget {
    pub fn start() -> TcpTarget {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        TcpTarget { port, listener: Some(listener) }
    }

    /// Stops accepting: connects are refused.
    pub fn close(&mut self) {
        self.listener = None;
    }

    /// Listens on the same port again.
    pub fn reopen(&mut self) {
        self.listener = Some(std::net::TcpListener::bind(("127.0.0.1", self.port)).expect("rebind the same port"));
    }
}

/// A gRPC server serving only `grpc.health.v1.Health`.
pub struct GrpcTarget {
    pub port: u16,
    reporter: tonic_health::server::HealthReporter,
    task: JoinHandle<()>,
}

impl GrpcTarget {
    pub async fn start(service: &str) -> GrpcTarget {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_service_status(service, tonic_health::ServingStatus::Serving).await;
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder().add_service(health).serve_with_incoming(incoming).await;
        });
        GrpcTarget { port, reporter, task }
    }

    pub async fn set_serving(&self, service: &str, serving: bool) {
        let status =
            if serving { tonic_health::ServingStatus::Serving } else { tonic_health::ServingStatus::NotServing };
        self.reporter.set_service_status(service, status).await;
    }
}

impl Drop for GrpcTarget {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A service with `POST /actions/{action}` that records every call (action, `Idempotency-Key`,
/// body), can be told to fail an action a number of times with a status, and can delay answers.
#[derive(Clone, Default)]
pub struct ActionService {
    pub port: u16,
    state: Arc<ActionState>,
}

#[derive(Default)]
struct ActionState {
    calls: std::sync::Mutex<Vec<(String, String, serde_json::Value)>>,
    failures: std::sync::Mutex<std::collections::HashMap<String, (u32, u16)>>,
    delay_ms: std::sync::atomic::AtomicU64,
}

impl ActionService {
    pub async fn start() -> ActionService {
        use axum::extract::Path;
        use axum::http::HeaderMap;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state = Arc::new(ActionState::default());
        let app = Router::new()
            .route(
                "/actions/{action}",
                axum::routing::post(
                    |State(s): State<Arc<ActionState>>,
                     Path(action): Path<String>,
                     headers: HeaderMap,
                     axum::Json(body): axum::Json<serde_json::Value>| async move {
                        let key =
                            headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                        let delay = s.delay_ms.load(Ordering::Relaxed);
                        if delay > 0 {
                            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                        }
                        s.calls.lock().unwrap_or_else(|e| e.into_inner()).push((action.clone(), key, body.clone()));
                        let mut failures = s.failures.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some((left, status)) = failures.get_mut(&action) {
                            if *left > 0 {
                                *left -= 1;
                                let code = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                                return (code, axum::Json(serde_json::json!({"error": "injected"})));
                            }
                        }
                        (
                            StatusCode::OK,
                            axum::Json(
                                serde_json::json!({"action": action, "id": format!("{action}-ok"), "echo": body}),
                            ),
                        )
                    },
                ),
            )
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        ActionService { port, state }
    }

    /// Every call so far: (action, idempotency key, body).
    pub fn calls(&self) -> Vec<(String, String, serde_json::Value)> {
        self.state.calls.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `action` answers `status` the next `times` calls.
    pub fn fail(&self, action: &str, times: u32, status: u16) {
        self.state.failures.lock().unwrap_or_else(|e| e.into_inner()).insert(action.to_string(), (times, status));
    }

    /// Every answer waits this long.
    pub fn delay(&self, ms: u64) {
        self.state.delay_ms.store(ms, Ordering::Relaxed);
    }
}

/// An HTTP backend for proxy tests: answers every request with JSON naming itself and the path it
/// saw, failing a chosen share of requests with 500. `kill` closes the listener and every open
/// connection, as a crashed process would.
pub struct EchoBackend {
    pub name: String,
    pub port: u16,
    fail_per_10: Arc<std::sync::atomic::AtomicU32>,
    served: Arc<std::sync::atomic::AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl EchoBackend {
    pub async fn start(name: &str) -> EchoBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let mut backend = EchoBackend {
            name: name.to_string(),
            port,
            fail_per_10: Arc::default(),
            served: Arc::default(),
            task: None,
        };
        backend.task = Some(tokio::spawn(Self::serve(
            listener,
            name.to_string(),
            backend.fail_per_10.clone(),
            backend.served.clone(),
        )));
        backend
    }

    async fn serve(
        listener: TcpListener,
        name: String,
        fail_per_10: Arc<std::sync::atomic::AtomicU32>,
        served: Arc<std::sync::atomic::AtomicU64>,
    ) {
        use http_body_util::Full;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        // Connections live in this set: aborting the task closes them all.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (name, fail, served) = (name.clone(), fail_per_10.clone(), served.clone());
            let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let n = served.fetch_add(1, Ordering::Relaxed);
                let failing = (n % 10) < u64::from(fail.load(Ordering::Relaxed));
                let name = name.clone();
                async move {
                    use http_body_util::BodyExt;
                    let (parts, body) = req.into_parts();
                    let headers: serde_json::Map<String, serde_json::Value> =
                        parts.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into())).collect();
                    // Names sent more than once (a proxy that sets a header must replace, not add).
                    let repeated: Vec<String> = parts
                        .headers
                        .keys()
                        .filter(|k| parts.headers.get_all(*k).iter().count() > 1)
                        .map(|k| k.to_string())
                        .collect();
                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                    let body = serde_json::json!({
                        "backend": name, "method": parts.method.as_str(),
                        "repeated": repeated,
                        "path": parts.uri.path_and_query().map(|p| p.to_string()),
                        "traceparent": parts.headers.get("traceparent").and_then(|v| v.to_str().ok()),
                        "headers": headers,
                        "body": String::from_utf8_lossy(&body),
                        "bodyBytes": body.len(),
                    });
                    let status = if failing { 500 } else { 200 };
                    // `?delay-ms=N` answers after N ms; `?cache-control=V` sends that Cache-Control.
                    let query: Vec<(String, String)> = parts
                        .uri
                        .query()
                        .unwrap_or("")
                        .split('&')
                        .filter_map(|kv| kv.split_once('='))
                        .map(|(k, v)| (k.to_string(), v.replace("%20", " ").replace("%3D", "=")))
                        .collect();
                    let param = |name: &str| query.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                    if let Some(ms) = param("delay-ms").and_then(|v| v.parse::<u64>().ok()) {
                        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    }
                    // `?bytes=N` answers N bytes `x` with a Content-Length; `?stream-bytes=N` the
                    // same in 4 KiB chunks without one (chunked).
                    let bytes_param = |name: &str| param(name).and_then(|v| v.parse::<usize>().ok());
                    let body = if let Some(n) = bytes_param("bytes") {
                        http_body_util::Either::Left(Full::new(bytes::Bytes::from(vec![b'x'; n])))
                    } else if let Some(n) = bytes_param("stream-bytes") {
                        let chunks = (0..n.div_ceil(4096)).map(move |i| {
                            let len = (n - i * 4096).min(4096);
                            Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(bytes::Bytes::from(vec![
                                b'x';
                                len
                            ])))
                        });
                        http_body_util::Either::Right(http_body_util::StreamBody::new(futures::stream::iter(chunks)))
                    } else {
                        http_body_util::Either::Left(Full::new(bytes::Bytes::from(body.to_string())))
                    };
                    let mut response = hyper::Response::new(body);
                    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::OK);
                    response
                        .headers_mut()
                        .insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
                    if let Some(cc) = param("cache-control").and_then(|v| hyper::header::HeaderValue::from_str(&v).ok())
                    {
                        response.headers_mut().insert("cache-control", cc);
                    }
                    // `?answer-header=name:value` (repeatable) adds that field to the answer.
                    for (_, field) in query.iter().filter(|(k, _)| k == "answer-header") {
                        if let Some((name, value)) = field.split_once(':') {
                            if let (Ok(name), Ok(value)) = (
                                hyper::header::HeaderName::from_bytes(name.as_bytes()),
                                hyper::header::HeaderValue::from_str(value),
                            ) {
                                response.headers_mut().append(name, value);
                            }
                        }
                    }
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            connections.spawn(async move {
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
            while connections.try_join_next().is_some() {}
        }
    }

    /// From now on `n` requests in 10 answer 500.
    pub fn fail_per_10(&self, n: u32) {
        self.fail_per_10.store(n.min(10), Ordering::Relaxed);
    }

    pub fn served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Closes the port and every connection.
    pub fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.kill();
    }
}
