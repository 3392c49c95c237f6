//! Reading HTTP/1.1 requests off the wire: the request head (into an `http::Request`, its framing
//! and what the connection must do next) and the body decoders (`Content-Length` and chunked).
//! Pure functions over a buffer, so the fuzz targets drive them as the server does.
//!
//! Framing follows RFC 9112 strictly where a lenient reading would let two hops disagree on where a
//! request ends (request smuggling): `Transfer-Encoding` together with `Content-Length`, a
//! transfer coding other than a final `chunked`, `Transfer-Encoding` in HTTP/1.0, differing or
//! malformed `Content-Length` values, a chunk-size line without its CRLF: each is a 400.

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri, Version};

/// Most header fields a request may carry; more is answered 431.
pub const MAX_HEADERS: usize = 100;
/// Longest chunk-size line (with extensions) and longest trailer section accepted.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// How a request's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length` (0: no body).
    Length(u64),
    Chunked,
}

/// A parsed request head and what it asks of the connection.
#[derive(Debug)]
pub struct Head {
    pub request: Request<()>,
    pub framing: Framing,
    /// Whether the client lets the connection be reused after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on a request with a body.
    pub expect_continue: bool,
}

/// Why a head was refused; the status the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("the request head is larger than this server accepts")]
    TooLarge,
    #[error("the request has more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("{0}")]
    Bad(&'static str),
}

impl HeadError {
    pub fn status(self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Bad(_) => 400,
        }
    }
}

/// Parses the request head at the start of `buf`. Complete: the head's bytes are taken out of `buf`
/// (the header values share them) and what follows stays for the body and the next request.
/// Incomplete: `Ok(None)`, `buf` untouched (or `TooLarge` once it holds `max` bytes).
pub fn parse_head(buf: &mut BytesMut, max: usize) -> Result<Option<Head>, HeadError> {
    let mut storage = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut storage) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= max => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HeadError::Bad("unsupported HTTP version")),
        Err(_) => return Err(HeadError::Bad("malformed request head")),
    };
    if len > max {
        return Err(HeadError::TooLarge);
    }
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        _ => Version::HTTP_11,
    };
    let method = Method::from_bytes(parsed.method.unwrap_or("").as_bytes())
        .map_err(|_| HeadError::Bad("malformed request method"))?;
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let target = parsed.path.unwrap_or("");
    let target = (offset(target.as_bytes()), target.len());

    // Names now, values (slices of the head's bytes) once the head is split off the buffer.
    let mut names: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(parsed.headers.len());
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    for h in parsed.headers.iter() {
        let value = h.value;
        // The names the framing depends on, compared on their length first.
        match h.name.len() {
            14 if h.name.eq_ignore_ascii_case("content-length") => {
                let n = parse_content_length(value)?;
                if content_length.is_some_and(|m| m != n) {
                    return Err(HeadError::Bad("conflicting Content-Length values"));
                }
                content_length = Some(n);
            }
            17 if h.name.eq_ignore_ascii_case("transfer-encoding") => {
                if version == Version::HTTP_10 {
                    return Err(HeadError::Bad("Transfer-Encoding in an HTTP/1.0 request"));
                }
                transfer_encoding = true;
                for coding in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if chunked {
                        // `chunked` must be the last coding, and appear once.
                        return Err(HeadError::Bad("chunked is not the final transfer coding"));
                    }
                    if coding.eq_ignore_ascii_case(b"chunked") {
                        chunked = true;
                    } else if !coding.is_empty() {
                        return Err(HeadError::Bad("unsupported transfer coding (only chunked is accepted)"));
                    }
                }
            }
            10 if h.name.eq_ignore_ascii_case("connection") => {
                for token in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            6 if h.name.eq_ignore_ascii_case("expect") => {
                if value.trim_ascii().eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else {
                    return Err(HeadError::Bad("unsupported Expect value"));
                }
            }
            _ => {}
        }
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| HeadError::Bad("malformed header name"))?;
        names.push((name, offset(value), value.len()));
    }
    if transfer_encoding && !chunked {
        return Err(HeadError::Bad("unsupported transfer coding (only chunked is accepted)"));
    }
    if chunked && content_length.is_some() {
        return Err(HeadError::Bad("both Transfer-Encoding and Content-Length"));
    }
    let framing = if chunked { Framing::Chunked } else { Framing::Length(content_length.unwrap_or(0)) };

    let head = buf.split_to(len).freeze();
    let uri = if target.1 == 1 && head[target.0] == b'/' {
        Uri::from_static("/")
    } else {
        Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
            .map_err(|_| HeadError::Bad("malformed request target"))?
    };
    // Room for the few a proxy adds (traceparent, forwarding headers) without growing the map.
    let mut headers = HeaderMap::with_capacity(names.len() + 4);
    for (name, at, len) in names {
        let value = HeaderValue::from_maybe_shared(head.slice(at..at + len))
            .map_err(|_| HeadError::Bad("malformed header value"))?;
        headers.append(name, value);
    }
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let has_body = framing != Framing::Length(0);
    Ok(Some(Head { request, framing, keep_alive, expect_continue: expect_continue && has_body }))
}

