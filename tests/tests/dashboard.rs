//! The web dashboard (/ui) in headless Chromium against a running system: services with live
//! health, the dependency graph, a circuit breaker that is open and closes live after a reset, and
//! workflow runs filtered, with a compensated run's step timeline. `tests/ui/dashboard.mjs`
//! (Playwright) checks each page's content and takes its screenshot; this test sets the system up,
//! runs it, and checks the screenshots are real pictures.

use std::path::Path;
use std::time::Duration;

use reskflow_e2e::harness::{eventually, ControlPlane, Gateway, Sidecar};
use reskflow_e2e::targets::{ActionService, EchoBackend};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// Width and height from a PNG's header, and whether the picture has more than one colour.
fn png_facts(path: &Path) -> (u32, u32, usize) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
    let be = |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    // Distinct byte values of the compressed data: a blank page compresses to very few.
    let distinct = bytes[33..].iter().copied().collect::<std::collections::HashSet<u8>>().len();
    (be(16), be(20), distinct)
}

#[tokio::test]
async fn the_dashboard_shows_the_running_system_in_headless_chromium() {
    let ui = Path::new(env!("CARGO_MANIFEST_DIR")).join("ui");
    assert!(
        ui.join("node_modules/playwright-core").is_dir(),
        "tests/ui/node_modules is missing: scripts/test installs it (npm ci in tests/ui)"
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "{chromium} is missing: scripts/test installs Debian's chromium");

    let cp = ControlPlane::start().await;
    let gw = Gateway::start(&cp).await;

    // Services with instances and dependencies: shop -> payments, shop -> mail (optional).
    let actions = ActionService::start().await;
    let mail = EchoBackend::start("mail-1").await;
    let breaker_policy = json!({
        "circuitBreaker": {"slidingWindowSize": 5, "minimumNumberOfCalls": 5, "waitDurationInOpenState": "1h"},
        "outlierDetection": {"enabled": false}, "retry": {"maxAttempts": 1}
    });
    for (body, port) in [
        (json!({"id": "shop", "dependencies": ["payments", {"serviceId": "mail", "optional": true}]}), actions.port),
        (json!({"id": "payments"}), actions.port),
        (json!({"id": "mail", "trafficPolicy": breaker_policy}), mail.port),
    ] {
        let (status, created) = gw.post("/api/registry/services", body).await;
        assert_eq!(status, 201, "{created}");
        let service = created["id"].as_str().expect("an id").to_string();
        let (status, body) = gw
            .post("/api/registry/instances", json!({"serviceId": service, "address": "127.0.0.1", "port": port}))
            .await;
        assert_eq!(status, 201, "{body}");
    }

    // An open breaker: a sidecar calling mail, which fails every call.
    let sidecar = Sidecar::start(&cp, &[("UPSTREAMS", "mail")]).await;
    eventually("the sidecar routes to mail", WAIT, || async { (sidecar.get("/mail/x").await.0 == 200).then_some(()) })
        .await;
    mail.fail_per_10(10);
    for _ in 0..6 {
        sidecar.get("/mail/x").await;
    }
    eventually("the open breaker is reported", WAIT, || async {
        let (_, body) = gw.get("/api/circuit-breakers/mail").await;
        (body["state"] == "OPEN").then_some(())
    })
    .await;
    mail.fail_per_10(0);

    // Runs: one completes; one retries its payment, fails it and compensates the reservation.
    let workflow = json!({
        "id": "checkout",
        "steps": [
            {"id": "reserve", "service": "shop", "action": "reserve",
             "compensate": {"service": "shop", "action": "release"}},
            {"id": "charge", "service": "payments", "action": "charge",
             "retry": {"maxAttempts": 3, "backoff": {"initial": "10ms", "max": "20ms"}}}
        ]
    });
    let (status, body) = gw.post("/api/workflows", workflow).await;
    assert_eq!(status, 201, "{body}");
    let run_to_end = |id: String| {
        let gw = &gw;
        async move {
            eventually("the run ends", WAIT, || async {
                let (_, run) = gw.get(&format!("/api/workflows/instances/{id}")).await;
                (!matches!(run["status"].as_str(), Some("RUNNING" | "COMPENSATING"))).then_some(run)
            })
            .await
        }
    };
    let (_, ok) = gw.post("/api/workflows/checkout/execute", json!({"input": {}})).await;
    let ok = run_to_end(ok["instanceId"].as_str().expect("an id").to_string()).await;
    assert_eq!(ok["status"], "COMPLETED", "{ok}");
    actions.fail("charge", 3, 503);
    let (_, failed) = gw.post("/api/workflows/checkout/execute", json!({"input": {}})).await;
    let failed_id = failed["instanceId"].as_str().expect("an id").to_string();
    let failed = run_to_end(failed_id.clone()).await;
    assert_eq!(failed["status"], "COMPENSATED", "{failed}");

    // The page is served, with a policy against injected scripts.
    let page = gw.http().get(format!("{}/ui", gw.url)).send().await.expect("the gateway answers");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-security-policy"].to_str().is_ok_and(|v| v.contains("frame-ancestors 'none'")));

    // DASHBOARD_SCREENSHOTS keeps the pictures (to look at them); by default a temp dir.
    let temp = tempfile::tempdir().expect("a temp dir");
    let out_dir = std::env::var("DASHBOARD_SCREENSHOTS").map(std::path::PathBuf::from).unwrap_or(temp.path().into());
    let run = tokio::process::Command::new("node")
        .arg(ui.join("dashboard.mjs"))
        .current_dir(&ui)
        .env("GATEWAY_URL", &gw.url)
        .env("OUT_DIR", &out_dir)
        .env("CHROMIUM", &chromium)
        .env("SERVICES", "shop,payments,mail")
        .env("EDGE", "shop->payments")
        .env("BREAKER", "mail")
        .env("RUN", &failed_id)
        .env("WORKFLOW", "checkout")
        .output()
        .await
        .expect("node runs (Node.js is on the machine)");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "the dashboard checks failed:\n{stdout}\n{stderr}\ngateway log:\n{}",
        gw.process.log()
    );
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the script's JSON report");
    assert!(report["checks"].as_array().is_some_and(|c| c.len() >= 14), "{report}");

    for name in ["services", "graph", "breakers-open", "breakers-reset", "workflows", "run"] {
        let (width, height, distinct) = png_facts(&out_dir.join(format!("{name}.png")));
        assert!(width >= 1280 && height >= 800, "{name}.png is {width}x{height}");
        assert!(distinct > 200, "{name}.png looks blank ({distinct} distinct bytes)");
    }
    // The reset went through the API: the breaker is closed for the operators too.
    let (_, breaker) = gw.get("/api/circuit-breakers/mail").await;
    assert_eq!(breaker["state"], "CLOSED", "{breaker}");
}
