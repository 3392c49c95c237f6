//! The server through real sockets: a raw-TCP client writes exactly the bytes a test needs and reads
//! the answers as they come off the wire.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::parse::{Decoded, Decoder, Framing};
use super::{serve_http, HandlerFn, Inbound, ServeLimits};

const TIMEOUT: Duration = Duration::from_millis(300);
/// Far longer than TIMEOUT: how long a test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(10);

type Stream = StreamBody<futures::stream::BoxStream<'static, Result<Frame<Bytes>, std::io::Error>>>;
type TestBody = Either<Full<Bytes>, Stream>;

fn full(text: impl Into<Bytes>) -> TestBody {
    Either::Left(Full::new(text.into()))
}

/// A server whose handler answers by path:
/// - `/slow`: after 3 timeouts; `/stream`: a body without length, sent over 3 timeouts;
/// - `/echo`: the request body read whole (its length in `x-len`); `/ignore`: without reading it;
/// - `/status/N`: status N with a body; `/short`: a body shorter than its Content-Length;
/// - anything else: `ok` at once.
async fn server() -> (String, CancellationToken) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let shutdown = CancellationToken::new();
    let limits = ServeLimits { header_read_timeout: TIMEOUT, max_header_bytes: 8 * 1024 };
    tokio::spawn(serve_http(
        listener,
        shutdown.clone(),
        limits,
        Arc::new(HandlerFn(|req: Request<Inbound>, _| async move {
            let path = req.uri().path().to_string();
            let body = match path.as_str() {
                "/slow" => {
                    tokio::time::sleep(TIMEOUT * 3).await;
                    full("slow")
                }
                "/stream" => {
                    let chunks: Stream = StreamBody::new(Box::pin(futures::stream::unfold(0, |n| async move {
                        if n == 6 {
                            return None;
                        }
                        tokio::time::sleep(TIMEOUT / 2).await;
                        Some((Ok(Frame::data(Bytes::from("x"))), n + 1))
                    })));
                    Either::Right(chunks)
                }
                "/echo" => match req.into_body().collect().await {
                    Ok(body) => {
                        let body = body.to_bytes();
                        let mut response = Response::new(full(body.clone()));
                        response.headers_mut().insert("x-len", body.len().into());
                        return response;
                    }
                    Err(err) => {
                        let mut response = Response::new(full(err.to_string()));
                        *response.status_mut() = StatusCode::BAD_REQUEST;
                        return response;
                    }
                },
                "/ignore" => full("ignored"),
                "/short" => {
                    let mut response = Response::new(full("abc"));
                    response.headers_mut().insert("content-length", 10.into());
                    return response;
                }
                p if p.starts_with("/status/") => {
                    let mut response = Response::new(full("not sent"));
                    *response.status_mut() =
                        StatusCode::from_u16(p[8..].parse().unwrap_or(500)).unwrap_or(StatusCode::OK);
                    return response;
                }
                _ => full("ok"),
            };
            Response::new(body)
        })),
    ));
    (addr, shutdown)
}

/// An answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

struct Client {
    io: TcpStream,
    buf: BytesMut,
}

impl Client {
    async fn connect(addr: &str) -> Client {
        Client { io: TcpStream::connect(addr).await.expect("connect"), buf: BytesMut::new() }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
    }

    /// Reads more; false at the end of the connection.
    async fn fill(&mut self) -> bool {
        let n = tokio::time::timeout(PATIENCE, self.io.read_buf(&mut self.buf)).await.expect("data in time");
        matches!(n, Ok(n) if n > 0)
    }

