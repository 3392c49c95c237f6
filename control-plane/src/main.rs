//! `control-plane`: loads the configuration, installs tracing, binds the gRPC port and runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use reskflow_control_plane::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "control-plane", version, about = "ReskFlow control plane (gRPC)")]
struct Args {
    /// TOML configuration file; environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// sysexits' EX_CONFIG: the configuration is wrong, retrying will not help.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(args.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("control-plane: bad configuration: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Err(problems) = config.validate() {
        for problem in problems {
            eprintln!("control-plane: bad configuration: {problem}");
        }
        return ExitCode::from(EXIT_CONFIG);
    }
    init_tracing(config.log_format);
    match serve(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = format!("{err:#}"), "control plane failed");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,h2=warn,tower=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn serve(config: Config) -> anyhow::Result<()> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    runtime.enable_all().build().context("while starting the async runtime")?.block_on(serve_on(config))
}

async fn serve_on(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.grpc_addr)
        .await
        .with_context(|| format!("while binding GRPC_ADDR {}", config.grpc_addr))?;
    reskflow_control_plane::run(config, listener, shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received");
}
