//! The registry's domain model: what a service, an instance and a health check are, in the JSON form
//! of the REST API (camelCase, durations as "10s", times as RFC 3339). Fields the registry sets
//! (timestamps, health) are not accepted as input: sending them is an unknown-field error.
//!
//! - `validate`: the rules every input passes before it is stored.
//! - `convert`: to and from the protobuf messages.

mod convert;
pub use convert::health_status_from_pb;
mod validate;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use validate::{check_page, is_valid_id, MAX_PAGE_SIZE};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub id: String,
    /// Human name; defaults to the id.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sla: Option<Sla>,
    #[serde(default)]
    pub dependencies: Vec<Dependency>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_contract: Option<ApiContract>,
    /// How data planes call this service; None: the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub traffic_policy: Option<Box<crate::policy::TrafficPolicy>>,
    #[serde(skip_deserializing, default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, read_only))]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(skip_deserializing, default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, read_only))]
    pub updated_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sla {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_p99_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_second: Option<f64>,
}

/// A declared dependency. In JSON either `"payments"` or `{"serviceId": "payments", "optional": true}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(from = "DependencyForm")]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    pub service_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
    #[serde(default)]
    pub optional: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DependencyForm {
    Id(String),
    #[serde(rename_all = "camelCase")]
    Full {
        service_id: String,
        #[serde(default)]
        version: String,
        #[serde(default)]
        optional: bool,
    },
}

impl From<DependencyForm> for Dependency {
    fn from(form: DependencyForm) -> Self {
        match form {
            DependencyForm::Id(service_id) => Dependency { service_id, version: String::new(), optional: false },
            DependencyForm::Full { service_id, version, optional } => Dependency { service_id, version, optional },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// No check: instances are passing while registered.
    None,
    /// 2xx passing, 429 warning, anything else critical (as Consul).
    Http,
    Tcp,
    /// `grpc.health.v1.Health/Check`.
    Grpc,
    /// The instance heartbeats; critical when the TTL runs out.
    Ttl,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// HTTP path, e.g. `/health`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    /// HTTP method (GET by default).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// gRPC health service name ("" = the server as a whole).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub grpc_service: String,
    #[serde(default = "HealthCheck::default_interval", with = "humantime_serde")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "10s"))]
    pub interval: Duration,
    #[serde(default = "HealthCheck::default_timeout", with = "humantime_serde")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "5s"))]
    pub timeout: Duration,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "15s"))]
    pub ttl: Option<Duration>,
    #[serde(default = "HealthCheck::default_threshold")]
    pub success_threshold: u32,
    #[serde(default = "HealthCheck::default_threshold")]
    pub failure_threshold: u32,
    #[serde(default, with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, example = "10m"))]
    pub deregister_critical_after: Option<Duration>,
}

impl HealthCheck {
    pub fn default_interval() -> Duration {
        Duration::from_secs(10)
    }
    pub fn default_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn default_threshold() -> u32 {
        1
    }
    /// A check of the given kind with every default.
    pub fn of_kind(kind: CheckKind) -> Self {
        HealthCheck {
            kind,
            path: String::new(),
            method: String::new(),
            grpc_service: String::new(),
            interval: Self::default_interval(),
            timeout: Self::default_timeout(),
            ttl: None,
            success_threshold: 1,
            failure_threshold: 1,
            deregister_critical_after: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApiContract {
    pub kind: String,
    #[serde(default)]
    pub location: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub version: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Passing,
    Warning,
    Critical,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }
}

/// A running copy of a service. `status*`, `lastCheckedAt` and `registeredAt` are the registry's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Instance {
    /// Generated (`<serviceId>-<random>`) when left out.
    #[serde(default)]
    pub id: String,
    pub service_id: String,
    pub address: String,
    pub port: u16,
    /// `http` (default), `https`, `grpc` or `tcp`.
    #[serde(default)]
    pub scheme: String,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default = "Instance::default_weight")]
    pub weight: u32,
    /// Defaults to the service's version when empty.
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_deserializing, default = "Instance::default_status")]
    pub status: HealthStatus,
    #[serde(skip_deserializing, default)]
    pub status_output: String,
    #[serde(skip_deserializing, default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, read_only))]
    pub status_since: Option<DateTime<Utc>>,
    #[serde(skip_deserializing, default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, read_only))]
    pub last_checked_at: Option<DateTime<Utc>>,
    #[serde(skip_deserializing, default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime, read_only))]
    pub registered_at: Option<DateTime<Utc>>,
}

