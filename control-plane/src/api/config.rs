//! `reskflow.config.v1.Config`: the stream that keeps data planes configured. Per client, a task
//! reads its hello, sends its config at once and again whenever the registry moves and the config
//! differs, and notes its ACKs, NACKs and breaker reports in this replica's book of clients; the
//! book is written to the store in bulk (new clients and NACKs within a second, versions and reports
//! within five), so any replica can list every client and a burst of ACKs after a change costs one
//! bulk write, not one per client.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use reskflow_proto::pb::config::v1 as pb;
use reskflow_proto::pb::config::v1::config_server;
use reskflow_proto::registry::is_valid_id;
use reskflow_proto::Invalid;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn, Instrument};

use super::status::check_id;
use crate::config_push::{self, Wanted};
use crate::registry::Registry;
use crate::store::{now_ms, ClientRow, Store};

/// How long a new stream may take to say hello.
const HELLO_WITHIN: Duration = Duration::from_secs(10);
/// A client is listed while it was heard from this recently (clients report every few seconds).
const SEEN_WITHIN: Duration = Duration::from_secs(30);
/// Services one client may ask for.
const MAX_WANTED: usize = 10_000;

/// How soon a new client or a NACK reaches the store.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// How soon versions sent and acked and breaker reports reach the store: they change on every
/// registry change for every client, and only feed `ListClients`, so they are written in bulk.
const FLUSH_ROUTINE_EVERY: Duration = Duration::from_secs(5);
/// Rows of connected clients are refreshed at least this often even when nothing changed.
const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// The clients whose streams this replica holds. std Mutex: held for map updates, never across
/// `.await`.
#[derive(Default)]
struct Book {
    clients: Mutex<Pages>,
}

#[derive(Default)]
struct Pages {
    rows: HashMap<String, ClientRow>,
    /// Something to write within `FLUSH_EVERY` (a new client, a NACK).
    urgent: bool,
    /// Something to write within `FLUSH_ROUTINE_EVERY`.
    dirty: bool,
}

impl Book {
    fn update(&self, node: &str, urgent: bool, f: impl FnOnce(&mut ClientRow)) {
        let mut pages = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(row) = pages.rows.get_mut(node) {
            f(row);
            pages.dirty = true;
            pages.urgent |= urgent;
        }
    }

    fn insert(&self, row: ClientRow) {
        let mut pages = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        pages.rows.insert(row.node_id.clone(), row);
        pages.urgent = true;
    }

    fn remove(&self, node: &str) {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).rows.remove(node);
    }

    /// Writes the rows when something changed (or to refresh them); runs until the process ends.
    async fn flush_forever(self: Arc<Self>, store: Store) {
        let mut last_write = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(FLUSH_EVERY).await;
            let rows: Vec<ClientRow> = {
                let mut pages = self.clients.lock().unwrap_or_else(|e| e.into_inner());
                let since = last_write.elapsed();
                let due = pages.urgent || (pages.dirty && since >= FLUSH_ROUTINE_EVERY) || since >= REFRESH_EVERY;
                if !due {
                    continue;
                }
                pages.urgent = false;
                pages.dirty = false;
                let now = now_ms();
                pages
                    .rows
                    .values_mut()
                    .map(|r| {
                        r.last_seen_ms = now;
                        r.clone()
                    })
                    .collect()
            };
            last_write = tokio::time::Instant::now();
            if let Err(err) = store.upsert_clients(&rows).await {
                warn!(error = %err, clients = rows.len(), "cannot record the data-plane clients");
                self.clients.lock().unwrap_or_else(|e| e.into_inner()).urgent = true;
            }
        }
    }
}

/// A config as sent: its version, the services part (to compare with what a client has) and the
/// whole JSON.
struct Built {
    version: u64,
    /// The services and routes, without the version: what decides whether a client needs a send.
    content: Arc<str>,
    json: String,
}

/// Configs built at the current version, by what clients want: a registry change is turned into
/// JSON once per distinct set of wanted services, not once per client (a thousand sidecars of one
/// service want the same thing). std Mutex: never held across `.await`.
#[derive(Default)]
struct Configs {
    built: Mutex<HashMap<WantedKey, Arc<Built>>>,
}

/// All services or these; with routes or not.
type WantedKey = (bool, bool, Vec<String>);

