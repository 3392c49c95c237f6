//! Picks one instance of a service for a caller: filters on health, tags, version and capabilities,
//! then applies the strategy. Runs under the state's read lock, so it allocates little and never
//! waits: round robin advances an atomic cursor, hashing is rendezvous (highest random weight), which
//! moves only the keys of an instance that comes or goes.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use rand::Rng;
use reskflow_proto::registry::{DiscoverQuery, Discovered, Instance, Strategy};

use super::state::ServiceEntry;

/// Why no instance could be picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoCandidate {
    pub registered: usize,
    pub why: String,
}

fn has_all(have: &[String], also: &[String], want: &[String]) -> bool {
    want.iter().all(|w| have.contains(w) || also.contains(w))
}

pub fn select(entry: &ServiceEntry, query: &DiscoverQuery) -> Result<Discovered, NoCandidate> {
    let service = &entry.service;
    let registered = entry.instances.len();
    let no = |why: String| NoCandidate { registered, why };
    if !has_all(&service.capabilities, &[], &query.capabilities) {
        return Err(no(format!("service {} lacks capabilities {:?}", service.id, query.capabilities)));
    }
    let candidates: Vec<&Arc<Instance>> = entry
        .instances
        .values()
        .filter(|i| query.health.admits(i.status))
        .filter(|i| has_all(&i.tags, &service.tags, &query.tags))
        .filter(|i| query.version.is_empty() || i.version == query.version)
        .collect();
    if candidates.is_empty() {
        let why = if registered == 0 {
            format!("service {} has no registered instances", service.id)
        } else {
            format!("none of the {registered} instances of {} is healthy and matches the filters", service.id)
        };
        return Err(no(why));
    }
    let count = u32::try_from(candidates.len()).unwrap_or(u32::MAX);
    let (chosen, locality) = match query.strategy {
        Strategy::RoundRobin => (round_robin(entry, &candidates), ""),
        Strategy::Random => (candidates[rand::rng().random_range(0..candidates.len())], ""),
        Strategy::Weighted => (weighted(&candidates), ""),
        Strategy::ZoneAware => zone_aware(entry, &candidates, query),
        Strategy::ConsistentHash => (rendezvous(&candidates, &query.hash_key), ""),
    };
    Ok(Discovered { instance: (**chosen).clone(), candidates: count, locality: locality.to_string() })
}

fn round_robin<'a>(entry: &ServiceEntry, candidates: &[&'a Arc<Instance>]) -> &'a Arc<Instance> {
    let n = entry.cursor.fetch_add(1, Ordering::Relaxed);
    candidates[n % candidates.len()]
}

fn weighted<'a>(candidates: &[&'a Arc<Instance>]) -> &'a Arc<Instance> {
    let total: u64 = candidates.iter().map(|i| u64::from(i.weight.max(1))).sum();
    let mut point = rand::rng().random_range(0..total);
    for candidate in candidates {
        let w = u64::from(candidate.weight.max(1));
        if point < w {
            return candidate;
        }
        point -= w;
    }
    candidates[candidates.len() - 1]
}

/// Same zone (and region) first, then same region, then anyone; round robin within the tier.
fn zone_aware<'a>(
    entry: &ServiceEntry,
    candidates: &[&'a Arc<Instance>],
    query: &DiscoverQuery,
) -> (&'a Arc<Instance>, &'static str) {
    let same_region = |i: &Instance| query.region.is_empty() || i.region == query.region;
    if !query.zone.is_empty() {
        let zone: Vec<_> = candidates.iter().copied().filter(|i| i.zone == query.zone && same_region(i)).collect();
        if !zone.is_empty() {
            return (round_robin(entry, &zone), "zone");
        }
    }
    if !query.region.is_empty() {
        let region: Vec<_> = candidates.iter().copied().filter(|i| i.region == query.region).collect();
        if !region.is_empty() {
            return (round_robin(entry, &region), "region");
        }
    }
    (round_robin(entry, candidates), "any")
}

