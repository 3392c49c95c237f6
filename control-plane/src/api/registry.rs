//! `reskflow.registry.v1.Registry`: parses each request into the domain model, calls the registry,
//! encodes the reply. The watch stream runs as a task feeding a channel per subscriber.

use std::pin::Pin;

use futures::Stream;
use reskflow_proto::invalid::Invalid;
use reskflow_proto::pb::registry::v1 as pb;
use reskflow_proto::pb::registry::v1::registry_server;
use reskflow_proto::registry::health_status_from_pb;
use reskflow_proto::registry::*;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, Instrument};

use super::auth;
use super::status::{check_id, missing};
use crate::registry::{Feed, Registry};

#[derive(Clone)]
pub struct RegistryApi {
    registry: Registry,
    /// Where instances may be (health checks and step calls connect to them); empty: anywhere.
    allowed: Vec<ipnet::IpNet>,
}

impl RegistryApi {
    pub fn new(registry: Registry) -> Self {
        RegistryApi { registry, allowed: Vec::new() }
    }

    /// Instances must be in these networks (`ALLOWED_INSTANCE_NETWORKS`).
    pub fn with_allowed_networks(mut self, allowed: Vec<ipnet::IpNet>) -> Self {
        self.allowed = allowed;
        self
    }

    /// An instance address is an IP in an allowed network, or a name whose every address is.
    async fn check_address(&self, address: &str) -> Result<(), Status> {
        if self.allowed.is_empty() {
            return Ok(());
        }
        let ips: Vec<std::net::IpAddr> = match address.parse() {
            Ok(ip) => vec![ip],
            Err(_) => tokio::net::lookup_host((address, 0))
                .await
                .map_err(|e| Invalid::one("instance.address", format!("{address} does not resolve: {e}")))?
                .map(|a| a.ip())
                .collect(),
        };
        let outside: Vec<String> =
            ips.iter().filter(|ip| !self.allowed.iter().any(|n| n.contains(*ip))).map(ToString::to_string).collect();
        if ips.is_empty() || !outside.is_empty() {
            let networks: Vec<String> = self.allowed.iter().map(ToString::to_string).collect();
            return Err(Invalid::one(
                "instance.address",
                format!("{address} ({}) is outside the allowed networks ({})", outside.join(", "), networks.join(", ")),
            )
            .into());
        }
        Ok(())
    }

    pub fn into_server(self) -> registry_server::RegistryServer<Self> {
        registry_server::RegistryServer::new(self)
    }
}

fn service_from(s: Option<pb::Service>) -> Result<Service, Status> {
    Ok(Service::try_from(s.ok_or_else(|| missing("service"))?)?)
}

#[tonic::async_trait]
impl registry_server::Registry for RegistryApi {
    async fn register_service(
        &self,
        req: Request<pb::RegisterServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        auth::require_writer(&req)?;
        let service = service_from(req.into_inner().service)?;
        Ok(Response::new(self.registry.register_service(service).await?.into()))
    }

    async fn update_service(&self, req: Request<pb::UpdateServiceRequest>) -> Result<Response<pb::Service>, Status> {
        auth::require_writer(&req)?;
        let service = service_from(req.into_inner().service)?;
        Ok(Response::new(self.registry.update_service(service).await?.into()))
    }

    async fn get_service(&self, req: Request<pb::GetServiceRequest>) -> Result<Response<pb::ServiceSummary>, Status> {
        let id = req.into_inner().id;
        check_id("id", &id)?;
        Ok(Response::new(self.registry.get_service(&id)?.into()))
    }

    async fn deregister_service(
        &self,
        req: Request<pb::DeregisterServiceRequest>,
    ) -> Result<Response<pb::DeregisterServiceResponse>, Status> {
        auth::require_writer(&req)?;
        let id = req.into_inner().id;
        check_id("id", &id)?;
        let instances_removed = self.registry.deregister_service(&id).await?;
        Ok(Response::new(pb::DeregisterServiceResponse { instances_removed }))
    }

    async fn list_services(
        &self,
        req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let r = req.into_inner();
        let page = Page { page_size: (r.page_size != 0).then_some(r.page_size), page_token: r.page_token };
        Ok(Response::new(self.registry.list_services(page)?.into()))
    }

    async fn search(&self, req: Request<pb::SearchRequest>) -> Result<Response<pb::ListServicesResponse>, Status> {
        let query = SearchQuery::try_from(req.into_inner())?;
        Ok(Response::new(self.registry.search(query)?.into()))
    }

