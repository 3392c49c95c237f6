//! Gateway route matching: request paths are normalized first (so `..`, `%2e%2e`, `//` and encoded
//! slashes cannot reach a route they should not), then matched by method and path pattern
//! (`/api/orders/:id`, `/api/files/*path`) with matchit, axum's router. The most specific route wins:
//! position by position, a literal segment beats a parameter, which beats a wildcard; on a tie a
//! route for the request's method beats an `ALL` route. HEAD requests fall back to GET routes.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;
use reskflow_proto::route::{parse_pattern, Segment};

/// Why a request path was refused before matching (the gateway answers 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with /")]
    NotAbsolute,
    #[error("the path contains an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains an invalid percent-encoding")]
    BadEncoding,
}

/// RFC 3986 normalization as Envoy's `normalize_path` + `merge_slashes`: percent-encoded unreserved
/// characters are decoded (`%2e` is a dot, `%41` is `A`), other encodings are kept with upper-case
/// hex, encoded slashes and backslashes are refused, repeated slashes are merged and `.` / `..`
/// segments removed (`..` never climbs above the root). Borrowed when the path was normal already.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = path.as_bytes();
    // One scan finds what needs work: '%' or '\\', "//", and "/." (where a dot segment can start;
    // only then are the segments compared, since "/.well-known" is normal).
    let (mut escapes, mut double_slash, mut slash_dot) = (false, false, false);
    let mut prev = 0u8;
    for &b in bytes {
        escapes |= b == b'%' || b == b'\\';
        double_slash |= prev == b'/' && b == b'/';
        slash_dot |= prev == b'/' && b == b'.';
        if escapes || double_slash {
            break; // rewritten whatever else is there
        }
        prev = b;
    }
    let dot_segment = slash_dot && path.split('/').any(|s| s == "." || s == "..");
    if !escapes && !double_slash && !dot_segment {
        return Ok(Cow::Borrowed(path));
    }
    // 1. Percent-decoding of unreserved characters.
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (Some(hi), Some(lo)) =
                    (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
                else {
                    return Err(PathError::BadEncoding);
                };
                let byte = (hi * 16 + lo) as u8;
                if byte == b'/' || byte == b'\\' {
                    return Err(PathError::EncodedSlash);
                }
                if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
                    decoded.push(byte as char);
                } else {
                    decoded.push('%');
                    decoded.push_str(&format!("{byte:02X}"));
                }
                i += 3;
            }
            b'\\' => return Err(PathError::Backslash),
            _ => {
                // Not a % and not a backslash: copy the whole run up to the next one.
                let end = bytes[i..].iter().position(|b| *b == b'%' || *b == b'\\').map_or(bytes.len(), |p| i + p);
                decoded.push_str(&path[i..end]);
                i = end;
            }
        }
    }
    // 2. Merged slashes and removed dot segments.
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = decoded.split('/').skip(1).collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (n, segment) in segments.iter().enumerate() {
        match *segment {
            "" => trailing_slash = n == last && !out.is_empty(),
            "." => trailing_slash = n == last,
            ".." => {
                out.pop();
                trailing_slash = n == last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(decoded.len());
    for s in &out {
        normal.push('/');
        normal.push_str(s);
    }
    if out.is_empty() || trailing_slash {
        normal.push('/');
    }
    Ok(Cow::Owned(normal))
}

/// Percent-decodes a path parameter for templates and validation (lossy on invalid UTF-8).
pub fn decode_param(raw: &str) -> Cow<'_, str> {
    if !raw.contains('%') {
        return Cow::Borrowed(raw);
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' {
            if let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b)))
            {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The name matchit knows an unnamed `*` wildcard by.
const ANON_WILDCARD: &str = "__wildcard";

/// A route pattern in matchit's syntax, and its specificity (per segment: 3 literal, 2 parameter,
/// 1 wildcard).
fn to_matchit(path: &str) -> Result<(String, Vec<u8>), String> {
    let segments = parse_pattern(path)?;
    let mut pattern = String::with_capacity(path.len() + 8);
    let mut rank = Vec::with_capacity(segments.len());
    for segment in segments {
        pattern.push('/');
        match segment {
            Segment::Static(s) => {
                // Braces are matchit's syntax; parse_pattern refuses them in literals.
                pattern.push_str(s);
                rank.push(3);
            }
            Segment::Param(name) => {
                pattern.push('{');
                pattern.push_str(name);
                pattern.push('}');
                rank.push(2);
            }
            Segment::Wildcard(name) => {
                pattern.push_str("{*");
                pattern.push_str(if name == "*" { ANON_WILDCARD } else { name });
                pattern.push('}');
                rank.push(1);
            }
        }
    }
    Ok((pattern, rank))
}

/// Routes by method and path pattern.
#[derive(Debug)]
pub struct RouteTable<T> {
    by_method: HashMap<Method, matchit::Router<usize>>,
    all: matchit::Router<usize>,
    entries: Vec<Entry<T>>,
}

#[derive(Debug)]
struct Entry<T> {
    value: T,
    rank: Vec<u8>,
}

/// A matched route and the path's parameters.
#[derive(Debug)]
pub struct Matched<'t, 'p, T> {
    pub value: &'t T,
    raw: matchit::Params<'t, 'p>,
}

impl<'t, 'p, T> Matched<'t, 'p, T> {
    /// The path's parameters (raw, percent-encoded as in the normalized path; a `*` wildcard's value
    /// is named `*`). Listed on demand: most routes use none of them.
    pub fn params(&self) -> Vec<(&'t str, &'p str)> {
        self.raw.iter().map(|(k, v)| (if k == ANON_WILDCARD { "*" } else { k }, v)).collect()
    }
}

/// A route that cannot be added: its id and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub id: String,
    pub why: String,
}