/// 64-bit FNV-1a, then a splitmix finalizer for avalanche: stable across processes and versions,
/// unlike std's `DefaultHasher`, so every replica maps a key to the same instance.
fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Weighted rendezvous hashing: score = -weight / ln(u), u uniform in (0, 1) from hash(key, id).
fn rendezvous<'a>(candidates: &[&'a Arc<Instance>], key: &str) -> &'a Arc<Instance> {
    let mut best = candidates[0];
    let mut best_score = f64::NEG_INFINITY;
    for candidate in candidates {
        let h = stable_hash(&[key.as_bytes(), candidate.id.as_bytes()]);
        // 53 high bits -> (0, 1): never 0, so ln is finite and negative.
        let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let score = -f64::from(candidate.weight.max(1)) / u.ln();
        if score > best_score {
            best_score = score;
            best = candidate;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::atomic::AtomicUsize;

    use reskflow_proto::registry::{HealthFilter, HealthStatus, Service};

    use super::*;

    fn entry(instances: &[(&str, HealthStatus, &str, u32)]) -> ServiceEntry {
        let service: Service =
            serde_json::from_value(serde_json::json!({"id": "svc", "capabilities": ["pay"]})).unwrap();
        let mut map = BTreeMap::new();
        for (id, status, zone, weight) in instances {
            let mut i: Instance = serde_json::from_value(serde_json::json!({
                "id": id, "serviceId": "svc", "address": "127.0.0.1", "port": 1,
                "region": "eu", "zone": zone, "weight": weight
            }))
            .unwrap();
            i.status = *status;
            map.insert(id.to_string(), Arc::new(i));
        }
        ServiceEntry { service: Arc::new(service), instances: map, cursor: AtomicUsize::new(0), breaker_reset: 0 }
    }

    fn query(strategy: Strategy) -> DiscoverQuery {
        DiscoverQuery { service_id: "svc".into(), strategy, ..Default::default() }
    }

    use HealthStatus::*;

    #[test]
    fn round_robin_cycles_through_passing_instances_only() {
        let e = entry(&[("a", Passing, "z1", 1), ("b", Critical, "z1", 1), ("c", Passing, "z1", 1)]);
        let picks: Vec<_> = (0..4).map(|_| select(&e, &query(Strategy::RoundRobin)).unwrap().instance.id).collect();
        assert_eq!(picks, ["a", "c", "a", "c"]);
    }

    #[test]
    fn no_healthy_instance_is_an_error_not_an_empty_answer() {
        let e = entry(&[("a", Critical, "z1", 1), ("b", Warning, "z1", 1)]);
        let err = select(&e, &query(Strategy::RoundRobin)).unwrap_err();
        assert_eq!(err.registered, 2);
        let mut q = query(Strategy::RoundRobin);
        q.health = HealthFilter::PassingOrWarning;
        assert_eq!(select(&e, &q).unwrap().instance.id, "b");
    }

    #[test]
    fn zone_aware_prefers_the_callers_zone_then_falls_back() {
        let e = entry(&[("a", Passing, "z1", 1), ("b", Passing, "z2", 1)]);
        let mut q = query(Strategy::ZoneAware);
        q.region = "eu".into();
        q.zone = "z2".into();
        for _ in 0..3 {
            let found = select(&e, &q).unwrap();
            assert_eq!((found.instance.id.as_str(), found.locality.as_str()), ("b", "zone"));
        }
        q.zone = "z9".into();
        assert_eq!(select(&e, &q).unwrap().locality, "region");
        q.region = "us".into();
        assert_eq!(select(&e, &q).unwrap().locality, "any");
    }

    #[test]
    fn consistent_hash_maps_a_key_to_one_instance_and_moves_few_keys_when_one_leaves() {
        let all =
            entry(&[("a", Passing, "z", 1), ("b", Passing, "z", 1), ("c", Passing, "z", 1), ("d", Passing, "z", 1)]);
        let three =
            entry(&[("a", Passing, "z", 1), ("b", Passing, "z", 1), ("c", Passing, "z", 1), ("d", Critical, "z", 1)]);
        let mut moved = 0;
        for k in 0..1000 {
            let mut q = query(Strategy::ConsistentHash);
            q.hash_key = format!("user-{k}");
            let before = select(&all, &q).unwrap().instance.id;
            assert_eq!(select(&all, &q).unwrap().instance.id, before, "stable");
            let after = select(&three, &q).unwrap().instance.id;
            if before != after {
                assert_eq!(before, "d", "only keys of the instance that left move");
                moved += 1;
            }
        }
        assert!((150..350).contains(&moved), "about a quarter of the keys move: {moved}");
    }

    #[test]
    fn weighted_picks_in_proportion_to_weight() {
        let e = entry(&[("light", Passing, "z", 1), ("heavy", Passing, "z", 9)]);
        let mut counts = HashMap::new();
        for _ in 0..5000 {
            *counts.entry(select(&e, &query(Strategy::Weighted)).unwrap().instance.id).or_insert(0) += 1;
        }
        let heavy = counts["heavy"] as f64 / 5000.0;
        assert!((0.85..0.95).contains(&heavy), "{heavy}");
    }

    #[test]
    fn filters_on_tags_version_and_capabilities() {
        let e = entry(&[("a", Passing, "z", 1)]);
        let mut q = query(Strategy::RoundRobin);
        q.capabilities = vec!["refund".into()];
        assert!(select(&e, &q).unwrap_err().why.contains("lacks capabilities"));
        q.capabilities = vec!["pay".into()];
        q.tags = vec!["canary".into()];
        assert!(select(&e, &q).is_err());
        q.tags.clear();
        q.version = "9".into();
        assert!(select(&e, &q).is_err());
    }
}
