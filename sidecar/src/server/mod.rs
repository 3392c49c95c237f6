//! The data plane's HTTP server (the sidecar's outbound port, the gateway's port): HTTP/1.1 served
//! by its own connection loop, HTTP/2 (recognised by its preface) handed to hyper.
//!
//! The HTTP/1.1 loop is what hyper's server does for one request at a time, without its dispatcher,
//! its request-body channel for bodiless requests and its per-request service call: a connection
//! task reads a head into its buffer (`httparse`; header values share the head's bytes), calls the
//! handler with a `Request<Inbound>`, and writes the answer's head and, when the body is already
//! there, its body with one `write`. The sidecar's user-space instructions per proxied request fell
//! by 11% with it, the gateway's by 8% (`bench/README.md`, "Own HTTP/1.1 server").
//!
//! What it keeps of HTTP/1.1: keep-alive (HTTP/1.1 by default, HTTP/1.0 on `Connection: keep-alive`)
//! and pipelined requests answered in order; bodies by `Content-Length` or chunked, both ways
//! (request bodies stream to the handler as it reads them; answers without a known length are sent
//! chunked, or to HTTP/1.0 clients delimited by the connection's close); `Expect: 100-continue`;
//! `HEAD`, 204 and 304 answered without a body; a `Date` on every answer. Request framing is read
//! strictly ([`parse`]); a refused head gets a JSON 400 or 431 and the connection closes. A request
//! body the handler left unread is drained (bounded) so the connection can be reused; otherwise the
//! connection closes after the answer. Not supported, as before: protocol upgrades (`Upgrade` is
//! hop-by-hop and never forwarded), `CONNECT` tunnels, trailers on HTTP/1.1 answers (dropped).

mod answer;
mod body;
pub mod parse;
#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::{Body, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::{CancellationToken, PollSender};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

pub use answer::{Answer, Fields};
use body::Piece;
pub use body::{Inbound, InboundError, Streamed};
use parse::{parse_head, Decoded, Decoder, Framing, Head, HeadError};

use crate::clock;

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

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What answers the server's requests. An HTTP/1.1 connection awaits `call`'s future in its own
/// task, borrowing the handler: no per-request `Arc` clone, and no wrapping future (which would
/// copy the handler's whole future, kilobytes for the gateway, once more per request).
pub trait Handler: Send + Sync + 'static {
    type Body: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;

    /// The answer: a `Response<Self::Body>` (`.into()`), or an [`Answer`] with fields for its head.
    type Output: Into<Answer<Self::Body>> + Send;

    fn call(&self, req: Request<Inbound>, peer: SocketAddr) -> impl Future<Output = Self::Output> + Send + '_;
}

/// A closure as a [`Handler`].
pub struct HandlerFn<F>(pub F);

impl<F, Fut, B> Handler for HandlerFn<F>
where
    F: Fn(Request<Inbound>, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<B>> + Send + 'static,
    B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type Body = B;
    type Output = Response<B>;

    fn call(&self, req: Request<Inbound>, peer: SocketAddr) -> impl Future<Output = Response<B>> + Send + '_ {
        (self.0)(req, peer)
    }
}

/// Answers up to this size (head and body) are gathered and written with one `write`.
const GATHER: usize = 64 * 1024;
/// The most an idle connection keeps of its answer buffer.
const WBUF_KEPT: usize = 16 * 1024;
/// A request body the handler did not read is read and dropped up to this much (and for at most
/// DRAIN_TIME) so the connection can take the next request; a longer one closes the connection.
const DRAIN_LIMIT: u64 = 256 * 1024;
const DRAIN_TIME: Duration = Duration::from_secs(1);
/// How long a closing connection reads what the client still sends (see `Connection::close`).
const LINGER: Duration = Duration::from_secs(2);
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Accepts HTTP/1.1 and HTTP/2 (prior knowledge) connections on `listener` and answers each request
/// with `handle(request, peer)`, until `shutdown`; then lets open requests finish (at most 10 s)
/// and closes idle connections.
///
/// An HTTP/1.1 connection must send each request head within `limits.header_read_timeout` of the
/// moment the server is ready for it (accepted, or the previous answer sent): a client that trickles
/// a head (slowloris) or leaves a keep-alive connection idle that long is disconnected. One timer
/// per connection, re-armed only when it fires ([`Watched`]), enforces this.
pub async fn serve_http<H: Handler>(
    listener: TcpListener,
    shutdown: CancellationToken,
    limits: ServeLimits,
    handler: Arc<H>,
) {
    let drain = Arc::new(Drain::default());
    let tracker = TaskTracker::new();
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
        let activity = Arc::new(Activity::new());
        let connection = Connection::new(stream, peer, limits, activity.clone(), drain.clone());
        let connection = Watched::new(connection.serve(handler.clone()), activity, limits.header_read_timeout);
        tracker.spawn(connection);
    }
    drain.start();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
}

