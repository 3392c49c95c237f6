//! Faults with real processes: the control plane killed with SIGKILL at random moments while 200
//! workflows run (half of them failing and compensating), on each store.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reskflow_e2e::harness::{backends, ControlPlane, Gateway};
use reskflow_e2e::targets::ActionService;
use serde_json::{json, Value};

const RUNS: usize = 200;
const ENDED: [&str; 6] = ["COMPLETED", "FAILED", "COMPENSATED", "COMPENSATION_FAILED", "CANCELLED", "TIMED_OUT"];

/// splitmix64: a small deterministic generator (the seed is printed, so a failure can be replayed).
struct Rng(u64);

impl Rng {
    fn next_in(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        lo + z % (hi - lo)
    }
}

fn events(run: &Value, kind: &str) -> Vec<String> {
    run["history"]
        .as_array()
        .map(|h| {
            h.iter().filter(|e| e["type"] == kind).filter_map(|e| e["step"].as_str().map(str::to_string)).collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn two_hundred_runs_survive_three_sigkills_with_each_step_and_compensation_recorded_once() {
    let seed = std::env::var("FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(7));
    println!("FAULT_SEED={seed}");
    let mut rng = Rng(seed);
    for backend in backends() {
        let mut cp = ControlPlane::start_on(backend).await;
        let gw = Gateway::start(&cp).await;
        let actions = ActionService::start().await;
        // "fraud" always fails: its own service, so its open breaker does not touch the others.
        for id in ["stock", "payments", "shipping", "fraud"] {
            let (status, _) = gw.post("/api/registry/services", json!({ "id": id })).await;
            assert_eq!(status, 201);
            let (status, _) = gw
                .post(
                    "/api/registry/instances",
                    json!({ "serviceId": id, "address": "127.0.0.1", "port": actions.port }),
                )
                .await;
            assert_eq!(status, 201);
        }
        actions.fail("explode", u32::MAX, 500);
        // Calls take a while, so kills land while many are in flight.
        actions.delay(30);
        let workflow = json!({
            "id": "order", "timeout": "10m",
            "steps": [
                { "id": "reserve", "service": "stock", "action": "reserve",
                  "compensate": { "service": "stock", "action": "release" } },
                { "id": "charge", "service": "payments", "action": "charge",
                  "compensate": { "service": "payments", "action": "refund" },
                  "next": [{ "when": "input.fail", "goto": "explode" }] },
                { "id": "ship", "service": "shipping", "action": "ship", "next": [{ "goto": "$end" }] },
                { "id": "explode", "service": "fraud", "action": "explode", "retry": { "maxAttempts": 1 } }
            ]
        });
        let (status, body) = gw.post("/api/workflows", workflow).await;
        assert_eq!(status, 201, "{body}");

        let starts = (0..RUNS).map(|n| {
            let gw = &gw;
            async move {
                let (status, started) =
                    gw.post("/api/workflows/order/execute", json!({ "input": { "n": n, "fail": n % 2 == 1 } })).await;
                assert_eq!(status, 202, "{started}");
                (n, started["instanceId"].as_str().unwrap_or("").to_string())
            }
        });
        let ids: Vec<(usize, String)> = futures::future::join_all(starts).await;

        // About 800 calls in all (3 per completing run, 5 per compensating one): kill at three
        // random points within them, so each kill lands while runs are in flight.
        let mut at: Vec<usize> = (0..3).map(|_| rng.next_in(40, 650) as usize).collect();
        at.sort_unstable();
        for (kill, calls) in at.into_iter().enumerate() {
            let waited = tokio::time::Instant::now() + Duration::from_secs(120);
            while actions.calls().len() < calls {
                assert!(tokio::time::Instant::now() < waited, "{backend:?}: stuck before {calls} calls");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            println!("{backend:?}: SIGKILL {} after {} calls", kill + 1, actions.calls().len());
            cp.crash_and_restart().await;
        }

        // Every run reaches a final state.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        let mut finished: Vec<Option<Value>> = vec![None; RUNS];
        while finished.iter().any(Option::is_none) {
            assert!(tokio::time::Instant::now() < deadline, "{backend:?}: runs still going after 180 s");
            for (n, id) in &ids {
                if finished[*n].is_some() {
                    continue;
                }
                let (status, run) = gw.get(&format!("/api/workflows/instances/{id}")).await;
                if status == 200 && ENDED.contains(&run["status"].as_str().unwrap_or("")) {
                    finished[*n] = Some(run);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }

        for (n, run) in finished.iter().enumerate() {
            let run = run.as_ref().expect("finished");
            let completed = events(run, "stepCompleted");
            let compensated = events(run, "compensationCompleted");
            if n % 2 == 0 {
                assert_eq!(run["status"], "COMPLETED", "{backend:?} run {n}: {run}");
                assert_eq!(completed, ["reserve", "charge", "ship"], "{backend:?} run {n}: each step once");
                assert!(compensated.is_empty(), "{backend:?} run {n}");
            } else {
                assert_eq!(run["status"], "COMPENSATED", "{backend:?} run {n}: {run}");
                assert_eq!(completed, ["reserve", "charge"], "{backend:?} run {n}: each step once");
                assert_eq!(compensated, ["charge", "reserve"], "{backend:?} run {n}: each undone once, in reverse");
            }
        }
        // The service saw every call under the run's stable keys: nothing ran without one.
        let calls = actions.calls();
        let keys: std::collections::HashSet<&str> = calls.iter().map(|(_, key, _)| key.as_str()).collect();
        for (n, id) in &ids {
            for step in if n % 2 == 0 { ["reserve", "charge", "ship"] } else { ["reserve", "charge", "explode"] } {
                assert!(
                    keys.iter().any(|k| k.starts_with(&format!("{id}:{step}"))),
                    "{backend:?}: {step} of run {n} was called"
                );
            }
        }
    }
}

/// A PostgreSQL of the test's own (so it can be restarted), run as the `postgres` user.
struct OwnPostgres {
    data: std::path::PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl OwnPostgres {
    fn pg_ctl(&self, args: &[&str]) -> std::process::Output {
        let options = format!("-p {} -k /tmp -c listen_addresses=127.0.0.1 -c fsync=off", self.port);
        std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_ctl"), "-D"])
            .arg(&self.data)
            .args(["-o", &options, "-l"])
            .arg(self.data.join("log"))
            .args(args)
            .output()
            .expect("pg_ctl")
    }

    fn start() -> OwnPostgres {
        let dir = tempfile::tempdir().expect("dir");
        let data = dir.path().join("data");
        let chown = std::process::Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
        assert!(chown.is_ok_and(|s| s.success()), "chown the data dir to postgres");
        let init = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/initdb"), "-A", "trust", "-U", "postgres", "-D"])
            .arg(&data)
            .output()
            .expect("initdb");
        assert!(init.status.success(), "initdb: {}", String::from_utf8_lossy(&init.stderr));
        let pg = OwnPostgres { data, port: reskflow_e2e::harness::free_port(), _dir: dir };
        let out = pg.pg_ctl(&["-w", "start"]);
        assert!(out.status.success(), "pg_ctl start: {}", String::from_utf8_lossy(&out.stderr));
        pg
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]);
    }
}

#[tokio::test]
async fn a_postgresql_restart_during_runs_loses_no_work() {
    use reskflow_e2e::harness::ControlPlaneOptions;
    let pg = OwnPostgres::start();
    let cp = ControlPlane::start_with(ControlPlaneOptions { database_url: Some(pg.url()), ..Default::default() }).await;
    let gw = Gateway::start(&cp).await;
    let actions = ActionService::start().await;
    for id in ["stock", "payments"] {
        gw.post("/api/registry/services", json!({ "id": id })).await;
        gw.post("/api/registry/instances", json!({ "serviceId": id, "address": "127.0.0.1", "port": actions.port }))
            .await;
    }
    actions.delay(50);
    let workflow = json!({ "id": "order", "steps": [
        { "id": "reserve", "service": "stock", "action": "reserve" },
        { "id": "charge", "service": "payments", "action": "charge" },
        { "id": "ship", "service": "stock", "action": "ship" }
    ]});
    let (status, body) = gw.post("/api/workflows", workflow).await;
    assert_eq!(status, 201, "{body}");
    let mut ids = Vec::new();
    for n in 0..50 {
        let (status, started) = gw.post("/api/workflows/order/execute", json!({ "input": { "n": n } })).await;
        assert_eq!(status, 202, "{started}");
        ids.push(started["instanceId"].as_str().unwrap_or("").to_string());
    }
    while actions.calls().len() < 30 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // PostgreSQL goes down (fast shutdown: connections cut) and comes back on the same port.
    let out = pg.pg_ctl(&["-m", "fast", "-w", "restart"]);
    assert!(out.status.success(), "pg_ctl restart: {}", String::from_utf8_lossy(&out.stderr));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for id in &ids {
        let run = loop {
            let (status, run) = gw.get(&format!("/api/workflows/instances/{id}")).await;
            if status == 200 && ENDED.contains(&run["status"].as_str().unwrap_or("")) {
                break run;
            }
            assert!(tokio::time::Instant::now() < deadline, "run {id} did not end after the restart: {run}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(run["status"], "COMPLETED", "{run}");
        assert_eq!(events(&run, "stepCompleted"), ["reserve", "charge", "ship"], "each step once: {run}");
    }
    // The registry still takes writes.
    let (status, _) = gw.post("/api/registry/services", json!({ "id": "after-restart" })).await;
    assert_eq!(status, 201);
}
