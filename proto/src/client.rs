//! The control-plane client other services use: one HTTP/2 channel (lazy, reconnecting), a timeout on
//! every call, and typed calls that take and return the domain model.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use reskflow_proto::{Client, ClientOptions, registry::DiscoverQuery};
//! let client = Client::connect_lazy("http://127.0.0.1:50051", ClientOptions::default())?;
//! let found = client
//!     .discover(DiscoverQuery { service_id: "payments".into(), ..Default::default() })
//!     .await?;
//! println!("{}:{}", found.instance.address, found.instance.port);
//! # Ok(()) }
//! ```

use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

use crate::invalid::Invalid;
use crate::pb::config::v1::config_client::ConfigClient;
use crate::pb::registry::v1 as pb;
use crate::pb::registry::v1::registry_client::RegistryClient;
use crate::pb::workflow::v1 as wf;
use crate::pb::workflow::v1::workflows_client::WorkflowsClient;
use crate::registry::*;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// Deadline of each unary call.
    pub request_timeout: Duration,
    /// Bearer token sent with every call (a control plane with `AUTH_SECRET` requires one).
    pub token: Option<String>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { connect_timeout: Duration::from_secs(3), request_timeout: Duration::from_secs(10), token: None }
    }
}

/// Adds `authorization: Bearer <token>` to every call when there is a token.
#[derive(Debug, Clone, Default)]
pub struct Credentials(Option<MetadataValue<Ascii>>);

impl Credentials {
    pub fn new(token: Option<&str>) -> Result<Credentials, Status> {
        match token.filter(|t| !t.is_empty()) {
            None => Ok(Credentials(None)),
            Some(t) => MetadataValue::try_from(format!("Bearer {t}"))
                .map(|v| Credentials(Some(v)))
                .map_err(|_| Status::invalid_argument("the token is not valid header text")),
        }
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        // The caller's trace continues in the control plane (W3C traceparent), when tracing is on:
        // the global propagator injects nothing until OpenTelemetry export is configured.
        let cx = tracing_opentelemetry::OpenTelemetrySpanExt::context(&tracing::Span::current());
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut MetadataInjector(request.metadata_mut()))
        });
        Ok(request)
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value))
        {
            self.0.insert(key, value);
        }
    }
}

/// The channel with credentials: what the generated clients run on.
pub type Transport = InterceptedService<Channel, Credentials>;

/// Cheap to clone: clones share the channel.
#[derive(Debug, Clone)]
pub struct Client {
    registry: RegistryClient<Transport>,
    config: ConfigClient<Transport>,
    workflows: WorkflowsClient<Transport>,
    request_timeout: Duration,
}

/// A reply the client could not read as the domain model (a version mismatch, say).
fn bad_reply(err: Invalid) -> Status {
    Status::new(Code::Internal, format!("control plane sent a malformed reply: {err}"))
}

impl Client {
    /// Builds the client without connecting; the channel connects on first use and reconnects.
    pub fn connect_lazy(url: &str, options: ClientOptions) -> Result<Self, tonic::transport::Error> {
        let endpoint = Endpoint::from_shared(url.to_string())?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        Ok(Self::from_channel(endpoint.connect_lazy(), options))
    }

    /// A token that is not valid header text is sent as no token (the server then refuses).
    pub fn from_channel(channel: Channel, options: ClientOptions) -> Self {
        let credentials = Credentials::new(options.token.as_deref()).unwrap_or_default();
        let transport = InterceptedService::new(channel, credentials);
        Client {
            registry: RegistryClient::new(transport.clone()).max_decoding_message_size(64 * 1024 * 1024),
            config: ConfigClient::new(transport.clone()).max_decoding_message_size(64 * 1024 * 1024),
            workflows: WorkflowsClient::new(transport)
                .max_decoding_message_size(64 * 1024 * 1024)
                .max_encoding_message_size(16 * 1024 * 1024),
            request_timeout: options.request_timeout,
        }
    }

    /// The generated client, for calls the typed helpers do not cover.
    pub fn registry(&self) -> RegistryClient<Transport> {
        self.registry.clone()
    }

    /// The generated config-stream client (data planes).
    pub fn config(&self) -> ConfigClient<Transport> {
        self.config.clone()
    }

