//! Config-stream fan-out: opens N config streams on a control plane (each on its own connection, as
//! N sidecars would, each ACKing what it gets), then makes registry changes one at a time and
//! measures, for every stream, the time from just before the write call to the new config arriving.
//! Prints a RESULT line.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use reskflow_proto::pb::config::v1 as pb;
use reskflow_proto::registry::{Instance, Service};
use reskflow_proto::{Client, ClientOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser)]
struct Args {
    /// The control plane's gRPC URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    url: String,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Registry changes to make (one at a time).
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Pause between changes.
    #[arg(long, default_value_t = 100)]
    interval_ms: u64,
}

/// The instance id of each change and when its write started.
type Sent = Arc<Mutex<Vec<(String, Instant)>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin = Client::connect_lazy(&args.url, ClientOptions::default())?;
    let service: Service = serde_json::from_value(serde_json::json!({"id": "config-fanout"}))?;
    match admin.register_service(service).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {}
        Err(s) => return Err(s).context("register the bench service"),
    }
    let run = std::process::id();
    let sent: Sent = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<f64>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let opened = Instant::now();
    for n in 0..args.streams {
        let channel = tonic::transport::Endpoint::from_shared(args.url.clone())?.connect().await.context("connect")?;
        let client = Client::from_channel(channel, ClientOptions::default());
        let (out, requests) = mpsc::channel(8);
        let hello = pb::Hello {
            node_id: format!("fanout-{run}-{n}"),
            role: "sidecar".into(),
            services: vec!["config-fanout".into()],
            ..Default::default()
        };
        out.send(pb::StreamRequest { kind: Some(pb::stream_request::Kind::Hello(hello)) }).await?;
        let mut stream =
            client.config().stream(ReceiverStream::new(requests)).await.context("open stream")?.into_inner();
        let (sent, tx, ready) = (sent.clone(), tx.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let mut first = true;
            let mut seen = 0;
            while let Ok(Some(update)) = stream.message().await {
                let arrived = Instant::now();
                let ack = pb::stream_request::Kind::Ack(pb::Ack { version: update.version });
                let _ = out.send(pb::StreamRequest { kind: Some(ack) }).await;
                if first {
                    first = false;
                    let _ = ready.send(());
                    continue;
                }
                let changes = sent.lock().map(|s| s.clone()).unwrap_or_default();
                while seen < changes.len() && update.config_json.contains(&format!("\"{}\"", changes[seen].0)) {
                    let _ = tx.send(arrived.duration_since(changes[seen].1).as_secs_f64() * 1000.0);
                    seen += 1;
                }
            }
        });
    }
    for _ in 0..args.streams {
        ready_rx.recv().await.context("a stream closed before its first config")?;
    }
    eprintln!("{} streams open in {:.1} s", args.streams, opened.elapsed().as_secs_f64());

    for n in 0..args.changes {
        let id = format!("config-fanout-{run}-{n}");
        let instance: Instance = serde_json::from_value(serde_json::json!({
            "id": id, "serviceId": "config-fanout", "address": "127.0.0.1", "port": 1
        }))?;
        sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push((id, Instant::now()));
        admin.register_instance(instance).await.context("register")?;
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    reskflow_bench::report_fanout(&mut rx, args.streams, args.changes).await;
    Ok(())
}
