//! Response caching for routes with `cache: { ttl }`, as a shared HTTP cache would (RFC 9111):
//! GET and HEAD answers are kept by route, method, upstream path and query, the route's
//! `varyHeaders` and, on authenticated routes, the caller. A request with `Cache-Control: no-store`
//! skips the cache, `no-cache` (or `max-age=0`) refreshes the entry; a response is stored only when
//! its status is cacheable and it has no `Cache-Control: no-store`/`private`/`no-cache`, no
//! `Set-Cookie` and no `Vary: *`, for the route's ttl or the response's `s-maxage`/`max-age` if
//! shorter. Concurrent misses of one key send one upstream request (moka's single-flight); the
//! others wait for it. Entries are bounded by `CACHE_MAX_BYTES` (moka, per-entry expiry).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use hyper::body::Body;
use moka::future::Cache;
use moka::Expiry;
use xxhash_rust::xxh3::Xxh3;

/// One stored answer.
#[derive(Debug)]
pub struct Cached {
    pub route: String,
    pub path: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub stored_at: Instant,
    pub ttl: Duration,
}

pub type Entry = Arc<Cached>;

struct ByTtl;

impl Expiry<u128, Entry> for ByTtl {
    fn expire_after_create(&self, _: &u128, value: &Entry, _: Instant) -> Option<Duration> {
        Some(value.ttl)
    }
}

pub struct ResponseCache {
    entries: Cache<u128, Entry>,
}

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
        let entries = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, e: &Entry| {
                let headers: usize = e.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 32).sum();
                u32::try_from(e.body.len() + headers + 128).unwrap_or(u32::MAX)
            })
            .expire_after(ByTtl)
            .support_invalidation_closures()
            .build();
        ResponseCache { entries }
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
            for value in headers.get_all(name.as_str()) {
                h.update(value.as_bytes());
                h.update(&[2]);
            }
        }
        if let Some(user) = user {
            h.update(b"\x03user\x03");
            h.update(user.as_bytes());
        }
        h.digest128()
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

/// The headers of a hit: the stored ones with `Age` and `X-Cache: HIT`.
pub fn hit_headers(entry: &Cached) -> HeaderMap {
    let mut headers = entry.headers.clone();
    headers.insert(header::AGE, HeaderValue::from(entry.stored_at.elapsed().as_secs()));
    headers.insert(X_CACHE, HeaderValue::from_static("HIT"));
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let base = ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &h, None);
        assert_ne!(base, ResponseCache::key("r", &Method::GET, "/a?x=2", &vary, &h, None));
        assert_ne!(base, ResponseCache::key("r", &Method::HEAD, "/a?x=1", &vary, &h, None));
        assert_ne!(
            base,
            ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &headers(&[("accept-language", "de")]), None)
        );
        assert_ne!(base, ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &h, Some("alice")));
        assert_eq!(base, ResponseCache::key("r", &Method::GET, "/a?x=1", &vary, &h, None));
    }
}
