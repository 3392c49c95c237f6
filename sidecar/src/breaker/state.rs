//! The breaker's decisions: whether a call may go, and what its outcome does to the state. The
//! hot path takes no lock: the state, its generation and when it began share one atomic word that
//! transitions replace with a compare-and-swap, so exactly one caller performs each transition;
//! the half-open probes are counted in a second word tagged with the generation they belong to.
//!
//! ```text
//! CLOSED --failure or slow-call rate >= threshold (at least minimumNumberOfCalls)--> OPEN
//! OPEN --waitDurationInOpenState passed (at the next call or read)--> HALF_OPEN
//! HALF_OPEN --permitted probes done, rates below thresholds--> CLOSED
//! HALF_OPEN --rates at thresholds, or maxWaitDurationInHalfOpenState passed--> OPEN
//! any --force_open / disable / reset--> FORCED_OPEN / DISABLED / CLOSED
//! ```
//!
//! A call carries the generation it was admitted in; its outcome is ignored by the window if the
//! breaker moved on meanwhile (a slow call admitted while CLOSED does not count against HALF_OPEN).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

use super::window::{rate, Snapshot, Window};
use reskflow_proto::policy::{BreakerConfig, FailureKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
    ForcedOpen,
    Disabled,
}

impl State {
    fn code(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
            State::ForcedOpen => 3,
            State::Disabled => 4,
        }
    }

    fn from_code(code: u64) -> State {
        match code {
            1 => State::Open,
            2 => State::HalfOpen,
            3 => State::ForcedOpen,
            4 => State::Disabled,
            _ => State::Closed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "CLOSED",
            State::Open => "OPEN",
            State::HalfOpen => "HALF_OPEN",
            State::ForcedOpen => "FORCED_OPEN",
            State::Disabled => "DISABLED",
        }
    }
}

/// [since_ms:40][generation:20][state:4]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Word {
    state: State,
    generation: u32,
    since_ms: u64,
}

const GEN_MASK: u64 = (1 << 20) - 1;

impl Word {
    fn pack(self) -> u64 {
        (self.since_ms << 24) | ((u64::from(self.generation) & GEN_MASK) << 4) | self.state.code()
    }

    fn unpack(word: u64) -> Word {
        Word { state: State::from_code(word & 0xF), generation: ((word >> 4) & GEN_MASK) as u32, since_ms: word >> 24 }
    }

    fn next(self, state: State, now_ms: u64) -> Word {
        Word { state, generation: (self.generation + 1) & GEN_MASK as u32, since_ms: now_ms & ((1 << 40) - 1) }
    }
}

/// Half-open probes: [generation:20][issued:11][done:11][failed:11][slow:11].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Probes {
    generation: u32,
    issued: u32,
    done: u32,
    failed: u32,
    slow: u32,
}

const F11: u64 = (1 << 11) - 1;

impl Probes {
    fn pack(self) -> u64 {
        (u64::from(self.generation) << 44)
            | ((u64::from(self.issued) & F11) << 33)
            | ((u64::from(self.done) & F11) << 22)
            | ((u64::from(self.failed) & F11) << 11)
            | (u64::from(self.slow) & F11)
    }

    fn unpack(word: u64) -> Probes {
        Probes {
            generation: (word >> 44) as u32,
            issued: ((word >> 33) & F11) as u32,
            done: ((word >> 22) & F11) as u32,
            failed: ((word >> 11) & F11) as u32,
            slow: (word & F11) as u32,
        }
    }
}

/// A call's admission: hand it back to [`Breaker::record`] with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "record the outcome with Breaker::record"]
pub struct Permit {
    generation: u32,
    probe: bool,
}

/// A call the breaker refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub state: State,
    /// When a call may be admitted again, if the breaker knows (OPEN).
    pub retry_after: Option<Duration>,
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(FailureKind),
}

/// Counters since start (or the last reset).
#[derive(Debug, Default)]
struct Counters {
    successful: AtomicU64,
    failed: AtomicU64,
    slow: AtomicU64,
    not_permitted: AtomicU64,
    transitions: AtomicU64,
}

