//! Conversions between the domain model and the protobuf messages. Domain -> proto never fails;
//! proto -> domain checks structure only (enum values, ranges a u32 cannot express as u16, required
//! sub-messages) and leaves the rules to `validate`.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::invalid::Invalid;
use crate::pb::registry::v1 as pb;

// === time ===

pub(crate) fn to_ms(t: Option<DateTime<Utc>>) -> i64 {
    t.map_or(0, |t| t.timestamp_millis())
}

pub(crate) fn from_ms(ms: i64) -> Option<DateTime<Utc>> {
    if ms == 0 {
        None
    } else {
        Utc.timestamp_millis_opt(ms).single()
    }
}

fn dur_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn opt_dur_ms(d: Option<Duration>) -> u64 {
    d.map_or(0, dur_ms)
}

fn ms_opt_dur(ms: u64) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms))
}

// === enums ===

impl From<HealthStatus> for pb::HealthStatus {
    fn from(s: HealthStatus) -> Self {
        match s {
            HealthStatus::Passing => pb::HealthStatus::Passing,
            HealthStatus::Warning => pb::HealthStatus::Warning,
            HealthStatus::Critical => pb::HealthStatus::Critical,
        }
    }
}

/// Reads an optional health status (unspecified = none).
pub fn health_status_from_pb(value: i32, field: &str) -> Result<Option<HealthStatus>, Invalid> {
    match pb::HealthStatus::try_from(value) {
        Ok(pb::HealthStatus::Unspecified) => Ok(None),
        Ok(pb::HealthStatus::Passing) => Ok(Some(HealthStatus::Passing)),
        Ok(pb::HealthStatus::Warning) => Ok(Some(HealthStatus::Warning)),
        Ok(pb::HealthStatus::Critical) => Ok(Some(HealthStatus::Critical)),
        Err(_) => Err(Invalid::one(field, format!("unknown health status {value}"))),
    }
}

impl From<CheckKind> for pb::CheckKind {
    fn from(k: CheckKind) -> Self {
        match k {
            CheckKind::None => pb::CheckKind::None,
            CheckKind::Http => pb::CheckKind::Http,
            CheckKind::Tcp => pb::CheckKind::Tcp,
            CheckKind::Grpc => pb::CheckKind::Grpc,
            CheckKind::Ttl => pb::CheckKind::Ttl,
        }
    }
}

fn check_kind_from_pb(value: i32) -> Result<CheckKind, Invalid> {
    match pb::CheckKind::try_from(value) {
        Ok(pb::CheckKind::None) => Ok(CheckKind::None),
        Ok(pb::CheckKind::Http) => Ok(CheckKind::Http),
        Ok(pb::CheckKind::Tcp) => Ok(CheckKind::Tcp),
        Ok(pb::CheckKind::Grpc) => Ok(CheckKind::Grpc),
        Ok(pb::CheckKind::Ttl) => Ok(CheckKind::Ttl),
        Ok(pb::CheckKind::Unspecified) => {
            Err(Invalid::one("healthCheck.kind", "is required (none, http, tcp, grpc or ttl)"))
        }
        Err(_) => Err(Invalid::one("healthCheck.kind", format!("unknown check kind {value}"))),
    }
}

impl From<Strategy> for pb::Strategy {
    fn from(s: Strategy) -> Self {
        match s {
            Strategy::RoundRobin => pb::Strategy::RoundRobin,
            Strategy::Random => pb::Strategy::Random,
            Strategy::Weighted => pb::Strategy::Weighted,
            Strategy::ZoneAware => pb::Strategy::ZoneAware,
            Strategy::ConsistentHash => pb::Strategy::ConsistentHash,
        }
    }
}

impl From<HealthFilter> for pb::HealthFilter {
    fn from(h: HealthFilter) -> Self {
        match h {
            HealthFilter::Passing => pb::HealthFilter::Passing,
            HealthFilter::PassingOrWarning => pb::HealthFilter::PassingOrWarning,
            HealthFilter::Any => pb::HealthFilter::Any,
        }
    }
}

// === services ===

