//! What every ReskFlow binary does at start, in one place:
//!
//! - [`Settings`]: a binary's typed configuration, layered as defaults, then an optional TOML file
//!   (`--config`), then the environment variables it names ([`load`]).
//! - [`start`]: load and validate the configuration (every problem reported, exit code 64, before
//!   any port is bound), install tracing, build the runtime, serve until SIGINT/SIGTERM.
//! - [`shutdown_signal`]: resolves on SIGINT or SIGTERM.
//! - [`metrics`]: the latency histogram and Prometheus text helpers.
//! - [`telemetry`]: OpenTelemetry export (OTLP, configured by `OTEL_*`) and `traceparent` propagation.

pub mod metrics;
pub mod telemetry;

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// sysexits' EX_CONFIG: the configuration is wrong, and retrying will not help.
pub const EXIT_CONFIG: u8 = 64;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// A binary's configuration. Field names are the environment variables in lower case.
pub trait Settings: Default + Serialize + DeserializeOwned {
    /// The environment variables read (each maps to the field of the same name in lower case).
    const ENV_VARS: &'static [&'static str];
    /// Every problem, each naming its variable.
    fn validate(&self) -> Result<(), Vec<String>>;
    fn log_format(&self) -> LogFormat;
    /// Async runtime worker threads; 0 = one per CPU.
    fn worker_threads(&self) -> usize;
}

/// Defaults, then the file (if any), then the environment.
pub fn load<S: Settings>(file: Option<&Path>) -> Result<S, Box<figment::Error>> {
    let mut figment = Figment::from(Serialized::defaults(S::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    figment
        .merge(Env::raw().only(S::ENV_VARS).map(|k| k.as_str().to_ascii_lowercase().into()))
        .extract()
        .map_err(Box::new)
}

/// Installs the tracing subscriber: `RUST_LOG` (or `default_filter`), text or JSON, on stderr,
/// coloured only on a terminal; and, when the `OTEL_*` variables ask for it, the OpenTelemetry
/// layer exporting spans as `service` (returned, to be flushed with `shutdown` at exit).
pub fn init_tracing(
    format: LogFormat,
    default_filter: &str,
    service: &str,
) -> Option<opentelemetry_sdk::trace::SdkTracerProvider> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let fmt = match format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    let (provider, problem) = match telemetry::provider(service) {
        Ok(p) => (p, None),
        Err(e) => (None, Some(e)),
    };
    let otel = provider.as_ref().map(|p| telemetry::layer(p, service));
    tracing_subscriber::registry().with(filter).with(fmt).with(otel).init();
    if let Some(e) = problem {
        tracing::warn!(
            error = format!("{e:#}"),
            "OpenTelemetry export is configured but cannot start; spans are not exported"
        );
    }
    provider
}

/// Runs a binary: configuration, tracing, runtime, then `serve` until it returns.
pub fn start<S, F, Fut>(name: &str, config_file: Option<&Path>, default_filter: &str, serve: F) -> ExitCode
where
    S: Settings,
    F: FnOnce(S) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let settings: S = match load(config_file) {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{name}: bad configuration: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(problems) = settings.validate() {
        for problem in problems {
            eprintln!("{name}: bad configuration: {problem}");
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    let telemetry = init_tracing(settings.log_format(), default_filter, name);
    // One worker: the current-thread scheduler does the same work without the multi-thread
    // scheduler's cross-thread machinery (work stealing, the injection queue, wake-ups by syscall).
    let mut runtime = match settings.worker_threads() {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            if n > 0 {
                builder.worker_threads(n);
            }
            builder
        }
    };
    let result = runtime
        .enable_all()
        .build()
        .context("while starting the async runtime")
        .and_then(|rt| rt.block_on(serve(settings)));
    if let Some(provider) = telemetry {
        // Export what is still batched.
        let _ = provider.shutdown();
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "{name} failed");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Serialize, Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        port: u16,
        name: String,
    }

    impl Settings for Demo {
        const ENV_VARS: &'static [&'static str] = &["PORT", "NAME"];
        fn validate(&self) -> Result<(), Vec<String>> {
            Ok(())
        }
        fn log_format(&self) -> LogFormat {
            LogFormat::Text
        }
        fn worker_threads(&self) -> usize {
            0
        }
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment::Error
    fn the_environment_overrides_the_file_which_overrides_defaults() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("demo.toml", "port = 7\nname = \"file\"")?;
            jail.set_env("NAME", "env");
            jail.set_env("UNRELATED", "ignored");
            let demo: Demo = load(Some(Path::new("demo.toml"))).map_err(|e| e.to_string())?;
            assert_eq!((demo.port, demo.name.as_str()), (7, "env"));
            Ok(())
        });
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn a_malformed_value_names_its_key() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("PORT", "not-a-port");
            let err = load::<Demo>(None).unwrap_err();
            assert!(err.to_string().contains("port"), "{err}");
            Ok(())
        });
    }
}
