//! The rules an input passes before the registry stores it. Each `normalize` fills the defaults a
//! user may leave out, then reports every violation at once, naming the field as the REST API does.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use super::{CheckKind, DiscoverQuery, HealthCheck, Instance, SearchQuery, Service};
use crate::invalid::{Invalid, Violations};

/// Largest page a list or search returns.
pub const MAX_PAGE_SIZE: u32 = 1000;
const MAX_ID: usize = 128;
const MAX_LIST: usize = 64;
const MAX_LABEL: usize = 128;
const MAX_META_VALUE: usize = 1024;
const MAX_TEXT: usize = 4096;
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(24 * 3600);
const SCHEMES: &[&str] = &["http", "https", "grpc", "tcp"];
const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "OPTIONS"];

/// Ids are 1-128 characters of ASCII letters, digits, `.`, `_` and `-`, starting with a letter or digit.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id.as_bytes()[0].is_ascii_alphanumeric()
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_id(v: &mut Violations, field: &str, id: &str) {
    if id.is_empty() {
        v.add(field, "is required");
    } else if !is_valid_id(id) {
        v.add(field, "must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit");
    }
}

fn check_len(v: &mut Violations, field: &str, value: &str, max: usize) {
    if value.chars().count() > max {
        v.add(field, format!("must be at most {max} characters"));
    }
}

fn check_labels(v: &mut Violations, field: &str, labels: &[String]) {
    if labels.len() > MAX_LIST {
        v.add(field, format!("must have at most {MAX_LIST} entries"));
    }
    let mut seen = HashSet::new();
    for (i, label) in labels.iter().enumerate() {
        if label.trim().is_empty() {
            v.add(format!("{field}[{i}]"), "must not be empty");
        } else if label.len() > MAX_LABEL {
            v.add(format!("{field}[{i}]"), format!("must be at most {MAX_LABEL} characters"));
        } else if !seen.insert(label.as_str()) {
            v.add(format!("{field}[{i}]"), format!("duplicate value '{label}'"));
        }
    }
}

fn check_metadata(v: &mut Violations, field: &str, metadata: &BTreeMap<String, String>) {
    if metadata.len() > MAX_LIST {
        v.add(field, format!("must have at most {MAX_LIST} entries"));
    }
    for (key, value) in metadata {
        if key.trim().is_empty() || key.len() > MAX_LABEL {
            v.add(format!("{field}.{key}"), format!("keys must be 1-{MAX_LABEL} characters"));
        }
        if value.len() > MAX_META_VALUE {
            v.add(format!("{field}.{key}"), format!("values must be at most {MAX_META_VALUE} characters"));
        }
    }
}

fn check_positive(v: &mut Violations, field: &str, value: Option<f64>, max: Option<f64>) {
    if let Some(x) = value {
        if !x.is_finite() || x <= 0.0 {
            v.add(field, "must be a positive number");
        } else if let Some(max) = max {
            if x > max {
                v.add(field, format!("must be at most {max}"));
            }
        }
    }
}

impl Service {
    /// Fills defaults (name = id, HTTP method GET) and checks every field.
    pub fn normalize(&mut self) -> Result<(), Invalid> {
        let mut v = Violations::default();
        check_id(&mut v, "id", &self.id);
        if self.name.trim().is_empty() {
            self.name = self.id.clone();
        }
        check_len(&mut v, "name", &self.name, 256);
        check_len(&mut v, "version", &self.version, 64);
        check_len(&mut v, "description", &self.description, MAX_TEXT);
        check_labels(&mut v, "tags", &self.tags);
        check_labels(&mut v, "capabilities", &self.capabilities);
        check_metadata(&mut v, "metadata", &self.metadata);
        if let Some(sla) = &self.sla {
            check_positive(&mut v, "sla.latencyP99Ms", sla.latency_p99_ms, None);
            check_positive(&mut v, "sla.availabilityPercent", sla.availability_percent, Some(100.0));
            check_positive(&mut v, "sla.maxRequestsPerSecond", sla.max_requests_per_second, None);
        }
        if self.dependencies.len() > MAX_LIST * 4 {
            v.add("dependencies", format!("must have at most {} entries", MAX_LIST * 4));
        }
        let mut seen = HashSet::new();
        for (i, dep) in self.dependencies.iter().enumerate() {
            let field = format!("dependencies[{i}].serviceId");
            check_id(&mut v, &field, &dep.service_id);
            if dep.service_id == self.id {
                v.add(&field, "a service cannot depend on itself");
            } else if !seen.insert(dep.service_id.as_str()) {
                v.add(&field, format!("duplicate dependency '{}'", dep.service_id));
            }
            check_len(&mut v, &format!("dependencies[{i}].version"), &dep.version, 64);
        }
        if let Some(check) = &mut self.health_check {
            check.normalize(&mut v);
        }
        if let Some(policy) = &self.traffic_policy {
            policy.check(&mut v, "trafficPolicy");
        }
        if let Some(contract) = &self.api_contract {
            if contract.kind.trim().is_empty() {
                v.add("apiContract.kind", "is required (e.g. openapi, grpc, asyncapi)");
            }
            check_len(&mut v, "apiContract.kind", &contract.kind, 64);
            check_len(&mut v, "apiContract.location", &contract.location, 2048);
            check_len(&mut v, "apiContract.version", &contract.version, 64);
        }
        v.finish()
    }

