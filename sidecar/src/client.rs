//! HTTP/1.1 to endpoints: a small client codec (httparse for the response head) over TCP
//! connections pooled per endpoint (the pool lives on the `Endpoint`, so it survives config versions
//! that keep the instance).
//!
//! A request is written and its response read by the task that proxies it: there is no connection
//! task, no channel to one and no lookup by host per request, unlike a general-purpose client. The
//! head and a small body leave in one write; an answer whose `Content-Length` is at most
//! [`BUFFER_UP_TO`] is read whole (as nginx's proxy buffering does), so the connection is back in
//! the pool before the caller is answered and the caller gets head and body in one write. Larger,
//! chunked and read-until-close answers stream, and their connection goes back to the pool from
//! the body when it has been read to its end; a body dropped before its end closes it.
//!
//! The answer's end-to-end fields are copied from its head as text into received [`Fields`]
//! (hop-by-hop fields, those its `Connection` names, and a `Content-Length` the body's framing
//! states again, left out); no `HeaderMap` is built for an answer that is passed on as it came.
//!
//! An idle connection the server has closed is noticed before it is used (the socket's readiness,
//! no system call when nothing happened to it). If a reused connection still turns out closed
//! before any byte of the answer arrived (the server closed it as the request went out), a request
//! whose body is at hand is sent again on another connection when its method is idempotent (or it
//! has an `Idempotency-Key`), as Go's `net/http` does; anything else is the proxy's decision (its
//! retry policy and budget).
//!
//! Not handled (never produced by the proxy): `Upgrade` (hop-by-hop, stripped), `Expect:
//! 100-continue` (the body is sent at once; interim 1xx answers are skipped). Trailers of a chunked
//! answer are read and dropped.

use std::future::Future;
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::HeaderName;
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::balance::Endpoint;
use crate::clock;
use crate::fields::{write_line, Fields, Hop};
use crate::server::{Answer, Inbound};

/// What the data plane sends upstream: the caller's body streamed through (within a size limit:
/// the gateway's per-route limit, none in the sidecar), or bytes it built (an empty body for a
/// retried request, a validated or transformed one in the gateway).
pub type RequestBody = Either<Limited<Inbound>, Full<Bytes>>;

/// Answers up to this size (by `Content-Length`) are read whole before the head is passed on.
pub const BUFFER_UP_TO: u64 = 64 * 1024;
/// Idle connections kept per endpoint.
const MAX_IDLE: usize = 256;
/// An idle connection unused this long is closed rather than reused (servers close theirs too).
const IDLE_TIMEOUT_MS: u64 = 60_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest response head accepted, and most header fields in it.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;
/// Read buffer growth.
const READ_CHUNK: usize = 16 * 1024;
/// Longest chunk-size line and trailer section of a chunked answer.
const MAX_CHUNK_LINE: usize = 4 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since_ms: u64,
}

/// A connection and what was read from it but not consumed yet (empty between requests).
#[derive(Debug)]
struct Conn {
    io: TcpStream,
    buf: BytesMut,
    /// The deadline of the request on it: one timer kept with the connection and moved forward
    /// for each request (a later deadline is a compare-and-swap on the timer's state), instead of
    /// a timer made, entered into the runtime's wheel and taken out of it again per request. A
    /// timer that comes due while its connection idles wakes the task that last waited on it once,
    /// for nothing; the next request enters it into the wheel again.
    timer: Pin<Box<Sleep>>,
}

