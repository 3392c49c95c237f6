//! `reskctl`: the operator's command line. It speaks the gateway's REST API (`--url`, or
//! `RESKFLOW_URL`; a bearer token from `--token` or `RESKFLOW_TOKEN` when authentication is on),
//! prints tables by default and the API's JSON with `--json`, and exits non-zero with the API's
//! error message when a call fails.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use comfy_table::{presets::UTF8_BORDERS_ONLY, Table};
use reqwest::Method;
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "reskctl",
    version,
    about = "Operate ReskFlow: registry, workflows, circuit breakers and gateway routes"
)]
struct Cli {
    /// The gateway's URL.
    #[arg(long, env = "RESKFLOW_URL", default_value = "http://127.0.0.1:3024", global = true)]
    url: String,
    /// Bearer token, when the gateway has authentication on (the admin role).
    #[arg(long, env = "RESKFLOW_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Services: list, show, register, search, deregister.
    #[command(subcommand)]
    Services(Services),
    /// Instances of services: list, register, deregister.
    #[command(subcommand)]
    Instances(Instances),
    /// Pick an instance of a service as a client would.
    Discover {
        service: String,
        /// round_robin, random, weighted, zone_aware, consistent_hash.
        #[arg(long)]
        strategy: Option<String>,
        /// Only instances with all of these tags (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
    },
    /// Health of a service and each of its instances.
    Health { service: String },
    /// What a service depends on and what depends on it.
    Deps { service: String },
    /// Workflow definitions and runs.
    #[command(subcommand)]
    Workflows(Workflows),
    /// Circuit breakers of every sidecar and gateway.
    #[command(subcommand)]
    Breakers(Breakers),
    /// The gateway's routes.
    #[command(subcommand)]
    Routes(Routes),
}

#[derive(Subcommand)]
enum Services {
    /// Every service with its instance count and health.
    List,
    /// One service.
    Get { id: String },
    /// Register a service from a JSON or YAML file (`-` for stdin).
    Register { file: PathBuf },
    /// Services matching a text, tags or capabilities.
    Search {
        text: Option<String>,
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long = "capability")]
        capabilities: Vec<String>,
    },
    /// Remove a service and its instances.
    Deregister { id: String },
}

#[derive(Subcommand)]
enum Instances {
    /// Instances of a service.
    List { service: String },
    /// Register an instance.
    Register {
        service: String,
        /// host:port
        address: String,
        #[arg(long)]
        id: Option<String>,
    },
    /// Remove an instance.
    Deregister { id: String },
}

#[derive(Subcommand)]
enum Workflows {
    /// Registered workflow definitions (latest versions).
    List,
    /// Register a definition from a JSON or YAML file (`-` for stdin).
    Register { file: PathBuf },
    /// Start a run; with --wait, follow it until it ends.
    Execute {
        id: String,
        /// The run's input, JSON.
        #[arg(long, default_value = "{}")]
        input: String,
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the run until it ends (exit code 1 unless it completes).
        #[arg(long)]
        wait: bool,
    },
    /// Runs, newest first.
    Runs {
        #[arg(long)]
        workflow: Option<String>,
        #[arg(long)]
        status: Option<String>,
    },
    /// One run with its step timeline.
    Show { instance: String },
    /// Print a run's steps as they change until it ends (exit code 1 unless it completes).
    Follow { instance: String },
    /// Cancel a running run (its completed steps are compensated).
    Cancel { instance: String },
}

#[derive(Subcommand)]
enum Breakers {
    /// Every breaker: worst state, calls, failure rate, holders.
    List,
    /// Reset a breaker on every holder.
    Reset { name: String },
}

#[derive(Subcommand)]
enum Routes {
    /// Every route.
    List,
    /// Create or replace the routes in a file (YAML or JSON: a list or {routes: [...]}); with
    /// --replace-all the file becomes the whole table.
    Apply {
        file: PathBuf,
        #[arg(long)]
        replace_all: bool,
    },
    /// Delete a route.
    Delete { id: String },
}

struct Api {
    http: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.url.trim_end_matches('/'));
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.with_context(|| format!("cannot reach the gateway at {}", self.url))?;
        let status = response.status();
        let text = response.text().await.context("reading the answer")?;
        let value: Value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if !status.is_success() {
            let message = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| value.to_string());
            let fields: Vec<String> = value["error"]["fields"]
                .as_array()
                .map(|f| {
                    f.iter()
                        .map(|f| {
                            format!(
                                "  {}: {}",
                                f["field"].as_str().unwrap_or(""),
                                f["description"].as_str().unwrap_or("")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let mut all = format!("{method} {path}: {} {message}", status.as_u16());
            for f in fields {
                all.push('\n');
                all.push_str(&f);
            }
            bail!(all);
        }
        Ok(value)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }
}

/// A file's JSON (YAML is read too: JSON is YAML); `-` reads stdin.
fn read_document(path: &Path) -> anyhow::Result<Value> {
    let text = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading stdin")?;
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
    };
    serde_yaml_ng::from_str(&text).with_context(|| format!("{} is not JSON or YAML", path.display()))
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY).set_header(header.to_vec());
    for row in rows {
        t.add_row(row);
    }
    t.to_string()
}

