//! The dependency graph around one service: what it needs (directly and transitively), what needs it,
//! the cycles it takes part in and the dependencies nobody registered. Built from the declared
//! `dependencies` of every registered service on each call (the graph is small next to a request).

use std::collections::{BTreeSet, HashMap, VecDeque};

use petgraph::algo::tarjan_scc;
use petgraph::graphmap::DiGraphMap;
use reskflow_proto::registry::{DependencyGraph, GraphEdge, GraphNode};

use super::state::RegistryState;

/// Everything reachable from `start` through `next`, in breadth-first order.
fn reachable<'a>(start: &'a str, next: &HashMap<&'a str, Vec<&'a str>>) -> Vec<&'a str> {
    let mut seen = BTreeSet::from([start]);
    let mut order = Vec::new();
    let mut queue = VecDeque::from([start]);
    while let Some(node) = queue.pop_front() {
        for &n in next.get(node).map(Vec::as_slice).unwrap_or_default() {
            if seen.insert(n) {
                order.push(n);
                queue.push_back(n);
            }
        }
    }
    order
}

/// The graph around `id`, which must be registered.
pub fn build(state: &RegistryState, id: &str) -> DependencyGraph {
    let mut forward: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut backward: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut optional: HashMap<(&str, &str), bool> = HashMap::new();
    for (from, entry) in &state.services {
        for dep in &entry.service.dependencies {
            forward.entry(from.as_str()).or_default().push(dep.service_id.as_str());
            backward.entry(dep.service_id.as_str()).or_default().push(from.as_str());
            optional.insert((from.as_str(), dep.service_id.as_str()), dep.optional);
        }
    }
    let sorted = |mut v: Vec<&str>| {
        v.sort_unstable();
        v.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let deps = reachable(id, &forward);
    let dependents = reachable(id, &backward);

    let mut members: BTreeSet<&str> = deps.iter().chain(&dependents).copied().collect();
    members.insert(id);
    let mut graph = DiGraphMap::<&str, ()>::new();
    for &m in &members {
        graph.add_node(m);
    }
    for &from in &members {
        for &to in forward.get(from).map(Vec::as_slice).unwrap_or_default() {
            if members.contains(to) {
                graph.add_edge(from, to, ());
            }
        }
    }
    let mut component_of: HashMap<&str, usize> = HashMap::new();
    let mut cycles = Vec::new();
    for (n, component) in tarjan_scc(&graph).into_iter().enumerate() {
        if component.len() > 1 {
            for &m in &component {
                component_of.insert(m, n);
            }
            cycles.push(sorted(component));
        }
    }
    cycles.sort();
    let in_same_cycle = |a: &str, b: &str| component_of.get(a).is_some_and(|c| component_of.get(b) == Some(c));

    let nodes = members
        .iter()
        .map(|&m| {
            let entry = state.services.get(m);
            GraphNode { id: m.to_string(), registered: entry.is_some(), health: entry.map(|e| e.health().status) }
        })
        .collect();
    let mut edges: Vec<GraphEdge> = graph
        .all_edges()
        .map(|(from, to, ())| GraphEdge {
            from: from.to_string(),
            to: to.to_string(),
            optional: optional.get(&(from, to)).copied().unwrap_or(false),
            in_cycle: in_same_cycle(from, to),
        })
        .collect();
    edges.sort_by(|a, b| (&a.from, &a.to).cmp(&(&b.from, &b.to)));
    let unregistered = sorted(deps.iter().copied().filter(|d| !state.services.contains_key(*d)).collect());

    DependencyGraph {
        service_id: id.to_string(),
        direct_dependencies: sorted(forward.get(id).cloned().unwrap_or_default()),
        transitive_dependencies: sorted(deps),
        direct_dependents: sorted(backward.get(id).cloned().unwrap_or_default()),
        transitive_dependents: sorted(dependents),
        nodes,
        edges,
        cycles,
        unregistered,
    }
}

#[cfg(test)]
mod tests {
    use reskflow_proto::registry::{Change, Service};

    use super::*;
    use crate::store::ChangeRecord;

    fn state(services: &[(&str, &[&str])]) -> RegistryState {
        let mut state = RegistryState::default();
        for (n, (id, deps)) in services.iter().enumerate() {
            let s: Service = serde_json::from_value(serde_json::json!({ "id": id, "dependencies": deps })).unwrap();
            state.apply(&ChangeRecord { seq: n as u64 + 1, change: Change::ServiceUpserted(s) });
        }
        state
    }

    #[test]
    fn transitive_dependencies_and_dependents_are_followed() {
        let s = state(&[("web", &["orders"]), ("orders", &["payments", "stock"]), ("payments", &["bank"])]);
        let g = build(&s, "orders");
        assert_eq!(g.direct_dependencies, ["payments", "stock"]);
        assert_eq!(g.transitive_dependencies, ["bank", "payments", "stock"]);
        assert_eq!(g.direct_dependents, ["web"]);
        assert_eq!(g.unregistered, ["bank", "stock"]);
        assert!(g.cycles.is_empty());
        assert_eq!(g.nodes.len(), 5);
        assert_eq!(g.edges.len(), 4);
    }

    #[test]
    fn cycles_are_reported_and_their_edges_flagged() {
        let s = state(&[("a", &["b"]), ("b", &["c"]), ("c", &["a", "d"]), ("d", &[])]);
        let g = build(&s, "a");
        assert_eq!(g.cycles, vec![vec!["a", "b", "c"]]);
        let flagged: Vec<_> = g.edges.iter().filter(|e| e.in_cycle).map(|e| (e.from.as_str(), e.to.as_str())).collect();
        assert_eq!(flagged, [("a", "b"), ("b", "c"), ("c", "a")]);
        assert!(g.edges.iter().any(|e| e.from == "c" && e.to == "d" && !e.in_cycle));
    }
}
