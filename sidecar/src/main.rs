//! `sidecar`: loads the configuration, binds the outbound and admin ports, runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use reskflow_sidecar::config::Config;

/// mimalloc (through reskflow-alloc): the proxy allocates many small, short-lived buffers per request.
#[global_allocator]
static GLOBAL: reskflow_alloc::Allocator = reskflow_alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "sidecar",
    version,
    about = "ReskFlow sidecar: outbound proxy with load balancing and circuit breaking"
)]
struct Args {
    /// TOML configuration file; environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    reskflow_runtime::start("sidecar", args.config.as_deref(), "info,h2=warn,tower=warn,hyper=warn", serve)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let outbound = tokio::net::TcpListener::bind(&config.outbound_addr)
        .await
        .with_context(|| format!("while binding OUTBOUND_ADDR {}", config.outbound_addr))?;
    let admin = tokio::net::TcpListener::bind(&config.admin_addr)
        .await
        .with_context(|| format!("while binding ADMIN_ADDR {}", config.admin_addr))?;
    reskflow_sidecar::run::run(config, outbound, admin, reskflow_runtime::shutdown_signal()).await
}
