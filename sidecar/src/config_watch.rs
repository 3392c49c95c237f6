//! The config stream client: says hello, applies each config the control plane sends (ACK), refuses
//! an invalid one and keeps the previous (NACK), reports breaker metrics, and reconnects with
//! exponential backoff and jitter when the stream breaks. Each applied config is saved to disk
//! (written aside, then renamed), so a sidecar that starts while the control plane is away routes
//! with its last good config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use reskflow_proto::dataplane::DataPlaneConfig;
use reskflow_proto::pb::config::v1 as pb;
use reskflow_proto::Client;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::upstreams::Upstreams;

const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct Watcher {
    pub client: Client,
    pub hello: pb::Hello,
    pub upstreams: Arc<Upstreams>,
    pub cache: PathBuf,
    pub report_interval: Duration,
}

/// Loads the saved config, if there is one and it is still valid.
pub fn load_saved(path: &Path, upstreams: &Upstreams) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else { return false };
    match serde_json::from_str::<DataPlaneConfig>(&text) {
        Ok(config) => {
            let version = config.version;
            match upstreams.apply(config, "disk") {
                Ok(()) => {
                    info!(version, path = %path.display(), "routing with the saved config until the control plane answers");
                    true
                }
                Err(why) => {
                    warn!(%why, path = %path.display(), "the saved config is not valid; ignored");
                    false
                }
            }
        }
        Err(err) => {
            warn!(error = %err, path = %path.display(), "the saved config is unreadable; ignored");
            false
        }
    }
}

fn save(path: &Path, json: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, json)?;
    std::fs::rename(&tmp, path)
}

impl Watcher {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_START;
        while !shutdown.is_cancelled() {
            match self.session(&shutdown).await {
                Ok(()) => backoff = BACKOFF_START,
                Err(err) => debug!(error = %err, "config stream unavailable"),
            }
            if shutdown.is_cancelled() {
                break;
            }
            // Full jitter, so a restarted control plane is not hit by every sidecar at once.
            let wait = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// One stream, until it breaks (Err when it could not start).
    async fn session(&self, shutdown: &CancellationToken) -> Result<(), tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let hello = pb::Hello { running_version: self.upstreams.version(), ..self.hello.clone() };
        let _ = tx.send(request(pb::stream_request::Kind::Hello(hello))).await;
        let mut inbound = self.client.config().stream(ReceiverStream::new(rx)).await?.into_inner();
        info!("config stream connected");
        let mut reports = tokio::time::interval(self.report_interval);
        reports.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                message = inbound.message() => match message {
                    Ok(Some(update)) => {
                        let answer = self.apply(update);
                        if tx.send(request(answer)).await.is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => {
                        info!("config stream closed by the control plane");
                        return Ok(());
                    }
                    Err(status) => {
                        info!(%status, "config stream broke");
                        return Ok(());
                    }
                },
                _ = reports.tick() => {
                    let json = serde_json::to_string(&self.upstreams.breakers()).unwrap_or_else(|_| "{}".into());
                    let report = pb::stream_request::Kind::Report(pb::Report { breakers_json: json });
                    if tx.send(request(report)).await.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Applies an update; the ACK or NACK to send.
    fn apply(&self, update: pb::ConfigUpdate) -> pb::stream_request::Kind {
        use pb::stream_request::Kind;
        let version = update.version;
        let nack = |error: String| {
            warn!(version, %error, "refused a config; keeping the previous one");
            Kind::Nack(pb::Nack { version, error })
        };
        let config: DataPlaneConfig = match serde_json::from_str(&update.config_json) {
            Ok(config) => config,
            Err(err) => return nack(format!("not a config: {err}")),
        };
        if let Err(why) = self.upstreams.apply(config, "control-plane") {
            return nack(why);
        }
        if let Err(err) = save(&self.cache, &update.config_json) {
            warn!(error = %err, path = %self.cache.display(), "cannot save the config");
        }
        debug!(version, "config applied");
        Kind::Ack(pb::Ack { version })
    }
}

fn request(kind: pb::stream_request::Kind) -> pb::StreamRequest {
    pb::StreamRequest { kind: Some(kind) }
}