/// Tells connections the server is shutting down: each registers once (at its start) for the
/// wake-up, then reads the flag where it would wait for a new request.
#[derive(Default)]
struct Drain {
    draining: AtomicBool,
    notify: Notify,
}

impl Drain {
    fn start(&self) {
        self.draining.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// What a connection's watchdog ([`Watched`]) needs to know: whether a request is open (from its
/// head read to its answer sent) and when the last one ended.
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

    fn opened(&self) {
        self.open.store(1, Ordering::Relaxed);
    }

    fn closed(&self) {
        self.idle_since_ms.store(clock::now_ms(), Ordering::Relaxed);
        self.open.store(0, Ordering::Relaxed);
    }
}

/// One client connection.
struct Connection {
    io: TcpStream,
    peer: SocketAddr,
    limits: ServeLimits,
    activity: Arc<Activity>,
    drain: Arc<Drain>,
    /// What was read and not yet used: the next head, a body's bytes, pipelined requests.
    rbuf: BytesMut,
    /// An answer's head (and small bodies) before it is written.
    wbuf: Vec<u8>,
}

/// Whether the body of the request being answered has been read to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyState {
    Done,
    /// The handler has not read it all (or stopped reading): drain it before the next request.
    Unread,
    /// It cannot be read to its end (malformed, or the client went away): close after the answer.
    Broken,
}

impl Connection {
    fn new(io: TcpStream, peer: SocketAddr, limits: ServeLimits, activity: Arc<Activity>, drain: Arc<Drain>) -> Self {
        Connection { io, peer, limits, activity, drain, rbuf: BytesMut::with_capacity(8 * 1024), wbuf: Vec::new() }
    }

    async fn serve<H: Handler>(mut self, handler: Arc<H>) -> Result<(), Infallible> {
        let drain = self.drain.clone();
        let mut stopping = pin!(drain.notify.notified());
        // Registered (with this task's waker) once: a shutdown wakes the task, which then finds
        // the flag set where it waits for a request.
        poll_fn(|cx| {
            let _ = stopping.as_mut().poll(cx);
            Poll::Ready(())
        })
        .await;
        // HTTP/2 with prior knowledge starts with its preface; anything else is HTTP/1.x.
        loop {
            let n = self.rbuf.len().min(HTTP2_PREFACE.len());
            if self.rbuf[..n] != HTTP2_PREFACE[..n] {
                break;
            }
            if n == HTTP2_PREFACE.len() {
                self.activity.http2.store(true, Ordering::Relaxed);
                let prefix = self.rbuf.split().freeze();
                serve_h2(Rewind { prefix, io: self.io }, self.peer, self.limits, handler, &drain).await;
                return Ok(());
            }
            if !self.read_more().await {
                return Ok(());
            }
        }
        while let Some(head) = self.next_head().await {
            self.activity.opened();
            let keep_alive = self.exchange(head, &*handler).await;
            self.activity.closed();
            if self.wbuf.capacity() > WBUF_KEPT {
                // A large answer's gathering buffer is not kept by an idle connection.
                self.wbuf = Vec::new();
            }
            if !keep_alive || drain.is_draining() {
                break;
            }
        }
        self.close().await;
        Ok(())
    }

