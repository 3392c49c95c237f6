//! The gateway's configuration: defaults layered with an optional TOML file and the environment
//! (`PORT`, `ORCHESTRATION_URL`, ...) by `reskflow_runtime`. `validate` reports every problem at once.

use std::net::IpAddr;
use std::time::Duration;

pub use reskflow_runtime::LogFormat;
use reskflow_runtime::Settings;
use serde::{Deserialize, Serialize};

const ENV_VARS: &[&str] = &[
    "PORT",
    "BIND_ADDR",
    "ORCHESTRATION_URL",
    "REQUEST_TIMEOUT",
    "CONTROL_PLANE_CONNECTIONS",
    "MAX_BODY_BYTES",
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REGION",
    "ZONE",
    "LOG_FORMAT",
    "WORKER_THREADS",
    "ROUTES_FILE",
    "NODE_ID",
    "CONFIG_CACHE",
    "REPORT_INTERVAL",
    "JWT_SECRET",
    "JWT_JWKS_FILE",
    "JWT_JWKS_URL",
    "JWT_JWKS_REFRESH",
    "JWT_ALGORITHMS",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "JWT_LEEWAY",
    "ROLES_CLAIM",
    "API_KEYS_FILE",
    "API_KEY_HEADER",
    "ADMIN_ROLE",
    "TRUST_FORWARDED",
    "RATE_LIMIT_REDIS_TIMEOUT",
    "RATE_LIMIT_REDIS_FAILURE",
    "CACHE_MAX_BYTES",
    "CACHE_STORE",
    "HEADER_READ_TIMEOUT",
    "MAX_HEADER_BYTES",
    "CONTROL_PLANE_TOKEN",
];

/// Where cached responses live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CacheStore {
    /// This replica's memory.
    #[default]
    Memory,
    /// Redis (`REDIS_URL`), shared by every replica.
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub port: u16,
    pub bind_addr: String,
    /// The control plane's gRPC URL.
    pub orchestration_url: String,
    /// Deadline of each call to the control plane.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// HTTP/2 connections to the control plane, used round robin.
    pub control_plane_connections: usize,
    pub max_body_bytes: usize,
    /// Shared rate limits and cache (used from the gateway-features release on); off when empty.
    pub redis_url: String,
    pub redis_host: String,
    pub redis_port: u16,
    /// Where this gateway runs: the caller's location for zone-aware discovery that names none.
    pub region: String,
    pub zone: String,
    pub log_format: LogFormat,
    /// Async runtime worker threads; 0 = one per CPU.
    pub worker_threads: usize,
    /// Routes (YAML or JSON: a list, or `{routes: [...]}`) stored in the control plane at start.
    pub routes_file: String,
    /// This gateway's name on the config stream; default `gateway-<hostname>-<port>`.
    pub node_id: String,
    /// Where the last config from the control plane is saved (routed from while it is away);
    /// default `.reskflow-<node id>.json` in the working directory.
    pub config_cache: String,
    /// How often breaker metrics are reported to the control plane.
    #[serde(with = "humantime_serde")]
    pub report_interval: Duration,
    /// HS256 secret; with it (or a JWKS) authentication is on.
    pub jwt_secret: String,
    pub jwt_jwks_file: String,
    pub jwt_jwks_url: String,
    #[serde(with = "humantime_serde")]
    pub jwt_jwks_refresh: Duration,
    /// Accepted `alg` values, comma separated; default HS256 with a secret, RS256 and ES256 with a JWKS.
    pub jwt_algorithms: String,
    /// Accepted `iss` values, comma separated; empty: not checked.
    pub jwt_issuer: String,
    /// Accepted `aud` values, comma separated; empty: not checked.
    pub jwt_audience: String,
    #[serde(with = "humantime_serde")]
    pub jwt_leeway: Duration,
    /// The claim holding the caller's roles (dotted path).
    pub roles_claim: String,
    /// API key consumers (YAML or JSON: `{consumers: [{id, roles, keys | keysSha256}]}`).
    pub api_keys_file: String,
    pub api_key_header: String,
    /// The role the management API needs when authentication is on.
    pub admin_role: String,
    /// Take the client IP from `X-Forwarded-For` (the gateway is behind a trusted load balancer).
    pub trust_forwarded: bool,
    /// A shared rate limit not decided by Redis within this falls back (see below).
    #[serde(with = "humantime_serde")]
    pub rate_limit_redis_timeout: Duration,
    /// When Redis fails: `local` (this replica's own limits), `open` (allow) or `closed` (503).
    pub rate_limit_redis_failure: crate::ratelimit::FailureMode,
    /// Memory for cached responses (all routes).
    pub cache_max_bytes: u64,
    pub cache_store: CacheStore,
    /// A client that has not sent a whole request head within this is disconnected.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Largest request head; larger ones get 431.
    pub max_header_bytes: usize,
    /// Token for the control plane's gRPC API (a `gateway` token, when it has AUTH_SECRET).
    pub control_plane_token: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 3024,
            bind_addr: "0.0.0.0".into(),
            orchestration_url: "http://127.0.0.1:50051".into(),
            request_timeout: Duration::from_secs(10),
            control_plane_connections: 4,
            max_body_bytes: 1024 * 1024,
            redis_url: String::new(),
            redis_host: String::new(),
            redis_port: 6379,
            region: String::new(),
            zone: String::new(),
            log_format: LogFormat::Text,
            worker_threads: 0,
            routes_file: String::new(),
            node_id: String::new(),
            config_cache: String::new(),
            report_interval: Duration::from_secs(1),
            jwt_secret: String::new(),
            jwt_jwks_file: String::new(),
            jwt_jwks_url: String::new(),
            jwt_jwks_refresh: Duration::from_secs(600),
            jwt_algorithms: String::new(),
            jwt_issuer: String::new(),
            jwt_audience: String::new(),
            jwt_leeway: Duration::from_secs(5),
            roles_claim: "roles".into(),
            api_keys_file: String::new(),
            api_key_header: "x-api-key".into(),
            admin_role: "admin".into(),
            trust_forwarded: false,
            rate_limit_redis_timeout: Duration::from_millis(100),
            rate_limit_redis_failure: crate::ratelimit::FailureMode::Local,
            cache_max_bytes: 64 * 1024 * 1024,
            cache_store: CacheStore::Memory,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            control_plane_token: String::new(),
        }
    }
}

