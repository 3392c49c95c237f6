//! `gateway`: loads the configuration, installs tracing, binds `PORT` and serves the REST API.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use reskflow_gateway::config::Config;

#[derive(Parser)]
#[command(name = "gateway", version, about = "ReskFlow gateway (REST API)")]
struct Args {
    /// TOML configuration file; environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
}

/// glibc's allocator spends a fifth of the CPU of a busy process here; mimalloc is far cheaper on
/// the many small, short-lived allocations of request handling (reskflow-alloc calls it).
#[global_allocator]
static GLOBAL: reskflow_alloc::Allocator = reskflow_alloc::Allocator;

fn main() -> ExitCode {
    let args = Args::parse();
    reskflow_runtime::start("gateway", args.config.as_deref(), "info,h2=warn,tower=warn", serve)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = format!("{}:{}", config.bind_addr, config.port);
    let listener = tokio::net::TcpListener::bind(&addr).await.with_context(|| format!("while binding PORT {addr}"))?;
    reskflow_gateway::run(config, listener, reskflow_runtime::shutdown_signal()).await
}
