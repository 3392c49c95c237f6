//! Response caching for routes with `cache: { ttl }`, as a shared HTTP cache would (RFC 9111):
//! GET and HEAD answers are kept by route, method, upstream path and query, the route's
//! `varyHeaders` and, on authenticated routes, the caller. A request with `Cache-Control: no-store`
//! skips the cache, `no-cache` (or `max-age=0`) refreshes the entry; a response is stored only when
//! its status is cacheable and it has no `Cache-Control: no-store`/`private`/`no-cache`, no
//! `Set-Cookie` and no `Vary: *`, for the route's ttl or the response's `s-maxage`/`max-age` if
//! shorter. Concurrent misses of one key send one upstream request (moka's single-flight); the
//! others wait for it. Entries are bounded by `CACHE_MAX_BYTES` (moka, per-entry expiry).
//!
//! With `CACHE_STORE=redis` the entries live in Redis (`reskflow:cache:<route>:<key>`, expiring with
//! their ttl), shared by every replica; each replica keeps what it read for at most a second in
//! memory, so a purge reaches every replica within a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, StatusCode};
use hyper::body::Body;
use moka::future::Cache;
use moka::Expiry;
use reskflow_sidecar::fields::Fields;
use xxhash_rust::xxh3::Xxh3;

/// One stored answer.
#[derive(Debug)]
pub struct Cached {
    pub route: String,
    pub path: String,
    pub status: StatusCode,
    /// The answer's fields as a head's text (`Fields::received_from` its map, made once when it
    /// is stored): a hit sends them with one copy, and the `Age` and `X-Cache` it adds replace
    /// stored ones; cloning a map and inserting into it cost ~2,600 instructions a hit.
    pub fields: Fields,
    pub body: Bytes,
    pub stored_at: Instant,
    pub ttl: Duration,
}

pub type Entry = Arc<Cached>;

struct ByTtl;

impl Expiry<u128, Entry> for ByTtl {
    fn expire_after_create(&self, _: &u128, value: &Entry, _: Instant) -> Option<Duration> {
        Some(value.ttl.saturating_sub(value.stored_at.elapsed()))
    }
}

struct Local;

impl Expiry<u128, Entry> for Local {
    fn expire_after_create(&self, _: &u128, value: &Entry, _: Instant) -> Option<Duration> {
        Some(value.ttl.saturating_sub(value.stored_at.elapsed()).min(LOCAL_COPY))
    }
}

pub struct ResponseCache {
    entries: Cache<u128, Entry>,
    shared: Option<Shared>,
}

/// Entries in Redis.
struct Shared {
    conn: redis::aio::ConnectionManager,
    timeout: Duration,
}

/// How long a replica keeps an entry it read from (or wrote to) Redis.
const LOCAL_COPY: Duration = Duration::from_secs(1);

/// What the request's own `Cache-Control` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestDirective {
    /// Use and fill the cache.
    Normal,
    /// Do not answer from the cache, but store the fresh answer (`no-cache`, `max-age=0`).
    Refresh,
    /// Leave the cache alone (`no-store`).
    Bypass,
}

pub const X_CACHE: HeaderName = HeaderName::from_static("x-cache");

impl ResponseCache {
    pub fn new(max_bytes: u64) -> ResponseCache {
        ResponseCache { entries: Self::memory(max_bytes, false), shared: None }
    }

    /// Entries in Redis, with one-second local copies.
    pub fn shared(max_bytes: u64, conn: redis::aio::ConnectionManager, timeout: Duration) -> ResponseCache {
        ResponseCache { entries: Self::memory(max_bytes, true), shared: Some(Shared { conn, timeout }) }
    }

