//! The gateway's routes as the request path uses them: compiled from each config the control plane
//! streams (or the saved one), swapped in whole. A config whose routes do not compile is refused
//! (NACK) and the previous routes stay.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use reskflow_proto::dataplane::DataPlaneConfig;
use reskflow_proto::route::Route;
use reskflow_sidecar::fields::Fields;
use reskflow_sidecar::routing::RouteTable;

use crate::edge::ROUTE_HEADER;
use crate::metrics::{Metrics, RouteMetrics};
use crate::ratelimit::RouteLimiter;
use crate::shape::Shape;

/// One route, ready for requests.
#[derive(Debug)]
pub struct CompiledRoute {
    pub route: Route,
    /// Largest request body accepted.
    pub max_body: usize,
    pub timeout: Option<Duration>,
    /// Kept across configs while the route's limit is unchanged, so callers keep their state.
    pub limiter: Option<Arc<RouteLimiter>>,
    /// `rateLimit` key prefix in Redis.
    pub redis_prefix: String,
    pub metrics: Arc<RouteMetrics>,
    /// Validation and transforms, when the route has any.
    pub shape: Option<Arc<Shape>>,
    /// The fields every proxied answer of the route carries, made once: `X-Reskflow-Route`, and
    /// with a limit `RateLimit-Limit` and `RateLimit-Policy` (the limit's remaining and reset are
    /// added per request).
    pub answer_fields: Fields,
}

#[derive(Debug, Default)]
pub struct RouteSet {
    pub table: RouteTable<Arc<CompiledRoute>>,
    pub by_id: HashMap<String, Arc<CompiledRoute>>,
    /// The config version the routes came with.
    pub version: u64,
}

/// What compiling needs beyond the route.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub max_body: usize,
}

/// Compiles `route`, reusing what `previous` (the route of the same id in the current set) holds
/// when it still applies.
pub fn compile(
    route: &Route,
    defaults: &Defaults,
    previous: Option<&CompiledRoute>,
    metrics: Arc<RouteMetrics>,
) -> Result<CompiledRoute, String> {
    let max_body = route.max_body_bytes.map_or(defaults.max_body, |m| usize::try_from(m).unwrap_or(usize::MAX));
    let limiter = match &route.rate_limit {
        None => None,
        Some(limit) => match previous.and_then(|p| p.limiter.as_ref()) {
            Some(kept) if kept.config == *limit => Some(kept.clone()),
            _ => Some(Arc::new(RouteLimiter::new(limit)?)),
        },
    };
    let mut answer_fields = Fields::default();
    if let Ok(id) = http::HeaderValue::from_str(&route.id) {
        answer_fields.push(&ROUTE_HEADER, &id);
    }
    if let Some(limiter) = &limiter {
        answer_fields.extend(&limiter.fixed_fields);
    }
    Ok(CompiledRoute {
        route: route.clone(),
        max_body,
        timeout: route.timeout,
        limiter,
        redis_prefix: format!("reskflow:rl:{}:", route.id),
        metrics,
        shape: Shape::compile(route)?.map(Arc::new),
        answer_fields,
    })
}

/// The live routes, replaced whole on each config.
pub struct Routes {
    current: ArcSwap<RouteSet>,
    defaults: Defaults,
    metrics: Arc<Metrics>,
}

impl Routes {
    pub fn new(defaults: Defaults, metrics: Arc<Metrics>) -> Routes {
        Routes { current: ArcSwap::from_pointee(RouteSet::default()), defaults, metrics }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<RouteSet>> {
        self.current.load()
    }

    /// Compiles the config's routes and installs them; Err (for a NACK) keeps the current ones.
    pub fn apply(&self, config: &DataPlaneConfig) -> Result<(), String> {
        let mut compiled = Vec::with_capacity(config.routes.len());
        let mut problems = Vec::new();
        let current = self.current.load_full();
        for route in &config.routes {
            let previous = current.by_id.get(&route.id).map(|r| &**r);
            match compile(route, &self.defaults, previous, self.metrics.route(&route.id)) {
                Ok(c) => compiled.push((route, Arc::new(c))),
                Err(why) => problems.push(format!("route {}: {why}", route.id)),
            }
        }
        let entries = compiled.iter().map(|(r, c)| (r.id.as_str(), r.method.as_str(), r.path.as_str(), c.clone()));
        let table = match RouteTable::build(entries) {
            Ok(table) => table,
            Err(conflicts) => {
                problems.extend(conflicts.into_iter().map(|c| format!("route {}: {}", c.id, c.why)));
                RouteTable::default()
            }
        };
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let by_id = compiled.into_iter().map(|(r, c)| (r.id.clone(), c)).collect();
        self.current.store(Arc::new(RouteSet { table, by_id, version: config.version }));
        Ok(())
    }

    /// Every minute, forgets rate-limit state of callers that are back to a full allowance.
    pub async fn forget_idle_callers(self: Arc<Self>) {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            for route in self.current.load().by_id.values() {
                if let Some(l) = &route.limiter {
                    l.forget_idle();
                }
            }
        }
    }
}