impl Instance {
    pub fn default_weight() -> u32 {
        1
    }
    fn default_status() -> HealthStatus {
        HealthStatus::Critical
    }
}

/// Counts of instances by status, and the service's aggregate: passing when every instance passes,
/// critical when none does (or there are none), warning in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct HealthSummary {
    pub status: HealthStatus,
    pub passing: u32,
    pub warning: u32,
    pub critical: u32,
}

impl HealthSummary {
    pub fn of(statuses: impl IntoIterator<Item = HealthStatus>) -> Self {
        let (mut passing, mut warning, mut critical) = (0, 0, 0);
        for s in statuses {
            match s {
                HealthStatus::Passing => passing += 1,
                HealthStatus::Warning => warning += 1,
                HealthStatus::Critical => critical += 1,
            }
        }
        let status = if passing > 0 && warning == 0 && critical == 0 {
            HealthStatus::Passing
        } else if passing == 0 {
            HealthStatus::Critical
        } else {
            HealthStatus::Warning
        };
        HealthSummary { status, passing, warning, critical }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummary {
    #[serde(flatten)]
    pub service: Service,
    pub instance_count: u32,
    pub health: HealthSummary,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    RoundRobin,
    Random,
    Weighted,
    ZoneAware,
    ConsistentHash,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum HealthFilter {
    #[default]
    Passing,
    PassingOrWarning,
    Any,
}

impl HealthFilter {
    pub fn admits(self, status: HealthStatus) -> bool {
        match self {
            HealthFilter::Passing => status == HealthStatus::Passing,
            HealthFilter::PassingOrWarning => status != HealthStatus::Critical,
            HealthFilter::Any => true,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiscoverQuery {
    pub service_id: String,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub hash_key: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub health: HealthFilter,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Discovered {
    pub instance: Instance,
    pub candidates: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub locality: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TagMatch {
    #[default]
    All,
    Any,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SearchQuery {
    #[serde(default)]
    pub text: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub tags_match: TagMatch,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub health: Option<HealthStatus>,
    #[serde(default)]
    pub page_size: Option<u32>,
    #[serde(default)]
    pub page_token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub page_size: Option<u32>,
    pub page_token: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceList {
    pub services: Vec<ServiceSummary>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub next_page_token: String,
    pub total: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ServiceHealth {
    pub service_id: String,
    pub check_kind: CheckKind,
    #[serde(flatten)]
    pub summary: HealthSummary,
    pub instances: Vec<Instance>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct GraphNode {
    pub id: String,
    pub registered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
    pub optional: bool,
    pub in_cycle: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct DependencyGraph {
    pub service_id: String,
    pub direct_dependencies: Vec<String>,
    pub transitive_dependencies: Vec<String>,
    pub direct_dependents: Vec<String>,
    pub transitive_dependents: Vec<String>,
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
    pub cycles: Vec<Vec<String>>,
    pub unregistered: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    pub status: Option<HealthStatus>,
    #[serde(default)]
    pub output: String,
}

/// One change in the registry, as the watch stream delivers it.
// Changes are short-lived and mostly services or instances: boxing would cost an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    ServiceUpserted(Service),
    ServiceDeleted(String),
    InstanceUpserted(Instance),
    InstanceDeleted(Instance),
    /// An operator reset the circuit breakers of calls to this service, everywhere.
    BreakerReset(String),
    /// A gateway route was created or replaced.
    RouteUpserted(crate::route::Route),
    /// A gateway route was deleted (its id).
    RouteDeleted(String),
}

impl Change {
    /// The service the change belongs to (for watch filters); a route's is the service it targets,
    /// and a deleted route's is unknown (empty).
    pub fn service_id(&self) -> &str {
        match self {
            Change::ServiceUpserted(s) => &s.id,
            Change::ServiceDeleted(id) | Change::BreakerReset(id) => id,
            Change::InstanceUpserted(i) | Change::InstanceDeleted(i) => &i.service_id,
            Change::RouteUpserted(r) => &r.service_id,
            Change::RouteDeleted(_) => "",
        }
    }
}