impl From<Service> for pb::Service {
    fn from(s: Service) -> Self {
        pb::Service {
            id: s.id,
            name: s.name,
            version: s.version,
            description: s.description,
            tags: s.tags,
            capabilities: s.capabilities,
            metadata: s.metadata.into_iter().collect(),
            sla: s.sla.map(|sla| pb::Sla {
                latency_p99_ms: sla.latency_p99_ms,
                availability_percent: sla.availability_percent,
                max_requests_per_second: sla.max_requests_per_second,
            }),
            dependencies: s
                .dependencies
                .into_iter()
                .map(|d| pb::Dependency { service_id: d.service_id, version: d.version, optional: d.optional })
                .collect(),
            health_check: s.health_check.map(|c| pb::HealthCheck {
                kind: pb::CheckKind::from(c.kind).into(),
                http_path: c.path,
                http_method: c.method,
                grpc_service: c.grpc_service,
                interval_ms: dur_ms(c.interval),
                timeout_ms: dur_ms(c.timeout),
                ttl_ms: opt_dur_ms(c.ttl),
                success_threshold: c.success_threshold,
                failure_threshold: c.failure_threshold,
                deregister_critical_after_ms: opt_dur_ms(c.deregister_critical_after),
            }),
            api_contract: s.api_contract.map(|c| pb::ApiContract {
                kind: c.kind,
                location: c.location,
                version: c.version,
            }),
            created_at_ms: to_ms(s.created_at),
            updated_at_ms: to_ms(s.updated_at),
            traffic_policy_json: s.traffic_policy.and_then(|p| serde_json::to_string(&p).ok()).unwrap_or_default(),
        }
    }
}

impl TryFrom<pb::Service> for Service {
    type Error = Invalid;
    fn try_from(s: pb::Service) -> Result<Self, Invalid> {
        let health_check = match s.health_check {
            None => None,
            Some(c) => Some(HealthCheck {
                kind: check_kind_from_pb(c.kind)?,
                path: c.http_path,
                method: c.http_method,
                grpc_service: c.grpc_service,
                interval: if c.interval_ms == 0 {
                    HealthCheck::default_interval()
                } else {
                    Duration::from_millis(c.interval_ms)
                },
                timeout: if c.timeout_ms == 0 {
                    HealthCheck::default_timeout()
                } else {
                    Duration::from_millis(c.timeout_ms)
                },
                ttl: ms_opt_dur(c.ttl_ms),
                success_threshold: if c.success_threshold == 0 { 1 } else { c.success_threshold },
                failure_threshold: if c.failure_threshold == 0 { 1 } else { c.failure_threshold },
                deregister_critical_after: ms_opt_dur(c.deregister_critical_after_ms),
            }),
        };
        Ok(Service {
            id: s.id,
            name: s.name,
            version: s.version,
            description: s.description,
            tags: s.tags,
            capabilities: s.capabilities,
            metadata: s.metadata.into_iter().collect(),
            sla: s.sla.map(|sla| Sla {
                latency_p99_ms: sla.latency_p99_ms,
                availability_percent: sla.availability_percent,
                max_requests_per_second: sla.max_requests_per_second,
            }),
            dependencies: s
                .dependencies
                .into_iter()
                .map(|d| Dependency { service_id: d.service_id, version: d.version, optional: d.optional })
                .collect(),
            health_check,
            api_contract: s.api_contract.map(|c| ApiContract {
                kind: c.kind,
                location: c.location,
                version: c.version,
            }),
            traffic_policy: if s.traffic_policy_json.trim().is_empty() {
                None
            } else {
                Some(Box::new(
                    serde_json::from_str(&s.traffic_policy_json)
                        .map_err(|e| Invalid::one("trafficPolicy", e.to_string()))?,
                ))
            },
            created_at: from_ms(s.created_at_ms),
            updated_at: from_ms(s.updated_at_ms),
        })
    }
}

impl From<HealthSummary> for pb::HealthSummary {
    fn from(h: HealthSummary) -> Self {
        pb::HealthSummary {
            status: pb::HealthStatus::from(h.status).into(),
            passing: h.passing,
            warning: h.warning,
            critical: h.critical,
        }
    }
}