impl Conn {
    /// Whether an idle connection can take a request: the server has neither closed it nor sent
    /// anything since its last answer. Without a readiness event since the last read this makes
    /// no system call.
    fn still_open(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

impl Pool {
    fn take(&self, now_ms: u64) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(Idle { conn, since_ms }) = idle.pop() {
            if now_ms.saturating_sub(since_ms) <= IDLE_TIMEOUT_MS && conn.still_open() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, conn: Conn) {
        let now_ms = clock::now_ms();
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        // The oldest sit at the bottom: close those that idled too long, and keep the pool bounded.
        let stale = idle.iter().take_while(|c| now_ms.saturating_sub(c.since_ms) > IDLE_TIMEOUT_MS).count();
        let over = (idle.len() + 1).saturating_sub(MAX_IDLE);
        idle.drain(..stale.max(over));
        idle.push(Idle { conn, since_ms: now_ms });
    }

    /// Idle connections (for the admin port).
    pub fn idle(&self) -> usize {
        self.idle.lock().map_or(0, |i| i.len())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect to {0}: {1}")]
    Connect(String, io::Error),
    #[error("connect to {0}: timed out")]
    ConnectTimeout(String),
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before the answer was complete")]
    Closed,
    #[error("invalid answer from the upstream: {0}")]
    Invalid(String),
    #[error("request body: {0}")]
    Body(BoxError),
    #[error("the upstream did not answer in time")]
    Timeout,
}

fn invalid(what: impl std::fmt::Display) -> SendError {
    SendError::Invalid(what.to_string())
}

/// Sends `req` (origin-form URI; `Host` is set to the endpoint's) to `endpoint` over HTTP/1.1 and
/// returns its answer; the body hands the connection back to the endpoint's pool once read to the
/// end (a small answer's at once).
pub async fn send(
    endpoint: &Arc<Endpoint>,
    req: Request<RequestBody>,
    timeout: Duration,
) -> Result<Response<PooledBody>, SendError> {
    let (parts, body) = req.into_parts();
    send_parts(endpoint, &parts, &Fields::default(), body, timeout).await.map(Answer::into_response)
}

/// [`send`] with the request's head borrowed (method, origin-form URI and headers are read, not
/// taken), so a request that may be retried keeps its head without a copy; `extra` is written
/// into the head after the request's own headers, each replacing the request's of its name (see
/// [`Fields`]). The answer's end-to-end fields come as received [`Fields`], not in its map (which
/// is empty): a proxy passes them on as text, [`Answer::into_response`] makes them a map.
///
/// `timeout` bounds the whole exchange up to the answer's head (and a body read whole): connecting,
/// sending, waiting ([`SendError::Timeout`]). A streamed body is not bounded by it.
pub async fn send_parts(
    endpoint: &Arc<Endpoint>,
    parts: &Parts,
    extra: &Fields,
    body: RequestBody,
    timeout: Duration,
) -> Result<Answer<PooledBody>, SendError> {
    let deadline = deadline_after(timeout);
    // The body's bytes when at hand (sent with the head, and again if a connection was stale),
    // else the stream to send after the head.
    let (whole, mut stream) = match body {
        Either::Right(full) => (Some(full_bytes(full).await), None),
        Either::Left(limited) if limited.is_end_stream() => (Some(Bytes::new()), None),
        Either::Left(limited) => (None, Some(limited)),
    };
    let framing = match (&whole, &stream) {
        (Some(bytes), _) => Framing::Length(bytes.len() as u64),
        (None, s) => s.as_ref().and_then(|s| s.size_hint().exact()).map_or(Framing::Chunked, Framing::Length),
    };
    let mut out = Vec::with_capacity(512);
    write_head(&mut out, endpoint, parts, extra, framing);
    // A small body goes in the same write as the head.
    let rest = match whole {
        Some(bytes) if bytes.len() <= READ_CHUNK => {
            out.extend_from_slice(&bytes);
            None
        }
        other => other,
    };
    let head_request = parts.method == Method::HEAD;
    let resend_if_stale = stream.is_none()
        && (is_idempotent(&parts.method) || parts.headers.contains_key(HeaderName::from_static("idempotency-key")));
    loop {
        let (mut conn, reused) = match endpoint.pool.take(clock::now_ms()) {
            Some(conn) => (conn, true),
            None => (connect(endpoint, deadline).await?, false),
        };
        let Conn { io, buf, timer } = &mut conn;
        let exchanged = exchange(io, buf, &out, rest.as_ref(), stream.as_mut(), framing, head_request);
        let Some(result) = within(timer, deadline, exchanged).await else {
            // (The connection is dropped: an answer may still be on its way.)
            return Err(SendError::Timeout);
        };
        match result {
            Ok((head, plan)) => {
                let body = match plan {
                    Plan::Whole(bytes) => {
                        if head.reusable && conn.buf.is_empty() {
                            endpoint.pool.put(conn);
                        }
                        PooledBody::whole(bytes)
                    }
                    Plan::Stream(decoder) => PooledBody {
                        inner: Inner::Stream(Box::new(Streaming {
                            conn: Some(conn),
                            decoder,
                            reusable: head.reusable,
                            endpoint: endpoint.clone(),
                        })),
                    },
                };
                let mut response = Response::new(body);
                *response.status_mut() = head.status;
                *response.version_mut() = head.version;
                return Ok(Answer { response, fields: head.fields });
            }
            Err(Failure { stale: true, .. }) if reused && resend_if_stale => {
                tracing::debug!(endpoint = %endpoint.spec.id, "pooled connection was closed; sending on another");
            }
            Err(failure) => return Err(failure.error),
        }
    }
}

/// `timeout` from now (a timeout too large for the clock is a day).
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout).unwrap_or_else(|| now + Duration::from_secs(86_400))
}

/// `work`, unless `timer` (moved to `deadline`) fires first: None.
async fn within<T>(timer: &mut Pin<Box<Sleep>>, deadline: Instant, work: impl Future<Output = T>) -> Option<T> {
    timer.as_mut().reset(deadline);
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

async fn full_bytes(mut full: Full<Bytes>) -> Bytes {
    match full.frame().await {
        Some(Ok(frame)) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked,
}

/// Headers the client writes itself from the endpoint and the body's framing.
fn this_hops(name: &HeaderName) -> bool {
    Hop::is_in(name.as_str().as_bytes(), Hop::CLIENT_WRITES)
}

fn write_head(out: &mut Vec<u8>, endpoint: &Endpoint, parts: &Parts, extra: &Fields, framing: Framing) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path_and_query().map_or("/", |p| p.as_str()).as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    match &endpoint.host_header {
        Some(host) => out.extend_from_slice(host.as_bytes()),
        None => out.extend_from_slice(endpoint.authority.as_bytes()),
    }
    out.extend_from_slice(b"\r\n");
    // Framing and Host are this hop's (written above and below; the body is sent without waiting
    // for 100-continue), whatever the request says (Fields never hold them); an extra field
    // replaces the request's own of its name.
    for (name, value) in &parts.headers {
        if !this_hops(name) && !extra.replaces(name) {
            write_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    extra.write_to(out);
    match framing {
        // GET and the like say nothing about an empty body; others say it is empty.
        Framing::Length(0)
            if matches!(
                parts.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::CONNECT
            ) => {}
        Framing::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
}

/// A new connection, within `CONNECT_TIMEOUT` and the request's `deadline`.
async fn connect(endpoint: &Endpoint, deadline: Instant) -> Result<Conn, SendError> {
    let addr = (endpoint.spec.address.as_str(), endpoint.spec.port);
    let limit = deadline.min(Instant::now() + CONNECT_TIMEOUT);
    let io = match tokio::time::timeout_at(limit, TcpStream::connect(addr)).await {
        Ok(Ok(io)) => io,
        Ok(Err(err)) => return Err(SendError::Connect(endpoint.authority.clone(), err)),
        Err(_) if limit == deadline => return Err(SendError::Timeout),
        Err(_) => return Err(SendError::ConnectTimeout(endpoint.authority.clone())),
    };
    let _ = io.set_nodelay(true);
    Ok(Conn { io, buf: BytesMut::with_capacity(READ_CHUNK), timer: Box::pin(tokio::time::sleep_until(deadline)) })
}

/// A failed exchange; `stale`: the connection failed before any byte of an answer came back.
struct Failure {
    error: SendError,
    stale: bool,
}

/// The answer's head.
struct Head {
    status: StatusCode,
    version: Version,
    /// Its end-to-end fields, as received (see [`Fields`]).
    fields: Fields,
    /// The connection can take another request once the body is read.
    reusable: bool,
}

/// What to do with the answer's body.
enum Plan {
    /// Read whole already.
    Whole(Bytes),
    Stream(Decoder),
}

/// Writes the request and reads the answer's head (and a small body).
async fn exchange(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    head: &[u8],
    rest: Option<&Bytes>,
    stream: Option<&mut Limited<Inbound>>,
    framing: Framing,
    head_request: bool,
) -> Result<(Head, Plan), Failure> {
    let stale = |error: io::Error| Failure { error: SendError::Io(error), stale: true };
    io.write_all(head).await.map_err(stale)?;
    if let Some(rest) = rest {
        io.write_all(rest).await.map_err(stale)?;
    }
    if let Some(stream) = stream {
        write_stream(&mut *io, stream, framing).await.map_err(|error| Failure { error, stale: false })?;
    }
    let mut received = false;
    let head = loop {
        // (Nothing to parse before the first read: a pooled connection's buffer is empty.)
        match if buf.is_empty() { Ok(None) } else { parse_head(&mut *buf, head_request) } {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(Interim) => {
                received = true;
                continue;
            }
            Err(Bad(error)) => return Err(Failure { error, stale: false }),
        }
        received |= !buf.is_empty();
        buf.reserve(READ_CHUNK);
        match io.read_buf(&mut *buf).await {
            Ok(0) => return Err(Failure { error: SendError::Closed, stale: !received && buf.is_empty() }),
            Ok(_) => {}
            Err(error) => {
                let stale = !received && buf.is_empty();
                return Err(Failure { error: SendError::Io(error), stale });
            }
        }
    };
    let (head, decoder) = head;
    let plan = match decoder {
        Decoder::Length(n) if n <= BUFFER_UP_TO => {
            let n = n as usize;
            while buf.len() < n {
                buf.reserve(n - buf.len());
                match io.read_buf(&mut *buf).await {
                    Ok(0) => return Err(Failure { error: SendError::Closed, stale: false }),
                    Ok(_) => {}
                    Err(error) => return Err(Failure { error: SendError::Io(error), stale: false }),
                }
            }
            Plan::Whole(buf.split_to(n).freeze())
        }
        decoder => Plan::Stream(decoder),
    };
    Ok((head, plan))
}

/// Sends a streamed request body, chunked when its length is not known.
async fn write_stream(io: &mut TcpStream, body: &mut Limited<Inbound>, framing: Framing) -> Result<(), SendError> {
    let chunked = matches!(framing, Framing::Chunked);
    let mut sent = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(SendError::Body)?;
        let Ok(data) = frame.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if chunked {
            let mut piece = Vec::with_capacity(data.len() + 20);
            let _ = write!(piece, "{:x}\r\n", data.len());
            piece.extend_from_slice(&data);
            piece.extend_from_slice(b"\r\n");
            io.write_all(&piece).await?;
        } else {
            io.write_all(&data).await?;
        }
    }
    match framing {
        Framing::Chunked => io.write_all(b"0\r\n\r\n").await?,
        Framing::Length(n) if n != sent => {
            return Err(SendError::Body(format!("the body was {sent} bytes, its length said {n}").into()))
        }
        Framing::Length(_) => {}
    }
    Ok(())
}

enum HeadError {
    /// An interim (1xx) answer was consumed; the real one follows.
    Interim,
    Bad(SendError),
}
use HeadError::{Bad, Interim};

/// Parses an answer's head at the start of `buf` (consumed when whole): None when more bytes are
/// needed.
fn parse_head(buf: &mut BytesMut, head_request: bool) -> Result<Option<(Head, Decoder)>, HeadError> {
    // Uninitialized slots: nothing is written per parse beyond the headers the answer has.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(Bad(invalid(format!("answer head larger than {MAX_HEAD} bytes"))))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(Bad(invalid(err))),
    };
    let status = StatusCode::from_u16(parsed.code.unwrap_or(0)).map_err(|e| Bad(invalid(e)))?;
    if status.is_informational() {
        if status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Bad(invalid("101 Switching Protocols to a request that asked for no upgrade")));
        }
        buf.advance(len);
        return Err(Interim);
    }
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    let bodiless = head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
    // The end-to-end fields are copied as text (no header map is built: most answers are passed
    // on as they came), with room for what the proxy and a gateway add to them.
    let mut fields = Fields::with_capacity(len + ADDED_ROOM);
    // What framing and reuse depend on, noted on the way.
    let (mut close, mut named, mut lengths) = (false, false, 0);
    let mut length = None;
    let mut last_coding = None;
    for h in parsed.headers.iter() {
        let (name, value) = (h.name.as_bytes(), h.value);
        // Most names are passed over on their length alone (`Hop::of`).
        match Hop::of(name) {
            Some(Hop::Connection) => {
                for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !token.is_empty() && !token.eq_ignore_ascii_case(b"keep-alive") {
                        named = true;
                    }
                }
                continue;
            }
            Some(Hop::TransferEncoding) => {
                last_coding = Some(value.rsplit(|b| *b == b',').next().unwrap_or_default().trim_ascii());
                continue;
            }
            Some(Hop::ContentLength) => {
                lengths += 1;
                length = Some(value);
                // The length is the body's (written again from it) unless there is no body
                // to measure: a HEAD's or a 304's states the representation's (a 204 has none).
                if !bodiless || status == StatusCode::NO_CONTENT {
                    continue;
                }
            }
            // `TE: trailers` is what gRPC needs end to end; any other TE is hop-by-hop.
            Some(Hop::Te) if value != b"trailers" => continue,
            Some(Hop::Te) => {}
            Some(Hop::Other) => continue,
            // Host and Expect are a request's: in an answer they pass as any other field.
            Some(Hop::Host | Hop::Expect) | None => {}
        }
        fields.receive(name, value);
    }
    if named {
        // Fields the Connection field names are hop-by-hop too.
        for h in parsed.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("connection")) {
            for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                if !token.is_empty() && !token.eq_ignore_ascii_case(b"close") {
                    fields.drop_received(token);
                }
            }
        }
    }

    let mut reusable = version == Version::HTTP_11 && !close;
    let decoder = if bodiless {
        Decoder::Length(0)
    } else if let Some(coding) = last_coding {
        // RFC 9112 6.3: chunked when it is the last coding, else until the connection closes; a
        // Content-Length beside it is ignored, and the connection not reused.
        if lengths > 0 {
            reusable = false;
        }
        if coding.eq_ignore_ascii_case(b"chunked") {
            Decoder::Chunked(Chunk::Size)
        } else {
            reusable = false;
            Decoder::Close
        }
    } else if lengths > 0 {
        match length.filter(|_| lengths == 1).and_then(crate::fields::decimal) {
            Some(n) => Decoder::Length(n),
            None => {
                let values = parsed.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("content-length"));
                Decoder::Length(content_length(values.map(|h| h.value)).map_err(Bad)?)
            }
        }
    } else {
        reusable = false;
        Decoder::Close
    };
    buf.advance(len);
    Ok(Some((Head { status, version, fields, reusable }, decoder)))
}

