//! Workflow throughput and start latency. Serves a no-op action service itself (so the time a run
//! was started and the time its first step was called are read from one clock), registers it and a
//! 3-step workflow on the control plane, starts N runs with C executes in flight, and waits until
//! every run's last step was called. Prints a RESULT line: runs/s, step calls/s, and the latency
//! from the execute call to the first step's call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::post;
use axum::{Json, Router};
use clap::Parser;
use reskflow_proto::registry::{Instance, Service};
use reskflow_proto::{Client, ClientOptions};
use tokio::sync::Semaphore;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    url: String,
    #[arg(long, default_value_t = 2000)]
    runs: usize,
    /// Executes in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Start runs at this fixed rate (runs/s) instead of as fast as possible: the start latency of a
    /// system that keeps up, not of a queue that grows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
}

#[derive(Default)]
struct Seen {
    first_call: Mutex<HashMap<String, Instant>>,
    last_steps: AtomicUsize,
    calls: AtomicUsize,
}

async fn action(
    State(seen): State<Arc<Seen>>,
    Path(action): Path<String>,
    headers: HeaderMap,
) -> Json<serde_json::Value> {
    let now = Instant::now();
    seen.calls.fetch_add(1, Ordering::Relaxed);
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let instance = key.split(':').next().unwrap_or_default().to_string();
    match action.as_str() {
        "one" => {
            if let Ok(mut m) = seen.first_call.lock() {
                m.entry(instance).or_insert(now);
            }
        }
        "three" => {
            seen.last_steps.fetch_add(1, Ordering::Relaxed);
        }
        _ => {}
    }
    Json(serde_json::json!({"ok": true}))
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    reskflow_bench::quantile(sorted, q)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seen = Arc::new(Seen::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let app = Router::new().route("/actions/{action}", post(action)).with_state(seen.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::connect_lazy(&args.url, ClientOptions::default())?;
    // Names of this process's own: an earlier run's instance (now gone) must not receive calls.
    let pid = std::process::id();
    let (service_id, workflow_id) = (format!("noop-{pid}"), format!("bench-3-{pid}"));
    let service: Service = serde_json::from_value(serde_json::json!({"id": service_id}))?;
    match client.register_service(service).await {
        Ok(_) => {}
        Err(s) if s.code() == tonic::Code::AlreadyExists => {}
        Err(s) => return Err(s).context("register the service"),
    }
    let instance: Instance =
        serde_json::from_value(serde_json::json!({"serviceId": service_id, "address": "127.0.0.1", "port": port}))?;
    client.register_instance(instance).await.context("register the instance")?;
    let workflow = serde_json::json!({"id": workflow_id, "steps": [
        {"id": "one", "service": service_id, "action": "one", "input": {"n": "{{input.n}}"}},
        {"id": "two", "service": service_id, "action": "two", "input": {"prev": "{{steps.one.output.ok}}"}},
        {"id": "three", "service": service_id, "action": "three"}
    ]});
    client.register_workflow(&workflow).await.context("register the workflow")?;

    let started: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let begin = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticks = (args.rate > 0.0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    for n in 0..args.runs {
        if let Some(t) = ticks.as_mut() {
            t.tick().await;
        }
        let permit = permits.clone().acquire_owned().await?;
        let (client, started, workflow_id) = (client.clone(), started.clone(), workflow_id.clone());
        tasks.spawn(async move {
            let at = Instant::now();
            let run = client.execute(&workflow_id, &serde_json::json!({"n": n}), None).await;
            drop(permit);
            if let (Ok(run), Ok(mut m)) = (run, started.lock()) {
                m.insert(run.instance_id, at);
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let submitted = begin.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen.last_steps.load(Ordering::Relaxed) < args.runs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = begin.elapsed().as_secs_f64();
    let _ = client.deregister_service(&service_id).await;
    let done = seen.last_steps.load(Ordering::Relaxed);
    let calls = seen.calls.load(Ordering::Relaxed);
    let mut latencies: Vec<f64> = {
        let starts = started.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let firsts = seen.first_call.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        starts
            .iter()
            .filter_map(|(id, at)| firsts.get(id).map(|f| f.duration_since(*at).as_secs_f64() * 1000.0))
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    println!(
        "RESULT runs={} completed={} secs={:.2} submit_secs={:.2} runs_per_s={:.0} step_calls_per_s={:.0} first_call_p50_ms={:.2} first_call_p99_ms={:.2} first_call_max_ms={:.2}",
        args.runs,
        done,
        elapsed,
        submitted.as_secs_f64(),
        done as f64 / elapsed,
        calls as f64 / elapsed,
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    Ok(())
}
