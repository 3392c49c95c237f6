//! The per-request decision of the data plane, uncontended: may the call go (breaker), and to which
//! endpoint (balancer), plus recording its outcome. Target: breaker + balancer decision <= 100 ns.
//!
//!   cargo bench -p reskflow-sidecar --bench decision

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use reskflow_sidecar::balance::{Balancer, EndpointSpec, LbConfig, Locality, PickContext, Policy};
use reskflow_sidecar::breaker::{Breaker, BreakerConfig, Outcome, WindowType};

fn endpoints(n: usize) -> Vec<EndpointSpec> {
    (0..n)
        .map(|i| EndpointSpec {
            id: format!("instance-{i}"),
            address: format!("10.0.{}.{}", i / 250, i % 250),
            port: 8080,
            scheme: "http".into(),
            weight: 1 + (i % 3) as u32,
            region: "eu".into(),
            zone: format!("z{}", i % 3),
        })
        .collect()
}

fn balancer(policy: Policy, n: usize) -> Balancer {
    let config = LbConfig { policy, hash_header: Some("x-user".into()), zone_aware: false };
    Balancer::new(config, &endpoints(n), &Locality::default(), None)
}

fn bench(c: &mut Criterion) {
    let breaker = Breaker::new(BreakerConfig::default());
    c.bench_function("breaker: acquire + record (closed, count window)", |b| {
        b.iter(|| {
            let permit = breaker.try_acquire().expect("closed");
            breaker.record(permit, Outcome::Success, Duration::from_millis(2));
        })
    });
    let timed = Breaker::new(BreakerConfig { sliding_window_type: WindowType::TimeBased, ..BreakerConfig::default() });
    c.bench_function("breaker: acquire + record (closed, time window)", |b| {
        b.iter(|| {
            let permit = timed.try_acquire().expect("closed");
            timed.record(permit, Outcome::Success, Duration::from_millis(2));
        })
    });

    for (name, policy) in [
        ("round robin", Policy::RoundRobin),
        ("weighted", Policy::Weighted),
        ("random", Policy::Random),
        ("least request (p2c peak-ewma)", Policy::LeastRequest),
    ] {
        for n in [3, 1_000] {
            let lb = balancer(policy, n);
            c.bench_function(&format!("pick: {name}, {n} endpoints"), |b| {
                b.iter(|| black_box(lb.pick(PickContext { hash_key: None, now_ms: 1 })))
            });
        }
    }
    let ring = balancer(Policy::RingHash, 1_000);
    c.bench_function("pick: ring hash, 1000 endpoints", |b| {
        b.iter(|| black_box(ring.pick(PickContext { hash_key: Some(black_box(b"user-12345")), now_ms: 1 })))
    });

    // The whole decision a proxy makes per request.
    let lb = balancer(Policy::LeastRequest, 100);
    c.bench_function("decision: breaker acquire + p2c pick + record, 100 endpoints", |b| {
        b.iter(|| {
            let permit = breaker.try_acquire().expect("closed");
            let now = breaker.now_ms();
            let endpoint = lb.pick(PickContext { hash_key: None, now_ms: now }).expect("endpoint");
            endpoint.start();
            endpoint.finish(Duration::from_millis(2), now);
            breaker.record(permit, Outcome::Success, Duration::from_millis(2));
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