/// Room left in an answer's fields for those the proxy and a gateway add (endpoint, route and
/// rate-limit fields) without growing.
const ADDED_ROOM: usize = 192;

/// The one length every `Content-Length` value states (RFC 9110 8.6: a list of equal values is
/// that value; anything else is invalid).
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<u64, SendError> {
    let mut length = None;
    for value in values {
        let text = std::str::from_utf8(value).map_err(|_| invalid("Content-Length is not a number"))?;
        for item in text.split(',') {
            let item = item.trim();
            if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                return Err(invalid("Content-Length is not a number"));
            }
            let n: u64 = item.parse().map_err(|_| invalid("Content-Length is too large"))?;
            if length.is_some_and(|l| l != n) {
                return Err(invalid("Content-Length values differ"));
            }
            length = Some(n);
        }
    }
    length.ok_or_else(|| invalid("Content-Length is empty"))
}

/// How the answer's body is delimited, and how much of it is left.
#[derive(Debug)]
enum Decoder {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the server closes the connection.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer fields until an empty line.
    Trailers,
}

/// One step of decoding what is in the buffer.
enum Step {
    Data(Bytes),
    /// More bytes are needed.
    More,
    End,
}

impl Decoder {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Step, SendError> {
        match self {
            Decoder::Done | Decoder::Length(0) => {
                *self = Decoder::Done;
                Ok(Step::End)
            }
            Decoder::Length(left) => {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                Ok(Step::Data(buf.split_to(n).freeze()))
            }
            Decoder::Close if buf.is_empty() => Ok(Step::More),
            Decoder::Close => Ok(Step::Data(buf.split().freeze())),
            Decoder::Chunked(state) => loop {
                match *state {
                    Chunk::Size => match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            *state = if size == 0 { Chunk::Trailers } else { Chunk::Data(size) };
                        }
                        Ok(httparse::Status::Partial) if buf.len() > MAX_CHUNK_LINE => {
                            return Err(invalid("chunk size line too long"))
                        }
                        Ok(httparse::Status::Partial) => return Ok(Step::More),
                        Err(_) => return Err(invalid("invalid chunk size")),
                    },
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(Step::More);
                        }
                        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                        let left = left - n as u64;
                        *state = if left == 0 { Chunk::DataEnd } else { Chunk::Data(left) };
                        return Ok(Step::Data(buf.split_to(n).freeze()));
                    }
                    Chunk::DataEnd => {
                        if buf.len() < 2 {
                            return Ok(Step::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(invalid("chunk data not followed by CRLF"));
                        }
                        buf.advance(2);
                        *state = Chunk::Size;
                    }
                    Chunk::Trailers => match buf.windows(2).position(|w| w == b"\r\n") {
                        Some(0) => {
                            buf.advance(2);
                            *self = Decoder::Done;
                            return Ok(Step::End);
                        }
                        Some(line) => buf.advance(line + 2),
                        None if buf.len() > MAX_TRAILERS => return Err(invalid("trailer section too long")),
                        None => return Ok(Step::More),
                    },
                }
            },
        }
    }

    fn is_end(&self) -> bool {
        matches!(self, Decoder::Done | Decoder::Length(0))
    }
}