/// A `Content-Length` value: digits, or a list of equal digit strings (RFC 9110 8.6).
fn parse_content_length(value: &[u8]) -> Result<u64, HeadError> {
    let mut found = None;
    for part in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
        let n = crate::fields::decimal(part).ok_or(HeadError::Bad("malformed Content-Length"))?;
        if found.is_some_and(|m| m != n) {
            return Err(HeadError::Bad("conflicting Content-Length values"));
        }
        found = Some(n);
    }
    found.ok_or(HeadError::Bad("malformed Content-Length"))
}

/// What a body decoder found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// More bytes are needed.
    Need,
    /// The body ended (the bytes after it belong to the next request).
    End,
}

/// Why a request body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct BodyError(pub &'static str);

/// Takes a request body out of the connection's buffer, chunk by chunk.
#[derive(Debug)]
pub enum Decoder {
    /// Bytes left of a `Content-Length` body.
    Length(u64),
    Chunked(Chunked),
}

impl Decoder {
    pub fn new(framing: Framing) -> Decoder {
        match framing {
            Framing::Length(n) => Decoder::Length(n),
            Framing::Chunked => Decoder::Chunked(Chunked::default()),
        }
    }

    pub fn is_done(&self) -> bool {
        match self {
            Decoder::Length(n) => *n == 0,
            Decoder::Chunked(c) => c.state == State::Done,
        }
    }

    /// Bytes of the body not yet taken, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Decoder::Length(n) => Some(*n),
            Decoder::Chunked(_) => None,
        }
    }

    /// The next piece of the body from `buf`: data (a slice of `buf`, taken out of it), `Need` when
    /// `buf` holds no more of it yet, `End` once it is complete.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        match self {
            Decoder::Length(0) => Ok(Decoded::End),
            Decoder::Length(_) if buf.is_empty() => Ok(Decoded::Need),
            Decoder::Length(left) => {
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            Decoder::Chunked(chunked) => chunked.decode(buf),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Reading the chunk-size's hex digits.
    #[default]
    Size,
    /// After the size: whitespace, then `;` and extensions, or CR.
    SizeWs,
    /// A chunk extension, up to CR.
    Extension,
    /// The LF ending the size line.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// The trailer section, at the start of a line.
    TrailerLine,
    /// Inside a trailer line.
    Trailer,
    /// The LF ending a trailer line (or the section, when the line was empty).
    TrailerLf {
        empty: bool,
    },
    Done,
}