    /// Closes the connection the way that lets the client read the last answer: our side first
    /// (FIN), then what the client still sends is read and dropped until it closes too (at most
    /// LINGER). Closing with unread data would reset the connection, and a reset can discard the
    /// answer before the client reads it.
    async fn close(&mut self) {
        if self.io.shutdown().await.is_err() {
            return;
        }
        let (io, rbuf) = (&mut self.io, &mut self.rbuf);
        let _ = tokio::time::timeout(LINGER, async {
            loop {
                rbuf.clear();
                if rbuf.capacity() < 8 * 1024 {
                    rbuf.reserve(8 * 1024);
                }
                if !matches!(io.read_buf(rbuf).await, Ok(n) if n > 0) {
                    break;
                }
            }
        })
        .await;
    }

    /// Reads into the buffer; false when the client closed the connection, the read failed, or the
    /// server is shutting down while no request has begun.
    async fn read_more(&mut self) -> bool {
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(8 * 1024);
        }
        let (io, rbuf, drain) = (&mut self.io, &mut self.rbuf, &self.drain);
        let read = poll_fn(|cx| {
            if rbuf.is_empty() && drain.is_draining() {
                return Poll::Ready(Ok(0));
            }
            tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, rbuf)
        })
        .await;
        matches!(read, Ok(n) if n > 0)
    }

    /// The next request head; None when the connection is to close (the client closed it, or sent
    /// a head that was refused: then it has had its 400/431).
    async fn next_head(&mut self) -> Option<Head> {
        loop {
            if !self.rbuf.is_empty() {
                match parse_head(&mut self.rbuf, self.limits.max_header_bytes) {
                    Ok(Some(head)) => return Some(head),
                    Ok(None) => {}
                    Err(err) => {
                        debug!(error = %err, peer = %self.peer, "refused a request head");
                        self.refuse(err).await;
                        return None;
                    }
                }
            }
            if !self.read_more().await {
                return None;
            }
        }
    }

    async fn refuse(&mut self, err: HeadError) {
        let status = StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
        let body = serde_json::json!({ "error": err.to_string(), "status": status.as_u16() }).to_string();
        self.wbuf.clear();
        put_status(&mut self.wbuf, status);
        self.wbuf.extend_from_slice(b"content-type: application/json\r\nconnection: close\r\n");
        put_date(&mut self.wbuf);
        put_length(&mut self.wbuf, body.len() as u64);
        self.wbuf.extend_from_slice(b"\r\n");
        self.wbuf.extend_from_slice(body.as_bytes());
        let _ = self.io.write_all(&self.wbuf).await;
    }

    /// One request and its answer; whether the connection may take another.
    async fn exchange<H: Handler>(&mut self, head: Head, handler: &H) -> bool {
        let Head { request, framing, keep_alive, expect_continue } = head;
        let ask = Asked {
            head: *request.method() == Method::HEAD,
            http10: request.version() == Version::HTTP_10,
            keep_alive,
            drain: &self.drain,
        };
        let mut decoder = Decoder::new(framing);
        let mut state = BodyState::Done;
        let mut pump = None;
        let body = match framing {
            Framing::Length(0) => Inbound::Empty,
            Framing::Length(n) if n <= self.rbuf.len() as u64 => {
                // The whole body came with the head.
                decoder = Decoder::Length(0);
                Inbound::Full(Some(self.rbuf.split_to(n as usize).freeze()))
            }
            _ => {
                if expect_continue && self.io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                    return false;
                }
                let (tx, rx) = mpsc::channel(1);
                state = BodyState::Unread;
                pump = Some(PollSender::new(tx));
                Inbound::Streamed(Streamed::new(rx, decoder.remaining()))
            }
        };
        let request = request.map(|()| body);
        let (io, rbuf, wbuf) = (&mut self.io, &mut self.rbuf, &mut self.wbuf);
        // The handler's future is made where it is awaited: held in a variable first, it was
        // copied whole (a few KiB for the gateway's) once more per request.
        let written = match pump {
            None => {
                let answer = handler.call(request, self.peer).await.into();
                respond(io, wbuf, answer, ask).await
            }
            Some(tx) => {
                // The handler runs while the body is read for it (as fast as it takes it), and
                // the answer is written while it is still read (a handler may answer first).
                let (mut rd, mut wr) = io.split();
                let mut pumping = Pumping { tx, decoder: &mut decoder, state: &mut state, active: true };
                let answer = pumping.alongside(handler.call(request, self.peer), &mut rd, rbuf).await.into();
                pumping.alongside(respond(&mut wr, wbuf, answer, ask), &mut rd, rbuf).await
            }
        };
        if written != Ok(true) {
            return false;
        }
        match state {
            BodyState::Done => true,
            BodyState::Broken => false,
            BodyState::Unread => self.drain_body(&mut decoder).await,
        }
    }

    /// Reads and drops the rest of a request body the handler did not read; whether it ended
    /// within the limits.
    async fn drain_body(&mut self, decoder: &mut Decoder) -> bool {
        let mut dropped = 0u64;
        let drained = tokio::time::timeout(DRAIN_TIME, async {
            loop {
                match decoder.decode(&mut self.rbuf) {
                    Ok(Decoded::End) => return true,
                    Ok(Decoded::Data(data)) => {
                        dropped += data.len() as u64;
                        if dropped > DRAIN_LIMIT {
                            return false;
                        }
                    }
                    Ok(Decoded::Need) => {
                        if !self.read_more().await {
                            return false;
                        }
                    }
                    Err(_) => return false,
                }
            }
        })
        .await;
        drained.unwrap_or(false)
    }
}