impl TryFrom<Option<pb::HealthSummary>> for HealthSummary {
    type Error = Invalid;
    fn try_from(h: Option<pb::HealthSummary>) -> Result<Self, Invalid> {
        let h = h.unwrap_or_default();
        Ok(HealthSummary {
            status: health_status_from_pb(h.status, "health.status")?.unwrap_or(HealthStatus::Critical),
            passing: h.passing,
            warning: h.warning,
            critical: h.critical,
        })
    }
}

impl From<ServiceSummary> for pb::ServiceSummary {
    fn from(s: ServiceSummary) -> Self {
        pb::ServiceSummary {
            service: Some(s.service.into()),
            instance_count: s.instance_count,
            health: Some(s.health.into()),
        }
    }
}

impl TryFrom<pb::ServiceSummary> for ServiceSummary {
    type Error = Invalid;
    fn try_from(s: pb::ServiceSummary) -> Result<Self, Invalid> {
        Ok(ServiceSummary {
            service: s.service.ok_or_else(|| Invalid::one("service", "is required"))?.try_into()?,
            instance_count: s.instance_count,
            health: s.health.try_into()?,
        })
    }
}

impl From<ServiceList> for pb::ListServicesResponse {
    fn from(l: ServiceList) -> Self {
        pb::ListServicesResponse {
            services: l.services.into_iter().map(Into::into).collect(),
            next_page_token: l.next_page_token,
            total: l.total,
        }
    }
}

impl TryFrom<pb::ListServicesResponse> for ServiceList {
    type Error = Invalid;
    fn try_from(l: pb::ListServicesResponse) -> Result<Self, Invalid> {
        Ok(ServiceList {
            services: l.services.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?,
            next_page_token: l.next_page_token,
            total: l.total,
        })
    }
}

// === instances ===

impl From<Instance> for pb::Instance {
    fn from(i: Instance) -> Self {
        pb::Instance {
            id: i.id,
            service_id: i.service_id,
            address: i.address,
            port: u32::from(i.port),
            scheme: i.scheme,
            region: i.region,
            zone: i.zone,
            weight: Some(i.weight),
            version: i.version,
            tags: i.tags,
            metadata: i.metadata.into_iter().collect(),
            status: pb::HealthStatus::from(i.status).into(),
            status_output: i.status_output,
            status_since_ms: to_ms(i.status_since),
            last_checked_at_ms: to_ms(i.last_checked_at),
            registered_at_ms: to_ms(i.registered_at),
        }
    }
}

impl TryFrom<pb::Instance> for Instance {
    type Error = Invalid;
    fn try_from(i: pb::Instance) -> Result<Self, Invalid> {
        let port = u16::try_from(i.port).map_err(|_| Invalid::one("port", "must be between 1 and 65535"))?;
        Ok(Instance {
            id: i.id,
            service_id: i.service_id,
            address: i.address,
            port,
            scheme: i.scheme,
            region: i.region,
            zone: i.zone,
            weight: i.weight.unwrap_or_else(Instance::default_weight),
            version: i.version,
            tags: i.tags,
            metadata: i.metadata.into_iter().collect(),
            status: health_status_from_pb(i.status, "status")?.unwrap_or(HealthStatus::Critical),
            status_output: i.status_output,
            status_since: from_ms(i.status_since_ms),
            last_checked_at: from_ms(i.last_checked_at_ms),
            registered_at: from_ms(i.registered_at_ms),
        })
    }
}

// === discovery, search, health, graph ===

impl From<DiscoverQuery> for pb::DiscoverRequest {
    fn from(q: DiscoverQuery) -> Self {
        pb::DiscoverRequest {
            service_id: q.service_id,
            strategy: pb::Strategy::from(q.strategy).into(),
            region: q.region,
            zone: q.zone,
            hash_key: q.hash_key,
            tags: q.tags,
            version: q.version,
            capabilities: q.capabilities,
            health: pb::HealthFilter::from(q.health).into(),
        }
    }
}

