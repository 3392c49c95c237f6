//! The sidecar process: start from the saved config, follow the control plane's stream, register
//! the instance, serve the outbound proxy and the admin port; on shutdown deregister, drain, stop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;
use reskflow_proto::pb::config::v1 as pb;
use reskflow_proto::registry::Instance;
use reskflow_proto::{Client, ClientOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

use crate::admin::{self, Admin};
use crate::balance::Locality;
use crate::config::Config;
use crate::config_watch::{self, Watcher};
use crate::proxy::Proxy;
use crate::registration;
use crate::upstreams::Upstreams;

/// Runs until `shutdown` resolves, then deregisters, drains for `DRAIN_TIME` and stops.
pub async fn run(
    config: Config,
    outbound: TcpListener,
    admin_listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let node = config.node();
    let token = (!config.control_plane_token.is_empty()).then(|| config.control_plane_token.clone());
    let client = Client::connect_lazy(&config.orchestration_url, ClientOptions { token, ..ClientOptions::default() })
        .context("while building the control-plane client")?;
    let upstreams = Arc::new(Upstreams::new(Locality { region: config.region.clone(), zone: config.zone.clone() }));
    let cache = config.cache_path(&node);
    config_watch::load_saved(&cache, &upstreams);

    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let watcher = Watcher {
        client: client.clone(),
        hello: pb::Hello {
            node_id: node.clone(),
            role: "sidecar".into(),
            service_id: config.service_id.clone(),
            region: config.region.clone(),
            zone: config.zone.clone(),
            services: config.upstream_list(),
            all_services: false,
            running_version: 0,
        },
        upstreams: upstreams.clone(),
        cache,
        report_interval: config.report_interval,
    };
    tasks.spawn(watcher.run(stop.clone()));

    let instance_id = if config.instance_id.is_empty() { node.clone() } else { config.instance_id.clone() };
    let registered = !config.service_id.is_empty();
    if registered {
        let instance: Instance = serde_json::from_value(serde_json::json!({
            "id": instance_id, "serviceId": config.service_id, "address": config.service_address,
            "port": config.service_port, "scheme": config.service_scheme, "region": config.region, "zone": config.zone,
            "metadata": {"sidecar": node},
        }))
        .context("while describing the instance")?;
        tasks.spawn(registration::run(client.clone(), instance, config.heartbeat_interval, stop.clone()));
    }

    let draining = Arc::new(AtomicBool::new(false));
    let admin_app = admin::router(Admin { upstreams: upstreams.clone(), draining: draining.clone() });
    let admin_stop = stop.clone();
    tasks.spawn(async move {
        let served = axum::serve(admin_listener, admin_app).with_graceful_shutdown(admin_stop.cancelled_owned()).await;
        if let Err(err) = served {
            tracing::warn!(error = %err, "admin server failed");
        }
    });

    let proxy_stop = CancellationToken::new();
    let proxy = Arc::new(Proxy::new(upstreams.clone(), config.default_upstream.clone()));
    info!(node = %node, outbound = %outbound.local_addr()?, "sidecar serving");
    let serving = tokio::spawn(proxy.serve(outbound, proxy_stop.clone()));

    shutdown.await;
    info!("shutting down: deregistering, then draining");
    draining.store(true, Ordering::Relaxed);
    stop.cancel();
    if registered {
        registration::deregister(&client, &instance_id).await;
        tokio::time::sleep(config.drain_time).await;
    }
    proxy_stop.cancel();
    let _ = serving.await;
    tasks.close();
    tasks.wait().await;
    info!("sidecar stopped");
    Ok(())
}