/// An upstream answer's body: read whole already, or streaming from its connection, which goes
/// back to the pool when the body ends (closed instead if it is dropped before).
pub struct PooledBody {
    inner: Inner,
}

enum Inner {
    Whole(Option<Bytes>),
    Stream(Box<Streaming>),
}

struct Streaming {
    /// Taken when the body ends and the connection goes back to the pool.
    conn: Option<Conn>,
    decoder: Decoder,
    reusable: bool,
    endpoint: Arc<Endpoint>,
}

impl Streaming {
    /// The body ended: the connection goes back to the pool if it can take another request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() {
                self.endpoint.pool.put(conn);
            }
        }
    }
}

impl PooledBody {
    /// A body of these bytes.
    pub fn whole(bytes: Bytes) -> PooledBody {
        PooledBody { inner: Inner::Whole(Some(bytes)) }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = SendError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, SendError>>> {
        let stream = match &mut self.inner {
            Inner::Whole(bytes) => {
                return Poll::Ready(bytes.take().filter(|b| !b.is_empty()).map(|b| Ok(Frame::data(b))))
            }
            Inner::Stream(stream) => stream,
        };
        loop {
            let Some(conn) = stream.conn.as_mut() else { return Poll::Ready(None) };
            match stream.decoder.decode(&mut conn.buf) {
                Ok(Step::Data(data)) => {
                    if stream.decoder.is_end() {
                        stream.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Step::End) => {
                    stream.finish();
                    return Poll::Ready(None);
                }
                Ok(Step::More) => {}
                Err(err) => {
                    stream.conn = None;
                    return Poll::Ready(Some(Err(err)));
                }
            }
            conn.buf.reserve(READ_CHUNK);
            match std::task::ready!(tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)) {
                Ok(0) if matches!(stream.decoder, Decoder::Close) => {
                    stream.decoder = Decoder::Done;
                    stream.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    stream.conn = None;
                    return Poll::Ready(Some(Err(SendError::Closed)));
                }
                Ok(_) => {}
                Err(err) => {
                    stream.conn = None;
                    return Poll::Ready(Some(Err(SendError::Io(err))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Whole(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
            Inner::Stream(stream) => stream.decoder.is_end(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Whole(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Inner::Stream(stream) => match stream.decoder {
                Decoder::Length(n) => SizeHint::with_exact(n),
                Decoder::Done => SizeHint::with_exact(0),
                _ => SizeHint::default(),
            },
        }
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{self, HeaderValue};
    use reskflow_proto::dataplane::EndpointSpec;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    /// Time enough for any answer in these tests.
    const WAIT: Duration = Duration::from_secs(10);

    /// A server that, on each connection, reads requests and answers each with the next of the
    /// connection's scripted answers (raw bytes), then closes the connection when its script ends.
    /// Sends every request it read (head and body) on `seen`, tagged with the connection's number.
    async fn scripted(
        scripts: Vec<Vec<&'static [u8]>>,
    ) -> (Arc<Endpoint>, tokio::sync::mpsc::UnboundedReceiver<(usize, String)>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for (n, script) in scripts.into_iter().enumerate() {
                let Ok((stream, _)) = listener.accept().await else { return };
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let mut stream = tokio::io::BufReader::new(stream);
                    for answer in script {
                        let Some(request) = read_request(&mut stream).await else { return };
                        let _ = seen_tx.send((n, request));
                        if stream.get_mut().write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let spec = EndpointSpec {
            id: "e1".into(),
            address: "127.0.0.1".into(),
            port,
            scheme: "http".into(),
            weight: 1,
            region: String::new(),
            zone: String::new(),
        };
        (Arc::new(Endpoint::new(spec)), seen)
    }

    /// One request: its head, then its body (Content-Length or chunked, decoded).
    async fn read_request(stream: &mut tokio::io::BufReader<TcpStream>) -> Option<String> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if stream.read_line(&mut line).await.ok()? == 0 {
                return None;
            }
            head.push_str(&line);
            if line == "\r\n" {
                break;
            }
        }
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        if let Some(n) =
            lower.split("content-length: ").nth(1).and_then(|r| r.split("\r\n").next()?.parse::<usize>().ok())
        {
            body.resize(n, 0);
            stream.read_exact(&mut body).await.ok()?;
        } else if lower.contains("transfer-encoding: chunked") {
            loop {
                let mut line = String::new();
                stream.read_line(&mut line).await.ok()?;
                let size = usize::from_str_radix(line.trim(), 16).ok()?;
                let mut chunk = vec![0; size + 2];
                stream.read_exact(&mut chunk).await.ok()?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        }
        Some(head + &String::from_utf8_lossy(&body))
    }

    fn get(path: &str) -> Request<RequestBody> {
        let mut req = Request::new(Either::Right(Full::new(Bytes::new())));
        *req.uri_mut() = path.parse().expect("uri");
        req
    }

    async fn body_of(response: Response<PooledBody>) -> Result<Bytes, SendError> {
        Ok(response.into_body().collect().await?.to_bytes())
    }

    #[tokio::test]
    async fn small_answers_are_read_whole_and_the_connection_is_reused() {
        let (endpoint, mut seen) = scripted(vec![vec![
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello",
            b"HTTP/1.1 201 Created\r\ncontent-length: 3, 3\r\n\r\nabc",
        ]])
        .await;
        let response = send(&endpoint, get("/one?x=1"), WAIT).await.expect("answer");
        assert_eq!(response.status(), StatusCode::OK);
        let values: Vec<_> = response.headers().get_all("x-a").iter().map(|v| v.to_str().unwrap_or("")).collect();
        assert_eq!(values, ["1", "2"]);
        assert_eq!(response.body().size_hint().exact(), Some(5));
        assert_eq!(endpoint.pool.idle(), 1, "back in the pool before the body is read");
        assert_eq!(body_of(response).await.expect("body"), "hello");

        let mut post = Request::new(Either::Right(Full::new(Bytes::from_static(b"{\"a\":1}"))));
        *post.method_mut() = Method::POST;
        *post.uri_mut() = "/two".parse().expect("uri");
        post.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from_static("999"));
        post.headers_mut().insert(header::HOST, HeaderValue::from_static("spoofed"));
        let response = send(&endpoint, post, WAIT).await.expect("answer");
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(body_of(response).await.expect("body"), "abc");

        let (conn, first) = seen.recv().await.expect("first request");
        assert_eq!(conn, 0);
        assert!(first.starts_with("GET /one?x=1 HTTP/1.1\r\nhost: 127.0.0.1:"), "{first}");
        assert!(!first.to_ascii_lowercase().contains("content-length"), "GET without a body says nothing: {first}");
        let (conn, second) = seen.recv().await.expect("second request");
        assert_eq!(conn, 0, "the same connection");
        assert!(second.contains("content-length: 7\r\n") && second.ends_with("\r\n\r\n{\"a\":1}"), "{second}");
        assert!(!second.contains("999") && !second.contains("spoofed"), "framing and host are this hop's: {second}");
    }

    #[tokio::test]
    async fn extra_headers_replace_the_requests_own_and_framing_stays_this_hops() {
        let (endpoint, mut seen) = scripted(vec![vec![b"HTTP/1.1 204 No Content\r\n\r\n"]]).await;
        let mut req = get("/x");
        let h = req.headers_mut();
        h.append("x-user-id", HeaderValue::from_static("spoofed-1"));
        h.append("x-user-id", HeaderValue::from_static("spoofed-2"));
        h.insert("x-kept", HeaderValue::from_static("mine"));
        let mut extra = Fields::default();
        extra.push(&HeaderName::from_static("x-user-id"), &HeaderValue::from_static("user-7"));
        extra.push(&HeaderName::from_static("x-forwarded-proto"), &HeaderValue::from_static("http"));
        extra.push(&header::HOST, &HeaderValue::from_static("spoofed.example"));
        extra.push(&header::CONTENT_LENGTH, &HeaderValue::from_static("999"));
        let (parts, body) = req.into_parts();
        let response = send_parts(&endpoint, &parts, &extra, body, WAIT).await.expect("answer");
        assert_eq!(response.response.status(), StatusCode::NO_CONTENT);
        let (_, head) = seen.recv().await.expect("request");
        let lines: Vec<&str> = head.trim_end().split("\r\n").collect();
        assert_eq!(lines[0], "GET /x HTTP/1.1");
        assert!(lines[1].starts_with("host: 127.0.0.1:"), "{head}");
        assert_eq!(&lines[2..], ["x-kept: mine", "x-user-id: user-7", "x-forwarded-proto: http"], "{head}");
    }

    #[tokio::test]
    async fn an_answers_end_to_end_fields_come_as_text() {
        let (endpoint, _seen) = scripted(vec![vec![
            b"HTTP/1.1 200 OK\r\nServer: up\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
              Set-Cookie: a=1\r\nX-Hop: 1\r\nContent-Length: 2\r\nUpgrade: h2c\r\nTrailer: x\r\n\
              Proxy-Connection: x\r\nTE: gzip\r\nset-cookie: b=2\r\nDate: Tue, 01 Dec 2026 10:00:00 GMT\r\n\r\nok",
            b"HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 7\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nTE: trailers\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",
        ]])
        .await;
        let text = |answer: &Answer<PooledBody>| {
            let mut out = Vec::new();
            answer.fields.write_to(&mut out);
            String::from_utf8(out).expect("text")
        };
        let (parts, body) = get("/").into_parts();
        let answer = send_parts(&endpoint, &parts, &Fields::default(), body, WAIT).await.expect("answer");
        assert!(answer.response.headers().is_empty(), "no map is built");
        assert_eq!(
            text(&answer),
            "server: up\r\nset-cookie: a=1\r\nset-cookie: b=2\r\ndate: Tue, 01 Dec 2026 10:00:00 GMT\r\n",
            "hop-by-hop fields, those Connection names and the length (the body's) are left out"
        );
        assert_eq!(answer.response.body().size_hint().exact(), Some(2));
        // No body to measure: a 304's length is the representation's and stays.
        let answer = send_parts(&endpoint, &parts, &Fields::default(), Either::Right(Full::default()), WAIT).await;
        let answer = answer.expect("answer");
        assert_eq!(answer.response.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(text(&answer), "etag: \"v1\"\r\ncontent-length: 7\r\n");
        // A 204 has none; `TE: trailers` is end to end.
        let answer = send_parts(&endpoint, &parts, &Fields::default(), Either::Right(Full::default()), WAIT).await;
        assert_eq!(text(&answer.expect("answer")), "te: trailers\r\n");
        // A HEAD's length is the GET's.
        let mut head = get("/").into_parts().0;
        head.method = Method::HEAD;
        let answer = send_parts(&endpoint, &head, &Fields::default(), Either::Right(Full::default()), WAIT).await;
        let answer = answer.expect("answer");
        assert_eq!(text(&answer), "content-length: 7\r\n");
        assert_eq!(answer.response.body().size_hint().exact(), Some(0));
    }

    #[tokio::test]
    async fn a_try_past_its_timeout_is_a_timeout_and_its_connection_is_not_kept() {
        let once: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
        let silent: &'static [u8] = b"";
        // (After the silent answer the server waits for another request: the connection stays open.)
        let (endpoint, mut seen) = scripted(vec![vec![once, silent, once], vec![once]]).await;
        assert_eq!(body_of(send(&endpoint, get("/1"), WAIT).await.expect("answer")).await.expect("body"), "a");
        assert_eq!(endpoint.pool.idle(), 1);
        // The same connection, its timer moved to an earlier deadline; no answer comes.
        let result = send(&endpoint, get("/2"), Duration::from_millis(50)).await;
        assert!(matches!(result, Err(SendError::Timeout)), "{result:?}");
        assert_eq!(endpoint.pool.idle(), 0, "an answer may still come on it: not kept");
        // A later request goes on a new connection, its timer made with it.
        assert_eq!(body_of(send(&endpoint, get("/3"), WAIT).await.expect("answer")).await.expect("body"), "a");
        let conns: Vec<usize> = [seen.recv().await, seen.recv().await, seen.recv().await]
            .into_iter()
            .map(|s| s.expect("request").0)
            .collect();
        assert_eq!(conns, [0, 0, 1]);
    }

    #[tokio::test]
    async fn connection_headers_decide_reuse() {
        let (endpoint, _seen) = scripted(vec![
            vec![
                b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\na",
                b"HTTP/1.1 200 OK\r\nConnection: x-session, close\r\nX-Session: 1\r\nContent-Length: 1\r\n\r\nb",
            ],
            vec![b"HTTP/1.1 200 OK\r\nconnection: CLOSE\r\nContent-Length: 1\r\n\r\nc"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nd"],
        ])
        .await;
        let response = send(&endpoint, get("/"), WAIT).await.expect("answer");
        assert!(response.headers().get(header::CONNECTION).is_none(), "keep-alive alone is this hop's");
        assert_eq!(body_of(response).await.expect("body"), "a");
        assert_eq!(endpoint.pool.idle(), 1, "kept alive");
        let response = send(&endpoint, get("/"), WAIT).await.expect("answer");
        assert!(response.headers().get(header::CONNECTION).is_none(), "hop-by-hop");
        assert!(response.headers().get("x-session").is_none(), "named by Connection: hop-by-hop too");
        assert_eq!(body_of(response).await.expect("body"), "b");
        assert_eq!(endpoint.pool.idle(), 0, "close among other tokens: not reused");
        let response = send(&endpoint, get("/"), WAIT).await.expect("answer");
        assert_eq!(body_of(response).await.expect("body"), "c");
        assert_eq!(endpoint.pool.idle(), 0, "close alone: not reused");
        let response = send(&endpoint, get("/"), WAIT).await.expect("answer");
        assert_eq!(body_of(response).await.expect("body"), "d");
        assert_eq!(endpoint.pool.idle(), 1);
    }

    #[tokio::test]
    async fn chunked_large_and_until_close_answers_stream() {
        let big: &'static [u8] = Box::leak(
            [&b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n"[..], &vec![b'x'; 100_000]]
                .concat()
                .into_boxed_slice(),
        );
        let (endpoint, _seen) = scripted(vec![
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
                big,
                b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
            ],
            vec![b"HTTP/1.1 204 No Content\r\n\r\n"],
        ])
        .await;
        let response = send(&endpoint, get("/chunked"), WAIT).await.expect("answer");
        assert_eq!(response.body().size_hint().exact(), None);
        assert_eq!(body_of(response).await.expect("body"), "hello world");
        assert_eq!(endpoint.pool.idle(), 1, "back in the pool at the body's end");

        let response = send(&endpoint, get("/big"), WAIT).await.expect("answer");
        assert_eq!(endpoint.pool.idle(), 0, "a large answer streams");
        let body = body_of(response).await.expect("body");
        assert!(body.len() == 100_000 && body.iter().all(|&b| b == b'x'));
        assert_eq!(endpoint.pool.idle(), 1);

        let response = send(&endpoint, get("/close"), WAIT).await.expect("answer");
        assert_eq!(body_of(response).await.expect("body"), "until the end");
        assert_eq!(endpoint.pool.idle(), 0, "read until close: not reusable");

        let response = send(&endpoint, get("/empty"), WAIT).await.expect("answer");
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert!(response.body().is_end_stream());
    }

    #[tokio::test]
    async fn an_idle_connection_the_server_closed_is_not_used() {
        // The first connection answers once and closes; the request after it goes on a new one.
        let (endpoint, mut seen) = scripted(vec![
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"],
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"],
        ])
        .await;
        assert_eq!(body_of(send(&endpoint, get("/1"), WAIT).await.expect("answer")).await.expect("body"), "a");
        assert_eq!(seen.recv().await.expect("request").0, 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(body_of(send(&endpoint, get("/2"), WAIT).await.expect("answer")).await.expect("body"), "b");
        assert_eq!(seen.recv().await.expect("request").0, 1);
    }

    #[tokio::test]
    async fn a_reused_connection_closed_under_the_request_resends_only_idempotent_requests() {
        // Each first connection answers once, then reads the next request and closes without an
        // answer (as a server closing an idle connection just as the request arrives).
        let once: &'static [u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na";
        let hang_up: &'static [u8] = b"";
        for (method, resent) in [(Method::GET, true), (Method::POST, false)] {
            let (endpoint, _seen) = scripted(vec![vec![once, hang_up], vec![once]]).await;
            assert_eq!(body_of(send(&endpoint, get("/1"), WAIT).await.expect("answer")).await.expect("body"), "a");
            let mut req = get("/2");
            *req.method_mut() = method.clone();
            let answer = send(&endpoint, req, WAIT).await;
            if resent {
                assert_eq!(body_of(answer.expect("resent")).await.expect("body"), "a", "{method}");
            } else {
                assert!(matches!(answer, Err(SendError::Closed)), "{method}: {answer:?}");
            }
        }
    }

    #[test]
    fn content_length_is_one_stated_length() {
        let of = |values: &[&'static str]| content_length(values.iter().map(|v| v.as_bytes())).ok();
        assert_eq!(of(&["101"]), Some(101));
        assert_eq!(of(&["0"]), Some(0));
        assert_eq!(of(&["999999999999999999"]), Some(999_999_999_999_999_999));
        assert_eq!(of(&["18446744073709551615"]), Some(u64::MAX));
        assert_eq!(of(&["18446744073709551616"]), None, "too large");
        assert_eq!(of(&["5, 5"]), Some(5));
        assert_eq!(of(&["5", "5"]), Some(5));
        assert_eq!(of(&["5", "6"]), None);
        assert_eq!(of(&["5,6"]), None);
        for bad in ["", "+5", "-1", "5x", "0x10", " ", ","] {
            assert_eq!(of(&[bad]), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn invalid_answers_are_errors() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999999\r\n\r\n",
            b"HTTP/1.1 999x OK\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            let (endpoint, _seen) = scripted(vec![vec![answer]]).await;
            let result = send(&endpoint, get("/"), WAIT).await;
            assert!(matches!(result, Err(SendError::Invalid(_))), "{:?}: {result:?}", String::from_utf8_lossy(answer));
        }
        // A chunked body that breaks off, or is malformed, fails the body, not the head.
        for answer in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"[..],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nshort",
        ] {
            let (endpoint, _seen) = scripted(vec![vec![answer]]).await;
            let response = send(&endpoint, get("/"), WAIT).await.expect("head");
            assert!(body_of(response).await.is_err(), "{:?}", String::from_utf8_lossy(answer));
            assert_eq!(endpoint.pool.idle(), 0);
        }
    }
}
