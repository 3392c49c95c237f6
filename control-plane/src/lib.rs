//! ReskFlow control plane: owns the registry (and, later, workflow state) in a SQL store and serves
//! it over gRPC.
//!
//! - [`config`]: the typed configuration and its validation.
//! - [`store`]: the durable store (SQLite or PostgreSQL), migrations, change log, leases.
//! - [`registry`]: services and instances in memory, kept in sync with the store; discovery,
//!   search, dependency graphs and health checks.
//! - [`workflow`]: the durable workflow engine: definitions, runs, workers, sagas.
//! - [`api`]: the gRPC services.
//!
//! [`run`] serves on a bound listener until a shutdown future resolves, so tests bind port 0.

pub mod api;
pub mod config;
pub mod config_push;
pub mod metrics;
pub mod registry;
pub mod store;
pub mod workflow;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::service::interceptor::InterceptedService;
use tracing::{info, warn, Instrument};

use crate::config::Config;
use crate::registry::health_check::{self, MonitorOptions};
use crate::registry::{sync, Registry};
use crate::store::Store;
use crate::workflow::{Engine, EngineOptions};

const COMPACT_EVERY: Duration = Duration::from_secs(600);

/// Runs the control plane on `listener` until `shutdown` resolves, then drains background tasks.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let node_id = if config.node_id.is_empty() { uuid::Uuid::new_v4().to_string() } else { config.node_id.clone() };
    let mut store_options = store::Options::new(&config.database_url);
    store_options.max_connections = config.db_max_connections;
    store_options.node_id = node_id.clone();
    let store = Store::connect(&store_options).await.context("while opening the store")?;
    let registry = Registry::load(store.clone()).await.context("while loading the registry")?;
    info!(backend = ?store.backend(), version = registry.version(), "registry loaded");

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    tasks.spawn(store.clone().listen_for_changes(stop.clone()).in_current_span());
    tasks.spawn(sync::run(registry.clone(), stop.clone()).in_current_span());
    let monitor =
        MonitorOptions { node_id: node_id.clone(), lease_ttl: config.health_lease_ttl, ..MonitorOptions::default() };
    tasks.spawn(health_check::run(registry.clone(), monitor, stop.clone()).instrument(tracing::info_span!("health")));
    tasks.spawn(compact_log(store.clone(), config.registry_log_keep, stop.clone()).in_current_span());
    let engine = Engine::new(
        store.clone(),
        registry.clone(),
        EngineOptions {
            node_id: node_id.clone(),
            concurrency: config.workflow_concurrency,
            lease: config.workflow_lease,
            ..EngineOptions::default()
        },
    )?;
    tasks.spawn(workflow::worker::run(engine.clone(), stop.clone()).instrument(tracing::info_span!("workflow")));

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<reskflow_proto::pb::registry::v1::registry_server::RegistryServer<api::registry::RegistryApi>>()
        .await;
    let addr = listener.local_addr().context("listener address")?;
    let auth = api::auth::Auth::new(&config.auth_secret)?;
    if !auth.enabled() {
        warn!("AUTH_SECRET is not set: the gRPC API accepts calls without credentials (dev mode)");
    }
    let config_api = api::config::ConfigApi::new(registry.clone(), node_id.clone());
    let grpc_metrics = Arc::new(metrics::GrpcMetrics::default());
    if !config.metrics_addr.is_empty() {
        let metrics_listener = TcpListener::bind(&config.metrics_addr)
            .await
            .with_context(|| format!("while binding METRICS_ADDR {}", config.metrics_addr))?;
        let app = metrics::router(metrics::Sources {
            grpc: grpc_metrics.clone(),
            store: store.clone(),
            registry: registry.clone(),
            config_streams: Arc::new(config_api.stream_count()),
        });
        info!(addr = %config.metrics_addr, "control plane serving /metrics");
        let metrics_stop = stop.clone();
        tasks.spawn(async move {
            let served =
                axum::serve(metrics_listener, app).with_graceful_shutdown(metrics_stop.cancelled_owned()).await;
            if let Err(err) = served {
                warn!(error = %err, "metrics server failed");
            }
        });
    }
    info!(%addr, "control plane serving gRPC");
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(metrics::GrpcMetricsLayer(grpc_metrics))
        .add_service(health_service)
        .add_service(InterceptedService::new(
            api::registry::RegistryApi::new(registry.clone())
                .with_allowed_networks(
                    config.allowed_networks().map_err(|e| anyhow::anyhow!("ALLOWED_INSTANCE_NETWORKS: {e}"))?,
                )
                .into_server(),
            auth.clone(),
        ))
        .add_service(InterceptedService::new(api::workflows::WorkflowsApi::new(engine).into_server(), auth.clone()))
        .add_service(InterceptedService::new(config_api.into_server(), auth))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;

    stop.cancel();
    tasks.close();
    tasks.wait().await;
    store.close().await;
    info!("control plane stopped");
    served.context("gRPC server failed")
}

async fn compact_log(store: Store, keep: u64, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(COMPACT_EVERY) => {}
        }
        match store.compact_changes(keep).await {
            Ok(0) => {}
            Ok(n) => info!(removed = n, "registry change log compacted"),
            Err(err) => warn!(error = %err, "cannot compact the registry change log"),
        }
        // Rows of data planes whose replica died without removing them.
        let hour_ago = chrono::Utc::now().timestamp_millis() - 3_600_000;
        if let Err(err) = store.forget_clients(hour_ago).await {
            warn!(error = %err, "cannot forget old data-plane clients");
        }
    }
}