impl Config {
    /// Redis for shared limits and cache: `REDIS_URL`, else `REDIS_HOST`:`REDIS_PORT`; None when off.
    pub fn redis(&self) -> Option<String> {
        if !self.redis_url.is_empty() {
            Some(self.redis_url.clone())
        } else if !self.redis_host.is_empty() {
            Some(format!("redis://{}:{}", self.redis_host, self.redis_port))
        } else {
            None
        }
    }

    pub fn node(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        format!("gateway-{}-{}", if host.is_empty() { "host" } else { &host }, self.port)
    }

    pub fn cache_path(&self, node: &str) -> std::path::PathBuf {
        if self.config_cache.is_empty() {
            let safe: String =
                node.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
            std::path::PathBuf::from(format!("reskflow-{safe}.json"))
        } else {
            std::path::PathBuf::from(&self.config_cache)
        }
    }
}

impl Settings for Config {
    const ENV_VARS: &'static [&'static str] = ENV_VARS;

    fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.bind_addr.parse::<IpAddr>().is_err() {
            problems.push(format!("BIND_ADDR: '{}' is not an IP address", self.bind_addr));
        }
        let url = self.orchestration_url.as_str();
        if !(url.starts_with("http://") || url.starts_with("https://")) || http::Uri::try_from(url).is_err() {
            problems.push(format!("ORCHESTRATION_URL: '{url}' must be a URL like http://127.0.0.1:50051"));
        }
        if self.request_timeout.is_zero() {
            problems.push("REQUEST_TIMEOUT: must be more than 0".into());
        }
        if !(1..=64).contains(&self.control_plane_connections) {
            problems.push("CONTROL_PLANE_CONNECTIONS: must be between 1 and 64".into());
        }
        if self.max_body_bytes < 1024 {
            problems.push("MAX_BODY_BYTES: must be at least 1024".into());
        }
        if self.worker_threads > 1024 {
            problems.push("WORKER_THREADS: must be at most 1024 (0 = one per CPU)".into());
        }
        if self.rate_limit_redis_timeout.is_zero() {
            problems.push("RATE_LIMIT_REDIS_TIMEOUT: must be more than 0".into());
        }
        if let Some(url) = self.redis() {
            if !(url.starts_with("redis://") || url.starts_with("rediss://") || url.starts_with("unix://")) {
                problems.push(format!("REDIS_URL: '{url}' must be a redis:// URL"));
            }
        }
        if self.header_read_timeout.is_zero() {
            problems.push("HEADER_READ_TIMEOUT: must be more than 0".into());
        }
        if !(8192..=1 << 20).contains(&self.max_header_bytes) {
            problems.push("MAX_HEADER_BYTES: must be between 8192 and 1048576".into());
        }
        if self.cache_store == CacheStore::Redis && self.redis().is_none() {
            problems.push("CACHE_STORE: redis needs REDIS_URL (or REDIS_HOST)".into());
        }
        if self.report_interval.is_zero() {
            problems.push("REPORT_INTERVAL: must be more than 0".into());
        }
        if self.jwt_jwks_refresh < Duration::from_secs(10) {
            problems.push("JWT_JWKS_REFRESH: must be at least 10s".into());
        }
        if !self.jwt_jwks_url.is_empty() && !self.jwt_jwks_url.starts_with("http") {
            problems.push(format!("JWT_JWKS_URL: '{}' must be an http(s) URL", self.jwt_jwks_url));
        }
        if !self.jwt_secret.is_empty() && self.jwt_secret.len() < 32 {
            problems.push("JWT_SECRET: must be at least 32 bytes (HS256 needs a key as long as its hash)".into());
        }
        if http::HeaderName::try_from(self.api_key_header.as_str()).is_err() {
            problems.push(format!("API_KEY_HEADER: '{}' is not a header name", self.api_key_header));
        }
        if self.roles_claim.is_empty() || self.roles_claim.split('.').any(str::is_empty) {
            problems.push("ROLES_CLAIM: must be a claim name or a dotted path".into());
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    fn log_format(&self) -> LogFormat {
        self.log_format
    }

    fn worker_threads(&self) -> usize {
        self.worker_threads
    }
}
