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
];

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