impl TryFrom<pb::DiscoverRequest> for DiscoverQuery {
    type Error = Invalid;
    fn try_from(r: pb::DiscoverRequest) -> Result<Self, Invalid> {
        let strategy = match pb::Strategy::try_from(r.strategy) {
            Ok(pb::Strategy::Unspecified | pb::Strategy::RoundRobin) => Strategy::RoundRobin,
            Ok(pb::Strategy::Random) => Strategy::Random,
            Ok(pb::Strategy::Weighted) => Strategy::Weighted,
            Ok(pb::Strategy::ZoneAware) => Strategy::ZoneAware,
            Ok(pb::Strategy::ConsistentHash) => Strategy::ConsistentHash,
            Err(_) => return Err(Invalid::one("strategy", format!("unknown strategy {}", r.strategy))),
        };
        let health = match pb::HealthFilter::try_from(r.health) {
            Ok(pb::HealthFilter::Unspecified | pb::HealthFilter::Passing) => HealthFilter::Passing,
            Ok(pb::HealthFilter::PassingOrWarning) => HealthFilter::PassingOrWarning,
            Ok(pb::HealthFilter::Any) => HealthFilter::Any,
            Err(_) => return Err(Invalid::one("health", format!("unknown health filter {}", r.health))),
        };
        Ok(DiscoverQuery {
            service_id: r.service_id,
            strategy,
            region: r.region,
            zone: r.zone,
            hash_key: r.hash_key,
            tags: r.tags,
            version: r.version,
            capabilities: r.capabilities,
            health,
        })
    }
}

impl From<Discovered> for pb::DiscoverResponse {
    fn from(d: Discovered) -> Self {
        pb::DiscoverResponse { instance: Some(d.instance.into()), candidates: d.candidates, locality: d.locality }
    }
}

impl TryFrom<pb::DiscoverResponse> for Discovered {
    type Error = Invalid;
    fn try_from(d: pb::DiscoverResponse) -> Result<Self, Invalid> {
        Ok(Discovered {
            instance: d.instance.ok_or_else(|| Invalid::one("instance", "is required"))?.try_into()?,
            candidates: d.candidates,
            locality: d.locality,
        })
    }
}

impl From<SearchQuery> for pb::SearchRequest {
    fn from(q: SearchQuery) -> Self {
        pb::SearchRequest {
            text: q.text,
            tags: q.tags,
            tags_match: match q.tags_match {
                TagMatch::All => pb::Match::All,
                TagMatch::Any => pb::Match::Any,
            }
            .into(),
            capabilities: q.capabilities,
            metadata: q.metadata.into_iter().collect(),
            health: q.health.map_or(pb::HealthStatus::Unspecified, Into::into).into(),
            page_size: q.page_size.unwrap_or(0),
            page_token: q.page_token,
        }
    }
}

impl TryFrom<pb::SearchRequest> for SearchQuery {
    type Error = Invalid;
    fn try_from(r: pb::SearchRequest) -> Result<Self, Invalid> {
        let tags_match = match pb::Match::try_from(r.tags_match) {
            Ok(pb::Match::Unspecified | pb::Match::All) => TagMatch::All,
            Ok(pb::Match::Any) => TagMatch::Any,
            Err(_) => return Err(Invalid::one("tagsMatch", format!("unknown match {}", r.tags_match))),
        };
        Ok(SearchQuery {
            text: r.text,
            tags: r.tags,
            tags_match,
            capabilities: r.capabilities,
            metadata: r.metadata.into_iter().collect(),
            health: health_status_from_pb(r.health, "health")?,
            page_size: (r.page_size != 0).then_some(r.page_size),
            page_token: r.page_token,
        })
    }
}

impl From<ServiceHealth> for pb::ServiceHealth {
    fn from(h: ServiceHealth) -> Self {
        pb::ServiceHealth {
            service_id: h.service_id,
            summary: Some(h.summary.into()),
            instances: h.instances.into_iter().map(Into::into).collect(),
            check_kind: pb::CheckKind::from(h.check_kind).into(),
        }
    }
}

impl TryFrom<pb::ServiceHealth> for ServiceHealth {
    type Error = Invalid;
    fn try_from(h: pb::ServiceHealth) -> Result<Self, Invalid> {
        Ok(ServiceHealth {
            service_id: h.service_id,
            check_kind: check_kind_from_pb(h.check_kind)?,
            summary: h.summary.try_into()?,
            instances: h.instances.into_iter().map(TryInto::try_into).collect::<Result<_, _>>()?,
        })
    }
}