    async fn register_instance(
        &self,
        req: Request<pb::RegisterInstanceRequest>,
    ) -> Result<Response<pb::Instance>, Status> {
        auth::require_service(&req, || {
            req.get_ref().instance.as_ref().map(|i| i.service_id.clone()).unwrap_or_default()
        })?;
        let r = req.into_inner();
        let instance = Instance::try_from(r.instance.ok_or_else(|| missing("instance"))?)?;
        self.check_address(&instance.address).await?;
        Ok(Response::new(self.registry.register_instance_with(instance, r.replace).await?.into()))
    }

    async fn deregister_instance(
        &self,
        req: Request<pb::DeregisterInstanceRequest>,
    ) -> Result<Response<pb::DeregisterInstanceResponse>, Status> {
        auth::require_service(&req, || self.registry.service_of_instance(&req.get_ref().id).unwrap_or_default())?;
        let id = req.into_inner().id;
        check_id("id", &id)?;
        self.registry.deregister_instance(&id).await?;
        Ok(Response::new(pb::DeregisterInstanceResponse {}))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let service_id = req.into_inner().service_id;
        check_id("serviceId", &service_id)?;
        let instances = self.registry.list_instances(&service_id)?.into_iter().map(Into::into).collect();
        Ok(Response::new(pb::ListInstancesResponse { instances }))
    }

    async fn heartbeat(&self, req: Request<pb::HeartbeatRequest>) -> Result<Response<pb::HeartbeatResponse>, Status> {
        auth::require_service(&req, || {
            self.registry.service_of_instance(&req.get_ref().instance_id).unwrap_or_default()
        })?;
        let r = req.into_inner();
        check_id("instanceId", &r.instance_id)?;
        let status = health_status_from_pb(r.status, "status")?;
        let instance = self.registry.heartbeat(&r.instance_id, Heartbeat { status, output: r.output }).await?;
        Ok(Response::new(pb::HeartbeatResponse { instance: Some(instance.into()) }))
    }

    async fn discover(&self, req: Request<pb::DiscoverRequest>) -> Result<Response<pb::DiscoverResponse>, Status> {
        let query = DiscoverQuery::try_from(req.into_inner())?;
        Ok(Response::new(self.registry.discover(query)?.into()))
    }

    async fn get_service_health(
        &self,
        req: Request<pb::GetServiceHealthRequest>,
    ) -> Result<Response<pb::ServiceHealth>, Status> {
        let service_id = req.into_inner().service_id;
        check_id("serviceId", &service_id)?;
        Ok(Response::new(self.registry.service_health(&service_id)?.into()))
    }

    async fn get_dependencies(
        &self,
        req: Request<pb::GetDependenciesRequest>,
    ) -> Result<Response<pb::DependencyGraph>, Status> {
        let service_id = req.into_inner().service_id;
        check_id("serviceId", &service_id)?;
        Ok(Response::new(self.registry.dependencies(&service_id)?.into()))
    }

    async fn list_routes(&self, _: Request<pb::ListRoutesRequest>) -> Result<Response<pb::RoutesResponse>, Status> {
        routes_response(&self.registry.list_routes(), self.registry.version())
    }

    async fn get_route(&self, req: Request<pb::GetRouteRequest>) -> Result<Response<pb::RoutesResponse>, Status> {
        let id = req.into_inner().id;
        check_id("id", &id)?;
        let route = self.registry.get_route(&id)?;
        routes_response(&[route], self.registry.version())
    }

