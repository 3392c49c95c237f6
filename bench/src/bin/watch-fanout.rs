//! Watch fan-out: opens N Watch streams on a control plane (each on its own connection, as N
//! sidecars would), then makes registry changes one at a time and measures, for every stream, the
//! time from just before the write call to the change arriving. Prints a RESULT line.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use reskflow_proto::pb::registry::v1::watch_event::Event;
use reskflow_proto::registry::{Instance, Service};
use reskflow_proto::{Client, ClientOptions};
use tokio::sync::mpsc;

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

type Sent = Arc<Mutex<HashMap<String, Instant>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let admin = Client::connect_lazy(&args.url, ClientOptions::default())?;
    let service: Service = serde_json::from_value(serde_json::json!({"id": "fanout"}))?;
    match admin.register_service(service).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {}
        Err(s) => return Err(s).context("register the bench service"),
    }

    let sent: Sent = Arc::new(Mutex::new(HashMap::new()));
    let (tx, mut rx) = mpsc::unbounded_channel::<f64>();
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let opened = Instant::now();
    for _ in 0..args.streams {
        let channel = tonic::transport::Endpoint::from_shared(args.url.clone())?.connect().await.context("connect")?;
        let client = Client::from_channel(channel, ClientOptions::default());
        let mut stream = client.watch(0, vec!["fanout".into()]).await.context("open watch")?;
        let (sent, tx, ready) = (sent.clone(), tx.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let mut first = true;
            while let Ok(Some(event)) = stream.message().await {
                let arrived = Instant::now();
                if first {
                    first = false;
                    let _ = ready.send(());
                    continue;
                }
                if let Some(Event::InstanceUpserted(i)) = event.event {
                    let at = sent.lock().ok().and_then(|m| m.get(&i.id).copied());
                    if let Some(at) = at {
                        let _ = tx.send(arrived.duration_since(at).as_secs_f64() * 1000.0);
                    }
                }
            }
        });
    }
    for _ in 0..args.streams {
        ready_rx.recv().await.context("a stream closed before its snapshot")?;
    }
    eprintln!("{} streams open in {:.1} s", args.streams, opened.elapsed().as_secs_f64());

    let run = format!("{}", std::process::id());
    for n in 0..args.changes {
        let id = format!("fanout-{run}-{n}");
        let instance: Instance = serde_json::from_value(serde_json::json!({
            "id": id, "serviceId": "fanout", "address": "127.0.0.1", "port": 1
        }))?;
        sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.insert(id, Instant::now());
        admin.register_instance(instance).await.context("register")?;
        tokio::time::sleep(Duration::from_millis(args.interval_ms)).await;
    }
    reskflow_bench::report_fanout(&mut rx, args.streams, args.changes).await;
    Ok(())
}