    /// Reads one answer (no body for HEAD and 1xx/204/304; to the close when it has no framing).
    async fn answer(&mut self, head: bool) -> Answer {
        let (len, status, headers) = loop {
            let mut storage = [httparse::EMPTY_HEADER; 64];
            let mut parsed = httparse::Response::new(&mut storage);
            if let Ok(httparse::Status::Complete(len)) = parsed.parse(&self.buf) {
                let headers = parsed
                    .headers
                    .iter()
                    .map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned()))
                    .collect::<Vec<_>>();
                break (len, parsed.code.unwrap_or(0), headers);
            }
            assert!(self.fill().await, "closed before an answer's head: {:?}", String::from_utf8_lossy(&self.buf));
        };
        let _ = self.buf.split_to(len);
        let mut answer = Answer { status, headers, body: Vec::new() };
        if head || status < 200 || status == 204 || status == 304 {
            return answer;
        }
        let framing = if answer.header("transfer-encoding") == Some("chunked") {
            Some(Framing::Chunked)
        } else {
            answer.header("content-length").map(|n| Framing::Length(n.parse().expect("a length")))
        };
        let Some(framing) = framing else {
            while self.fill().await {}
            answer.body = self.buf.split().to_vec();
            return answer;
        };
        let mut decoder = Decoder::new(framing);
        loop {
            match decoder.decode(&mut self.buf).expect("well-framed answer") {
                Decoded::Data(data) => answer.body.extend_from_slice(&data),
                Decoded::End => return answer,
                Decoded::Need => assert!(self.fill().await, "closed inside a body: {answer:?}"),
            }
        }
    }

    async fn get(&mut self, path: &str) -> Answer {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
        self.answer(false).await
    }

    /// Whether the server closes the connection (reading reaches its end) within PATIENCE.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        matches!(tokio::time::timeout(PATIENCE, self.io.read_to_end(&mut rest)).await, Ok(Ok(_)))
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (addr, _shutdown) = server().await;
    let mut c = Client::connect(&addr).await;
    c.send(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /status/404 HTTP/1.1\r\n\r\n")
        .await;
    let first = c.answer(false).await;
    assert_eq!((first.status, first.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(first.header("content-length"), Some("2"));
    assert!(first.header("date").is_some_and(|d| d.ends_with(" GMT")), "{first:?}");
    let second = c.answer(false).await;
    assert_eq!((second.status, second.body.as_slice()), (200, &b"hello"[..]));
    let third = c.answer(false).await;
    assert_eq!((third.status, third.body.as_slice()), (404, &b"not sent"[..]));
    assert_eq!(c.get("/").await.status, 200, "the connection is still usable");
}

#[tokio::test]
async fn request_bodies_stream_in_by_length_or_chunked_whatever_the_writes() {
    let (addr, _shutdown) = server().await;
    let mut c = Client::connect(&addr).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhel").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"lo world").await;
    let answer = c.answer(false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"hello world"[..]));

    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").await;
    for piece in [&b"5\r\nhel"[..], b"lo\r\n", b"1;x=y\r\n \r\n5\r\nworld\r\n0\r\nX-T: 1\r\n", b"\r\n"] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.send(piece).await;
    }
    let answer = c.answer(false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"hello world"[..]));
    assert_eq!(answer.header("x-len"), Some("11"));

    // A large body, read as the handler takes it.
    let big = vec![b'z'; 3 * 1024 * 1024];
    c.send(format!("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", big.len()).as_bytes()).await;
    let (mut rd, mut wr) = c.io.split();
    let writing = async { wr.write_all(&big).await.expect("write") };
    let mut head = Vec::new();
    let reading = async {
        // Enough of the answer to know it came whole (its length) without holding 3 MiB twice.
        let mut chunk = vec![0u8; 64 * 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = rd.read(&mut chunk).await.expect("read");
            assert!(n > 0);
            head.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(PATIENCE, futures::future::join(writing, reading)).await.expect("in time");
    let text = String::from_utf8_lossy(&head);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n") && text.contains(&format!("x-len: {}\r\n", big.len())), "{text}");
}

#[tokio::test]
async fn a_malformed_chunked_body_reaches_the_handler_as_an_error_and_closes_the_connection() {
    let (addr, _shutdown) = server().await;
    let mut c = Client::connect(&addr).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n").await;
    let answer = c.answer(false).await;
    assert_eq!(answer.status, 400);
    assert!(String::from_utf8_lossy(&answer.body).contains("chunk size missing"), "{answer:?}");
    assert!(c.closed().await);
}

#[tokio::test]
async fn expect_100_continue_is_answered_before_the_body_is_sent() {
    let (addr, _shutdown) = server().await;
    let mut c = Client::connect(&addr).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n").await;
    let interim = c.answer(false).await;
    assert_eq!(interim.status, 100);
    c.send(b"body").await;
    let answer = c.answer(false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"body"[..]));
}