    fn memory(max_bytes: u64, local_copies: bool) -> Cache<u128, Entry> {
        let builder = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, e: &Entry| {
                let held = e.body.len() + e.fields.text_len() + e.path.len() + e.route.len();
                u32::try_from(held + 128).unwrap_or(u32::MAX)
            })
            .support_invalidation_closures();
        if local_copies {
            builder.expire_after(Local).build()
        } else {
            builder.expire_after(ByTtl).build()
        }
    }

    fn redis_key(route: &str, key: u128) -> String {
        format!("reskflow:cache:{route}:{key:032x}")
    }

    /// The shared entry for `key`, if Redis has one (and answers in time).
    pub async fn fetch_shared(&self, route: &str, key: u128) -> Option<Entry> {
        let shared = self.shared.as_ref()?;
        let mut conn = shared.conn.clone();
        let mut cmd = redis::cmd("GET");
        cmd.arg(Self::redis_key(route, key));
        match tokio::time::timeout(shared.timeout, cmd.query_async::<Option<Vec<u8>>>(&mut conn)).await {
            Ok(Ok(Some(bytes))) => decode(route, &bytes).map(Arc::new),
            Ok(Ok(None)) => None,
            Ok(Err(err)) => {
                tracing::debug!(error = %err, "Redis cache read failed; asking the upstream");
                None
            }
            Err(_) => None,
        }
    }

    /// Writes `entry` to Redis for its ttl.
    pub async fn store_shared(&self, key: u128, entry: &Cached) {
        let Some(shared) = &self.shared else { return };
        let mut conn = shared.conn.clone();
        let ms = u64::try_from(entry.ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut cmd = redis::cmd("SET");
        cmd.arg(Self::redis_key(&entry.route, key)).arg(encode(entry)).arg("PX").arg(ms);
        if let Ok(Err(err)) = tokio::time::timeout(shared.timeout, cmd.query_async::<()>(&mut conn)).await {
            tracing::debug!(error = %err, "Redis cache write failed");
        }
    }

    pub fn entries(&self) -> &Cache<u128, Entry> {
        &self.entries
    }

    /// The key of a request: route, method, upstream path and query, the vary headers' values and
    /// the caller (when known).
    pub fn key(
        route: &str,
        method: &Method,
        path: &str,
        vary: &[String],
        headers: &HeaderMap,
        extra: &Fields,
        user: Option<&str>,
    ) -> u128 {
        let mut h = Xxh3::new();
        for part in [route.as_bytes(), method.as_str().as_bytes(), path.as_bytes()] {
            h.update(part);
            h.update(&[0]);
        }
        for name in vary {
            h.update(name.as_bytes());
            h.update(&[1]);
            // The request as the upstream gets it: a field the gateway adds replaces the request's
            // own of its name.
            for value in extra.values_over(headers, name) {
                h.update(value);
                h.update(&[2]);
            }
        }
        if let Some(user) = user {
            h.update(b"\x03user\x03");
            h.update(user.as_bytes());
        }
        h.digest128()
    }

    /// Drops entries as `purge` does, in Redis too (every replica then sees it within a second).
    pub async fn purge_everywhere(&self, route: Option<&str>, path: Option<&str>) -> Result<u64, String> {
        self.purge(route, path)?;
        let Some(shared) = &self.shared else { return Ok(0) };
        let mut conn = shared.conn.clone();
        let pattern = format!("reskflow:cache:{}:*", route.unwrap_or("*"));
        let mut cursor: u64 = 0;
        let mut removed = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await
                .map_err(|e| format!("Redis: {e}"))?;
            for key in keys {
                if let Some(path) = path {
                    // Only the path's entries: read each (entries are small next to a purge's rarity).
                    let bytes: Option<Vec<u8>> =
                        redis::cmd("GET").arg(&key).query_async(&mut conn).await.map_err(|e| format!("Redis: {e}"))?;
                    let keep =
                        bytes.and_then(|b| decode("", &b)).is_none_or(|e| e.path.split('?').next() != Some(path));
                    if keep {
                        continue;
                    }
                }
                let n: u64 =
                    redis::cmd("DEL").arg(&key).query_async(&mut conn).await.map_err(|e| format!("Redis: {e}"))?;
                removed += n;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(removed)
    }

    /// Drops every entry of `route` (of `path` within it when given); all entries when `route` is None.
    pub fn purge(&self, route: Option<&str>, path: Option<&str>) -> Result<(), String> {
        match (route, path) {
            (None, _) => {
                self.entries.invalidate_all();
                Ok(())
            }
            (Some(route), path) => {
                let (route, path) = (route.to_string(), path.map(str::to_string));
                self.entries
                    .invalidate_entries_if(move |_, e| {
                        e.route == route
                            && path.as_deref().is_none_or(|p| e.path == p || e.path.split('?').next() == Some(p))
                    })
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        }
    }
}

/// Entry bytes for Redis: version, status, ttl and age (ms), path, headers, body; lengths as u32 LE.
fn encode(e: &Cached) -> Vec<u8> {
    let mut out = Vec::with_capacity(e.body.len() + 256);
    let put = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(bytes);
    };
    out.push(1);
    out.extend_from_slice(&e.status.as_u16().to_le_bytes());
    out.extend_from_slice(&u64::try_from(e.ttl.as_millis()).unwrap_or(u64::MAX).to_le_bytes());
    out.extend_from_slice(&u64::try_from(e.stored_at.elapsed().as_millis()).unwrap_or(0).to_le_bytes());
    put(&mut out, e.path.as_bytes());
    out.extend_from_slice(&u32::try_from(e.fields.iter().count()).unwrap_or(0).to_le_bytes());
    for (name, value) in e.fields.iter() {
        put(&mut out, name);
        put(&mut out, value);
    }
    put(&mut out, &e.body);
    out
}

/// Reads `encode`'s bytes back; None for anything else (a stale format, a stranger's key).
fn decode(route: &str, bytes: &[u8]) -> Option<Cached> {
    struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
    }
    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            let part = self.bytes.get(self.at..self.at.checked_add(n)?)?;
            self.at += n;
            Some(part)
        }
        fn u32(&mut self) -> Option<u32> {
            Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
        }
        fn u64(&mut self) -> Option<u64> {
            Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
        }
        fn chunk(&mut self) -> Option<&'a [u8]> {
            let len = self.u32()? as usize;
            self.take(len)
        }
    }
    let mut r = Reader { bytes, at: 0 };
    if r.take(1)? != [1] {
        return None;
    }
    let status = StatusCode::from_u16(u16::from_le_bytes(r.take(2)?.try_into().ok()?)).ok()?;
    let ttl = Duration::from_millis(r.u64()?);
    let age = Duration::from_millis(r.u64()?);
    let path = std::str::from_utf8(r.chunk()?).ok()?.to_string();
    let count = r.u32()?;
    let mut fields = Fields::default();
    for _ in 0..count {
        let (name, value) = (r.chunk()?, r.chunk()?);
        fields.receive_checked(name, value).then_some(())?;
    }
    let body = Bytes::copy_from_slice(r.chunk()?);
    if r.at != bytes.len() {
        return None;
    }
    let stored_at = Instant::now().checked_sub(age).unwrap_or_else(Instant::now);
    Some(Cached { route: route.to_string(), path, status, fields, body, stored_at, ttl })
}

