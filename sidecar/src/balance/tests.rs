use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::*;

fn spec(id: &str, weight: u32, zone: &str) -> EndpointSpec {
    EndpointSpec {
        id: id.into(),
        address: "10.0.0.1".into(),
        port: 80,
        scheme: "http".into(),
        weight,
        region: "eu".into(),
        zone: zone.into(),
    }
}

fn three() -> Vec<EndpointSpec> {
    vec![spec("a", 1, "z1"), spec("b", 1, "z2"), spec("c", 1, "z2")]
}

fn lb(policy: LbPolicy, specs: &[EndpointSpec]) -> Balancer {
    Balancer::new(LbConfig { policy, ..LbConfig::default() }, specs, &Locality::default(), None)
}

fn picks(b: &Balancer, n: usize, cx: PickContext<'_>) -> HashMap<String, usize> {
    let mut out = HashMap::new();
    for _ in 0..n {
        let e = b.pick(cx).expect("an endpoint");
        *out.entry(e.spec.id.clone()).or_default() += 1;
    }
    out
}

fn eject(e: &Endpoint, until_ms: u64) {
    e.outlier.ejected_until_ms.store(until_ms, Ordering::Relaxed);
}

#[test]
fn round_robin_takes_turns_and_skips_ejected_endpoints() {
    let b = lb(LbPolicy::RoundRobin, &three());
    let order: Vec<_> = (0..6).map(|_| b.pick(PickContext::default()).expect("one").spec.id.clone()).collect();
    assert_eq!(order, ["a", "b", "c", "a", "b", "c"]);
    eject(&b.endpoints()[1], 1_000);
    let counts = picks(&b, 100, PickContext { now_ms: 10, ..Default::default() });
    assert_eq!(counts.get("b"), None);
    assert!(b.pick(PickContext { now_ms: 1_000, ..Default::default() }).is_some());
}

#[test]
fn weighted_follows_the_weights() {
    let b = lb(LbPolicy::Weighted, &[spec("a", 3, ""), spec("b", 1, "")]);
    let counts = picks(&b, 400, PickContext::default());
    assert_eq!((counts["a"], counts["b"]), (300, 100));
}

#[test]
fn random_reaches_every_endpoint() {
    let counts = picks(&lb(LbPolicy::Random, &three()), 3_000, PickContext::default());
    assert!(counts.values().all(|&n| n > 700), "{counts:?}");
}

#[test]
fn least_request_prefers_the_fast_and_idle_endpoint() {
    let b = lb(LbPolicy::LeastRequest, &three());
    let [a, slow, busy] = [&b.endpoints()[0], &b.endpoints()[1], &b.endpoints()[2]];
    a.start();
    a.finish(Duration::from_millis(1), 1);
    slow.start();
    slow.finish(Duration::from_millis(500), 1);
    for _ in 0..5 {
        busy.start();
    }
    // a wins whenever it is one of the two choices (2 pairs in 3); the slowest never wins.
    let counts = picks(&b, 3_000, PickContext::default());
    assert!(counts["a"] > 1_800, "{counts:?}");
    assert_eq!(counts.get("b"), None, "{counts:?}");
}

#[test]
fn peak_ewma_takes_slow_answers_at_once_and_forgets_them_slowly() {
    let e = Endpoint::new(spec("a", 1, ""));
    e.start();
    e.finish(Duration::from_millis(200), 0);
    assert_eq!(e.rtt_ns(), 200e6);
    e.start();
    e.finish(Duration::from_millis(10), 10_000);
    let after = e.rtt_ns();
    assert!(after < 200e6 && after > 10e6, "blended after 10 s: {after}");
    assert_eq!(e.in_flight(), 0);
}

#[test]
fn ring_hash_sends_a_key_to_one_endpoint_and_moves_few_keys_when_one_goes() {
    let cfg = LbConfig { policy: LbPolicy::RingHash, hash_header: Some("x-user".into()), zone_aware: false };
    let before = Balancer::new(cfg.clone(), &three(), &Locality::default(), None);
    let key = |i: usize| format!("user-{i}");
    let owner = |b: &Balancer, i: usize| {
        let k = key(i);
        b.pick(PickContext { hash_key: Some(k.as_bytes()), now_ms: 0 }).expect("one").spec.id.clone()
    };
    let first: Vec<_> = (0..1_000).map(|i| owner(&before, i)).collect();
    assert_eq!(first, (0..1_000).map(|i| owner(&before, i)).collect::<Vec<_>>(), "stable");
    let per: HashMap<&str, usize> = first.iter().fold(HashMap::new(), |mut m, id| {
        *m.entry(id.as_str()).or_default() += 1;
        m
    });
    assert!(per.values().all(|&n| n > 200), "spread: {per:?}");
    let after = Balancer::new(cfg, &three()[..2], &Locality::default(), Some(&before));
    let moved = (0..1_000).filter(|&i| first[i] != "c" && owner(&after, i) != first[i]).count();
    assert_eq!(moved, 0, "only c's keys move");
    // An ejected owner's keys go to the next endpoint on the ring.
    eject(&after.endpoints()[0], 100);
    assert!((0..100).all(|i| {
        let k = key(i);
        after.pick(PickContext { hash_key: Some(k.as_bytes()), now_ms: 0 }).expect("one").spec.id == "b"
    }));
}

#[test]
fn zone_aware_prefers_the_local_zone_while_it_has_an_endpoint() {
    let here = Locality { region: "eu".into(), zone: "z2".into() };
    let cfg = LbConfig { zone_aware: true, ..LbConfig::default() };
    let b = Balancer::new(cfg, &three(), &here, None);
    let counts = picks(&b, 100, PickContext::default());
    assert_eq!(counts.get("a"), None, "{counts:?}");
    eject(&b.endpoints()[1], 1_000);
    eject(&b.endpoints()[2], 1_000);
    let counts = picks(&b, 10, PickContext::default());
    assert_eq!(counts.get("a"), Some(&10), "falls back to other zones");
}

#[test]
fn a_new_config_keeps_the_stats_of_known_endpoints() {
    let before = lb(LbPolicy::RoundRobin, &three());
    before.endpoints()[0].start();
    let after = Balancer::new(LbConfig::default(), &three()[..1], &Locality::default(), Some(&before));
    assert_eq!(after.endpoints()[0].in_flight(), 1);
    let moved = spec("a", 1, "z9");
    let changed = Balancer::new(LbConfig::default(), &[moved], &Locality::default(), Some(&before));
    assert_eq!(changed.endpoints()[0].in_flight(), 0, "a changed endpoint starts afresh");
}

#[test]
fn no_endpoint_means_no_pick() {
    assert!(lb(LbPolicy::LeastRequest, &[]).pick(PickContext::default()).is_none());
    assert!(lb(LbPolicy::RingHash, &[]).pick(PickContext { hash_key: Some(b"k"), now_ms: 0 }).is_none());
}

#[test]
fn when_every_endpoint_is_ejected_traffic_goes_to_all_of_them() {
    for policy in [LbPolicy::RoundRobin, LbPolicy::LeastRequest, LbPolicy::Weighted, LbPolicy::Random] {
        let b = lb(policy, &three());
        for e in b.endpoints() {
            eject(e, 1_000);
        }
        let counts = picks(&b, 300, PickContext { now_ms: 10, ..Default::default() });
        assert_eq!(counts.len(), 3, "{policy:?}: {counts:?}");
    }
}