    /// The generated workflows client.
    pub fn workflows(&self) -> WorkflowsClient<Transport> {
        self.workflows.clone()
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.request_timeout);
        request
    }

    pub async fn register_service(&self, service: Service) -> Result<Service, Status> {
        let req = self.request(pb::RegisterServiceRequest { service: Some(service.into()) });
        let reply = self.registry().register_service(req).await?.into_inner();
        Service::try_from(reply).map_err(bad_reply)
    }

    pub async fn update_service(&self, service: Service) -> Result<Service, Status> {
        let req = self.request(pb::UpdateServiceRequest { service: Some(service.into()) });
        let reply = self.registry().update_service(req).await?.into_inner();
        Service::try_from(reply).map_err(bad_reply)
    }

    pub async fn get_service(&self, id: &str) -> Result<ServiceSummary, Status> {
        let req = self.request(pb::GetServiceRequest { id: id.to_string() });
        let reply = self.registry().get_service(req).await?.into_inner();
        ServiceSummary::try_from(reply).map_err(bad_reply)
    }

    /// Returns how many instances went with the service.
    pub async fn deregister_service(&self, id: &str) -> Result<u32, Status> {
        let req = self.request(pb::DeregisterServiceRequest { id: id.to_string() });
        Ok(self.registry().deregister_service(req).await?.into_inner().instances_removed)
    }

    pub async fn list_services(&self, page: Page) -> Result<ServiceList, Status> {
        let req = self
            .request(pb::ListServicesRequest { page_size: page.page_size.unwrap_or(0), page_token: page.page_token });
        let reply = self.registry().list_services(req).await?.into_inner();
        ServiceList::try_from(reply).map_err(bad_reply)
    }

    pub async fn search(&self, query: SearchQuery) -> Result<ServiceList, Status> {
        let reply = self.registry().search(self.request(query.into())).await?.into_inner();
        ServiceList::try_from(reply).map_err(bad_reply)
    }

    pub async fn register_instance(&self, instance: Instance) -> Result<Instance, Status> {
        self.register_instance_with(instance, false).await
    }

    /// With `replace`, an instance already registered under the id is replaced (see the proto).
    pub async fn register_instance_with(&self, instance: Instance, replace: bool) -> Result<Instance, Status> {
        let req = self.request(pb::RegisterInstanceRequest { instance: Some(instance.into()), replace });
        let reply = self.registry().register_instance(req).await?.into_inner();
        Instance::try_from(reply).map_err(bad_reply)
    }

    pub async fn deregister_instance(&self, id: &str) -> Result<(), Status> {
        let req = self.request(pb::DeregisterInstanceRequest { id: id.to_string() });
        self.registry().deregister_instance(req).await?;
        Ok(())
    }

    pub async fn list_instances(&self, service_id: &str) -> Result<Vec<Instance>, Status> {
        let req = self.request(pb::ListInstancesRequest { service_id: service_id.to_string() });
        let reply = self.registry().list_instances(req).await?.into_inner();
        reply.instances.into_iter().map(Instance::try_from).collect::<Result<_, _>>().map_err(bad_reply)
    }

    pub async fn heartbeat(&self, instance_id: &str, beat: Heartbeat) -> Result<Instance, Status> {
        let req = self.request(pb::HeartbeatRequest {
            instance_id: instance_id.to_string(),
            status: beat.status.map_or(pb::HealthStatus::Unspecified, Into::into).into(),
            output: beat.output,
        });
        let reply = self.registry().heartbeat(req).await?.into_inner();
        let instance = reply.instance.ok_or_else(|| bad_reply(Invalid::one("instance", "is required")))?;
        Instance::try_from(instance).map_err(bad_reply)
    }

    pub async fn discover(&self, query: DiscoverQuery) -> Result<Discovered, Status> {
        let reply = self.registry().discover(self.request(query.into())).await?.into_inner();
        Discovered::try_from(reply).map_err(bad_reply)
    }

    pub async fn service_health(&self, service_id: &str) -> Result<ServiceHealth, Status> {
        let req = self.request(pb::GetServiceHealthRequest { service_id: service_id.to_string() });
        let reply = self.registry().get_service_health(req).await?.into_inner();
        ServiceHealth::try_from(reply).map_err(bad_reply)
    }

    pub async fn dependencies(&self, service_id: &str) -> Result<DependencyGraph, Status> {
        let req = self.request(pb::GetDependenciesRequest { service_id: service_id.to_string() });
        let reply = self.registry().get_dependencies(req).await?.into_inner();
        DependencyGraph::try_from(reply).map_err(bad_reply)
    }

    /// Opens a watch stream (no deadline: it lives as long as the caller reads it).
    pub async fn watch(
        &self,
        since_version: u64,
        service_ids: Vec<String>,
    ) -> Result<Streaming<pb::WatchEvent>, Status> {
        let req = tonic::Request::new(pb::WatchRequest { since_version, service_ids });
        Ok(self.registry().watch(req).await?.into_inner())
    }

    // === workflows ===

    /// Registers a definition (its JSON form); returns the stored version.
    pub async fn register_workflow(&self, definition: &serde_json::Value) -> Result<wf::WorkflowDefinition, Status> {
        let req = self.request(wf::RegisterWorkflowRequest { definition_json: definition.to_string() });
        Ok(self.workflows().register_workflow(req).await?.into_inner())
    }

    /// Starts a run of the latest version; returns its id and whether it is new.
    pub async fn execute(
        &self,
        workflow_id: &str,
        input: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> Result<wf::ExecuteResponse, Status> {
        let req = self.request(wf::ExecuteRequest {
            workflow_id: workflow_id.to_string(),
            version: 0,
            input_json: input.to_string(),
            idempotency_key: idempotency_key.unwrap_or_default().to_string(),
        });
        Ok(self.workflows().execute(req).await?.into_inner())
    }

    /// A run's detail: status, input, output, steps with attempts, history (the REST JSON form).
    pub async fn instance(&self, instance_id: &str) -> Result<serde_json::Value, Status> {
        let req = self.request(wf::GetInstanceRequest { instance_id: instance_id.to_string() });
        let detail = self.workflows().get_instance(req).await?.into_inner();
        serde_json::from_str(&detail.detail_json).map_err(|e| Status::internal(format!("malformed run detail: {e}")))
    }

    pub async fn cancel(&self, instance_id: &str) -> Result<String, Status> {
        let req = self.request(wf::CancelRequest { instance_id: instance_id.to_string() });
        Ok(self.workflows().cancel(req).await?.into_inner().status)
    }
}