impl<T> Default for RouteTable<T> {
    fn default() -> Self {
        RouteTable { by_method: HashMap::new(), all: matchit::Router::new(), entries: Vec::new() }
    }
}

impl<T> RouteTable<T> {
    /// Builds the table from `(id, method, path, value)`; every route that conflicts with an earlier
    /// one (the same method and an equivalent pattern) is reported.
    pub fn build<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str, &'a str, T)>) -> Result<Self, Vec<Conflict>> {
        let mut table = RouteTable::default();
        let mut conflicts = Vec::new();
        let mut owners: HashMap<(String, String), String> = HashMap::new();
        for (id, method, path, value) in routes {
            let (pattern, rank) = match to_matchit(path) {
                Ok(p) => p,
                Err(why) => {
                    conflicts.push(Conflict { id: id.to_string(), why: format!("path: {why}") });
                    continue;
                }
            };
            let router = if method.eq_ignore_ascii_case("ALL") {
                &mut table.all
            } else {
                match Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => table.by_method.entry(m).or_default(),
                    Err(_) => {
                        conflicts.push(Conflict { id: id.to_string(), why: format!("method {method} is not valid") });
                        continue;
                    }
                }
            };
            let index = table.entries.len();
            if let Err(err) = router.insert(pattern.clone(), index) {
                let other = match &err {
                    matchit::InsertError::Conflict { with } => {
                        owners.get(&(method.to_ascii_uppercase(), with.clone())).cloned()
                    }
                    _ => None,
                };
                let why = match other {
                    Some(other) => format!("{method} {path} conflicts with route {other}"),
                    None => format!("{method} {path} cannot be routed: {err}"),
                };
                conflicts.push(Conflict { id: id.to_string(), why });
                continue;
            }
            owners.insert((method.to_ascii_uppercase(), pattern.clone()), id.to_string());
            // `/api/files/*` also answers `/api/files` and `/api/files/` when nothing else does.
            if let Some(prefix) = pattern.strip_suffix(&format!("{{*{}}}", wildcard_name(&pattern))) {
                let _ = router.insert(prefix.to_string(), index);
                if prefix.len() > 1 {
                    let _ = router.insert(prefix.trim_end_matches('/').to_string(), index);
                }
            }
            table.entries.push(Entry { value, rank });
        }
        if conflicts.is_empty() {
            Ok(table)
        } else {
            Err(conflicts)
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most specific route for a normalized path.
    pub fn lookup<'t, 'p>(&'t self, method: &Method, path: &'p str) -> Option<Matched<'t, 'p, T>> {
        let specific =
            self.by_method.get(method).and_then(|r| r.at(path).ok()).or_else(|| {
                (method == Method::HEAD).then(|| self.by_method.get(&Method::GET)?.at(path).ok()).flatten()
            });
        let any = self.all.at(path).ok();
        let best = match (specific, any) {
            (Some(s), Some(a)) => {
                if self.entries[*a.value].rank > self.entries[*s.value].rank {
                    a
                } else {
                    s
                }
            }
            (Some(s), None) => s,
            (None, Some(a)) => a,
            (None, None) => return None,
        };
        Some(Matched { value: &self.entries[*best.value].value, raw: best.params })
    }
}

fn wildcard_name(pattern: &str) -> &str {
    pattern.rsplit_once("{*").and_then(|(_, rest)| rest.strip_suffix('}')).unwrap_or("")
}