impl From<DependencyGraph> for pb::DependencyGraph {
    fn from(g: DependencyGraph) -> Self {
        pb::DependencyGraph {
            service_id: g.service_id,
            direct_dependencies: g.direct_dependencies,
            transitive_dependencies: g.transitive_dependencies,
            direct_dependents: g.direct_dependents,
            transitive_dependents: g.transitive_dependents,
            nodes: g
                .nodes
                .into_iter()
                .map(|n| pb::GraphNode {
                    id: n.id,
                    registered: n.registered,
                    health: n.health.map_or(pb::HealthStatus::Unspecified, Into::into).into(),
                })
                .collect(),
            edges: g
                .edges
                .into_iter()
                .map(|e| pb::GraphEdge { from: e.from, to: e.to, optional: e.optional, in_cycle: e.in_cycle })
                .collect(),
            cycles: g.cycles.into_iter().map(|services| pb::Cycle { services }).collect(),
            unregistered: g.unregistered,
        }
    }
}

impl TryFrom<pb::DependencyGraph> for DependencyGraph {
    type Error = Invalid;
    fn try_from(g: pb::DependencyGraph) -> Result<Self, Invalid> {
        Ok(DependencyGraph {
            service_id: g.service_id,
            direct_dependencies: g.direct_dependencies,
            transitive_dependencies: g.transitive_dependencies,
            direct_dependents: g.direct_dependents,
            transitive_dependents: g.transitive_dependents,
            nodes: g
                .nodes
                .into_iter()
                .map(|n| {
                    Ok(GraphNode {
                        id: n.id,
                        registered: n.registered,
                        health: health_status_from_pb(n.health, "health")?,
                    })
                })
                .collect::<Result<_, Invalid>>()?,
            edges: g
                .edges
                .into_iter()
                .map(|e| GraphEdge { from: e.from, to: e.to, optional: e.optional, in_cycle: e.in_cycle })
                .collect(),
            cycles: g.cycles.into_iter().map(|c| c.services).collect(),
            unregistered: g.unregistered,
        })
    }
}

// === watch ===

impl From<Change> for pb::watch_event::Event {
    fn from(c: Change) -> Self {
        use pb::watch_event::Event;
        match c {
            Change::ServiceUpserted(s) => Event::ServiceUpserted(s.into()),
            Change::ServiceDeleted(id) => Event::ServiceDeleted(id),
            Change::InstanceUpserted(i) => Event::InstanceUpserted(i.into()),
            Change::InstanceDeleted(i) => Event::InstanceDeleted(i.into()),
            Change::BreakerReset(id) => Event::BreakerReset(id),
            Change::RouteUpserted(r) => Event::RouteUpsertedJson(serde_json::to_string(&r).unwrap_or_default()),
            Change::RouteDeleted(id) => Event::RouteDeleted(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_survives_the_round_trip_through_proto() {
        let mut s: Service = serde_json::from_value(serde_json::json!({
            "id": "orders", "version": "2.1.0", "tags": ["core"], "metadata": {"team": "checkout"},
            "sla": {"latencyP99Ms": 250.0, "availabilityPercent": 99.9},
            "dependencies": ["payments", {"serviceId": "mail", "optional": true}],
            "healthCheck": {"kind": "http", "path": "/healthz", "interval": "2s", "timeout": "500ms",
                            "failureThreshold": 3, "deregisterCriticalAfter": "1m"},
            "apiContract": {"kind": "openapi", "location": "https://example.test/openapi.json"}
        }))
        .unwrap();
        s.normalize().unwrap();
        s.created_at = from_ms(1_700_000_000_123);
        let back = Service::try_from(pb::Service::from(s.clone())).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn an_instance_port_above_65535_names_the_field() {
        let err = Instance::try_from(pb::Instance { port: 70_000, ..Default::default() }).unwrap_err();
        assert_eq!(err.0[0].field, "port");
    }
}