/// One table row per item of the array `list` (none when it is not an array).
fn rows(list: &Value, row: impl Fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.as_array().map(|items| items.iter().map(row).collect()).unwrap_or_default()
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(s).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn encode(part: &str) -> String {
    part.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

const ENDED: [&str; 6] = ["COMPLETED", "FAILED", "COMPENSATED", "COMPENSATION_FAILED", "CANCELLED", "TIMED_OUT"];

fn run_table(run: &Value) -> String {
    let mut out = format!(
        "run {}  workflow {} v{}  status {}\n",
        s(&run["instanceId"]),
        s(&run["workflowId"]),
        s(&run["version"]),
        s(&run["status"])
    );
    let rows = rows(&run["steps"], |step| {
        let attempts = step["attempts"].as_array().map_or(0, Vec::len);
        let undo = step["compensationAttempts"].as_array().map_or(0, Vec::len);
        vec![
            s(&step["id"]),
            format!("{}.{}", s(&step["service"]), s(&step["action"])),
            s(&step["status"]),
            attempts.to_string(),
            undo.to_string(),
            s(&step["startedAt"]),
            s(&step["finishedAt"]),
            s(&step["error"]),
        ]
    });
    out.push_str(&table(
        &["step", "call", "status", "attempts", "compensations", "started", "finished", "error"],
        rows,
    ));
    if !run["output"].is_null() {
        out.push_str(&format!("\noutput: {}", run["output"]));
    }
    out
}

/// Prints the run's steps whenever they change, until it ends; Ok(true) when it completed.
async fn follow(api: &Api, instance: &str, json_out: bool) -> anyhow::Result<bool> {
    let mut last = String::new();
    loop {
        let run = api.get(&format!("/api/workflows/instances/{}", encode(instance))).await?;
        let shown = if json_out { run.to_string() } else { run_table(&run) };
        if shown != last {
            println!("{shown}");
            last = shown;
        }
        let status = s(&run["status"]);
        if ENDED.contains(&status.as_str()) {
            return Ok(status == "COMPLETED");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let api = Api { http: reqwest::Client::new(), url: cli.url.clone(), token: cli.token.clone() };
    let json_out = cli.json;
    let print = |value: &Value, render: &dyn Fn(&Value) -> String| {
        if json_out {
            println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
        } else {
            println!("{}", render(value));
        }
    };
    let services_table = |v: &Value| {
        let rows = rows(&v["services"], |x| {
            vec![s(&x["id"]), s(&x["version"]), s(&x["instanceCount"]), s(&x["health"]["status"]), s(&x["tags"])]
        });
        table(&["service", "version", "instances", "health", "tags"], rows)
    };
    let instances_table = |v: &Value| {
        let rows = rows(&v["instances"], |i| {
            vec![
                s(&i["id"]),
                format!("{}:{}", s(&i["address"]), s(&i["port"])),
                s(&i["status"]),
                s(&i["zone"]),
                s(&i["version"]),
                s(&i["statusOutput"]),
            ]
        });
        table(&["instance", "address", "status", "zone", "version", "last check"], rows)
    };
    match cli.command {
        Command::Services(cmd) => match cmd {
            Services::List => print(&api.get("/api/registry/services?pageSize=1000").await?, &services_table),
            Services::Get { id } => {
                let v = api.get(&format!("/api/registry/services/{}", encode(&id))).await?;
                print(&v, &|v| services_table(&json!({ "services": [v] })));
            }
            Services::Register { file } => {
                let v = api.call(Method::POST, "/api/registry/services", Some(read_document(&file)?)).await?;
                print(&v, &|v| format!("registered service {}", s(&v["id"])));
            }
            Services::Search { text, tags, capabilities } => {
                let body = json!({ "text": text.unwrap_or_default(), "tags": tags, "capabilities": capabilities, "pageSize": 1000 });
                print(&api.call(Method::POST, "/api/registry/search", Some(body)).await?, &services_table);
            }
            Services::Deregister { id } => {
                let v = api.call(Method::DELETE, &format!("/api/registry/services/{}", encode(&id)), None).await?;
                print(&v, &|v| {
                    format!("deregistered service {} ({} instances removed)", id, s(&v["instancesRemoved"]))
                });
            }
        },
        Command::Instances(cmd) => match cmd {
            Instances::List { service } => print(
                &api.get(&format!("/api/registry/services/{}/instances", encode(&service))).await?,
                &instances_table,
            ),
            Instances::Register { service, address, id } => {
                let (host, port) = address.rsplit_once(':').context("the address must be host:port")?;
                let port: u16 = port.parse().context("the port must be a number from 1 to 65535")?;
                let mut body = json!({ "serviceId": service, "address": host, "port": port });
                if let Some(id) = id {
                    body["id"] = id.into();
                }
                let v = api.call(Method::POST, "/api/registry/instances", Some(body)).await?;
                print(&v, &|v| format!("registered instance {} of {}", s(&v["id"]), s(&v["serviceId"])));
            }
            Instances::Deregister { id } => {
                api.call(Method::DELETE, &format!("/api/registry/instances/{}", encode(&id)), None).await?;
                print(&json!({ "deregistered": id }), &|_| format!("deregistered instance {id}"));
            }
        },
        Command::Discover { service, strategy, tags } => {
            let mut body = json!({ "serviceId": service, "tags": tags });
            if let Some(strategy) = strategy {
                body["strategy"] = strategy.into();
            }
            let v = api.call(Method::POST, "/api/registry/discover", Some(body)).await?;
            print(&v, &|v| {
                let i = &v["instance"];
                format!(
                    "{} {}:{} (of {} candidates{})",
                    s(&i["id"]),
                    s(&i["address"]),
                    s(&i["port"]),
                    s(&v["candidates"]),
                    if v["locality"].is_null() { String::new() } else { format!(", {}", s(&v["locality"])) }
                )
            });
        }
        Command::Health { service } => {
            let v = api.get(&format!("/api/registry/services/{}/health", encode(&service))).await?;
            print(&v, &|v| {
                format!(
                    "{}: {} ({} passing, {} warning, {} critical)\n{}",
                    s(&v["serviceId"]),
                    s(&v["status"]),
                    s(&v["passing"]),
                    s(&v["warning"]),
                    s(&v["critical"]),
                    instances_table(v)
                )
            });
        }
        Command::Deps { service } => {
            let v = api.get(&format!("/api/registry/services/{}/dependencies", encode(&service))).await?;
            print(&v, &|v| {
                let rows = vec![
                    vec!["depends on".into(), s(&v["directDependencies"]), s(&v["transitiveDependencies"])],
                    vec!["used by".into(), s(&v["directDependents"]), s(&v["transitiveDependents"])],
                ];
                let mut out = table(&["", "direct", "transitive"], rows);
                if v["cycles"].as_array().is_some_and(|c| !c.is_empty()) {
                    out.push_str(&format!("\ncycles: {}", v["cycles"]));
                }
                if v["unregistered"].as_array().is_some_and(|c| !c.is_empty()) {
                    out.push_str(&format!("\nnot registered: {}", s(&v["unregistered"])));
                }
                out
            });
        }
        Command::Workflows(cmd) => match cmd {
            Workflows::List => {
                let v = api.get("/api/workflows?pageSize=1000").await?;
                print(&v, &|v| {
                    let rows = rows(&v["workflows"], |w| {
                        let steps = w["steps"].as_array().map_or(0, Vec::len);
                        vec![s(&w["id"]), s(&w["version"]), s(&w["name"]), steps.to_string()]
                    });
                    table(&["workflow", "version", "name", "steps"], rows)
                });
            }
            Workflows::Register { file } => {
                let v = api.call(Method::POST, "/api/workflows", Some(read_document(&file)?)).await?;
                print(&v, &|v| format!("registered workflow {} version {}", s(&v["id"]), s(&v["version"])));
            }
            Workflows::Execute { id, input, idempotency_key, wait } => {
                let input: Value = serde_json::from_str(&input).context("--input must be JSON")?;
                let mut body = json!({ "input": input });
                if let Some(key) = idempotency_key {
                    body["idempotencyKey"] = key.into();
                }
                let v = api.call(Method::POST, &format!("/api/workflows/{}/execute", encode(&id)), Some(body)).await?;
                let instance = s(&v["instanceId"]);
                print(&v, &|v| format!("started run {} ({})", s(&v["instanceId"]), s(&v["status"])));
                if wait {
                    return follow(&api, &instance, json_out).await;
                }
            }
            Workflows::Runs { workflow, status } => {
                let mut path = "/api/workflows/instances?pageSize=100".to_string();
                if let Some(w) = workflow {
                    path.push_str(&format!("&workflowId={}", encode(&w)));
                }
                if let Some(st) = status {
                    path.push_str(&format!("&status={}", encode(&st)));
                }
                let v = api.get(&path).await?;
                print(&v, &|v| {
                    let rows = rows(&v["instances"], |r| {
                        vec![
                            s(&r["instanceId"]),
                            s(&r["workflowId"]),
                            s(&r["version"]),
                            s(&r["status"]),
                            s(&r["createdAt"]),
                        ]
                    });
                    table(&["run", "workflow", "version", "status", "created"], rows)
                });
            }
            Workflows::Show { instance } => {
                let v = api.get(&format!("/api/workflows/instances/{}", encode(&instance))).await?;
                print(&v, &run_table);
            }
            Workflows::Follow { instance } => return follow(&api, &instance, json_out).await,
            Workflows::Cancel { instance } => {
                let v = api
                    .call(Method::POST, &format!("/api/workflows/instances/{}/cancel", encode(&instance)), None)
                    .await?;
                print(&v, &|v| format!("cancelling run {instance} ({})", s(&v["status"])));
            }
        },
        Command::Breakers(cmd) => match cmd {
            Breakers::List => {
                let v = api.get("/api/circuit-breakers").await?;
                print(&v, &|v| {
                    let rows = rows(&v["breakers"], |b| {
                        let rate = b["maxFailureRate"].as_f64().filter(|r| *r >= 0.0);
                        vec![
                            s(&b["name"]),
                            s(&b["state"]),
                            rate.map_or("-".into(), |r| format!("{r:.1}%")),
                            s(&b["successfulCalls"]),
                            s(&b["failedCalls"]),
                            s(&b["notPermittedCalls"]),
                            format!("{}/{}", s(&b["holdersNotClosed"]), s(&b["holders"])),
                        ]
                    });
                    table(&["breaker", "state", "failure rate", "ok", "failed", "rejected", "not closed/holders"], rows)
                });
            }
            Breakers::Reset { name } => {
                let v = api.call(Method::POST, &format!("/api/circuit-breakers/{}/reset", encode(&name)), None).await?;
                print(&v, &|v| format!("reset of {name} sent to every holder (version {})", s(&v["version"])));
            }
        },
        Command::Routes(cmd) => match cmd {
            Routes::List => {
                let v = api.get("/api/gateway/routes").await?;
                print(&v, &|v| {
                    let rows = rows(&v["routes"], |r| {
                        let mut features = Vec::new();
                        if r["authentication"] == true {
                            features.push("auth".to_string());
                        }
                        if let Some(roles) = r["authorization"].as_array().filter(|a| !a.is_empty()) {
                            features.push(format!("roles={}", s(&Value::Array(roles.clone()))));
                        }
                        if !r["rateLimit"].is_null() {
                            features.push(format!(
                                "limit={}/{}",
                                s(&r["rateLimit"]["requests"]),
                                s(&r["rateLimit"]["window"])
                            ));
                        }
                        if !r["cache"].is_null() {
                            features.push(format!("cache={}s", s(&r["cache"]["ttl"])));
                        }
                        vec![s(&r["id"]), s(&r["method"]), s(&r["path"]), s(&r["serviceId"]), features.join(" ")]
                    });
                    table(&["route", "method", "path", "service", "features"], rows)
                });
            }
            Routes::Apply { file, replace_all } => {
                let doc = read_document(&file)?;
                let routes = match doc {
                    Value::Array(_) => doc,
                    Value::Object(mut o) => {
                        o.remove("routes").context("the file must be a list of routes or {routes: [...]}")?
                    }
                    _ => bail!("the file must be a list of routes or {{routes: [...]}}"),
                };
                let count = routes.as_array().map_or(0, Vec::len);
                let v = if replace_all {
                    api.call(Method::PUT, "/api/gateway/routes", Some(json!({ "routes": routes }))).await?
                } else {
                    let mut stored = Vec::new();
                    for route in routes.as_array().cloned().unwrap_or_default() {
                        let id = route["id"]
                            .as_str()
                            .context("each route needs an id to be applied one by one (or use --replace-all)")?;
                        stored.push(
                            api.call(Method::PUT, &format!("/api/gateway/routes/{}", encode(id)), Some(route.clone()))
                                .await?,
                        );
                    }
                    json!({ "routes": stored })
                };
                print(&v, &|_| format!("applied {count} routes"));
            }
            Routes::Delete { id } => {
                api.call(Method::DELETE, &format!("/api/gateway/routes/{}", encode(&id)), None).await?;
                print(&json!({ "deleted": id }), &|_| format!("deleted route {id}"));
            }
        },
    }
    Ok(true)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("reskctl: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(err) => {
            eprintln!("reskctl: {err:#}");
            ExitCode::from(2)
        }
    }
}