pub fn request_directive(headers: &HeaderMap) -> RequestDirective {
    let mut directive = RequestDirective::Normal;
    for value in headers.get_all(header::CACHE_CONTROL).iter().chain(headers.get_all(header::PRAGMA).iter()) {
        let Ok(value) = value.to_str() else { continue };
        for d in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            match d.as_str() {
                "no-store" => return RequestDirective::Bypass,
                "no-cache" | "max-age=0" => directive = RequestDirective::Refresh,
                _ => {}
            }
        }
    }
    directive
}

/// How long a response may be stored (None: not at all), given the route's ttl.
pub fn freshness(status: StatusCode, headers: &HeaderMap, route_ttl: Duration) -> Option<Duration> {
    if !matches!(status.as_u16(), 200 | 203 | 204 | 300 | 301 | 404 | 405 | 410 | 414 | 501) {
        return None;
    }
    if headers.contains_key(header::SET_COOKIE) {
        return None;
    }
    if headers.get_all(header::VARY).iter().any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|p| p.trim() == "*"))) {
        return None;
    }
    let mut ttl = route_ttl;
    let mut shared_max_age = None;
    for value in headers.get_all(header::CACHE_CONTROL) {
        let Ok(value) = value.to_str() else { return None };
        for d in value.split(',').map(|d| d.trim().to_ascii_lowercase()) {
            if d == "no-store"
                || d == "private"
                || d == "no-cache"
                || d.starts_with("private=")
                || d.starts_with("no-cache=")
            {
                return None;
            }
            let seconds = |prefix: &str| d.strip_prefix(prefix).and_then(|n| n.trim_matches('"').parse::<u64>().ok());
            if let Some(s) = seconds("s-maxage=") {
                shared_max_age = Some(s);
            } else if let Some(s) = seconds("max-age=") {
                ttl = ttl.min(Duration::from_secs(s));
            }
        }
    }
    if let Some(s) = shared_max_age {
        ttl = route_ttl.min(Duration::from_secs(s));
    }
    (!ttl.is_zero()).then_some(ttl)
}

