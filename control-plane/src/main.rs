//! `control-plane`: loads the configuration, installs tracing, binds the gRPC port and runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use reskflow_control_plane::config::Config;

#[derive(Parser)]
#[command(name = "control-plane", version, about = "ReskFlow control plane (gRPC)")]
struct Args {
    /// TOML configuration file; environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// glibc's allocator spends a fifth of the CPU of a busy process here; mimalloc is far cheaper on
/// the many small, short-lived allocations of request handling.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    reskflow_runtime::start("control-plane", args.config.as_deref(), "info,sqlx=warn,h2=warn,tower=warn", serve)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.grpc_addr)
        .await
        .with_context(|| format!("while binding GRPC_ADDR {}", config.grpc_addr))?;
    reskflow_control_plane::run(config, listener, reskflow_runtime::shutdown_signal()).await
}
