//! Header fields a proxy adds to a message it sends on, kept as the head's own text rather than
//! inserted into the message's `HeaderMap`: the gateway's identity and `X-Forwarded-*` fields and
//! the trace context on a request to an upstream, its RateLimit fields and route id on an answer.
//!
//! Inserting a field into a `HeaderMap` hashes its name (byte by byte for a name that is not a
//! standard one) and may grow the map; a `(HeaderName, HeaderValue)` list beside the map is cheaper
//! but still copies each field into the head one by one and drops each name and value on its own.
//! [`Fields`] is the text itself, `name: value\r\n` per field: the client or the connection copies
//! it into the head with one copy after the map's fields, leaving out a map field of the same name,
//! as `HeaderMap::insert` would have replaced it. A set of fields made once (a caller's identity, a
//! route's fixed RateLimit fields) joins a message with one copy ([`Fields::extend`]). HTTP/2
//! messages (hyper's encoders), and callers that read the headers back, get them inserted into the
//! map ([`Fields::apply_to`]).
//!
//! An upstream's answer comes the same way: the client copies its end-to-end fields from the
//! head's text into `Fields` (received fields) instead of building a `HeaderMap` of them, which
//! cost ~1,500 instructions per proxied request (a name parsed and hashed per field, two
//! allocations, hop-by-hop names looked up and removed, the map read back when the answer was
//! written). What the proxy and the gateway add comes after them and replaces received fields of
//! its name.

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Header fields as a head carries them, `name: value\r\n` each. A name pushed twice is sent twice.
///
/// Two kinds of field, in this order: those **received** with a message (an upstream's answer,
/// copied from its head by the client instead of being built into a `HeaderMap`), then those
/// **added** on the way (pushed). An added field replaces the received ones of its name, as an
/// insert into the map would; a received name seen twice is kept twice (`Set-Cookie`).
///
/// Never added: the fields this hop writes itself from the message and its peer: `Content-Length`,
/// `Transfer-Encoding` and `Connection` (framing, read from the map), `Host` and `Expect` (the
/// client's own for the endpoint it sends to). Pushing one of those does nothing.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fields {
    lines: Vec<u8>,
    /// `lines[..received]` are the received fields, the rest the added ones.
    received: usize,
    /// The [`name_bit`]s of the received (added) fields' names: names are compared only when one
    /// shares its bit with them.
    received_names: u64,
    added_names: u64,
}

fn length_bit(name: &[u8]) -> u64 {
    1 << name.len().min(63)
}

/// One bit of 64 for a name, the same in any case: from its length and its first and last bytes,
/// mixed so that the names a request or an answer usually carries and those a proxy and the
/// gateway add to it all have bits of their own (a test lists them). By length alone, an
/// upstream's `X-Reskflow-Endpoint` met the gateway's `RateLimit-Remaining`, and every answer with
/// both took the slow way: each received name looked up among the added ones.
#[inline]
fn name_bit(name: &[u8]) -> u64 {
    let (first, last) = match name {
        [first, .., last] => (*first, *last),
        [only] => (*only, *only),
        [] => (0, 0),
    };
    let mixed = (name.len() as u64 * 31) ^ u64::from(first | 0x20) << 7 ^ u64::from(last | 0x20);
    1 << (mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58)
}

/// A field that is not passed on as it came: one that belongs to a single connection (RFC 9110
/// 7.6.1) or one each hop writes itself (framing, the endpoint's host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// `Connection`: hop-by-hop, and the fields it names are hop-by-hop too.
    Connection,
    /// `Keep-Alive`, `Proxy-Connection`, `Upgrade`, `Trailer`: hop-by-hop.
    Other,
    /// `Transfer-Encoding`: hop-by-hop; each hop frames the body itself.
    TransferEncoding,
    /// `TE`: hop-by-hop, except `TE: trailers`, which gRPC needs end to end.
    Te,
    /// `Content-Length`: end to end, but written by each hop from the body it sends.
    ContentLength,
    /// `Host`, `Expect`: a request's fields the client writes itself for the endpoint it sends
    /// to (the body is sent without waiting for 100-continue).
    Host,
    Expect,
}

