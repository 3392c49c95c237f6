//! The control plane's configuration: defaults that run on a laptop, layered with an optional TOML
//! file and the environment by `reskflow_runtime`. `validate` reports every problem at once, before
//! any port is bound.

use std::net::SocketAddr;
use std::time::Duration;

pub use reskflow_runtime::LogFormat;
use reskflow_runtime::Settings;
use serde::{Deserialize, Serialize};

/// Environment variables read (each maps to the field of the same name in lower case).
const ENV_VARS: &[&str] = &[
    "GRPC_ADDR",
    "METRICS_ADDR",
    "AUTH_SECRET",
    "ALLOWED_INSTANCE_NETWORKS",
    "DATABASE_URL",
    "DB_MAX_CONNECTIONS",
    "NODE_ID",
    "HEALTH_LEASE_TTL",
    "REGISTRY_LOG_KEEP",
    "WORKFLOW_CONCURRENCY",
    "WORKFLOW_LEASE",
    "LOG_FORMAT",
    "WORKER_THREADS",
];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// gRPC listen address.
    pub grpc_addr: String,
    /// Where `/metrics` (Prometheus) and `/health` are served over HTTP; empty: not served.
    pub metrics_addr: String,
    /// HS256 secret of the tokens callers must present (`control-plane token` mints them); empty:
    /// dev mode, calls are not checked.
    pub auth_secret: String,
    /// CIDRs instances may be registered in (comma-separated); empty: anywhere.
    pub allowed_instance_networks: String,
    /// `sqlite://file.db` (default, created on first start) or `postgres://...`.
    pub database_url: String,
    pub db_max_connections: u32,
    /// This replica's name in leases; random when empty.
    pub node_id: String,
    /// How long a dead replica keeps the health-check lease.
    #[serde(with = "humantime_serde")]
    pub health_lease_ttl: Duration,
    /// Registry changes kept for watchers that reconnect with a version.
    pub registry_log_keep: u64,
    /// Step and compensation calls this replica runs at once.
    pub workflow_concurrency: usize,
    /// How long a replica holds a claimed workflow task before another may take it over (at least
    /// the step's timeout is added for calls).
    #[serde(with = "humantime_serde")]
    pub workflow_lease: Duration,
    pub log_format: LogFormat,
    /// Async runtime worker threads; 0 = one per CPU.
    pub worker_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            grpc_addr: "127.0.0.1:50051".into(),
            metrics_addr: "127.0.0.1:9464".into(),
            auth_secret: String::new(),
            allowed_instance_networks: String::new(),
            database_url: "sqlite://reskflow.db".into(),
            db_max_connections: 16,
            node_id: String::new(),
            health_lease_ttl: Duration::from_secs(10),
            registry_log_keep: 100_000,
            workflow_concurrency: 64,
            workflow_lease: Duration::from_secs(10),
            log_format: LogFormat::Text,
            worker_threads: 0,
        }
    }
}

impl Config {
    /// `ALLOWED_INSTANCE_NETWORKS` parsed (an address alone is its own /32 or /128).
    pub fn allowed_networks(&self) -> Result<Vec<ipnet::IpNet>, String> {
        self.allowed_instance_networks
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                n.parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("'{n}' is not a network like 10.0.0.0/8"))
            })
            .collect()
    }
}

impl Settings for Config {
    const ENV_VARS: &'static [&'static str] = ENV_VARS;

    fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if let Err(bad) = self.allowed_networks() {
            problems.push(format!("ALLOWED_INSTANCE_NETWORKS: {bad}"));
        }
        if !self.auth_secret.is_empty() && self.auth_secret.len() < 32 {
            problems.push("AUTH_SECRET: must be at least 32 bytes".into());
        }
        if !self.metrics_addr.is_empty() && self.metrics_addr.parse::<SocketAddr>().is_err() {
            problems.push(format!("METRICS_ADDR: '{}' is not an address like 127.0.0.1:9464", self.metrics_addr));
        }
        if self.grpc_addr.parse::<SocketAddr>().is_err() {
            problems.push(format!("GRPC_ADDR: '{}' is not an address like 127.0.0.1:50051", self.grpc_addr));
        }
        let url = self.database_url.as_str();
        if !(url.starts_with("sqlite:") || url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            problems.push(format!("DATABASE_URL: '{url}' must start with sqlite: or postgres://"));
        }
        if !(1..=1000).contains(&self.db_max_connections) {
            problems.push("DB_MAX_CONNECTIONS: must be between 1 and 1000".into());
        }
        if self.health_lease_ttl < Duration::from_millis(300) {
            problems.push("HEALTH_LEASE_TTL: must be at least 300ms".into());
        }
        if self.registry_log_keep < 100 {
            problems.push("REGISTRY_LOG_KEEP: must be at least 100".into());
        }
        if !(1..=10_000).contains(&self.workflow_concurrency) {
            problems.push("WORKFLOW_CONCURRENCY: must be between 1 and 10000".into());
        }
        if self.workflow_lease < Duration::from_millis(500) {
            problems.push("WORKFLOW_LEASE: must be at least 500ms".into());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment::Error
    fn the_environment_overrides_the_file_which_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("cp.toml", "grpc_addr = \"0.0.0.0:6000\"\nnode_id = \"file\"")?;
            jail.set_env("NODE_ID", "env");
            jail.set_env("HEALTH_LEASE_TTL", "750ms");
            let config: Config =
                reskflow_runtime::load(Some(std::path::Path::new("cp.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.grpc_addr, "0.0.0.0:6000");
            assert_eq!(config.node_id, "env");
            assert_eq!(config.health_lease_ttl, Duration::from_millis(750));
            assert_eq!(config.database_url, "sqlite://reskflow.db");
            Ok(())
        });
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let config = Config {
            grpc_addr: "nope".into(),
            database_url: "mysql://x".into(),
            db_max_connections: 0,
            ..Config::default()
        };
        let problems = config.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("GRPC_ADDR"));
    }
}