/// What operators and the control plane see of a breaker.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    pub state: State,
    /// Percent over the window; -1 until the window holds `minimumNumberOfCalls`.
    pub failure_rate: f32,
    pub slow_call_rate: f32,
    pub buffered_calls: u32,
    pub failed_calls_in_window: u32,
    pub slow_calls_in_window: u32,
    pub successful_calls: u64,
    pub failed_calls: u64,
    pub slow_calls: u64,
    pub not_permitted_calls: u64,
    pub transitions: u64,
}

pub struct Breaker {
    config: BreakerConfig,
    word: AtomicU64,
    probes: AtomicU64,
    window: Window,
    counters: Counters,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("state", &self.state()).finish_non_exhaustive()
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

impl Breaker {
    /// A CLOSED breaker. `config` should have passed [`BreakerConfig::problems`].
    pub fn new(config: BreakerConfig) -> Breaker {
        let window = Window::new(&config);
        let start = Word { state: State::Closed, generation: 0, since_ms: 0 };
        Breaker {
            config,
            word: AtomicU64::new(start.pack()),
            probes: AtomicU64::new(0),
            window,
            counters: Counters::default(),
        }
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// Milliseconds on the data plane's clock ([`crate::clock`]).
    pub fn now_ms(&self) -> u64 {
        crate::clock::now_ms()
    }

    pub fn state(&self) -> State {
        self.state_at(self.now_ms())
    }

    /// The state as the next call would see it (OPEN turns HALF_OPEN once its wait is over).
    pub fn state_at(&self, now_ms: u64) -> State {
        let w = Word::unpack(self.word.load(Ordering::Acquire));
        if w.state == State::Open && now_ms >= w.since_ms + ms(self.config.wait_duration_in_open_state) {
            return State::HalfOpen;
        }
        w.state
    }

    pub fn try_acquire(&self) -> Result<Permit, Rejected> {
        self.try_acquire_at(self.now_ms())
    }

    pub fn try_acquire_at(&self, now_ms: u64) -> Result<Permit, Rejected> {
        loop {
            let raw = self.word.load(Ordering::Acquire);
            let w = Word::unpack(raw);
            match w.state {
                State::Closed | State::Disabled => return Ok(Permit { generation: w.generation, probe: false }),
                State::ForcedOpen => return Err(self.reject(State::ForcedOpen, None)),
                State::Open => {
                    let until = w.since_ms + ms(self.config.wait_duration_in_open_state);
                    if now_ms < until {
                        return Err(self.reject(State::Open, Some(Duration::from_millis(until - now_ms))));
                    }
                    self.transition(raw, w.next(State::HalfOpen, now_ms));
                }
                State::HalfOpen => {
                    let max_wait = self.config.max_wait_duration_in_half_open_state;
                    if !max_wait.is_zero() && now_ms >= w.since_ms + ms(max_wait) {
                        self.transition(raw, w.next(State::Open, now_ms));
                        continue;
                    }
                    match self.take_probe(w.generation) {
                        Some(permit) => return Ok(permit),
                        None => return Err(self.reject(State::HalfOpen, None)),
                    }
                }
            }
        }
    }

    fn reject(&self, state: State, retry_after: Option<Duration>) -> Rejected {
        self.counters.not_permitted.fetch_add(1, Ordering::Relaxed);
        Rejected { state, retry_after }
    }

    /// One of the permitted half-open probes of `generation`, if any is left.
    fn take_probe(&self, generation: u32) -> Option<Permit> {
        let permitted = self.config.permitted_number_of_calls_in_half_open_state;
        self.probes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |raw| {
                let mut p = Probes::unpack(raw);
                if p.generation != generation {
                    p = Probes { generation, issued: 0, done: 0, failed: 0, slow: 0 };
                }
                (p.issued < permitted).then(|| Probes { issued: p.issued + 1, ..p }.pack())
            })
            .ok()
            .map(|_| Permit { generation, probe: true })
    }

    /// Replaces the state word if it is still `from`; true if this caller made the transition.
    fn transition(&self, from: u64, to: Word) -> bool {
        let done = self.word.compare_exchange(from, to.pack(), Ordering::AcqRel, Ordering::Acquire).is_ok();
        if done {
            self.counters.transitions.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(to = to.state.as_str(), "circuit breaker transition");
        }
        done
    }

