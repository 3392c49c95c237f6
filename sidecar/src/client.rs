//! HTTP/1.1 connections to endpoints, pooled per endpoint (the pool lives on the `Endpoint`, so it
//! survives config versions that keep the instance). A request takes an idle connection (most
//! recently used first) or opens one; the connection goes back to the pool when the response body
//! has been read to its end, from inside the body itself: no task is spawned and no lookup by host
//! is made per request, unlike a general-purpose client.
//!
//! A request that hyper hands back unsent (a pooled connection the server had closed meanwhile) is
//! sent again on another connection; a request that may have reached the server is not: whether to
//! retry it is the proxy's decision (its retry policy and budget).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response};
use http_body_util::{Either, Full, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use crate::balance::Endpoint;
use crate::clock;

/// What the data plane sends upstream: the caller's body streamed through (within a size limit:
/// the gateway's per-route limit, none in the sidecar), or bytes it built (an empty body for a
/// retried request, a validated or transformed one in the gateway).
pub type RequestBody = Either<Limited<Incoming>, Full<Bytes>>;

/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 256;
/// An idle connection unused this long is closed rather than reused (servers close theirs too).
const IDLE_TIMEOUT_MS: u64 = 60_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    sender: SendRequest<RequestBody>,
    since_ms: u64,
}

impl Pool {
    fn take(&self, now_ms: u64) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(conn) = idle.pop() {
            if conn.sender.is_closed() || now_ms.saturating_sub(conn.since_ms) > IDLE_TIMEOUT_MS {
                continue;
            }
            return Some(conn.sender);
        }
        None
    }

    fn put(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let now_ms = clock::now_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest sit at the bottom: close those that idled too long, and keep the pool bounded.
        let stale = idle.iter().take_while(|c| now_ms.saturating_sub(c.since_ms) > IDLE_TIMEOUT_MS).count();
        let over = (idle.len() + 1).saturating_sub(MAX_IDLE);
        idle.drain(..stale.max(over));
        idle.push(Idle { sender, since_ms: now_ms });
    }

    /// Idle connections (for the admin port).
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("connect to {0}: timed out")]
    ConnectTimeout(String),
    #[error(transparent)]
    Http(#[from] hyper::Error),
}

/// Sends `req` (origin-form URI) to `endpoint` over HTTP/1.1 and returns the response head; its
/// body hands the connection back to the endpoint's pool once read to the end.
pub async fn send(endpoint: &Arc<Endpoint>, mut req: Request<RequestBody>) -> Result<Response<PooledBody>, SendError> {
    if let Some(host) = &endpoint.host_header {
        req.headers_mut().insert(header::HOST, host.clone());
    } else if let Ok(host) = HeaderValue::from_str(&endpoint.authority) {
        req.headers_mut().insert(header::HOST, host);
    }
    loop {
        let (mut sender, pooled) = match endpoint.pool.take(clock::now_ms()) {
            Some(sender) => (sender, true),
            None => (connect(endpoint).await?, false),
        };
        if !sender.is_ready() {
            // Just released: the connection's task has not yet asked for the next request.
            if sender.ready().await.is_err() {
                continue;
            }
        }
        match sender.try_send_request(req).await {
            Ok(response) => {
                let (head, body) = response.into_parts();
                let mut body = PooledBody { inner: body, back: Some((sender, endpoint.clone())) };
                if body.inner.is_end_stream() {
                    body.release();
                }
                return Ok(Response::from_parts(head, body));
            }
            Err(mut err) => match err.take_message() {
                // Never written: safe to send again, on another connection.
                Some(unsent) if pooled => {
                    debug!(endpoint = %endpoint.spec.id, "pooled connection was closed; sending on another");
                    req = unsent;
                }
                _ => return Err(SendError::Http(err.into_error())),
            },
        }
    }
}

async fn connect(endpoint: &Endpoint) -> Result<SendRequest<RequestBody>, SendError> {
    let addr = (endpoint.spec.address.as_str(), endpoint.spec.port);
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return Err(SendError::Connect(endpoint.authority.clone(), err)),
        Err(_) => return Err(SendError::ConnectTimeout(endpoint.authority.clone())),
    };
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new().handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            debug!(error = %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

/// A response body that returns its connection to the pool when it ends. Dropped before its end
/// (the caller went away, an error), the connection is closed instead: what is left of the
/// response would have to be read first.
pub struct PooledBody {
    inner: Incoming,
    back: Option<(SendRequest<RequestBody>, Arc<Endpoint>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, endpoint)) = self.back.take() {
            endpoint.pool.put(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.back = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}
