//! Starts the real binaries on free ports, waits until they are ready, keeps their logs (printed
//! when a test fails) and kills them on drop.
//!
//! ```no_run
//! # async fn demo() {
//! use reskflow_e2e::harness::{ControlPlane, Gateway};
//! let cp = ControlPlane::start().await;
//! let gw = Gateway::start(&cp).await;
//! let services = gw.get("/api/registry/services").await;
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;
use tokio::process::{Child, Command};

/// Builds the binaries once per test process (a no-op when they are fresh) and returns their dir.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "reskflow-control-plane",
                "-p",
                "reskflow-gateway",
                "-p",
                "reskflow-sidecar",
                "--bins",
            ])
            .current_dir(&workspace)
            .status()
            .expect("run cargo build for the binaries");
        assert!(status.success(), "building the binaries failed");
        let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| workspace.join("target"));
        target.join("debug")
    })
}

/// The path of one of the project's binaries (built on first use).
pub fn binary(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// A port nobody listens on right now.
/// A port free now, for a process to bind, taken below Linux's ephemeral range (32768-60999): a
/// port the kernel hands out for port 0 can also become a test's outgoing connection's local port
/// before the process binds it (seen as "Address already in use" on a busy run).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Each test binary starts at a different place (its process id) and walks up from there.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ =
        NEXT.compare_exchange(0, 20_000 + (std::process::id() % 10_000) as u16, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..12_000 {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (port - 20_000) % 12_000;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    listener.local_addr().expect("local addr").port()
}

/// A process under test: killed on drop, its log printed if the test panicked.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(name: &str, binary: &str, envs: &[(String, String)], dir: &Path) -> Process {
        let log = dir.join(format!("{name}-{}.log", free_port()));
        let file = std::fs::File::create(&log).expect("create log file");
        let err = file.try_clone().expect("clone log file");
        let mut command = Command::new(bin_dir().join(binary));
        command
            .current_dir(dir)
            .env_clear()
            .env("RUST_LOG", "info,reskflow_control_plane=debug")
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .kill_on_drop(true);
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("start {binary}: {e}"));
        Process { name: name.to_string(), child, log }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, as a crash would.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then wait for the exit.
    pub async fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await.ok().and_then(Result::ok)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- log of {} ({}) -----\n{}", self.name, self.log.display(), self.log());
        }
        let _ = self.child.start_kill();
    }
}

/// Where a control plane keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// SQLite always; PostgreSQL when `DATABASE_URL` points at one (the test command sets it).
pub fn backends() -> Vec<Backend> {
    let mut all = vec![Backend::Sqlite];
    if postgres_base().is_some() {
        all.push(Backend::Postgres);
    }
    all
}

fn postgres_base() -> Option<String> {
    std::env::var("DATABASE_URL").ok().filter(|u| u.starts_with("postgres"))
}

/// A URL of a new, empty schema in the `DATABASE_URL` database.
pub async fn fresh_postgres_url() -> String {
    use sqlx::Executor;
    let base = postgres_base().expect("DATABASE_URL must name a PostgreSQL database for this test");
    let schema = format!("e2e_{}", uuid_like());
    let pool = sqlx::PgPool::connect(&base).await.expect("PostgreSQL at DATABASE_URL is unreachable");
    pool.execute(format!("CREATE SCHEMA {schema}").as_str()).await.expect("create schema");
    pool.close().await;
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

fn uuid_like() -> String {
    use std::time::{SystemTime, UNIX_EPOCH};
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}{:x}", nanos, free_port())
}

pub struct ControlPlane {
    pub process: Process,
    pub grpc_url: String,
    pub database_url: String,
    port: u16,
    envs: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

#[derive(Debug, Clone, Default)]
pub struct ControlPlaneOptions {
    /// A database URL; default: a SQLite file in the control plane's temp dir.
    pub database_url: Option<String>,
    pub env: Vec<(String, String)>,
}

impl ControlPlane {
    /// On SQLite, in a temp dir of its own.
    pub async fn start() -> ControlPlane {
        Self::start_with(ControlPlaneOptions::default()).await
    }

