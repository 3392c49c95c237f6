//! The sidecar's configuration: defaults, an optional TOML file, then the environment
//! (`ORCHESTRATION_URL`, `SERVICE_ID`, `UPSTREAMS`, ...), through `reskflow_runtime`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use reskflow_runtime::LogFormat;
use reskflow_runtime::Settings;
use serde::{Deserialize, Serialize};

const ENV_VARS: &[&str] = &[
    "ORCHESTRATION_URL",
    "NODE_ID",
    "SERVICE_ID",
    "INSTANCE_ID",
    "SERVICE_ADDRESS",
    "SERVICE_PORT",
    "SERVICE_SCHEME",
    "UPSTREAMS",
    "DEFAULT_UPSTREAM",
    "OUTBOUND_ADDR",
    "CONTROL_PLANE_TOKEN",
    "ADMIN_ADDR",
    "REGION",
    "ZONE",
    "CONFIG_CACHE",
    "HEARTBEAT_INTERVAL",
    "REPORT_INTERVAL",
    "DRAIN_TIME",
    "LOG_FORMAT",
    "WORKER_THREADS",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The control plane's gRPC URL.
    pub orchestration_url: String,
    /// This sidecar's name on the config stream; default: `<service>-<host>-<pid>`.
    pub node_id: String,
    /// The service this sidecar runs beside; empty: outbound proxy only, nothing registered.
    pub service_id: String,
    /// The instance id registered for it; default: the node id.
    pub instance_id: String,
    /// Where the application listens, as registered for callers.
    pub service_address: String,
    pub service_port: u16,
    pub service_scheme: String,
    /// The services the application calls, comma-separated.
    pub upstreams: String,
    /// Where requests that name no upstream go, path unchanged (it must be in `UPSTREAMS`); empty:
    /// they get a 404.
    pub default_upstream: String,
    /// The outbound proxy (`http://OUTBOUND_ADDR/<service>/<path>`, or `Host: <service>`).
    pub outbound_addr: String,
    /// Token for the control plane's gRPC API (a `sidecar` token for SERVICE_ID, when it has AUTH_SECRET).
    pub control_plane_token: String,
    /// Readiness, Prometheus metrics, config dump.
    pub admin_addr: String,
    pub region: String,
    pub zone: String,
    /// Where the last good config is kept, to start from while the control plane is away; default
    /// `reskflow-sidecar-<node id>.json` in the working directory.
    pub config_cache: String,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How often breaker metrics are reported to the control plane.
    #[serde(with = "humantime_serde")]
    pub report_interval: Duration,
    /// After SIGTERM: deregister, keep proxying this long (callers learn the instance is gone), stop.
    #[serde(with = "humantime_serde")]
    pub drain_time: Duration,
    pub log_format: LogFormat,
    /// Async runtime worker threads; 0 = one per CPU.
    pub worker_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            orchestration_url: "http://127.0.0.1:50051".into(),
            node_id: String::new(),
            service_id: String::new(),
            instance_id: String::new(),
            service_address: "127.0.0.1".into(),
            service_port: 0,
            service_scheme: "http".into(),
            upstreams: String::new(),
            default_upstream: String::new(),
            outbound_addr: "127.0.0.1:15001".into(),
            control_plane_token: String::new(),
            admin_addr: "127.0.0.1:15000".into(),
            region: String::new(),
            zone: String::new(),
            config_cache: String::new(),
            heartbeat_interval: Duration::from_secs(5),
            report_interval: Duration::from_secs(2),
            drain_time: Duration::from_secs(5),
            log_format: LogFormat::Text,
            worker_threads: 0,
        }
    }
}

impl Config {
    /// The services named in `UPSTREAMS`.
    pub fn upstream_list(&self) -> Vec<String> {
        self.upstreams.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
    }

    pub fn node(&self) -> String {
        if !self.node_id.is_empty() {
            return self.node_id.clone();
        }
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        let prefix = if self.service_id.is_empty() { "sidecar" } else { &self.service_id };
        format!("{prefix}-{}-{}", if host.is_empty() { "host" } else { &host }, std::process::id())
    }

    pub fn cache_path(&self, node: &str) -> PathBuf {
        if self.config_cache.is_empty() {
            let safe: String =
                node.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
            PathBuf::from(format!("reskflow-sidecar-{safe}.json"))
        } else {
            PathBuf::from(&self.config_cache)
        }
    }
}

impl Settings for Config {
    const ENV_VARS: &'static [&'static str] = ENV_VARS;

    fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for (name, addr) in [("OUTBOUND_ADDR", &self.outbound_addr), ("ADMIN_ADDR", &self.admin_addr)] {
            if addr.parse::<SocketAddr>().is_err() {
                problems.push(format!("{name}: '{addr}' is not an address:port"));
            }
        }
        let url = self.orchestration_url.as_str();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.parse::<http::Uri>().is_err() {
            problems.push(format!("ORCHESTRATION_URL: '{url}' is not an http(s) URL"));
        }
        if !self.service_id.is_empty() {
            if !reskflow_proto::registry::is_valid_id(&self.service_id) {
                problems.push(format!("SERVICE_ID: '{}' is not a valid service id", self.service_id));
            }
            if self.service_port == 0 {
                problems.push("SERVICE_PORT: required with SERVICE_ID (the application's port)".into());
            }
        }
        for id in self.upstream_list() {
            if !reskflow_proto::registry::is_valid_id(&id) {
                problems.push(format!("UPSTREAMS: '{id}' is not a valid service id"));
            }
        }
        if !self.default_upstream.is_empty() && !self.upstream_list().contains(&self.default_upstream) {
            problems.push(format!("DEFAULT_UPSTREAM: '{}' must be one of UPSTREAMS", self.default_upstream));
        }
        if !matches!(self.service_scheme.as_str(), "http" | "https") {
            problems.push("SERVICE_SCHEME: must be http or https".into());
        }
        for (name, d) in [("HEARTBEAT_INTERVAL", self.heartbeat_interval), ("REPORT_INTERVAL", self.report_interval)] {
            if d.is_zero() {
                problems.push(format!("{name}: must be positive"));
            }
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