/// A request body being read for its handler while the handler runs and its answer is written.
struct Pumping<'a> {
    tx: PollSender<Piece>,
    decoder: &'a mut Decoder,
    state: &'a mut BodyState,
    active: bool,
}

impl Pumping<'_> {
    /// Runs `work` to its end, reading the body alongside (as fast as the handler takes it) until
    /// the body ends or is no longer wanted.
    async fn alongside<F: Future, R: AsyncRead + Unpin>(
        &mut self,
        work: F,
        rd: &mut R,
        rbuf: &mut BytesMut,
    ) -> F::Output {
        let mut work = pin!(work);
        poll_fn(|cx| {
            if let Poll::Ready(done) = work.as_mut().poll(cx) {
                return Poll::Ready(done);
            }
            if self.active {
                if let Poll::Ready(end) = pump_body(cx, &mut self.tx, self.decoder, rd, rbuf) {
                    *self.state = end;
                    self.active = false;
                }
            }
            Poll::Pending
        })
        .await
    }
}

/// Reads the request body for its handler, one piece ahead of it; ready when the pumping ends
/// (the body read whole, or not readable to its end, or the handler dropped it).
fn pump_body<R: AsyncRead + Unpin>(
    cx: &mut Context<'_>,
    tx: &mut PollSender<Piece>,
    decoder: &mut Decoder,
    rd: &mut R,
    rbuf: &mut BytesMut,
) -> Poll<BodyState> {
    loop {
        if std::task::ready!(tx.poll_reserve(cx)).is_err() {
            // The handler dropped the body.
            return Poll::Ready(BodyState::Unread);
        }
        let piece = match decoder.decode(rbuf) {
            Ok(Decoded::Data(data)) => Piece::Data(data),
            Ok(Decoded::End) => {
                let _ = tx.send_item(Piece::End);
                return Poll::Ready(BodyState::Done);
            }
            Err(err) => {
                let _ = tx.send_item(Piece::Failed(err.into()));
                return Poll::Ready(BodyState::Broken);
            }
            Ok(Decoded::Need) => {
                if rbuf.capacity() - rbuf.len() < 4 * 1024 {
                    rbuf.reserve(16 * 1024);
                }
                match std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(&mut *rd), cx, rbuf)) {
                    Ok(0) => {
                        let _ = tx.send_item(Piece::Failed(InboundError::Incomplete));
                        return Poll::Ready(BodyState::Broken);
                    }
                    Ok(_) => continue,
                    Err(err) => {
                        let _ = tx.send_item(Piece::Failed(err.into()));
                        return Poll::Ready(BodyState::Broken);
                    }
                }
            }
        };
        if tx.send_item(piece).is_err() {
            return Poll::Ready(BodyState::Unread);
        }
    }
}

