//! The gateway's configuration: defaults, then an optional TOML file (`--config`), then the
//! environment (`PORT`, `ORCHESTRATION_URL`, ...). `validate` reports every problem at once.

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub const ENV_VARS: &[&str] = &[
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
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
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
        }
    }
}

impl Config {
    pub fn load(file: Option<&Path>) -> Result<Self, Box<figment::Error>> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::raw().only(ENV_VARS).map(|k| k.as_str().to_ascii_lowercase().into()))
            .extract()
            .map_err(Box::new)
    }

    pub fn validate(&self) -> Result<(), Vec<String>> {
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
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}