/// Every name [`Hop::of`] knows, lower case, with what it is: the one list the proxy (header
/// maps), the client (an answer's text, a request's head) and [`Fields`] read.
pub const HOPS: [(&str, Hop); 10] = [
    ("te", Hop::Te),
    ("host", Hop::Host),
    ("expect", Hop::Expect),
    ("upgrade", Hop::Other),
    ("trailer", Hop::Other),
    ("connection", Hop::Connection),
    ("keep-alive", Hop::Other),
    ("content-length", Hop::ContentLength),
    ("proxy-connection", Hop::Other),
    ("transfer-encoding", Hop::TransferEncoding),
];

/// Whether `name` is `lower` (lower-case letters and '-', 2 bytes or more) in any case, compared
/// a word at a time: the 0x20 bit of `name`'s byte is set where `lower` has a letter, other bytes
/// compare as they are, so the answer is exact for any bytes. (`eq_ignore_ascii_case` took ~100
/// instructions a name here, a byte-by-byte loop ~8 a byte.)
#[inline]
fn is_name(name: &[u8], lower: &[u8]) -> bool {
    // Bit 0x40 is set in a lower-case letter's byte, not in '-' nor in the zeros of a short word.
    let same = |a: u64, t: u64| a | (t & 0x4040_4040_4040_4040) >> 1 == t;
    // Two words that together cover a name of 2..=16 bytes (the first and the last, overlapping).
    fn ends(s: &[u8]) -> Option<(u64, u64)> {
        Some(match s.len() {
            8.. => (u64::from_le_bytes(*s.first_chunk()?), u64::from_le_bytes(*s.last_chunk()?)),
            4.. => (u32::from_le_bytes(*s.first_chunk()?).into(), u32::from_le_bytes(*s.last_chunk()?).into()),
            _ => (u16::from_le_bytes(*s.first_chunk()?).into(), u16::from_le_bytes(*s.last_chunk()?).into()),
        })
    }
    if name.len() != lower.len() {
        return false;
    }
    let (Some((a0, a1)), Some((t0, t1))) = (ends(name), ends(lower)) else {
        return false;
    };
    // Past 16 bytes the two words leave bytes between them: compare those a byte at a time.
    let middle = || {
        name.len() <= 16
            || name[8..name.len() - 8].iter().zip(&lower[8..lower.len() - 8]).all(|(a, t)| a.to_ascii_lowercase() == *t)
    };
    same(a0, t0) && same(a1, t1) && middle()
}

impl Hop {
    /// The index in [`HOPS`] of `name` (any case), or None for an end-to-end field. Most names
    /// are passed over on their length alone, without a call.
    #[inline]
    pub fn index(name: &[u8]) -> Option<usize> {
        /// Bit `n` set when a name of the table has `n` bytes.
        const LENGTHS: u64 = {
            let (mut bits, mut i) = (0, 0);
            while i < HOPS.len() {
                bits |= 1 << HOPS[i].0.len();
                i += 1;
            }
            bits
        };
        if LENGTHS & length_bit(name) == 0 {
            return None;
        }
        Self::index_of_known_length(name)
    }

    /// [`Hop::index`] for a name of a length in the table: found by its length and first byte,
    /// then compared (a test checks that every name of the table is found here).
    fn index_of_known_length(name: &[u8]) -> Option<usize> {
        let i = match name.len() {
            2 => 0,
            4 => 1,
            6 => 2,
            7 if name[0] | 0x20 == b'u' => 3,
            7 => 4,
            10 if name[0] | 0x20 == b'c' => 5,
            10 => 6,
            14 => 7,
            16 => 8,
            17 => 9,
            _ => return None,
        };
        is_name(name, HOPS[i].0.as_bytes()).then_some(i)
    }

    /// Bit `i` set for each `HOPS[i]` of this kind, for a set of names seen kept as bits.
    pub const fn bits(self) -> u16 {
        let (mut bits, mut i) = (0, 0);
        while i < HOPS.len() {
            if HOPS[i].1 as u8 == self as u8 {
                bits |= 1 << i;
            }
            i += 1;
        }
        bits
    }

    /// What `name` (any case) is; None for an end-to-end field.
    #[inline]
    pub fn of(name: &[u8]) -> Option<Hop> {
        Self::index(name).map(|i| HOPS[i].1)
    }

    /// Whether `name` (any case) is one of `set`'s (bits of [`HOPS`] entries, as [`Hop::bits`]).
    #[inline]
    pub fn is_in(name: &[u8], set: u16) -> bool {
        Self::index(name).is_some_and(|i| set & 1 << i != 0)
    }