/// What of the request decides the answer's framing.
#[derive(Clone, Copy)]
struct Asked<'a> {
    head: bool,
    http10: bool,
    /// The client lets the connection be reused.
    keep_alive: bool,
    /// A server shutting down closes connections after their answer.
    drain: &'a Drain,
}

/// How an answer's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Out {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (HTTP/1.0 clients, length unknown).
    Close,
}

/// Writes `response`; whether the connection may be reused after it (Err: the body failed, or
/// the write did: the connection is done).
async fn respond<W, B>(io: &mut W, wbuf: &mut Vec<u8>, answer: Answer<B>, ask: Asked<'_>) -> Result<bool, ()>
where
    W: AsyncWrite + Unpin,
    B: Body,
    B::Error: Into<BoxError>,
{
    let Answer { response, fields } = answer;
    let (parts, body) = response.into_parts();
    let status = parts.status;
    let no_body =
        ask.head || status.is_informational() || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    wbuf.clear();
    put_status(wbuf, status);
    let mut keep_alive = ask.keep_alive && !ask.drain.is_draining();
    let mut declared = None;
    let mut has_date = false;
    let own_fields = !fields.is_empty();
    for (name, value) in &parts.headers {
        if own_fields && fields.replaces(name) {
            continue;
        }
        match name.as_str().len() {
            10 if *name == header::CONNECTION => {
                keep_alive &=
                    !value.as_bytes().split(|b| *b == b',').any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"));
                continue;
            }
            17 if *name == header::TRANSFER_ENCODING => continue,
            14 if *name == header::CONTENT_LENGTH => {
                let length = std::str::from_utf8(value.as_bytes()).ok().and_then(|v| v.trim().parse::<u64>().ok());
                match length {
                    // A 204 has no body to measure; a value that is not a length, or a second one, is dropped.
                    Some(n) if declared.is_none() && status != StatusCode::NO_CONTENT => declared = Some(n),
                    _ => continue,
                }
            }
            4 if *name == header::DATE => has_date = true,
            _ => {}
        }
        crate::fields::write_line(wbuf, name.as_str().as_bytes(), value.as_bytes());
    }
    fields.write_to(wbuf);
    // (An upstream's answer brings its own Date among its fields.)
    has_date |= own_fields && fields.get("date").is_some();
    drop(fields);
    if !has_date {
        put_date(wbuf);
    }
    let out = if no_body {
        Out::None
    } else if let Some(n) = declared {
        Out::Length(n)
    } else if let Some(n) = body.size_hint().exact() {
        put_length(wbuf, n);
        Out::Length(n)
    } else if ask.http10 {
        keep_alive = false;
        Out::Close
    } else {
        wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n");
        Out::Chunked
    };
    if !keep_alive {
        wbuf.extend_from_slice(b"connection: close\r\n");
    } else if ask.http10 {
        wbuf.extend_from_slice(b"connection: keep-alive\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");
    if out == Out::None {
        drop(body);
        return io.write_all(wbuf).await.map(|()| keep_alive).map_err(drop);
    }
    let mut body = pin!(body);
    let mut sent = 0u64;
    loop {
        // What the body has ready is gathered; the gathered bytes go out when it has nothing more
        // ready (or too much is gathered).
        // Frames are taken apart as they are polled: a body's error type need not be Send, and
        // what is held across the writes below must be.
        let mut next = |cx: &mut Context<'_>| {
            body.as_mut().poll_frame(cx).map(|frame| frame.map(|f| f.map(|f| f.into_data().ok()).map_err(Into::into)))
        };
        let frame: Option<Result<Option<B::Data>, BoxError>> = match poll_fn(|cx| Poll::Ready(next(cx))).await {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if !wbuf.is_empty() {
                    io.write_all(wbuf).await.map_err(drop)?;
                    wbuf.clear();
                }
                poll_fn(&mut next).await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(err)) => {
                debug!(error = %err, "the answer's body failed: closing the connection");
                return Err(());
            }
            // (Trailers are not sent on HTTP/1.1.)
            Some(Ok(data)) => data,
        };
        if let Some(mut data) = data {
            let len = data.remaining();
            sent += len as u64;
            if let Out::Length(n) = out {
                if sent > n {
                    debug!(declared = n, "the answer's body is longer than its Content-Length");
                    return Err(());
                }
            }
            if out == Out::Chunked && len > 0 {
                put_chunk_size(wbuf, len);
            }
            if wbuf.len() + len <= GATHER {
                while data.has_remaining() {
                    let chunk = data.chunk();
                    wbuf.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
            } else {
                io.write_all(wbuf).await.map_err(drop)?;
                wbuf.clear();
                io.write_all_buf(&mut data).await.map_err(drop)?;
            }
            if out == Out::Chunked && len > 0 {
                wbuf.extend_from_slice(b"\r\n");
            }
        }
        let ended = body.is_end_stream();
        if ended {
            break;
        }
    }
    match out {
        Out::Length(n) if sent < n => {
            debug!(declared = n, sent, "the answer's body is shorter than its Content-Length");
            let _ = io.write_all(wbuf).await;
            return Err(());
        }
        Out::Chunked => wbuf.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    if !wbuf.is_empty() {
        io.write_all(wbuf).await.map_err(drop)?;
    }
    Ok(keep_alive)
}

fn put_status(wbuf: &mut Vec<u8>, status: StatusCode) {
    if status == StatusCode::OK {
        wbuf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        return;
    }
    wbuf.extend_from_slice(b"HTTP/1.1 ");
    wbuf.extend_from_slice(status.as_str().as_bytes());
    wbuf.push(b' ');
    wbuf.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    wbuf.extend_from_slice(b"\r\n");
}

fn put_length(wbuf: &mut Vec<u8>, n: u64) {
    crate::fields::write_line(wbuf, b"content-length", itoa::Buffer::new().format(n).as_bytes());
}

fn put_chunk_size(wbuf: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digits = (usize::BITS - len.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        wbuf.push(HEX[(len >> (4 * i)) & 0xf]);
    }
    wbuf.extend_from_slice(b"\r\n");
}

/// `date: <IMF-fixdate>`, formatted once a second per thread.
fn put_date(wbuf: &mut Vec<u8>) {
    thread_local! {
        static DATE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((0, [0; 29])) };
    }
    let now = clock::now_ms();
    let (until, mut text) = DATE.get();
    if now >= until || until == 0 {
        let wall = std::time::SystemTime::now();
        let formatted = httpdate::fmt_http_date(wall);
        if formatted.len() == text.len() {
            text.copy_from_slice(formatted.as_bytes());
        }
        let into_second = wall.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::from(d.subsec_millis()));
        DATE.set((now + 1000 - into_second, text));
    }
    crate::fields::write_line(wbuf, b"date", &text);
}