/// Reads `body` to its end if it stays within `limit` bytes. Over the limit: the frames read so far
/// and the rest of the body, to be streamed on as they are.
pub async fn collect_within<B>(mut body: B, limit: usize) -> Result<Result<Bytes, (Vec<Bytes>, B)>, B::Error>
where
    B: Body<Data = Bytes> + Unpin,
{
    use http_body_util::BodyExt;
    let mut parts = Vec::new();
    let mut size = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if let Ok(data) = frame.into_data() {
            size += data.len();
            parts.push(data);
            if size > limit {
                return Ok(Err((parts, body)));
            }
        }
    }
    if parts.len() == 1 {
        return Ok(Ok(parts.pop().unwrap_or_default()));
    }
    let mut all = BytesMut::with_capacity(size);
    for p in parts {
        all.extend_from_slice(&p);
    }
    Ok(Ok(all.freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn what_may_be_stored_and_for_how_long() {
        let ttl = Duration::from_secs(300);
        let ok = StatusCode::OK;
        assert_eq!(freshness(ok, &headers(&[]), ttl), Some(ttl));
        assert_eq!(
            freshness(ok, &headers(&[("cache-control", "public, max-age=60")]), ttl),
            Some(Duration::from_secs(60))
        );
        assert_eq!(
            freshness(ok, &headers(&[("cache-control", "max-age=10, s-maxage=120")]), ttl),
            Some(Duration::from_secs(120)),
            "s-maxage is for shared caches"
        );
        assert_eq!(
            freshness(ok, &headers(&[("cache-control", "max-age=900")]), ttl),
            Some(ttl),
            "the route's ttl caps it"
        );
        assert_eq!(freshness(ok, &headers(&[("cache-control", "no-store")]), ttl), None);
        assert_eq!(freshness(ok, &headers(&[("cache-control", "private, max-age=60")]), ttl), None);
        assert_eq!(freshness(ok, &headers(&[("cache-control", "max-age=0")]), ttl), None);
        assert_eq!(freshness(ok, &headers(&[("set-cookie", "a=b")]), ttl), None);
        assert_eq!(freshness(ok, &headers(&[("vary", "accept, *")]), ttl), None);
        assert_eq!(freshness(StatusCode::INTERNAL_SERVER_ERROR, &headers(&[]), ttl), None);
        assert_eq!(freshness(StatusCode::NOT_FOUND, &headers(&[]), ttl), Some(ttl));
    }

    #[test]
    fn entries_survive_the_trip_through_redis_bytes() {
        let entry = Cached {
            route: "r".into(),
            path: "/a?x=1".into(),
            status: StatusCode::NOT_FOUND,
            fields: Fields::received_from(&headers(&[
                ("content-type", "application/json"),
                ("etag", "\"v1\""),
                ("age", "3"),
                ("connection", "close"),
                ("content-length", "16"),
            ])),
            body: Bytes::from_static(b"{\"missing\":true}"),
            stored_at: Instant::now(),
            ttl: Duration::from_secs(30),
        };
        // The text a hit sends: the stored fields (framing and hop-by-hop ones left out), which
        // the hit's own Age replaces.
        assert_eq!(
            entry.fields.iter().collect::<Vec<_>>(),
            [(&b"content-type"[..], &b"application/json"[..]), (b"etag", b"\"v1\""), (b"age", b"3")]
        );
        let mut hit = entry.fields.clone();
        hit.push_number(&header::AGE, 7);
        assert_eq!(
            hit.iter().collect::<Vec<_>>(),
            [(&b"content-type"[..], &b"application/json"[..]), (b"etag", b"\"v1\""), (b"age", b"7")]
        );
        let back = decode("r", &encode(&entry)).expect("decodes");
        assert_eq!(
            (back.status, &back.path, back.fields.iter().collect::<Vec<_>>(), &back.body, back.ttl),
            (entry.status, &entry.path, entry.fields.iter().collect::<Vec<_>>(), &entry.body, entry.ttl)
        );
        let bytes = encode(&entry);
        for cut in 0..bytes.len() {
            assert!(decode("r", &bytes[..cut]).is_none(), "a truncated entry ({cut} bytes) is refused");
        }
        // A stored field that is not a field (bytes from elsewhere under the key) refuses the entry.
        let mut bad = bytes.clone();
        let at = bad.windows(4).position(|w| w == b"etag").expect("the name is stored");
        bad[at] = b' ';
        assert!(decode("r", &bad).is_none(), "a name with a space is refused");
        let mut bad = bytes;
        let at = bad.windows(2).position(|w| w == b"v1").expect("the value is stored");
        bad[at] = b'\n';
        assert!(decode("r", &bad).is_none(), "a value with a line feed is refused");
    }

    #[test]
    fn request_directives() {
        assert_eq!(request_directive(&headers(&[])), RequestDirective::Normal);
        assert_eq!(request_directive(&headers(&[("cache-control", "no-cache")])), RequestDirective::Refresh);
        assert_eq!(request_directive(&headers(&[("pragma", "no-cache")])), RequestDirective::Refresh);
        assert_eq!(request_directive(&headers(&[("cache-control", "max-age=0, no-store")])), RequestDirective::Bypass);
    }

    #[test]
    fn keys_differ_by_what_varies() {
        let h = headers(&[("accept-language", "fr")]);
        let vary = vec!["accept-language".to_string()];
        let none = Fields::default();
        let base = ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &h, &none, None);
        assert_ne!(base, ResponseCache::key("r", &Method::GET, "/a?x=2", &vary, &h, &none, None));
        assert_ne!(base, ResponseCache::key("r", &Method::HEAD, "/a?x=1", &vary, &h, &none, None));
        let de = headers(&[("accept-language", "de")]);
        assert_ne!(base, ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &de, &none, None));
        assert_ne!(base, ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &h, &none, Some("alice")));
        assert_eq!(base, ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &h, &none, None));

        // A field the gateway adds counts as the upstream sees it: the same key as the request's
        // headers with that field inserted (it replaces the request's own of its name).
        let mut fr = Fields::default();
        fr.push(&HeaderName::from_static("accept-language"), &HeaderValue::from_static("fr"));
        assert_eq!(base, ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &de, &fr, None));
        let mut other = Fields::default();
        other.push(&HeaderName::from_static("x-forwarded-proto"), &HeaderValue::from_static("http"));
        assert_eq!(base, ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &h, &other, None));
        let mut applied = de.clone();
        fr.apply_to(&mut applied);
        assert_eq!(
            ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &applied, &none, None),
            ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &de, &fr, None)
        );
    }
}