    /// The fields that belong to one connection and a proxy removes wherever they come (RFC 9110
    /// 7.6.1), with those `Connection` names. Not `TE`: it is hop-by-hop unless it is `trailers`,
    /// which gRPC needs end to end, so its value decides.
    pub const HOP_BY_HOP: u16 = Hop::Connection.bits() | Hop::Other.bits() | Hop::TransferEncoding.bits();

    /// The fields a client writes into a request's head itself for the endpoint and the body it
    /// sends: framing, `Host`, `Expect` (the body is sent without waiting for 100-continue). A
    /// request's `Connection` is the caller's to send (the proxy strips the hop-by-hop ones before).
    pub const CLIENT_WRITES: u16 =
        Hop::ContentLength.bits() | Hop::TransferEncoding.bits() | Hop::Host.bits() | Hop::Expect.bits();

    /// The fields each hop writes itself from the message and its peer, which [`Fields`] never
    /// holds: the client's, and `Connection` (read from the message).
    pub const WRITTEN_HERE: u16 = Hop::CLIENT_WRITES | Hop::Connection.bits();
}

/// A plain decimal number of 1 to 19 digits (no sign, no space: what a length or a count in a
/// protocol's text is; 19 digits cannot overflow a u64); None for anything else.
pub fn decimal(text: &[u8]) -> Option<u64> {
    ((1..=19).contains(&text.len()) && text.iter().all(u8::is_ascii_digit))
        .then(|| text.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Whether `value` may be a field's value as it is (what `HeaderValue::from_bytes` accepts).
fn valid_value(value: &[u8]) -> bool {
    value.iter().all(|&b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

/// Lines written by [`Fields`] ("name: value\r\n", the name without ':' and the value without CR
/// or LF), each `(name, value)`, going from line to line with `memchr` (a byte by byte split of
/// the lines cost ~1,300 instructions a request where names were looked up).
fn lines_of(text: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    let mut rest = text;
    std::iter::from_fn(move || {
        let end = memchr::memchr(b'\n', rest)?;
        let line = &rest[..end.saturating_sub(1)];
        rest = &rest[end + 1..];
        let colon = memchr::memchr(b':', line).unwrap_or(line.len());
        Some((&line[..colon], line.get(colon + 2..).unwrap_or_default()))
    })
}

/// The value of the first line of `text` (lines written by [`Fields`]) named `name` (any case):
/// each line's start is compared with the name, and only a line that is not it is looked through
/// (for its end).
fn find_in<'a>(text: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let mut rest = text;
    loop {
        let end = memchr::memchr(b'\n', rest)?;
        let line = &rest[..end.saturating_sub(1)];
        if line.get(name.len()) == Some(&b':') && line[..name.len()].eq_ignore_ascii_case(name) {
            return Some(line.get(name.len() + 2..).unwrap_or_default());
        }
        rest = &rest[end + 1..];
    }
}

/// One field as a head carries it: `name: value\r\n` (also the server's and the client's
/// writer of a head's fields).
pub(crate) fn write_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.reserve(name.len() + value.len() + 4);
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

impl Fields {
    /// Room for `bytes` of fields in one allocation.
    pub fn with_capacity(bytes: usize) -> Fields {
        Fields { lines: Vec::with_capacity(bytes), ..Fields::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn push(&mut self, name: &HeaderName, value: &HeaderValue) {
        self.push_valid(name, value.as_bytes());
    }

    /// A field whose value is a number (written in decimal, no `HeaderValue` made for it).
    pub fn push_number(&mut self, name: &HeaderName, n: u64) {
        self.push_valid(name, itoa::Buffer::new().format(n).as_bytes());
    }

    /// A field whose value is an address (written as its `Display` does).
    pub fn push_ip(&mut self, name: &HeaderName, ip: IpAddr) {
        self.push_valid(name, IpText::new(ip).as_bytes());
    }

    /// A field with a value that is not yet a `HeaderValue`; false (and nothing pushed) when the
    /// value is not a valid field value (a control character, CR or LF among its bytes).
    pub fn push_bytes(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        if !valid_value(value) {
            return false;
        }
        self.push_valid(name, value);
        true
    }

    /// A field whose value is known to be valid (a `HeaderValue`'s bytes, digits, hex, an address).
    pub(crate) fn push_valid(&mut self, name: &HeaderName, value: &[u8]) {
        let name = name.as_str().as_bytes();
        if Hop::is_in(name, Hop::WRITTEN_HERE) {
            return;
        }
        if self.lines.capacity() == 0 {
            // Room for a few fields without growing.
            self.lines.reserve(192);
        }
        self.put(name, value);
        self.added_names |= name_bit(name);
    }

    fn put(&mut self, name: &[u8], value: &[u8]) {
        write_line(&mut self.lines, name, value);
    }

    /// A field received with the message, before any is added: `name` a token and `value` a
    /// valid field value, as the head's parser checked them. The name is kept in lower case (as
    /// a `HeaderName` would be) so that names compare as bytes.
    pub(crate) fn receive(&mut self, name: &[u8], value: &[u8]) {
        debug_assert_eq!(self.received, self.lines.len(), "received fields come before added ones");
        let start = self.lines.len();
        self.put(name, value);
        self.lines[start..start + name.len()].make_ascii_lowercase();
        self.received = self.lines.len();
        self.received_names |= name_bit(name);
    }

    /// A header map as received fields (an added field replaces those of its name), less the
    /// ones each hop writes itself and the hop-by-hop ones: an answer kept to be sent again (the
    /// gateway's stored responses) goes out with one copy of its text, not a copy of its map.
    pub fn received_from(headers: &HeaderMap) -> Fields {
        let mut fields = Fields::default();
        for (name, value) in headers {
            let name = name.as_str().as_bytes();
            if !Hop::is_in(name, Hop::WRITTEN_HERE | Hop::HOP_BY_HOP) {
                fields.receive(name, value.as_bytes());
            }
        }
        fields
    }

    /// A field read back from where another process stored it, kept as received when `name` is
    /// a field name and `value` a valid value (the ones each hop writes itself and the hop-by-hop
    /// ones are left out, as by [`Fields::received_from`]); false, and nothing kept, for a bad
    /// field or one that comes after an added field.
    pub fn receive_checked(&mut self, name: &[u8], value: &[u8]) -> bool {
        if HeaderName::from_bytes(name).is_err() || !valid_value(value) || self.received != self.lines.len() {
            return false;
        }
        if !Hop::is_in(name, Hop::WRITTEN_HERE | Hop::HOP_BY_HOP) {
            self.receive(name, value);
        }
        true
    }

    /// The bytes of the fields' text (what holding them costs).
    pub fn text_len(&self) -> usize {
        self.lines.len()
    }

    /// The values of `name` a request carries when these fields are added to `headers`: these
    /// fields' own when they have the name (they replace the map's), else the map's.
    pub fn values_over<'a>(&'a self, headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        let replaced = self.get(name).is_some();
        self.iter()
            .filter(move |(own, _)| own.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, value)| value)
            .chain(headers.get_all(name).into_iter().filter(move |_| !replaced).map(HeaderValue::as_bytes))
    }

    /// Drops the received fields named `name` (any case): those a `Connection` field names.
    pub(crate) fn drop_received(&mut self, name: &[u8]) {
        if self.received_names & name_bit(name) == 0 {
            return;
        }
        let mut kept = Vec::with_capacity(self.lines.capacity());
        let mut names = 0;
        for (own, value) in lines_of(&self.lines[..self.received]) {
            if !own.eq_ignore_ascii_case(name) {
                write_line(&mut kept, own, value);
                names |= name_bit(own);
            }
        }
        let received = kept.len();
        kept.extend_from_slice(&self.lines[self.received..]);
        self.lines = kept;
        self.received = received;
        self.received_names = names;
    }

    /// Adds `other`'s fields after these (one copy: fields made once, joining each message). They
    /// are added fields here, whatever they were in `other` (fields made once have no received ones).
    pub fn extend(&mut self, other: &Fields) {
        if self.lines.capacity() == 0 {
            self.lines.reserve(192.max(other.lines.len()));
        }
        self.lines.extend_from_slice(&other.lines);
        self.added_names |= other.received_names | other.added_names;
    }

    /// Whether a received field named `name` gives way to an added one.
    fn replaced(&self, name: &[u8]) -> bool {
        self.added_names & name_bit(name) != 0 && find_in(&self.lines[self.received..], name).is_some()
    }

    /// The fields as they are sent, each `(name, value)`: the received ones no added one replaces,
    /// then the added ones.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let overlap = self.received_names & self.added_names != 0;
        lines_of(&self.lines[..self.received])
            .filter(move |(name, _)| !overlap || !self.replaced(name))
            .chain(lines_of(&self.lines[self.received..]))
    }

    /// Whether a field of the map named `name` gives way to one of these.
    #[inline]
    pub fn replaces(&self, name: &HeaderName) -> bool {
        let name = name.as_str().as_bytes();
        (self.received_names | self.added_names) & name_bit(name) != 0 && find_in(&self.lines, name).is_some()
    }

    /// The value of the first field named `name` (any case) as sent: an added one before a
    /// received one.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        let name = name.as_bytes();
        let bit = name_bit(name);
        let added = if self.added_names & bit != 0 { find_in(&self.lines[self.received..], name) } else { None };
        added
            .or_else(|| if self.received_names & bit != 0 { find_in(&self.lines[..self.received], name) } else { None })
    }

    /// Writes the fields into a head (after the map's): received fields an added one replaces
    /// are left out; the usual case, no name in common, is one copy.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if self.received_names & self.added_names == 0 {
            out.extend_from_slice(&self.lines);
            return;
        }
        for (name, value) in self.iter() {
            write_line(out, name, value);
        }
    }

    /// Inserts the fields into `headers` (a name already there is replaced; a name pushed twice
    /// is appended).
    pub fn apply_to(&self, headers: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        let mut fields = Vec::with_capacity(8);
        for (name, value) in self.iter() {
            // Both were a HeaderName (or a token) and a valid value when pushed (or received).
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

/// An address as its `Display` writes it, on the stack; IPv4 (nearly every request) without the
/// formatting machinery, which costs more than the rest of the forwarding fields together.
pub struct IpText {
    buf: [u8; 45],
    len: usize,
}

impl IpText {
    pub fn new(ip: IpAddr) -> IpText {
        let mut text = IpText { buf: [0; 45], len: 0 };
        match ip {
            IpAddr::V4(v4) => {
                // Digit by digit: a copy per octet (itoa's) cost more than the digits.
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.put(b'.');
                    }
                    if octet >= 100 {
                        text.put(b'0' + octet / 100);
                    }
                    if octet >= 10 {
                        text.put(b'0' + octet / 10 % 10);
                    }
                    text.put(b'0' + octet % 10);
                }
            }
            IpAddr::V6(v6) => {
                use std::io::Write as _;
                // The longest IPv6 text ("ffff:...:255.255.255.255") is 45 bytes: it fits.
                let mut rest = &mut text.buf[..];
                let _ = write!(rest, "{v6}");
                text.len = 45 - rest.len();
            }
        }
        text
    }

    fn put(&mut self, byte: u8) {
        self.buf[self.len] = byte;
        self.len += 1;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    pub fn as_str(&self) -> &str {
        // Digits, dots, hex and colons only.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    const ROUTE: HeaderName = HeaderName::from_static("x-route");

    fn text(fields: &Fields) -> Vec<u8> {
        let mut out = Vec::new();
        fields.write_to(&mut out);
        out
    }

    #[test]
    fn fields_are_written_as_a_head_writes_them_and_read_back() {
        let mut fields = Fields::default();
        assert!(fields.is_empty());
        fields.push_number(&LIMIT, 10);
        fields.push(&ROUTE, &HeaderValue::from_static("orders by id"));
        fields.push(&ROUTE, &HeaderValue::from_static(""));
        fields.push_ip(&header::FORWARDED, "10.0.20.7".parse().expect("ip"));
        fields.push_ip(&header::FORWARDED, "2001:db8::1".parse().expect("ip"));
        assert_eq!(
            text(&fields),
            &b"ratelimit-limit: 10\r\nx-route: orders by id\r\nx-route: \r\nforwarded: 10.0.20.7\r\nforwarded: 2001:db8::1\r\n"[..]
        );
        let read: Vec<_> = fields.iter().collect();
        assert_eq!(
            read,
            [
                (&b"ratelimit-limit"[..], &b"10"[..]),
                (&b"x-route"[..], &b"orders by id"[..]),
                (&b"x-route"[..], &b""[..]),
                (&b"forwarded"[..], &b"10.0.20.7"[..]),
                (&b"forwarded"[..], &b"2001:db8::1"[..]),
            ]
        );
        assert_eq!(fields.get("X-Route"), Some(&b"orders by id"[..]));
        assert_eq!(fields.get("x-other"), None);
    }

    /// Fields read back from a store keep the good end-to-end ones, leave out the ones each hop
    /// writes itself, and refuse a bad name, a bad value or a received field after an added one.
    #[test]
    fn stored_fields_are_read_back_checked() {
        let mut fields = Fields::default();
        assert!(fields.receive_checked(b"Content-Type", b"application/json"));
        assert!(fields.receive_checked(b"x-trace", b""));
        assert!(fields.receive_checked(b"Connection", b"close"), "valid, and left out");
        assert!(fields.receive_checked(b"content-length", b"12"), "valid, and left out");
        assert!(!fields.receive_checked(b"bad name", b"x"));
        assert!(!fields.receive_checked(b"", b"x"));
        assert!(!fields.receive_checked(b"x-split", b"a\r\nx-injected: 1"));
        assert!(!fields.receive_checked(b"x-nul", b"a\0b"));
        let kept: Vec<_> = fields.iter().collect();
        assert_eq!(
            kept,
            [(&b"content-type"[..], &b"application/json"[..]), (&b"x-trace"[..], &b""[..])],
            "names in lower case"
        );
        assert_eq!(fields.text_len(), text(&fields).len());
        fields.push_number(&LIMIT, 5);
        assert!(!fields.receive_checked(b"x-late", b"1"), "received fields come before added ones");
        assert_eq!(fields.iter().count(), 3);
    }

    /// A varied header's values as the request will carry them: the added fields' own replace the
    /// map's; without them, the map's (every value, in order).
    #[test]
    fn values_over_a_map_prefer_the_fields_own() {
        let mut headers = HeaderMap::new();
        headers.append(header::ACCEPT_LANGUAGE, HeaderValue::from_static("de"));
        headers.append(header::ACCEPT_LANGUAGE, HeaderValue::from_static("fr"));
        headers.append(header::ACCEPT, HeaderValue::from_static("text/html"));
        let mut fields = Fields::default();
        fields.push(&header::ACCEPT, &HeaderValue::from_static("application/json"));
        let over = |name| fields.values_over(&headers, name).collect::<Vec<_>>();
        assert_eq!(over("accept-language"), [&b"de"[..], &b"fr"[..]]);
        assert_eq!(over("accept"), [&b"application/json"[..]], "the added field replaces the map's");
        assert!(over("x-absent").is_empty());
    }

    #[test]
    fn decimals_are_plain_digits_that_fit() {
        assert_eq!(decimal(b"0"), Some(0));
        assert_eq!(decimal(b"1234"), Some(1234));
        assert_eq!(decimal(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        for bad in [&b""[..], b"+1", b"-1", b" 1", b"1 ", b"1e3", b"0x1", b"12345678901234567890"] {
            assert_eq!(decimal(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.40",
            "255.255.255.255",
            "1.0.99.100",
            "::1",
            "::",
            "fe80::1:2",
            "::ffff:1.2.3.4",
            "2001:db8::8a2e:370:7334",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: IpAddr = text.parse().expect("ip");
            assert_eq!(IpText::new(ip).as_str(), ip.to_string(), "{text}");
        }
    }

    #[test]
    fn only_fields_of_the_same_name_are_replaced() {
        let mut fields = Fields::default();
        fields.push_number(&LIMIT, 10);
        assert!(fields.replaces(&LIMIT));
        // Same length (15), another name.
        assert!(!fields.replaces(&HeaderName::from_static("ratelimit-reset")));
        assert!(!fields.replaces(&header::CONTENT_TYPE));
        let long = HeaderName::from_bytes(&[b'x'; 70]).expect("name");
        let longer = HeaderName::from_bytes(&[b'x'; 80]).expect("name");
        fields.push(&long, &HeaderValue::from_static("1"));
        assert!(fields.replaces(&long));
        assert!(!fields.replaces(&longer));
    }

    #[test]
    fn this_hops_own_fields_and_invalid_values_are_not_pushed() {
        let mut fields = Fields::default();
        for name in
            [header::HOST, header::EXPECT, header::CONNECTION, header::CONTENT_LENGTH, header::TRANSFER_ENCODING]
        {
            fields.push(&name, &HeaderValue::from_static("x"));
            fields.push_number(&name, 1);
        }
        assert!(fields.is_empty());
        // Same lengths as two of them, other names.
        fields.push(&HeaderName::from_static("x-ab"), &HeaderValue::from_static("1"));
        fields.push(&HeaderName::from_static("x-abcdefghijkl"), &HeaderValue::from_static("2"));
        assert_eq!(text(&fields), b"x-ab: 1\r\nx-abcdefghijkl: 2\r\n");
        for bad in [&b"a\r\nx-injected: 1"[..], b"a\nb", b"nul\0", b"del\x7f"] {
            assert!(!fields.push_bytes(&ROUTE, bad), "{bad:?}");
        }
        assert!(fields.push_bytes(&ROUTE, b"tab\tand obs-text \xe9"));
        assert_eq!(fields.get("x-route"), Some(&b"tab\tand obs-text \xe9"[..]));
    }

    #[test]
    fn names_compare_in_any_case_and_exactly_otherwise() {
        for lower in
            ["te", "abc", "host", "upgrade", "x-reskflow", "content-length", "transfer-encoding", "a-b-c-d-e-f-g-h-i-j"]
        {
            assert!(is_name(lower.as_bytes(), lower.as_bytes()));
            assert!(is_name(lower.to_ascii_uppercase().as_bytes(), lower.as_bytes()), "{lower}");
            // Every byte of it changed in every other way is another name.
            for at in 0..lower.len() {
                for b in 0..=255u8 {
                    let mut other = lower.as_bytes().to_vec();
                    if b.to_ascii_lowercase() == other[at] {
                        continue;
                    }
                    other[at] = b;
                    assert!(!is_name(&other, lower.as_bytes()), "{lower} at {at}: {b:#x}");
                }
            }
            assert!(!is_name(&lower.as_bytes()[1..], lower.as_bytes()));
        }
        assert!(!is_name(b"", b"te"));
    }

    #[test]
    fn a_names_bit_is_the_same_in_any_case_and_spreads_names_of_one_length() {
        for name in ["x-reskflow-endpoint", "ratelimit-remaining", "age", "x", "", "X-Cache"] {
            assert_eq!(name_bit(name.as_bytes()), name_bit(name.to_ascii_uppercase().as_bytes()), "{name}");
            assert_eq!(name_bit(name.as_bytes()).count_ones(), 1);
        }
        // The fields a request or an answer usually carries, and those added to it on the way:
        // no name of one list shares a bit with a name of the other, so such a message is
        // written with one copy of the added fields, no name looked up.
        let request = [
            "host",
            "authorization",
            "user-agent",
            "accept",
            "accept-encoding",
            "accept-language",
            "content-type",
            "content-length",
            "traceparent",
            "tracestate",
            "cookie",
            "origin",
            "referer",
            "if-none-match",
            "x-request-id",
            "cache-control",
        ];
        let added_to_request = [
            "x-user-id",
            "x-user-roles",
            "x-authenticated-via",
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "traceparent",
        ];
        let answer = [
            "server",
            "date",
            "content-type",
            "content-length",
            "connection",
            "etag",
            "cache-control",
            "last-modified",
            "vary",
            "set-cookie",
            "expires",
            "content-encoding",
            "x-request-id",
        ];
        let added_to_answer = [
            "x-reskflow-endpoint",
            "x-reskflow-route",
            "ratelimit-limit",
            "ratelimit-policy",
            "ratelimit-remaining",
            "ratelimit-reset",
            "age",
            "x-cache",
        ];
        let bits = |names: &[&str]| names.iter().fold(0, |bits, n| bits | name_bit(n.as_bytes()));
        let shared = |names: &[&str], added: &[&str]| {
            bits(&names.iter().filter(|n| !added.contains(n)).copied().collect::<Vec<_>>()) & bits(added)
        };
        assert_eq!(shared(&request, &added_to_request), 0);
        assert_eq!(shared(&answer, &added_to_answer), 0);
    }

    #[test]
    fn every_name_of_the_hop_table_is_found_in_any_case_and_no_other() {
        for (i, (name, hop)) in HOPS.iter().enumerate() {
            assert_eq!(Hop::index(name.as_bytes()), Some(i), "{name}");
            assert_eq!(Hop::of(name.to_ascii_uppercase().as_bytes()), Some(*hop), "{name}");
            // Every name is one a header map knows.
            assert_eq!(HeaderName::from_static(name).as_str(), *name);
        }
        // Names of the table's lengths and first bytes that are not in it.
        for other in ["tf", "hose", "accept", "upgradx", "tracing", "connectioN-", "cookie-jar", "content-lengtx"] {
            assert_eq!(Hop::of(other.as_bytes()), None, "{other}");
        }
        for other in ["user-agent", "keep-alivf", "proxy-connectioo", "transfer-encodin", "", "x"] {
            assert_eq!(Hop::of(other.as_bytes()), None, "{other}");
        }
        // Each set as names, found in any case by `is_in` and by no other name.
        let names = |set: u16| {
            let found: Vec<&str> = HOPS.iter().map(|(n, _)| *n).filter(|n| Hop::is_in(n.as_bytes(), set)).collect();
            for name in &found {
                assert!(Hop::is_in(name.to_ascii_uppercase().as_bytes(), set), "{name}");
            }
            assert!(!Hop::is_in(b"x-other", set) && !Hop::is_in(b"cookie-jar", set));
            found
        };
        assert_eq!(
            names(Hop::HOP_BY_HOP),
            ["upgrade", "trailer", "connection", "keep-alive", "proxy-connection", "transfer-encoding"]
        );
        assert_eq!(names(Hop::CLIENT_WRITES), ["host", "expect", "content-length", "transfer-encoding"]);
        assert_eq!(names(Hop::WRITTEN_HERE), ["host", "expect", "connection", "content-length", "transfer-encoding"]);
        assert_eq!(Hop::Other.bits(), 1 << 3 | 1 << 4 | 1 << 6 | 1 << 8);
        assert_eq!(Hop::Connection.bits(), 1 << 5);
    }

    #[test]
    fn fields_made_once_join_others_with_their_names() {
        let mut identity = Fields::default();
        identity.push(&HeaderName::from_static("x-user-id"), &HeaderValue::from_static("u-1"));
        let mut fields = Fields::default();
        fields.extend(&identity);
        fields.push_number(&LIMIT, 3);
        assert!(fields.replaces(&HeaderName::from_static("x-user-id")));
        assert!(fields.replaces(&LIMIT));
        assert_eq!(text(&fields), b"x-user-id: u-1\r\nratelimit-limit: 3\r\n");
    }

    #[test]
    fn added_fields_replace_received_ones_of_their_name() {
        let mut fields = Fields::with_capacity(64);
        fields.receive(b"Content-Type", b"application/json");
        fields.receive(b"set-cookie", b"a=1");
        fields.receive(b"Set-Cookie", b"b=2");
        fields.receive(b"RateLimit-Limit", b"99");
        // Received names are kept in lower case; a name received twice is sent twice.
        assert_eq!(
            text(&fields),
            b"content-type: application/json\r\nset-cookie: a=1\r\nset-cookie: b=2\r\nratelimit-limit: 99\r\n"
        );
        assert_eq!(fields.get("RateLimit-Limit"), Some(&b"99"[..]));
        fields.push_number(&LIMIT, 10);
        fields.push(&ROUTE, &HeaderValue::from_static("r"));
        assert_eq!(
            text(&fields),
            b"content-type: application/json\r\nset-cookie: a=1\r\nset-cookie: b=2\r\nratelimit-limit: 10\r\nx-route: r\r\n"
        );
        assert_eq!(fields.get("ratelimit-limit"), Some(&b"10"[..]));
        assert_eq!(fields.iter().count(), 5);
        // Into a map: the map's own field of a name gives way, both cookies stay.
        let mut map = HeaderMap::new();
        map.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        map.insert(header::SERVER, HeaderValue::from_static("kept"));
        fields.apply_to(&mut map);
        assert_eq!(map[header::CONTENT_TYPE], "application/json");
        assert_eq!(map.get_all(header::SET_COOKIE).iter().collect::<Vec<_>>(), ["a=1", "b=2"]);
        assert_eq!(map.get_all(LIMIT).iter().collect::<Vec<_>>(), ["10"]);
        assert_eq!(map[header::SERVER], "kept");
    }

    #[test]
    fn received_fields_a_connection_names_are_dropped() {
        let mut fields = Fields::default();
        fields.receive(b"X-Hop", b"1");
        fields.receive(b"x-kept", b"2");
        fields.receive(b"x-hop", b"3");
        fields.push(&ROUTE, &HeaderValue::from_static("r"));
        fields.drop_received(b"X-HOP");
        assert_eq!(text(&fields), b"x-kept: 2\r\nx-route: r\r\n");
        assert_eq!(fields.get("x-hop"), None);
        // The added field is still added: it replaces a received one of its name.
        assert!(fields.replaces(&ROUTE));
        fields.drop_received(b"x-absent");
        assert_eq!(text(&fields), b"x-kept: 2\r\nx-route: r\r\n");
    }
}