    /// The check that governs this service's instances (none declared: [`CheckKind::None`]).
    pub fn check_kind(&self) -> CheckKind {
        self.health_check.as_ref().map_or(CheckKind::None, |c| c.kind)
    }
}

impl HealthCheck {
    fn normalize(&mut self, v: &mut Violations) {
        let f = |name: &str| format!("healthCheck.{name}");
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&self.interval) {
            v.add(f("interval"), "must be between 100ms and 24h");
        }
        if self.timeout.is_zero() || self.timeout > self.interval.max(MIN_INTERVAL) {
            v.add(f("timeout"), "must be more than 0 and at most the interval");
        }
        for (name, value) in
            [("successThreshold", self.success_threshold), ("failureThreshold", self.failure_threshold)]
        {
            if !(1..=100).contains(&value) {
                v.add(f(name), "must be between 1 and 100");
            }
        }
        if let Some(after) = self.deregister_critical_after {
            if after < MIN_INTERVAL {
                v.add(f("deregisterCriticalAfter"), "must be at least 100ms");
            }
        }
        match self.kind {
            CheckKind::Http => {
                if self.path.is_empty() {
                    self.path = "/health".into();
                }
                if !self.path.starts_with('/') || self.path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    v.add(f("path"), "must start with '/' and contain no spaces");
                }
                check_len(v, &f("path"), &self.path, 2048);
                if self.method.is_empty() {
                    self.method = "GET".into();
                }
                self.method = self.method.to_ascii_uppercase();
                if !METHODS.contains(&self.method.as_str()) {
                    v.add(f("method"), format!("must be one of {}", METHODS.join(", ")));
                }
            }
            CheckKind::Ttl => match self.ttl {
                None => v.add(f("ttl"), "is required for a ttl check"),
                Some(ttl) if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&ttl) => {
                    v.add(f("ttl"), "must be between 100ms and 24h")
                }
                Some(_) => {}
            },
            CheckKind::Grpc => check_len(v, &f("grpcService"), &self.grpc_service, 256),
            CheckKind::Tcp | CheckKind::None => {}
        }
        if self.kind != CheckKind::Http && (!self.path.is_empty() || !self.method.is_empty()) {
            v.add(f("path"), "path and method apply to http checks only");
        }
        if self.kind != CheckKind::Ttl && self.ttl.is_some() {
            v.add(f("ttl"), "applies to ttl checks only");
        }
    }
}

impl Instance {
    /// Fills defaults (id, scheme, version from the service) and checks every field.
    pub fn normalize(&mut self, service_version: Option<&str>) -> Result<(), Invalid> {
        let mut v = Violations::default();
        check_id(&mut v, "serviceId", &self.service_id);
        if self.id.is_empty() && is_valid_id(&self.service_id) {
            let random = uuid::Uuid::new_v4().simple().to_string();
            self.id = format!("{}-{}", self.service_id, &random[..12]);
        }
        check_id(&mut v, "id", &self.id);
        check_address(&mut v, &self.address);
        if self.port == 0 {
            v.add("port", "must be between 1 and 65535");
        }
        if self.scheme.is_empty() {
            self.scheme = "http".into();
        }
        self.scheme = self.scheme.to_ascii_lowercase();
        if !SCHEMES.contains(&self.scheme.as_str()) {
            v.add("scheme", format!("must be one of {}", SCHEMES.join(", ")));
        }
        check_len(&mut v, "region", &self.region, 64);
        check_len(&mut v, "zone", &self.zone, 64);
        if !(1..=10_000).contains(&self.weight) {
            v.add("weight", "must be between 1 and 10000");
        }
        if self.version.is_empty() {
            self.version = service_version.unwrap_or_default().to_string();
        }
        check_len(&mut v, "version", &self.version, 64);
        check_labels(&mut v, "tags", &self.tags);
        check_metadata(&mut v, "metadata", &self.metadata);
        v.finish()
    }
}