#[tokio::test]
async fn head_204_and_304_answers_carry_no_body_and_the_connection_goes_on() {
    let (addr, _shutdown) = server().await;
    let mut c = Client::connect(&addr).await;
    c.send(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let head = c.answer(true).await;
    assert_eq!(head.status, 200);
    for path in ["/status/204", "/status/304"] {
        let answer = c.get(path).await;
        assert!(answer.body.is_empty(), "{answer:?}");
        assert_eq!(answer.header("content-length"), None, "{answer:?}");
    }
    let answer = c.get("/").await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"ok"[..]), "nothing was left on the wire");
}

#[tokio::test]
async fn http_1_0_clients_get_close_or_keep_alive_as_they_ask() {
    let (addr, _shutdown) = server().await;
    let mut c = Client::connect(&addr).await;
    c.send(b"GET / HTTP/1.0\r\n\r\n").await;
    let answer = c.answer(false).await;
    assert_eq!((answer.status, answer.header("connection")), (200, Some("close")));
    assert!(c.closed().await);

    let mut c = Client::connect(&addr).await;
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    let answer = c.answer(false).await;
    assert_eq!(answer.header("connection"), Some("keep-alive"));
    // A body without a length: to the close, as HTTP/1.0 has no chunked coding.
    c.send(b"GET /stream HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").await;
    let answer = c.answer(false).await;
    assert_eq!((answer.header("connection"), answer.body.as_slice()), (Some("close"), &b"xxxxxx"[..]));
}

#[tokio::test]
async fn refused_heads_get_a_json_error_naming_the_problem_and_the_connection_closes() {
    let (addr, _shutdown) = server().await;
    for (request, status, why) in [
        (
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nabc".to_string(),
            400,
            "both Transfer-Encoding and Content-Length",
        ),
        ("GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_string() + &"a".repeat(9000) + "\r\n\r\n", 431, "larger"),
        ("GET /\0 HTTP/1.1\r\n\r\n".to_string(), 400, "malformed"),
    ] {
        let mut c = Client::connect(&addr).await;
        c.send(request.as_bytes()).await;
        let answer = c.answer(false).await;
        assert_eq!(answer.status, status, "{answer:?}");
        let body: serde_json::Value = serde_json::from_slice(&answer.body).expect("a JSON body");
        assert!(body["error"].as_str().is_some_and(|e| e.contains(why)), "{body}");
        assert_eq!(answer.header("connection"), Some("close"));
        assert!(c.closed().await);
    }
}

#[tokio::test]
async fn an_unread_body_is_drained_when_small_and_closes_the_connection_when_large() {
    let (addr, _shutdown) = server().await;
    let mut c = Client::connect(&addr).await;
    c.send(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 20000\r\n\r\n").await;
    c.send(&[b'a'; 20000]).await;
    assert_eq!(c.answer(false).await.body, b"ignored");
    assert_eq!(c.get("/").await.body, b"ok", "the body was drained, the next request read");

    let mut c = Client::connect(&addr).await;
    c.send(b"POST /ignore HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n").await;
    let (mut rd, mut wr) = c.io.split();
    // The client keeps sending while the server answers and stops reading.
    let sending = async {
        let chunk = vec![b'a'; 64 * 1024];
        while wr.write_all(&chunk).await.is_ok() {}
    };
    let reading = async {
        let mut all = Vec::new();
        let _ = rd.read_to_end(&mut all).await;
        all
    };
    let (_, all) =
        tokio::time::timeout(PATIENCE, futures::future::join(sending, reading)).await.expect("closed in time");
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 200 OK") && text.ends_with("ignored"), "{text}");
}

#[tokio::test]
async fn an_answer_shorter_than_its_length_closes_the_connection() {
    let (addr, _shutdown) = server().await;
    let mut c = Client::connect(&addr).await;
    c.send(b"GET /short HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut all = Vec::new();
    tokio::time::timeout(PATIENCE, c.io.read_to_end(&mut all)).await.expect("closed in time").expect("read");
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("content-length: 10\r\n") && text.ends_with("\r\n\r\nabc"), "{text}");
}

#[tokio::test]
async fn shutdown_closes_idle_connections_and_lets_open_requests_finish() {
    let (addr, shutdown) = server().await;
    let mut idle = Client::connect(&addr).await;
    assert_eq!(idle.get("/").await.status, 200);
    let mut busy = Client::connect(&addr).await;
    busy.send(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await;
    tokio::time::sleep(TIMEOUT).await;
    shutdown.cancel();
    let answer = busy.answer(false).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"slow"[..]));
    assert_eq!(answer.header("connection"), Some("close"), "{answer:?}");
    assert!(busy.closed().await);
    assert!(idle.closed().await);
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served() {
    let (addr, _shutdown) = server().await;
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(&addr).await.expect("connect"));
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.expect("handshake");
    tokio::spawn(connection);
    let request =
        Request::post(format!("http://{addr}/echo")).body(Full::new(Bytes::from("over h2"))).expect("request");
    let response = tokio::time::timeout(PATIENCE, send.send_request(request)).await.expect("in time").expect("answer");
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "over h2");
}