    pub fn record(&self, permit: Permit, outcome: Outcome, elapsed: Duration) {
        self.record_at(permit, outcome, elapsed, self.now_ms())
    }

    pub fn record_at(&self, permit: Permit, outcome: Outcome, elapsed: Duration, now_ms: u64) {
        let failed = match outcome {
            Outcome::Success => false,
            Outcome::Failure(kind) => self.config.counts_as_failure(kind),
        };
        let slow = elapsed >= self.config.slow_call_duration_threshold;
        let counter = if failed { &self.counters.failed } else { &self.counters.successful };
        counter.fetch_add(1, Ordering::Relaxed);
        if slow {
            self.counters.slow.fetch_add(1, Ordering::Relaxed);
        }
        let raw = self.word.load(Ordering::Acquire);
        let w = Word::unpack(raw);
        if w.generation != permit.generation {
            return; // the breaker moved on since this call was admitted
        }
        match (w.state, permit.probe) {
            (State::Closed, false) => {
                let Some(totals) = self.window.record(failed, slow, now_ms) else { return };
                if self.tripped(totals) {
                    self.transition(raw, w.next(State::Open, now_ms));
                }
            }
            (State::HalfOpen, true) => self.record_probe(raw, w, failed, slow, now_ms),
            _ => {}
        }
    }

    fn tripped(&self, totals: Snapshot) -> bool {
        totals.calls >= self.config.minimum_number_of_calls
            && (totals.failure_rate() >= self.config.failure_rate_threshold
                || totals.slow_rate() >= self.config.slow_call_rate_threshold)
    }

    fn record_probe(&self, raw: u64, w: Word, failed: bool, slow: bool, now_ms: u64) {
        let updated = self.probes.fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
            let p = Probes::unpack(old);
            (p.generation == w.generation).then(|| {
                Probes { done: p.done + 1, failed: p.failed + u32::from(failed), slow: p.slow + u32::from(slow), ..p }
                    .pack()
            })
        });
        let Ok(old) = updated else { return };
        let p = Probes::unpack(old);
        let (done, failed, slow) = (p.done + 1, p.failed + u32::from(failed), p.slow + u32::from(slow));
        if done < self.config.permitted_number_of_calls_in_half_open_state {
            return;
        }
        let bad = rate(failed, done) >= self.config.failure_rate_threshold
            || rate(slow, done) >= self.config.slow_call_rate_threshold;
        if bad {
            self.transition(raw, w.next(State::Open, now_ms));
        } else {
            // Empty the window before CLOSED admits calls that record into it.
            self.window.reset();
            self.transition(raw, w.next(State::Closed, now_ms));
        }
    }

    /// Back to CLOSED with an empty window (an operator's reset).
    pub fn reset(&self) {
        self.set(State::Closed);
    }

    pub fn force_open(&self) {
        self.set(State::ForcedOpen);
    }

    pub fn disable(&self) {
        self.set(State::Disabled);
    }

    fn set(&self, state: State) {
        let now = self.now_ms();
        self.window.reset();
        let _ = self
            .word
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |raw| Some(Word::unpack(raw).next(state, now).pack()));
        self.counters.transitions.fetch_add(1, Ordering::Relaxed);
    }

    pub fn metrics(&self) -> Metrics {
        let now = self.now_ms();
        let window = self.window.snapshot(now);
        let enough = window.calls >= self.config.minimum_number_of_calls;
        let c = &self.counters;
        Metrics {
            state: self.state_at(now),
            failure_rate: if enough { window.failure_rate() } else { -1.0 },
            slow_call_rate: if enough { window.slow_rate() } else { -1.0 },
            buffered_calls: window.calls,
            failed_calls_in_window: window.failed,
            slow_calls_in_window: window.slow,
            successful_calls: c.successful.load(Ordering::Relaxed),
            failed_calls: c.failed.load(Ordering::Relaxed),
            slow_calls: c.slow.load(Ordering::Relaxed),
            not_permitted_calls: c.not_permitted.load(Ordering::Relaxed),
            transitions: c.transitions.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