    pub async fn start_on(backend: Backend) -> ControlPlane {
        let database_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(fresh_postgres_url().await),
        };
        Self::start_with(ControlPlaneOptions { database_url, ..Default::default() }).await
    }

    pub async fn start_with(options: ControlPlaneOptions) -> ControlPlane {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url =
            options.database_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("reskflow.db").display()));
        let port = free_port();
        // A stable name, as a replica has in production (host or pod name): restarted, it takes
        // back its own task leases at once.
        let mut envs = vec![
            ("GRPC_ADDR".to_string(), format!("127.0.0.1:{port}")),
            ("DATABASE_URL".to_string(), database_url.clone()),
            ("HEALTH_LEASE_TTL".to_string(), "1s".to_string()),
            ("NODE_ID".to_string(), format!("cp-{port}")),
            ("METRICS_ADDR".to_string(), format!("127.0.0.1:{}", free_port())),
        ];
        for (key, value) in options.env {
            envs.retain(|(k, _)| *k != key);
            envs.push((key, value));
        }
        let process = Process::spawn("control-plane", "control-plane", &envs, dir.path());
        let mut cp =
            ControlPlane { process, grpc_url: format!("http://127.0.0.1:{port}"), database_url, port, envs, dir };
        cp.wait_ready().await;
        cp
    }

    async fn wait_ready(&mut self) {
        for _ in 0..300 {
            if let Ok(channel) =
                tonic::transport::Endpoint::from_shared(self.grpc_url.clone()).expect("endpoint").connect().await
            {
                let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
                let req = tonic_health::pb::HealthCheckRequest { service: String::new() };
                if health.check(req).await.is_ok() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.process.child.try_wait() {
                panic!("control plane exited with {status}:\n{}", self.process.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("control plane not ready after 15 s:\n{}", self.process.log());
    }

    /// Kills it with SIGKILL and starts it again on the same port and database.
    pub async fn crash_and_restart(&mut self) {
        self.process.kill().await;
        self.restart().await;
    }

    /// Starts it again (after `kill` or `terminate`) on the same port and database.
    pub async fn restart(&mut self) {
        let _ = self.process.child.wait().await;
        self.process = Process::spawn("control-plane", "control-plane", &self.envs, self.dir.path());
        self.wait_ready().await;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://<METRICS_ADDR>` (Prometheus `/metrics`, `/health`).
    pub fn metrics_url(&self) -> String {
        let addr = self.envs.iter().find(|(k, _)| k == "METRICS_ADDR").map(|(_, v)| v.clone()).unwrap_or_default();
        format!("http://{addr}")
    }

    pub fn client(&self) -> reskflow_proto::Client {
        reskflow_proto::Client::connect_lazy(&self.grpc_url, reskflow_proto::ClientOptions::default()).expect("client")
    }
}

/// A sidecar process: outbound proxy and admin port on free ports, its saved config in a temp dir
/// that survives restarts.
pub struct Sidecar {
    pub process: Process,
    pub outbound: String,
    pub admin: String,
    envs: Vec<(String, String)>,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Sidecar {
    /// Starts a sidecar talking to `cp` with extra environment (`UPSTREAMS`, `SERVICE_ID`, ...);
    /// waits until its admin port answers (not until it has a config).
    pub async fn start(cp: &ControlPlane, env: &[(&str, &str)]) -> Sidecar {
        let dir = tempfile::tempdir().expect("temp dir");
        let (outbound, admin) = (free_port(), free_port());
        let mut envs = vec![
            ("ORCHESTRATION_URL".to_string(), cp.grpc_url.clone()),
            ("OUTBOUND_ADDR".to_string(), format!("127.0.0.1:{outbound}")),
            ("ADMIN_ADDR".to_string(), format!("127.0.0.1:{admin}")),
            ("NODE_ID".to_string(), format!("sidecar-{admin}")),
            ("REPORT_INTERVAL".to_string(), "200ms".to_string()),
            ("DRAIN_TIME".to_string(), "200ms".to_string()),
            ("WORKER_THREADS".to_string(), "2".to_string()),
        ];
        for (k, v) in env {
            envs.retain(|(key, _)| key != k);
            envs.push((k.to_string(), v.to_string()));
        }
        let process = Process::spawn("sidecar", "sidecar", &envs, dir.path());
        let mut sidecar = Sidecar {
            process,
            outbound: format!("http://127.0.0.1:{outbound}"),
            admin: format!("http://127.0.0.1:{admin}"),
            envs,
            dir,
            http: reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client"),
        };
        sidecar.wait_admin().await;
        sidecar
    }

    async fn wait_admin(&mut self) {
        for _ in 0..300 {
            if self.http.get(format!("{}/ready", self.admin)).send().await.is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.process.child.try_wait() {
                panic!("sidecar exited with {status}:\n{}", self.process.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("sidecar admin port not answering after 15 s:\n{}", self.process.log());
    }

    /// Starts it again (after `kill` or `terminate`) with the same ports and saved config.
    pub async fn restart(&mut self) {
        let _ = self.process.child.wait().await;
        self.process = Process::spawn("sidecar", "sidecar", &self.envs, self.dir.path());
        self.wait_admin().await;
    }

    /// A GET through the outbound proxy: status, headers, JSON body (Null if not JSON).
    pub async fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, Value) {
        let response = self.http.get(format!("{}{path}", self.outbound)).send().await.expect("sidecar answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, headers, body)
    }

    /// A GET on the admin port, as JSON.
    pub async fn admin(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(format!("{}{path}", self.admin)).send().await.expect("admin answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The admin port's Prometheus text.
    pub async fn metrics(&self) -> String {
        let response = self.http.get(format!("{}/metrics", self.admin)).send().await.expect("admin answers");
        response.text().await.unwrap_or_default()
    }
}

pub struct Gateway {
    pub process: Process,
    pub url: String,
    http: reqwest::Client,
    envs: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Gateway {
    pub async fn start(cp: &ControlPlane) -> Gateway {
        Self::start_with(cp, &[]).await
    }

    /// With extra environment variables (`REGION`, ...).
    pub async fn start_with(cp: &ControlPlane, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let mut envs = vec![
            ("PORT".to_string(), port.to_string()),
            ("BIND_ADDR".to_string(), "127.0.0.1".to_string()),
            ("ORCHESTRATION_URL".to_string(), cp.grpc_url.clone()),
        ];
        envs.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut process = Process::spawn("gateway", "gateway", &envs, dir.path());
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        for _ in 0..300 {
            if let Ok(r) = http.get(format!("{url}/ready")).send().await {
                if r.status().is_success() {
                    return Gateway { process, url, http, envs, dir };
                }
            }
            if let Ok(Some(status)) = process.child.try_wait() {
                panic!("gateway exited with {status}:\n{}", process.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway not ready after 15 s:\n{}", process.log());
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Stops it (SIGTERM) and starts it again in the same directory (its saved config there),
    /// waiting only until it serves (`/health`): the control plane may be down.
    pub async fn restart(&mut self) {
        self.process.terminate().await;
        self.process = Process::spawn("gateway", "gateway", &self.envs, self.dir.path());
        for _ in 0..300 {
            if let Ok(r) = self.http.get(format!("{}/health", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gateway not serving after a restart:\n{}", self.process.log());
    }

    /// Sends a request and returns the status and the JSON body (Null when empty).
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("gateway answers");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        let json =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, json)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }
}

/// Polls `probe` until it returns `Some`, for at most `within`; panics with `what` otherwise.
/// For waiting on background work (health checks, replication), not for timing assertions.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Registers service `service` with one instance, `<service>-1` on 127.0.0.1:`port`.
pub async fn register_at(client: &reskflow_proto::Client, service: &str, port: u16) {
    let s: reskflow_proto::registry::Service =
        serde_json::from_value(serde_json::json!({ "id": service })).expect("a service");
    client.register_service(s).await.expect("register the service");
    let i: reskflow_proto::registry::Instance = serde_json::from_value(serde_json::json!({
        "id": format!("{service}-1"), "serviceId": service, "address": "127.0.0.1", "port": port
    }))
    .expect("an instance");
    client.register_instance(i).await.expect("register the instance");
}