/// Serves an HTTP/2 connection (its first bytes already read) with hyper.
async fn serve_h2<H: Handler>(io: Rewind, peer: SocketAddr, limits: ServeLimits, handler: Arc<H>, drain: &Drain) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let handler = handler.clone();
        async move { Ok::<_, Infallible>(handler.call(req.map(Inbound::H2), peer).await.into().into_response()) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new()).max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let mut connection = pin!(builder.serve_connection(TokioIo::new(io), service));
    let mut stopping = false;
    let done = poll_fn(|cx| {
        if !stopping && drain.is_draining() {
            stopping = true;
            connection.as_mut().graceful_shutdown();
        }
        connection.as_mut().poll(cx)
    })
    .await;
    if let Err(err) = done {
        debug!(error = %err, "HTTP/2 connection ended with an error");
    }
}

/// A connection whose first bytes were read already (to recognise HTTP/2): they are read again.
struct Rewind {
    prefix: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A connection with its head-read watchdog: one sleep, armed for the earliest moment the
    /// connection could have waited too long for a head, and polled only when armed anew or
    /// elapsed, so requests cost it nothing. When it fires: HTTP/2: the watchdog stops; a request
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

impl<C, E> Future for Watched<C>
where
    C: Future<Output = Result<(), E>>,
{
    type Output = Result<(), E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
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