impl Configs {
    fn get(&self, registry: &Registry, wanted: &Wanted) -> Arc<Built> {
        let version = registry.version();
        let key = (wanted.all, wanted.routes, wanted.services.clone());
        if let Some(b) = self.built.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            if b.version == version {
                return b.clone();
            }
        }
        let config = config_push::build(&registry.read(), wanted);
        let built = Arc::new(Built {
            version: config.version,
            content: serde_json::to_string(&(&config.services, &config.routes)).unwrap_or_default().into(),
            json: serde_json::to_string(&config).unwrap_or_default(),
        });
        let mut map = self.built.lock().unwrap_or_else(|e| e.into_inner());
        // Entries of other versions are stale: keep the map to what is current.
        map.retain(|_, b| b.version >= built.version);
        map.insert(key, built.clone());
        built
    }
}

#[derive(Clone)]
pub struct ConfigApi {
    registry: Registry,
    /// This replica's node id (who holds a client's stream).
    node_id: String,
    book: Arc<Book>,
    configs: Arc<Configs>,
}

impl ConfigApi {
    /// Also starts writing the book of clients to the store (needs a Tokio runtime).
    pub fn new(registry: Registry, node_id: String) -> Self {
        let book = Arc::new(Book::default());
        tokio::spawn(book.clone().flush_forever(registry.store().clone()));
        ConfigApi { registry, node_id, book, configs: Arc::default() }
    }