fn check_address(v: &mut Violations, address: &str) {
    if address.is_empty() {
        v.add("address", "is required");
        return;
    }
    if address.parse::<IpAddr>().is_ok() {
        return;
    }
    let hostname_ok = address.len() <= 253
        && address.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !hostname_ok {
        v.add("address", "must be an IP address or a host name (no scheme, port or path)");
    }
}

fn check_page_size(v: &mut Violations, page_size: Option<u32>) {
    if let Some(size) = page_size {
        if !(1..=MAX_PAGE_SIZE).contains(&size) {
            v.add("pageSize", format!("must be between 1 and {MAX_PAGE_SIZE}"));
        }
    }
}

/// Checks a page size on its own (list endpoints).
pub fn check_page(page_size: Option<u32>) -> Result<(), Invalid> {
    let mut v = Violations::default();
    check_page_size(&mut v, page_size);
    v.finish()
}

impl DiscoverQuery {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut v = Violations::default();
        check_id(&mut v, "serviceId", &self.service_id);
        check_labels(&mut v, "tags", &self.tags);
        check_labels(&mut v, "capabilities", &self.capabilities);
        check_len(&mut v, "hashKey", &self.hash_key, MAX_TEXT);
        if self.strategy == super::Strategy::ConsistentHash && self.hash_key.is_empty() {
            v.add("hashKey", "is required for the consistent_hash strategy");
        }
        if self.strategy == super::Strategy::ZoneAware && self.region.is_empty() && self.zone.is_empty() {
            v.add("region", "the zone_aware strategy needs the caller's region or zone");
        }
        v.finish()
    }
}

impl SearchQuery {
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut v = Violations::default();
        check_len(&mut v, "text", &self.text, 256);
        check_labels(&mut v, "tags", &self.tags);
        check_labels(&mut v, "capabilities", &self.capabilities);
        check_metadata(&mut v, "metadata", &self.metadata);
        check_page_size(&mut v, self.page_size);
        v.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Dependency;

    fn service(id: &str) -> Service {
        serde_json::from_value(serde_json::json!({ "id": id })).unwrap()
    }

    #[test]
    fn a_minimal_service_gets_its_name_from_the_id() {
        let mut s = service("orders");
        s.normalize().unwrap();
        assert_eq!(s.name, "orders");
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let mut s = service("-bad id");
        s.tags = vec!["a".into(), "".into(), "a".into()];
        s.dependencies = vec![Dependency { service_id: "-bad id".into(), version: String::new(), optional: false }];
        let err = s.normalize().unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(fields, ["id", "tags[1]", "tags[2]", "dependencies[0].serviceId", "dependencies[0].serviceId"]);
    }

    #[test]
    fn http_checks_default_their_path_and_method() {
        let mut s = service("orders");
        s.health_check = Some(HealthCheck::of_kind(CheckKind::Http));
        s.normalize().unwrap();
        let check = s.health_check.unwrap();
        assert_eq!((check.path.as_str(), check.method.as_str()), ("/health", "GET"));
    }

    #[test]
    fn ttl_checks_need_a_ttl() {
        let mut s = service("orders");
        s.health_check = Some(HealthCheck::of_kind(CheckKind::Ttl));
        assert_eq!(s.normalize().unwrap_err().0[0].field, "healthCheck.ttl");
    }

    #[test]
    fn instances_get_an_id_scheme_and_version() {
        let mut i: Instance = serde_json::from_value(serde_json::json!({
            "serviceId": "orders", "address": "10.0.0.1", "port": 8080
        }))
        .unwrap();
        i.normalize(Some("1.2.0")).unwrap();
        assert!(i.id.starts_with("orders-"));
        assert_eq!((i.scheme.as_str(), i.version.as_str(), i.weight), ("http", "1.2.0", 1));
    }

    #[test]
    fn addresses_must_be_hosts_not_urls() {
        for bad in ["http://x", "a b", "host:80", "", "-x.example"] {
            let mut i: Instance = serde_json::from_value(serde_json::json!({
                "serviceId": "orders", "address": bad, "port": 1
            }))
            .unwrap();
            let err = i.normalize(None).unwrap_err();
            assert_eq!(err.0[0].field, "address", "{bad}");
        }
    }

    #[test]
    fn registry_owned_fields_are_not_accepted_as_input() {
        let err = serde_json::from_value::<Instance>(serde_json::json!({
            "serviceId": "orders", "address": "x", "port": 1, "status": "passing"
        }))
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `status`"), "{err}");
    }

    #[test]
    fn dependencies_accept_a_bare_id() {
        let s: Service = serde_json::from_value(serde_json::json!({
            "id": "orders", "dependencies": ["payments", {"serviceId": "mail", "optional": true}]
        }))
        .unwrap();
        assert_eq!(s.dependencies[0].service_id, "payments");
        assert!(s.dependencies[1].optional);
    }
}
