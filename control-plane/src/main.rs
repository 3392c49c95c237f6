//! `control-plane`: loads the configuration, installs tracing, binds the gRPC port and runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use reskflow_control_plane::api::auth::{self, Caller, Role};
use reskflow_control_plane::config::Config;

#[derive(Parser)]
#[command(name = "control-plane", version, about = "ReskFlow control plane (gRPC)")]
struct Args {
    /// TOML configuration file; environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print a token for a caller of the gRPC API, signed with AUTH_SECRET.
    Token {
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The service a sidecar acts for (required for sidecars).
        #[arg(long)]
        service: Option<String>,
        /// Who the token is for (the `sub` claim); default: the role, and the service.
        #[arg(long)]
        subject: Option<String>,
        /// How long the token is valid (`30d`, `1y`); default: no expiry.
        #[arg(long)]
        valid_for: Option<humantime::Duration>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Gateway,
    Sidecar,
}

fn mint_token(
    config: Option<&std::path::Path>,
    role: RoleArg,
    service: Option<String>,
    subject: Option<String>,
    valid_for: Option<humantime::Duration>,
) -> anyhow::Result<String> {
    let loaded: Config = reskflow_runtime::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    if loaded.auth_secret.len() < 32 {
        anyhow::bail!("AUTH_SECRET must be set (at least 32 bytes) to sign tokens");
    }
    let role = match role {
        RoleArg::Admin => Role::Admin,
        RoleArg::Gateway => Role::Gateway,
        RoleArg::Sidecar => Role::Sidecar,
    };
    let service = service.unwrap_or_default();
    if role == Role::Sidecar && service.is_empty() {
        anyhow::bail!("a sidecar token needs --service");
    }
    let sub = subject.unwrap_or_else(|| {
        if service.is_empty() {
            format!("{role:?}").to_lowercase()
        } else {
            format!("sidecar-{service}")
        }
    });
    let exp = valid_for.map(|d| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        (now + *d).as_secs()
    });
    auth::mint(&loaded.auth_secret, &Caller { sub, role, service, exp })
}

/// glibc's allocator spends a fifth of the CPU of a busy process here; mimalloc is far cheaper on
/// the many small, short-lived allocations of request handling (reskflow-alloc calls it).
#[global_allocator]
static GLOBAL: reskflow_alloc::Allocator = reskflow_alloc::Allocator;

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Token { role, service, subject, valid_for }) = args.command {
        return match mint_token(args.config.as_deref(), role, service, subject, valid_for) {
            Ok(token) => {
                println!("{token}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("control-plane token: {err:#}");
                ExitCode::from(reskflow_runtime::EXIT_CONFIG)
            }
        };
    }
    reskflow_runtime::start("control-plane", args.config.as_deref(), "info,sqlx=warn,h2=warn,tower=warn", serve)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&config.grpc_addr)
        .await
        .with_context(|| format!("while binding GRPC_ADDR {}", config.grpc_addr))?;
    reskflow_control_plane::run(config, listener, reskflow_runtime::shutdown_signal()).await
}
