//! The gateway's routes as the request path uses them: compiled from each config the control plane
//! streams (or the saved one), swapped in whole. A config whose routes do not compile is refused
//! (NACK) and the previous routes stay.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use reskflow_proto::dataplane::DataPlaneConfig;
use reskflow_proto::route::Route;
use reskflow_sidecar::routing::RouteTable;

/// One route, ready for requests.
#[derive(Debug)]
pub struct CompiledRoute {
    pub route: Route,
    /// Largest request body accepted.
    pub max_body: usize,
    pub timeout: Option<Duration>,
}

#[derive(Debug, Default)]
pub struct RouteSet {
    pub table: RouteTable<Arc<CompiledRoute>>,
    /// The config version the routes came with.
    pub version: u64,
}

/// What compiling needs beyond the route.
#[derive(Debug, Clone)]
pub struct Defaults {
    pub max_body: usize,
}

pub fn compile(route: &Route, defaults: &Defaults) -> Result<CompiledRoute, String> {
    let max_body = route.max_body_bytes.map_or(defaults.max_body, |m| usize::try_from(m).unwrap_or(usize::MAX));
    Ok(CompiledRoute { route: route.clone(), max_body, timeout: route.timeout })
}

/// The live routes, replaced whole on each config.
pub struct Routes {
    current: ArcSwap<RouteSet>,
    defaults: Defaults,
}

impl Routes {
    pub fn new(defaults: Defaults) -> Routes {
        Routes { current: ArcSwap::from_pointee(RouteSet::default()), defaults }
    }

    pub fn load(&self) -> arc_swap::Guard<Arc<RouteSet>> {
        self.current.load()
    }

    /// Compiles the config's routes and installs them; Err (for a NACK) keeps the current ones.
    pub fn apply(&self, config: &DataPlaneConfig) -> Result<(), String> {
        let mut compiled = Vec::with_capacity(config.routes.len());
        let mut problems = Vec::new();
        for route in &config.routes {
            match compile(route, &self.defaults) {
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
        self.current.store(Arc::new(RouteSet { table, version: config.version }));
        Ok(())
    }
}
