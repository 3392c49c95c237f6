use std::time::Duration;

use super::*;
use crate::breaker::{BreakerConfig, FailureKind, WindowType};

const FAST: Duration = Duration::from_millis(5);
const FAIL: Outcome = Outcome::Failure(FailureKind::ServerError);

fn breaker() -> Breaker {
    Breaker::new(BreakerConfig {
        sliding_window_size: 10,
        minimum_number_of_calls: 5,
        failure_rate_threshold: 50.0,
        slow_call_rate_threshold: 80.0,
        slow_call_duration_threshold: Duration::from_millis(100),
        wait_duration_in_open_state: Duration::from_secs(1),
        permitted_number_of_calls_in_half_open_state: 2,
        ..BreakerConfig::default()
    })
}

fn call(b: &Breaker, outcome: Outcome, elapsed: Duration, now: u64) -> Result<(), Rejected> {
    let permit = b.try_acquire_at(now)?;
    b.record_at(permit, outcome, elapsed, now);
    Ok(())
}

#[test]
fn opens_once_the_failure_rate_reaches_the_threshold_over_the_minimum_calls() {
    let b = breaker();
    for _ in 0..4 {
        call(&b, FAIL, FAST, 0).expect("closed");
    }
    assert_eq!(b.state_at(0), State::Closed, "4 calls are under minimumNumberOfCalls");
    call(&b, Outcome::Success, FAST, 0).expect("closed");
    assert_eq!(b.state_at(0), State::Open, "4 of 5 failed");
    let rejected = b.try_acquire_at(10).expect_err("open");
    assert_eq!(rejected, Rejected { state: State::Open, retry_after: Some(Duration::from_millis(990)) });
    assert_eq!(b.metrics().not_permitted_calls, 1);
}

#[test]
fn failures_below_the_threshold_keep_it_closed() {
    let b = breaker();
    for i in 0..20 {
        let outcome = if i % 3 == 0 { FAIL } else { Outcome::Success };
        call(&b, outcome, FAST, 0).expect("closed");
    }
    assert_eq!(b.state_at(0), State::Closed);
}

#[test]
fn slow_calls_open_it_too() {
    let b = breaker();
    for _ in 0..5 {
        call(&b, Outcome::Success, Duration::from_millis(150), 0).expect("closed");
    }
    assert_eq!(b.state_at(0), State::Open);
    assert_eq!(b.metrics().slow_calls, 5);
}

#[test]
fn client_errors_are_not_failures_by_default() {
    let b = breaker();
    for _ in 0..10 {
        call(&b, Outcome::Failure(FailureKind::ClientError), FAST, 0).expect("closed");
    }
    assert_eq!(b.state_at(0), State::Closed);
}

#[test]
fn half_open_admits_the_permitted_probes_then_closes_when_they_succeed() {
    let b = breaker();
    for _ in 0..5 {
        call(&b, FAIL, FAST, 0).expect("closed");
    }
    assert_eq!(b.state_at(999), State::Open);
    assert_eq!(b.state_at(1_000), State::HalfOpen, "after waitDurationInOpenState");
    let first = b.try_acquire_at(1_000).expect("probe 1");
    let second = b.try_acquire_at(1_000).expect("probe 2");
    assert_eq!(b.try_acquire_at(1_000).expect_err("only 2 probes").state, State::HalfOpen);
    b.record_at(first, Outcome::Success, FAST, 1_010);
    assert_eq!(b.state_at(1_010), State::HalfOpen);
    b.record_at(second, Outcome::Success, FAST, 1_020);
    assert_eq!(b.state_at(1_020), State::Closed);
    assert_eq!(b.metrics().buffered_calls, 0, "a closed breaker starts with an empty window");
}

#[test]
fn a_failing_probe_opens_it_again() {
    let b = breaker();
    for _ in 0..5 {
        call(&b, FAIL, FAST, 0).expect("closed");
    }
    call(&b, FAIL, FAST, 1_000).expect("probe");
    call(&b, Outcome::Success, FAST, 1_000).expect("probe");
    assert_eq!(b.state_at(1_000), State::Open, "1 of 2 probes failed: 50%");
    assert!(b.try_acquire_at(1_500).is_err());
    assert!(b.try_acquire_at(2_000).is_ok(), "half-open again after another wait");
}

#[test]
fn a_late_outcome_of_an_earlier_state_does_not_count() {
    let b = breaker();
    let slow_call = b.try_acquire_at(0).expect("closed");
    for _ in 0..5 {
        call(&b, FAIL, FAST, 0).expect("closed");
    }
    call(&b, Outcome::Success, FAST, 1_000).expect("probe");
    b.record_at(slow_call, FAIL, FAST, 1_000);
    call(&b, Outcome::Success, FAST, 1_000).expect("probe");
    assert_eq!(b.state_at(1_000), State::Closed, "the late failure belonged to the closed period");
}

#[test]
fn half_open_gives_up_after_its_max_wait() {
    let b = Breaker::new(BreakerConfig {
        max_wait_duration_in_half_open_state: Duration::from_millis(500),
        ..breaker().config().clone()
    });
    for _ in 0..5 {
        call(&b, FAIL, FAST, 0).expect("closed");
    }
    let _probe = b.try_acquire_at(1_000).expect("probe");
    assert!(b.try_acquire_at(1_600).is_err(), "probes never came back: open again");
    assert_eq!(b.state_at(1_600), State::Open);
}

#[test]
fn operators_can_force_open_disable_and_reset() {
    let b = breaker();
    b.force_open();
    assert_eq!(b.try_acquire().expect_err("forced").state, State::ForcedOpen);
    b.disable();
    for _ in 0..20 {
        call(&b, FAIL, FAST, b.now_ms()).expect("disabled lets everything through");
    }
    assert_eq!(b.state(), State::Disabled);
    b.reset();
    assert_eq!(b.state(), State::Closed);
    assert_eq!(b.metrics().transitions, 3);
}

#[test]
fn a_time_based_window_forgets_old_failures() {
    let b = Breaker::new(BreakerConfig {
        sliding_window_type: WindowType::TimeBased,
        sliding_window_size: 2,
        ..breaker().config().clone()
    });
    for _ in 0..4 {
        call(&b, FAIL, FAST, 0).expect("closed");
    }
    for _ in 0..4 {
        call(&b, Outcome::Success, FAST, 5_000).expect("closed");
    }
    call(&b, FAIL, FAST, 5_000).expect("closed");
    assert_eq!(b.state_at(5_000), State::Closed, "the old failures left the window: 1 of 5 failed");
}

#[test]
fn words_round_trip() {
    let w = Word { state: State::HalfOpen, generation: 12_345, since_ms: 1 << 39 };
    assert_eq!(Word::unpack(w.pack()), w);
    let p = Probes { generation: (1 << 20) - 1, issued: 2_000, done: 1_999, failed: 3, slow: 2_047 };
    assert_eq!(Probes::unpack(p.pack()), p);
}
