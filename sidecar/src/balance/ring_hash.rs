//! Consistent hashing (a ketama-style ring, as Envoy's RING_HASH): each endpoint owns points on a
//! ring in proportion to its weight; a key goes to the first point at or after its hash, so adding
//! or removing an endpoint moves only the keys of its own points. Hashes are xxh3, stable across
//! processes, so every sidecar and gateway sends a key to the same instance.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64;

use super::Endpoint;

/// Ring points per unit of weight (ketama's 160). It does not depend on the other endpoints, so an
/// endpoint joining or leaving moves only the keys of its own points.
const POINTS_PER_WEIGHT: u64 = 160;
/// Largest ring; bigger weight sums get fewer points per weight.
const MAX_RING: u64 = 1 << 20;

#[derive(Debug)]
pub struct Ring {
    /// (hash, endpoint index), sorted by hash.
    points: Vec<(u64, u32)>,
}

impl Ring {
    pub fn new(endpoints: &[Arc<Endpoint>]) -> Ring {
        let total: u64 = endpoints.iter().map(|e| u64::from(e.spec.weight.max(1))).sum();
        let per_weight = MAX_RING.checked_div(total).map_or(0, |most| POINTS_PER_WEIGHT.min(most.max(1)));
        let mut points = Vec::with_capacity((total * per_weight) as usize);
        for (i, e) in endpoints.iter().enumerate() {
            for k in 0..u64::from(e.spec.weight.max(1)) * per_weight {
                points.push((xxh3_64(format!("{}_{k}", e.spec.id).as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The endpoint owning `key`, or the next available one along the ring.
    pub fn pick<'a>(&self, endpoints: &'a [Arc<Endpoint>], key: &[u8], now_ms: u64) -> Option<&'a Arc<Endpoint>> {
        if self.points.is_empty() {
            return None;
        }
        let hash = xxh3_64(key);
        let start = self.points.partition_point(|&(h, _)| h < hash);
        let n = self.points.len();
        (0..n).find_map(|k| {
            let e = &endpoints[self.points[(start + k) % n].1 as usize];
            (!e.ejected(now_ms)).then_some(e)
        })
    }
}
