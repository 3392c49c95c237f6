//! What a [`Handler`](super::Handler) answers: a response, and header fields written into its head
//! without going through its `HeaderMap`.
//!
//! Inserting a field into a `HeaderMap` hashes its name (byte by byte for a name that is not a
//! standard one) and may grow the map; a gateway adding five fields of its own to every answer
//! (the RateLimit fields, the route's id) spent ~1,600 instructions per request on it, 6% of its
//! work. [`Fields`] keeps them as the head's own text, and the HTTP/1.1 connection copies that
//! text after the map's fields; HTTP/2 answers (hyper's encoder) get them inserted into the map.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::Response;

/// A handler's answer: `response`, plus `fields` added to its head.
#[derive(Debug)]
pub struct Answer<B> {
    pub response: Response<B>,
    pub fields: Fields,
}

impl<B> From<Response<B>> for Answer<B> {
    fn from(response: Response<B>) -> Answer<B> {
        Answer { response, fields: Fields::default() }
    }
}

impl<B> Answer<B> {
    /// The response with the fields inserted into its map (as `HeaderMap::insert` would).
    pub fn into_response(self) -> Response<B> {
        let Answer { mut response, fields } = self;
        fields.apply_to(response.headers_mut());
        response
    }
}

/// Header fields as a head carries them, `name: value\r\n` each. A field of the response's map
/// with one of their names is left out, as `HeaderMap::insert` would have replaced it; a name
/// pushed twice is sent twice. Not for the fields that frame the message (`Content-Length`,
/// `Transfer-Encoding`, `Connection`), which the connection reads from the map.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    lines: Vec<u8>,
    /// Bit `n` is set when a name of `n` bytes is among them (bit 63: 63 bytes or more), so the
    /// map's fields are compared by name only when one has a length in common with them.
    lengths: u64,
}

fn length_bit(name: &[u8]) -> u64 {
    1 << name.len().min(63)
}

impl Fields {
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn push(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.push_bytes(name, value.as_bytes());
    }

    /// A field whose value is a number (written in decimal, no `HeaderValue` made for it).
    pub fn push_number(&mut self, name: &HeaderName, n: u64) {
        self.push_bytes(name, itoa::Buffer::new().format(n).as_bytes());
    }

    fn push_bytes(&mut self, name: &HeaderName, value: &[u8]) {
        let name = name.as_str().as_bytes();
        debug_assert!(
            !matches!(name, b"content-length" | b"transfer-encoding" | b"connection"),
            "framing fields go in the map"
        );
        if self.lines.is_empty() {
            // Room for a gateway's five fields without growing.
            self.lines.reserve(160);
        }
        self.lines.reserve(name.len() + value.len() + 4);
        self.lines.extend_from_slice(name);
        self.lines.extend_from_slice(b": ");
        self.lines.extend_from_slice(value);
        self.lines.extend_from_slice(b"\r\n");
        self.lengths |= length_bit(name);
    }

    /// The fields, each `(name, value)`, going from line to line with `memchr` (a byte by byte
    /// split of the lines cost ~1,300 instructions a request where `replaces` reads them).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        // Every line was written by push_bytes: "name: value\r\n", the name without ':' and the
        // value without CR or LF (a HeaderValue or digits).
        let mut rest = &self.lines[..];
        std::iter::from_fn(move || {
            let end = memchr::memchr(b'\n', rest)?;
            let line = &rest[..end.saturating_sub(1)];
            rest = &rest[end + 1..];
            let colon = memchr::memchr(b':', line).unwrap_or(line.len());
            Some((&line[..colon], line.get(colon + 2..).unwrap_or_default()))
        })
    }

    /// Whether a field of the map named `name` gives way to one of these.
    #[inline]
    pub fn replaces(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        self.lengths & length_bit(name) != 0 && self.iter().any(|(own, _)| own == name)
    }

    /// The fields as the head carries them, to be written after the map's.
    pub fn as_bytes(&self) -> &[u8] {
        &self.lines
    }

    /// Inserts the fields into `headers` (a name already there is replaced; a name pushed twice
    /// is appended).
    pub fn apply_to(&self, headers: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        let mut fields = Vec::with_capacity(8);
        for (name, value) in self.iter() {
            // Both were a HeaderName and a HeaderValue (or digits) when pushed.
            if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                fields.push((name, value));
            }
        }
        for (name, _) in &fields {
            headers.remove(name);
        }
        for (name, value) in fields {
            headers.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    const ROUTE: HeaderName = HeaderName::from_static("x-reskflow-route");

    #[test]
    fn fields_are_written_as_a_head_writes_them_and_read_back() {
        let mut fields = Fields::default();
        assert!(fields.is_empty());
        fields.push_number(&LIMIT, 10);
        fields.push(&ROUTE, &HeaderValue::from_static("orders by id"));
        fields.push(&ROUTE, &HeaderValue::from_static(""));
        assert_eq!(
            fields.as_bytes(),
            b"ratelimit-limit: 10\r\nx-reskflow-route: orders by id\r\nx-reskflow-route: \r\n"
        );
        let read: Vec<_> = fields.iter().collect();
        assert_eq!(
            read,
            [
                (&b"ratelimit-limit"[..], &b"10"[..]),
                (&b"x-reskflow-route"[..], &b"orders by id"[..]),
                (&b"x-reskflow-route"[..], &b""[..])
            ]
        );
    }

    #[test]
    fn only_fields_of_the_same_name_are_replaced() {
        let mut fields = Fields::default();
        fields.push_number(&LIMIT, 10);
        assert!(fields.replaces(&LIMIT));
        // Same length (15), another name.
        assert!(!fields.replaces(&HeaderName::from_static("ratelimit-reset")));
        assert!(!fields.replaces(&header::CONTENT_TYPE));
        let long = HeaderName::from_bytes(&[b'x'; 70]).unwrap();
        let longer = HeaderName::from_bytes(&[b'x'; 80]).unwrap();
        fields.push(&long, &HeaderValue::from_static("1"));
        assert!(fields.replaces(&long));
        assert!(!fields.replaces(&longer));
    }

    #[test]
    fn applied_to_a_map_they_replace_its_fields_and_keep_their_own_repeats() {
        let mut response = Response::new(());
        response.headers_mut().append(LIMIT, HeaderValue::from_static("upstream's"));
        response.headers_mut().append(header::SERVER, HeaderValue::from_static("backend"));
        let mut fields = Fields::default();
        fields.push_number(&LIMIT, 10);
        fields.push(&ROUTE, &HeaderValue::from_static("a"));
        fields.push(&ROUTE, &HeaderValue::from_static("b"));
        let response = Answer { response, fields }.into_response();
        let headers = response.headers();
        assert_eq!(headers.get_all(LIMIT).iter().collect::<Vec<_>>(), ["10"]);
        assert_eq!(headers.get_all(ROUTE).iter().collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(headers[header::SERVER], "backend");
    }
}
