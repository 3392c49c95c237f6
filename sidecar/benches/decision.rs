//! The per-request decision of the data plane, uncontended: may the call go (breaker), and to which
//! endpoint (balancer), plus recording its outcome. Target: breaker + balancer decision <= 100 ns.
//!
//!   cargo bench -p reskflow-sidecar --bench decision

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use reskflow_sidecar::balance::{Balancer, EndpointSpec, LbConfig, LbPolicy, Locality, PickContext};
use reskflow_sidecar::breaker::{Breaker, BreakerConfig, Outcome, WindowType};
use reskflow_sidecar::clock;

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

fn balancer(policy: LbPolicy, n: usize) -> Balancer {
    let config = LbConfig { policy, hash_header: Some("x-user".into()), zone_aware: false };
    Balancer::new(config, &endpoints(n), &Locality::default(), None)
}

fn bench(c: &mut Criterion) {
    c.bench_function("clock: now_ms", |b| b.iter(|| black_box(clock::now_ms())));
    let breaker = Breaker::new(BreakerConfig::default());
    c.bench_function("breaker: acquire + record (closed, count window), one clock read", |b| {
        b.iter(|| {
            let now = clock::now_ms();
            let permit = breaker.try_acquire_at(now).expect("closed");
            breaker.record_at(permit, Outcome::Success, Duration::from_millis(2), now);
        })
    });
    let timed = Breaker::new(BreakerConfig { sliding_window_type: WindowType::TimeBased, ..BreakerConfig::default() });
    c.bench_function("breaker: acquire + record (closed, time window), one clock read", |b| {
        b.iter(|| {
            let now = clock::now_ms();
            let permit = timed.try_acquire_at(now).expect("closed");
            timed.record_at(permit, Outcome::Success, Duration::from_millis(2), now);
        })
    });

    for (name, policy) in [
        ("round robin", LbPolicy::RoundRobin),
        ("weighted", LbPolicy::Weighted),
        ("random", LbPolicy::Random),
        ("least request (p2c peak-ewma)", LbPolicy::LeastRequest),
    ] {
        for n in [3, 1_000] {
            let lb = balancer(policy, n);
            c.bench_function(&format!("pick: {name}, {n} endpoints"), |b| {
                b.iter(|| black_box(lb.pick(PickContext { hash_key: None, now_ms: 1 })))
            });
        }
    }
    let ring = balancer(LbPolicy::RingHash, 1_000);
    c.bench_function("pick: ring hash, 1000 endpoints", |b| {
        b.iter(|| black_box(ring.pick(PickContext { hash_key: Some(black_box(b"user-12345")), now_ms: 1 })))
    });

    // The decision a proxy makes before sending a request: one clock read, the breaker, the pick.
    let lb = balancer(LbPolicy::LeastRequest, 100);
    c.bench_function("decision: clock + breaker acquire + p2c pick, 100 endpoints", |b| {
        b.iter(|| {
            let now = clock::now_ms();
            let permit = breaker.try_acquire_at(now).expect("closed");
            let endpoint = lb.pick(PickContext { hash_key: None, now_ms: now }).expect("endpoint");
            let _ = black_box((permit, endpoint));
        })
    });
    // And the whole round: decision, then the outcome recorded in the endpoint and the breaker.
    c.bench_function("decision + outcome: clock x2, breaker, p2c, ewma, record, 100 endpoints", |b| {
        b.iter(|| {
            let now = clock::now_ms();
            let permit = breaker.try_acquire_at(now).expect("closed");
            let endpoint = lb.pick(PickContext { hash_key: None, now_ms: now }).expect("endpoint");
            endpoint.start();
            let end = clock::now_ms();
            endpoint.finish(Duration::from_millis(2), end);
            breaker.record_at(permit, Outcome::Success, Duration::from_millis(2), end);
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