/// `targetPath` with the matched parameters put in (raw, so an encoded `/` in a value cannot add
/// segments). Parameters the pattern names but the match lacks become empty.
pub fn fill_target(target: &str, params: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(target.len() + 16);
    for segment in target.split('/').skip(1) {
        out.push('/');
        let name =
            segment.strip_prefix(':').or_else(|| segment.strip_prefix('*').map(|n| if n.is_empty() { "*" } else { n }));
        match name {
            Some(name) => {
                let value = params.iter().find(|(k, _)| *k == name).map_or("", |(_, v)| *v);
                out.push_str(value);
            }
            None => out.push_str(segment),
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization() {
        let cases = [
            ("/api/orders", "/api/orders"),
            ("/api//orders///1", "/api/orders/1"),
            ("/api/./orders/../users", "/api/users"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2e/%2e/x", "/x"),
            ("/../../etc", "/etc"),
            ("/api/a%41b", "/api/aAb"),
            ("/api/a%3ab", "/api/a%3Ab"),
            ("/api/x/", "/api/x/"),
            ("/api/x/.", "/api/x/"),
            ("/", "/"),
            ("//", "/"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input).expect("test input is valid"), want, "{input}");
        }
        assert_eq!(normalize("/api/a%2fb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/api/a%5Cb"), Err(PathError::EncodedSlash));
        assert_eq!(normalize("/api/a\\b"), Err(PathError::Backslash));
        assert_eq!(normalize("/api/a%zz"), Err(PathError::BadEncoding));
        assert_eq!(normalize("/api/a%2"), Err(PathError::BadEncoding));
        assert_eq!(normalize("api"), Err(PathError::NotAbsolute));
        assert!(matches!(normalize("/api/orders/1"), Ok(Cow::Borrowed(_))));
    }

    fn table(routes: &[(&'static str, &'static str, &'static str)]) -> RouteTable<&'static str> {
        RouteTable::build(routes.iter().map(|(id, m, p)| (*id, *m, *p, *id))).expect("test input is valid")
    }

    #[test]
    fn most_specific_wins() {
        let t = table(&[
            ("any-api", "ALL", "/api/*"),
            ("order", "GET", "/api/orders/:id"),
            ("new-order", "ALL", "/api/orders/new"),
            ("orders-all", "ALL", "/api/orders/:id"),
            ("files", "GET", "/api/files/*path"),
        ]);
        let get = |m: Method, p: &str| t.lookup(&m, p).map(|m| *m.value);
        assert_eq!(get(Method::GET, "/api/orders/7"), Some("order"));
        assert_eq!(get(Method::POST, "/api/orders/7"), Some("orders-all"));
        assert_eq!(get(Method::GET, "/api/orders/new"), Some("new-order"));
        assert_eq!(get(Method::HEAD, "/api/orders/7"), Some("order"));
        assert_eq!(get(Method::DELETE, "/api/other/thing"), Some("any-api"));
        assert_eq!(get(Method::GET, "/api/files/a/b.txt"), Some("files"));
        assert_eq!(get(Method::GET, "/api/files"), Some("files"));
        assert_eq!(get(Method::GET, "/nope"), None);
        let m = t.lookup(&Method::GET, "/api/files/a/b.txt").expect("test input is valid");
        assert_eq!(m.params(), vec![("path", "a/b.txt")]);
        let m = t.lookup(&Method::PUT, "/api/x/y").expect("test input is valid");
        assert_eq!(m.params(), vec![("*", "x/y")]);
    }

    #[test]
    fn conflicts_name_both_routes() {
        let err = RouteTable::build([
            ("a", "GET", "/api/orders/:id", ()),
            ("b", "GET", "/api/orders/:id", ()),
            ("c", "POST", "/api/orders/:id", ()),
        ])
        .unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(err[0].id, "b");
        assert!(err[0].why.contains("route a"), "{}", err[0].why);
    }

    #[test]
    fn target_paths() {
        assert_eq!(fill_target("/orders/:id", &[("id", "42")]), "/orders/42");
        assert_eq!(fill_target("/v2/*", &[("*", "a/b")]), "/v2/a/b");
        assert_eq!(fill_target("/f/*path", &[("path", "x%2Fy")]), "/f/x%2Fy");
        assert_eq!(fill_target("/", &[]), "/");
    }
}

/// Hostile input: arbitrary paths and route sets never panic, and what normalization lets through
/// cannot climb out of the path it was given.
#[cfg(test)]
mod hostile_input {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

        #[test]
        fn normalized_paths_are_clean_and_stable(path in "[/a-z.%2eEfF5cC\\\\0-9:*?#]{0,40}") {
            if let Ok(clean) = normalize(&path) {
                prop_assert!(clean.starts_with('/'), "{clean}");
                prop_assert!(!clean.contains("//"), "{clean}");
                prop_assert!(!clean.split('/').any(|s| s == "." || s == ".."), "{clean}");
                prop_assert!(!clean.to_ascii_lowercase().contains("%2f") && !clean.contains('\\'), "{clean}");
                let again = normalize(&clean).map(|c| c.into_owned());
                prop_assert_eq!(again.as_deref(), Ok(clean.as_ref()), "normalizing twice changes nothing");
            }
        }

        #[test]
        fn any_route_set_builds_or_names_its_conflicts(
            routes in proptest::collection::vec(("(GET|POST|ALL|get|X)", "(/[:*a-z]{0,4}){0,4}\\*?"), 0..8),
            probe in "(/[a-z0-9]{0,3}){0,5}",
        ) {
            let entries: Vec<(String, &str, &str)> =
                routes.iter().enumerate().map(|(i, (m, p))| (format!("r{i}"), m.as_str(), p.as_str())).collect();
            match RouteTable::build(entries.iter().map(|(id, m, p)| (id.as_str(), *m, *p, id.clone()))) {
                Ok(table) => {
                    if let Ok(path) = normalize(&probe) {
                        if let Some(hit) = table.lookup(&Method::GET, &path) {
                            prop_assert!(entries.iter().any(|(id, _, _)| id == hit.value));
                        }
                    }
                }
                Err(conflicts) => prop_assert!(!conflicts.is_empty()),
            }
        }
    }
}