#[tokio::test]
async fn a_trickled_head_and_an_idle_keep_alive_connection_are_closed() {
    let (addr, _shutdown) = server().await;
    let mut slow = Client::connect(&addr).await;
    slow.send(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").await;
    for _ in 0..4 {
        tokio::time::sleep(TIMEOUT / 2).await;
        if slow.io.write_all(b"a").await.is_err() {
            break;
        }
    }
    assert!(slow.closed().await, "a head still unfinished after the timeout closes the connection");

    let mut idle = Client::connect(&addr).await;
    assert_eq!(idle.get("/").await.status, 200);
    assert!(idle.closed().await, "no next request within the timeout closes the connection");
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
    let mut c = Client::connect(&addr).await;
    let answer = c.get("/slow").await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"slow"[..]));
    let answer = c.get("/stream").await;
    assert_eq!(answer.header("transfer-encoding"), Some("chunked"));
    assert_eq!(answer.body, b"xxxxxx");
    // Requests a third of the timeout apart for four timeouts, all on the same connection.
    for _ in 0..12 {
        tokio::time::sleep(TIMEOUT / 3).await;
        assert_eq!(c.get("/").await.status, 200);
    }
}

/// Answers every request with `server` and `ratelimit-limit: upstream's` in its map and two
/// fields of its own: `ratelimit-limit: 10` (replacing the map's) and `x-route: r`.
struct WithFields;

impl super::Handler for WithFields {
    type Body = Full<Bytes>;
    type Output = super::Answer<Full<Bytes>>;

    async fn call(&self, _req: Request<Inbound>, _peer: std::net::SocketAddr) -> Self::Output {
        let mut response = Response::new(Full::new(Bytes::from("ok")));
        response.headers_mut().insert("server", http::HeaderValue::from_static("backend"));
        response.headers_mut().insert("ratelimit-limit", http::HeaderValue::from_static("upstream's"));
        let mut fields = super::Fields::default();
        fields.push_number(&http::HeaderName::from_static("ratelimit-limit"), 10);
        fields.push(&http::HeaderName::from_static("x-route"), &http::HeaderValue::from_static("r"));
        super::Answer { response, fields }
    }
}

#[tokio::test]
async fn a_handlers_own_fields_reach_the_head_over_http_1_1_and_http_2_replacing_the_maps() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let shutdown = CancellationToken::new();
    tokio::spawn(serve_http(listener, shutdown.clone(), ServeLimits::default(), Arc::new(WithFields)));

    let mut client = Client::connect(&addr).await;
    for _ in 0..2 {
        let answer = client.get("/").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body, b"ok");
        let all = |name: &str| answer.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect();
        let (limit, route, server): (Vec<_>, Vec<_>, Vec<_>) = (all("ratelimit-limit"), all("x-route"), all("server"));
        assert_eq!((limit, route, server), (vec!["10"], vec!["r"], vec!["backend"]), "{answer:?}");
    }

    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(&addr).await.expect("connect"));
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.expect("handshake");
    tokio::spawn(connection);
    let request = Request::get(format!("http://{addr}/")).body(Full::new(Bytes::new())).expect("request");
    let response = tokio::time::timeout(PATIENCE, send.send_request(request)).await.expect("in time").expect("answer");
    let headers = response.headers();
    assert_eq!(headers.get_all("ratelimit-limit").iter().collect::<Vec<_>>(), ["10"]);
    assert_eq!(headers.get_all("x-route").iter().collect::<Vec<_>>(), ["r"]);
    assert_eq!(headers["server"], "backend");
    shutdown.cancel();
}