    async fn put_routes(&self, req: Request<pb::PutRoutesRequest>) -> Result<Response<pb::RoutesResponse>, Status> {
        auth::require_writer(&req)?;
        let r = req.into_inner();
        let routes: Vec<reskflow_proto::route::Route> = {
            let de = &mut serde_json::Deserializer::from_str(&r.routes_json);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let path = e.path().to_string();
                let field = path.strip_prefix('[').map_or(path.clone(), |p| format!("routes[{p}"));
                let field = if r.single { path_without_index(&path) } else { field };
                let field = reskflow_proto::invalid::field_or_root(&field, if r.single { "body" } else { "routes" });
                Status::from(Invalid::one(field, e.inner().to_string()))
            })?
        };
        if routes.is_empty() && !r.replace_all {
            return Err(Invalid::one("routes", "give at least one route").into());
        }
        let stored = self.registry.put_routes(routes, r.create_only, r.replace_all, r.single).await?;
        tracing::info!(routes = stored.len(), replace_all = r.replace_all, "gateway routes stored");
        routes_response(&stored, self.registry.version())
    }

    async fn delete_route(
        &self,
        req: Request<pb::DeleteRouteRequest>,
    ) -> Result<Response<pb::DeleteRouteResponse>, Status> {
        auth::require_writer(&req)?;
        let id = req.into_inner().id;
        check_id("id", &id)?;
        self.registry.delete_route(&id).await?;
        tracing::info!(route = %id, "gateway route deleted");
        Ok(Response::new(pb::DeleteRouteResponse {}))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchEvent, Status>> + Send + 'static>>;

    async fn watch(&self, req: Request<pb::WatchRequest>) -> Result<Response<Self::WatchStream>, Status> {
        let r = req.into_inner();
        for (i, id) in r.service_ids.iter().enumerate() {
            check_id(&format!("serviceIds[{i}]"), id)?;
        }
        let compacted =
            self.registry.store().compacted_through().await.map_err(crate::registry::RegistryError::from)?;
        let (tx, rx) = mpsc::channel(256);
        let span = tracing::debug_span!("watch", since = r.since_version, services = r.service_ids.len());
        tokio::spawn(feed_watcher(self.registry.clone(), r, compacted, tx).instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

type WatchSender = mpsc::Sender<Result<pb::WatchEvent, Status>>;

fn snapshot_event(
    services: Vec<Service>,
    instances: Vec<Instance>,
    version: u64,
    wanted: &(dyn Fn(&str) -> bool + Sync),
) -> pb::WatchEvent {
    pb::WatchEvent {
        version,
        event: Some(pb::watch_event::Event::Snapshot(pb::Snapshot {
            services: services.into_iter().filter(|s| wanted(&s.id)).map(Into::into).collect(),
            instances: instances.into_iter().filter(|i| wanted(&i.service_id)).map(Into::into).collect(),
        })),
    }
}

/// Sends the start (snapshot or replay), then every later change, until the client goes away.
async fn feed_watcher(registry: Registry, request: pb::WatchRequest, compacted: u64, tx: WatchSender) {
    let ids = request.service_ids;
    let wanted = move |service_id: &str| ids.is_empty() || ids.iter().any(|id| id == service_id);
    let (mut feed, services, instances, version) = registry.subscribe();
    let since = request.since_version;
    let replayable = since > 0 && since <= version && since >= compacted;
    let mut replayed = false;
    if replayable {
        replayed = replay(&registry, since, version, &wanted, &tx).await;
    }
    if !replayed && tx.send(Ok(snapshot_event(services, instances, version, &wanted))).await.is_err() {
        return;
    }
    let mut sent = version;
    loop {
        let item = tokio::select! {
            _ = tx.closed() => return,
            item = feed.recv() => item,
        };
        match item {
            Ok(Feed::Change(record)) => {
                if record.seq <= sent {
                    continue;
                }
                sent = record.seq;
                if !wanted(record.change.service_id()) {
                    continue;
                }
                let event = pb::WatchEvent { version: record.seq, event: Some(record.change.clone().into()) };
                if tx.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            Ok(Feed::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                debug!("watcher fell behind or the registry reloaded; sending a new snapshot");
                let (fresh, services, instances, version) = registry.subscribe();
                feed = fresh;
                sent = version;
                if tx.send(Ok(snapshot_event(services, instances, version, &wanted))).await.is_err() {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Replays the stored changes in (since, until]. False when the log could not be read.
async fn replay(
    registry: &Registry,
    since: u64,
    until: u64,
    wanted: &(dyn Fn(&str) -> bool + Sync),
    tx: &WatchSender,
) -> bool {
    let mut after = since;
    while after < until {
        let Ok(batch) = registry.store().changes_since(after, 1000).await else {
            return false;
        };
        if batch.is_empty() {
            break;
        }
        for record in batch {
            if record.seq > until {
                return true;
            }
            after = record.seq;
            if wanted(record.change.service_id()) {
                let event = pb::WatchEvent { version: record.seq, event: Some(record.change.into()) };
                if tx.send(Ok(event)).await.is_err() {
                    return true;
                }
            }
        }
    }
    true
}

fn routes_response(
    routes: &[reskflow_proto::route::Route],
    version: u64,
) -> Result<Response<pb::RoutesResponse>, Status> {
    let routes_json = serde_json::to_string(routes).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::RoutesResponse { routes_json, version }))
}

/// `[0].rateLimit.window` -> `rateLimit.window` (one route sent alone).
fn path_without_index(path: &str) -> String {
    match path.strip_prefix('[').and_then(|p| p.split_once(']')) {
        Some((_, rest)) => rest.trim_start_matches('.').to_string(),
        None => path.to_string(),
    }
}