/// The chunked transfer coding's decoder (RFC 9112 7.1); trailers are read and dropped.
#[derive(Debug, Default)]
pub struct Chunked {
    state: State,
    size: u64,
    digits: u8,
    /// Bytes of the current size line, or of the trailer section so far.
    line: usize,
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, BodyError> {
        loop {
            if self.state == State::Done {
                return Ok(Decoded::End);
            }
            if self.state == State::Data {
                if buf.is_empty() {
                    return Ok(Decoded::Need);
                }
                let take = usize::try_from(self.size).unwrap_or(usize::MAX).min(buf.len());
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            let Some(&byte) = buf.first() else { return Ok(Decoded::Need) };
            let _ = buf.split_to(1);
            self.step(byte)?;
        }
    }

    /// One byte of framing (size lines, CRLFs, trailers).
    fn step(&mut self, byte: u8) -> Result<(), BodyError> {
        match self.state {
            State::Size => {
                self.line += 1;
                if let Some(digit) = (byte as char).to_digit(16) {
                    if self.digits == 16 {
                        return Err(BodyError("chunk size too large"));
                    }
                    self.size = self.size << 4 | u64::from(digit);
                    self.digits += 1;
                } else if self.digits == 0 {
                    return Err(BodyError("chunk size missing"));
                } else if byte == b'\r' {
                    self.state = State::SizeLf;
                } else if byte == b';' {
                    self.state = State::Extension;
                } else if matches!(byte, b' ' | b'\t') {
                    self.state = State::SizeWs;
                } else {
                    return Err(BodyError("invalid chunk size"));
                }
            }
            State::SizeWs => {
                self.line += 1;
                match byte {
                    b' ' | b'\t' if self.line <= MAX_CHUNK_LINE => {}
                    b';' => self.state = State::Extension,
                    b'\r' => self.state = State::SizeLf,
                    _ => return Err(BodyError("invalid chunk size")),
                }
            }
            State::Extension => {
                self.line += 1;
                if self.line > MAX_CHUNK_LINE {
                    return Err(BodyError("chunk extension too long"));
                }
                match byte {
                    b'\r' => self.state = State::SizeLf,
                    b'\n' => return Err(BodyError("bare LF in a chunk-size line")),
                    _ => {}
                }
            }
            State::SizeLf => {
                if byte != b'\n' {
                    return Err(BodyError("chunk-size line not ended by CRLF"));
                }
                self.line = 0;
                self.digits = 0;
                self.state = if self.size == 0 { State::TrailerLine } else { State::Data };
            }
            State::DataCr => {
                if byte != b'\r' {
                    return Err(BodyError("chunk data longer than its size"));
                }
                self.state = State::DataLf;
            }
            State::DataLf => {
                if byte != b'\n' {
                    return Err(BodyError("chunk data not ended by CRLF"));
                }
                self.state = State::Size;
            }
            State::TrailerLine | State::Trailer => {
                self.line += 1;
                if self.line > MAX_TRAILERS {
                    return Err(BodyError("trailer section too long"));
                }
                match byte {
                    b'\r' => self.state = State::TrailerLf { empty: self.state == State::TrailerLine },
                    b'\n' => return Err(BodyError("bare LF in the trailer section")),
                    _ => self.state = State::Trailer,
                }
            }
            State::TrailerLf { empty } => {
                if byte != b'\n' {
                    return Err(BodyError("trailer line not ended by CRLF"));
                }
                self.state = if empty { State::Done } else { State::TrailerLine };
            }
            State::Data | State::Done => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Head>, HeadError> {
        parse_head(&mut BytesMut::from(text), 64 * 1024)
    }

    fn bad(text: &str) -> &'static str {
        match head(text) {
            Err(HeadError::Bad(why)) => why,
            other => panic!("{text:?} gave {other:?}"),
        }
    }

    #[test]
    fn a_head_becomes_a_request_and_leaves_the_rest_in_the_buffer() {
        let mut buf = BytesMut::from(
            "POST /a/b?c=d HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nX-Two: 1\r\nx-two: 2\r\n\r\nabcGET",
        );
        let head = parse_head(&mut buf, 1024).expect("valid").expect("complete");
        assert_eq!(head.request.method(), Method::POST);
        assert_eq!(head.request.uri().path(), "/a/b");
        assert_eq!(head.request.uri().query(), Some("c=d"));
        assert_eq!(head.request.version(), Version::HTTP_11);
        assert_eq!(head.request.headers()["host"], "x");
        let twos: Vec<_> = head.request.headers().get_all("x-two").iter().collect();
        assert_eq!(twos, ["1", "2"]);
        assert_eq!(head.framing, Framing::Length(3));
        assert!(head.keep_alive && !head.expect_continue);
        assert_eq!(&buf[..], b"abcGET");
    }

    #[test]
    fn an_incomplete_head_waits_until_it_is_too_large() {
        let mut buf = BytesMut::from("GET / HTTP/1.1\r\nHost: x\r\n");
        assert!(parse_head(&mut buf, 1024).expect("valid").is_none());
        assert_eq!(buf.len(), 25, "nothing taken");
        assert_eq!(parse_head(&mut buf, 20).unwrap_err(), HeadError::TooLarge);
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: 1\r\n")).collect();
        assert_eq!(head(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err(), HeadError::TooManyHeaders);
    }

    #[test]
    fn keep_alive_follows_the_version_and_connection_tokens() {
        let keep = |text: &str| head(text).expect("valid").expect("complete").keep_alive;
        assert!(keep("GET / HTTP/1.1\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.1\r\nConnection: Close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: x, keep-alive\r\n\r\n"));
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for (request, why) in [
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                "both Transfer-Encoding and Content-Length",
            ),
            ("POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", "conflicting Content-Length values"),
            ("POST / HTTP/1.1\r\nContent-Length: 3, 4\r\n\r\n", "conflicting Content-Length values"),
            ("POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", "malformed Content-Length"),
            ("POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", "malformed Content-Length"),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", "chunked is not the final transfer coding"),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
                "chunked is not the final transfer coding",
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                "unsupported transfer coding (only chunked is accepted)",
            ),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding in an HTTP/1.0 request"),
            ("GET / HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", "unsupported Expect value"),
            ("GET / HTTP/2.0\r\n\r\n", "unsupported HTTP version"),
            ("GET / HTTP/1.1\r\nBad Name: x\r\n\r\n", "malformed request head"),
        ] {
            assert_eq!(bad(request), why, "{request:?}");
        }
        let same = head("POST / HTTP/1.1\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(same.expect("valid").expect("complete").framing, Framing::Length(3));
        let chunked = head("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n");
        let chunked = chunked.expect("valid").expect("complete");
        assert_eq!(chunked.framing, Framing::Chunked);
        assert!(chunked.expect_continue);
    }

    /// Decodes `wire` fed in pieces of `step` bytes: the body and what is left after it.
    fn decode_all(framing: Framing, wire: &[u8], step: usize) -> Result<(Vec<u8>, Vec<u8>), BodyError> {
        let mut decoder = Decoder::new(framing);
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => return Ok((body, [&buf[..], &wire[fed..]].concat())),
                Decoded::Need if fed == wire.len() => return Err(BodyError("incomplete")),
                Decoded::Need => {
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads_look_like() {
        let wire = b"5\r\nhello\r\n1;ext=\"a b\"\r\n \r\nA \t; x\r\n0123456789\r\n0\r\nX-Sum: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 100] {
            let (body, rest) = decode_all(Framing::Chunked, wire, step).expect("valid");
            assert_eq!(body, b"hello 0123456789", "step {step}");
            assert_eq!(rest, b"NEXT", "step {step}");
        }
        let (body, rest) = decode_all(Framing::Length(4), b"abcdef", 3).expect("valid");
        assert_eq!((body.as_slice(), rest.as_slice()), (&b"abcd"[..], &b"ef"[..]));
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for (wire, why) in [
            (&b"x\r\n"[..], "chunk size missing"),
            (b"5\nhello\r\n0\r\n\r\n", "invalid chunk size"),
            (b"5\r\nhello!\r\n0\r\n\r\n", "chunk data longer than its size"),
            (b"5\r\nhello\r0\r\n\r\n", "chunk data not ended by CRLF"),
            (b"10000000000000000\r\n", "chunk size too large"),
            (b"5;a\nb\r\n", "bare LF in a chunk-size line"),
            (b"1 2\r\nab\r\n0\r\n\r\n", "invalid chunk size"),
            (b"0\r\nX: 1\n\r\n", "bare LF in the trailer section"),
        ] {
            assert_eq!(
                decode_all(Framing::Chunked, wire, 1),
                Err(BodyError(why)),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE));
        assert_eq!(decode_all(Framing::Chunked, long.as_bytes(), 64), Err(BodyError("chunk extension too long")));
    }
}