    /// Connected data planes on this replica (for `/metrics`).
    pub fn stream_count(&self) -> impl Fn() -> usize + Send + Sync + 'static {
        let book = self.book.clone();
        move || book.clients.lock().map_or(0, |p| p.rows.len())
    }

    pub fn into_server(self) -> config_server::ConfigServer<Self> {
        config_server::ConfigServer::new(self)
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<pb::ConfigUpdate, Status>> + Send>>;

fn check_hello(hello: &pb::Hello) -> Result<(), Status> {
    let mut bad = Vec::new();
    if hello.node_id.is_empty() || hello.node_id.len() > 256 || hello.node_id.chars().any(char::is_control) {
        bad.push(("nodeId", "must be 1-256 printable characters".to_string()));
    }
    if !matches!(hello.role.as_str(), "sidecar" | "gateway") {
        bad.push(("role", "must be sidecar or gateway".to_string()));
    }
    if !hello.service_id.is_empty() && !is_valid_id(&hello.service_id) {
        bad.push(("serviceId", "is not a valid service id".to_string()));
    }
    if hello.services.len() > MAX_WANTED {
        bad.push(("services", format!("at most {MAX_WANTED}")));
    }
    for (i, id) in hello.services.iter().enumerate() {
        if !is_valid_id(id) {
            bad.push(("services", format!("[{i}] '{id}' is not a valid service id")));
        }
    }
    if hello.region.len() > 128 || hello.zone.len() > 128 {
        bad.push(("zone", "region and zone must be at most 128 characters".to_string()));
    }
    if bad.is_empty() {
        return Ok(());
    }
    Err(Invalid(
        bad.into_iter()
            .map(|(field, description)| reskflow_proto::FieldViolation { field: field.to_string(), description })
            .collect(),
    )
    .into())
}

#[tonic::async_trait]
impl config_server::Config for ConfigApi {
    type StreamStream = UpdateStream;

    async fn stream(&self, req: Request<Streaming<pb::StreamRequest>>) -> Result<Response<UpdateStream>, Status> {
        let caller = super::auth::caller(&req).cloned();
        let mut inbound = req.into_inner();
        let first = tokio::time::timeout(HELLO_WITHIN, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let Some(pb::StreamRequest { kind: Some(pb::stream_request::Kind::Hello(hello)) }) = first else {
            return Err(Status::invalid_argument("the first message must be a hello"));
        };
        check_hello(&hello)?;
        super::auth::require_hello(caller.as_ref(), &hello.role, &hello.service_id)?;
        let (tx, rx) = mpsc::channel(4);
        let span = tracing::info_span!("config_stream", node = %hello.node_id, role = %hello.role);
        let client = Client {
            registry: self.registry.clone(),
            control_plane: self.node_id.clone(),
            book: self.book.clone(),
            configs: self.configs.clone(),
            hello,
            tx,
        };
        tokio::spawn(client.run(inbound).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_clients(
        &self,
        _req: Request<pb::ListClientsRequest>,
    ) -> Result<Response<pb::ListClientsResponse>, Status> {
        let since = now_ms() - i64::try_from(SEEN_WITHIN.as_millis()).unwrap_or(0);
        let rows = self.registry.store().clients(since).await.map_err(crate::registry::RegistryError::from)?;
        let clients = rows
            .into_iter()
            .map(|r| pb::Client {
                node_id: r.node_id,
                role: r.role,
                service_id: r.service_id,
                region: r.region,
                zone: r.zone,
                acked_version: r.acked_version,
                sent_version: r.sent_version,
                nacked_version: r.nacked_version,
                nack_error: r.nack_error,
                control_plane: r.control_plane,
                connected_at_ms: r.connected_at_ms,
                last_seen_ms: r.last_seen_ms,
                breakers_json: r.breakers_json,
            })
            .collect();
        Ok(Response::new(pb::ListClientsResponse { current_version: self.registry.version(), clients }))
    }

    async fn reset_breaker(
        &self,
        req: Request<pb::ResetBreakerRequest>,
    ) -> Result<Response<pb::ResetBreakerResponse>, Status> {
        super::auth::require_writer(&req)?;
        let id = req.into_inner().service_id;
        check_id("serviceId", &id)?;
        let version = self.registry.reset_breaker(&id).await?;
        info!(service = %id, version, "circuit breakers reset");
        Ok(Response::new(pb::ResetBreakerResponse { version }))
    }
}

struct Client {
    registry: Registry,
    control_plane: String,
    book: Arc<Book>,
    configs: Arc<Configs>,
    hello: pb::Hello,
    tx: mpsc::Sender<Result<pb::ConfigUpdate, Status>>,
}

impl Client {
    async fn run(self, mut inbound: Streaming<pb::StreamRequest>) {
        let store = self.registry.store().clone();
        let node = self.hello.node_id.clone();
        let now = now_ms();
        let row = ClientRow {
            node_id: node.clone(),
            role: self.hello.role.clone(),
            service_id: self.hello.service_id.clone(),
            region: self.hello.region.clone(),
            zone: self.hello.zone.clone(),
            acked_version: self.hello.running_version,
            control_plane: self.control_plane.clone(),
            connected_at_ms: now,
            last_seen_ms: now,
            breakers_json: "{}".into(),
            ..ClientRow::default()
        };
        self.book.insert(row);
        info!(services = self.hello.services.len(), all = self.hello.all_services, "data plane connected");
        let wanted = Wanted {
            all: self.hello.all_services,
            services: self.hello.services.clone(),
            routes: self.hello.role == "gateway",
        };
        let mut versions = self.registry.versions();
        let mut last_sent: Option<Arc<str>> = None;
        loop {
            let built = self.configs.get(&self.registry, &wanted);
            // Compare without the version: a change elsewhere in the registry is not news here.
            if last_sent.as_deref() != Some(&*built.content) {
                let update = pb::ConfigUpdate { version: built.version, config_json: built.json.clone() };
                if self.tx.send(Ok(update)).await.is_err() {
                    break;
                }
                debug!(version = built.version, "config sent");
                self.book.update(&node, false, |r| r.sent_version = built.version);
                last_sent = Some(built.content.clone());
            }
            tokio::select! {
                changed = versions.changed() => if changed.is_err() { break },
                message = inbound.message() => match message {
                    Ok(Some(request)) => self.handle(request),
                    Ok(None) => break,
                    Err(status) => {
                        debug!(%status, "stream ended");
                        break;
                    }
                },
                _ = self.tx.closed() => break,
            }
        }
        self.book.remove(&node);
        if let Err(err) = store.client_disconnected(&node, &self.control_plane).await {
            warn!(error = %err, "cannot forget the client");
        }
        info!("data plane disconnected");
    }

    fn handle(&self, request: pb::StreamRequest) {
        use pb::stream_request::Kind;
        let node = self.hello.node_id.as_str();
        match request.kind {
            Some(Kind::Ack(ack)) => self.book.update(node, false, |r| r.acked_version = ack.version),
            Some(Kind::Nack(nack)) => {
                warn!(version = nack.version, error = %nack.error, "data plane refused a config");
                self.book.update(node, true, |r| {
                    r.nacked_version = nack.version;
                    r.nack_error = nack.error.chars().take(2_000).collect();
                });
            }
            Some(Kind::Report(report)) => {
                let valid = report.breakers_json.len() <= 1 << 20
                    && serde_json::from_str::<serde_json::Value>(&report.breakers_json).is_ok();
                if !valid {
                    warn!("ignored a breaker report that is not JSON or too large");
                    return;
                }
                self.book.update(node, false, |r| r.breakers_json = report.breakers_json);
            }
            Some(Kind::Hello(_)) | None => {}
        }
    }
}
