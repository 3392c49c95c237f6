//! The sidecar registers the instance it runs beside (replacing a registration left by its
//! previous run), heartbeats it when the service has a TTL check, and deregisters it on shutdown.

use std::time::Duration;

use reskflow_proto::registry::{Heartbeat, Instance};
use reskflow_proto::Client;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tracing::{info, warn};

/// Registers `instance` (retrying until the control plane answers), then heartbeats it every
/// `interval` until `shutdown`.
pub async fn run(client: Client, instance: Instance, interval: Duration, shutdown: CancellationToken) {
    let id = instance.id.clone();
    let mut heartbeats = true;
    let mut registered = false;
    let mut backoff = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        if !registered {
            match client.register_instance_with(instance.clone(), true).await {
                Ok(_) => {
                    info!(instance = %id, service = %instance.service_id, "instance registered");
                    registered = true;
                    backoff = Duration::from_millis(200);
                }
                Err(status) if status.code() == Code::InvalidArgument => {
                    warn!(%status, "the control plane refused the instance; not registering");
                    return;
                }
                Err(status) => {
                    warn!(%status, "cannot register the instance yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        if heartbeats {
            match client.heartbeat(&id, Heartbeat { status: None, output: String::new() }).await {
                Ok(_) => {}
                // The service has no TTL check: nothing to keep alive.
                Err(status) if status.code() == Code::FailedPrecondition => heartbeats = false,
                Err(status) if status.code() == Code::NotFound => registered = false,
                Err(status) => warn!(%status, "heartbeat failed"),
            }
        }
        if !registered {
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

/// Removes the instance, so callers stop being sent to it.
pub async fn deregister(client: &Client, id: &str) {
    match client.deregister_instance(id).await {
        Ok(()) => info!(instance = %id, "instance deregistered"),
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => warn!(%status, "cannot deregister the instance"),
    }
}
