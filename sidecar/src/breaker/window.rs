//! The sliding window of a CLOSED breaker: how many of the recent calls failed or were slow. Both
//! kinds are lock-free: a record is a handful of atomic operations, and concurrent records are
//! never lost (each applies its own delta), though a reader may see one record half applied.
//!
//! - count-based: a ring of the last N outcomes (one byte each) and running totals;
//! - time-based: one bucket per second for the last N seconds, each bucket two atomic words tagged
//!   with the second they count, so a bucket is recycled by the first record of a new second.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use reskflow_proto::policy::{BreakerConfig, WindowType};

/// Totals over the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub calls: u32,
    pub failed: u32,
    pub slow: u32,
}

impl Snapshot {
    pub fn failure_rate(&self) -> f32 {
        rate(self.failed, self.calls)
    }

    pub fn slow_rate(&self) -> f32 {
        rate(self.slow, self.calls)
    }
}

pub(crate) fn rate(part: u32, whole: u32) -> f32 {
    if whole == 0 {
        0.0
    } else {
        part as f32 * 100.0 / whole as f32
    }
}

pub enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub fn new(config: &BreakerConfig) -> Window {
        let size = config.sliding_window_size.max(1);
        match config.sliding_window_type {
            WindowType::CountBased => Window::Count(CountWindow::new(size)),
            WindowType::TimeBased => Window::Time(TimeWindow::new(size)),
        }
    }

    /// Records one call; returns the totals when they may have crossed a threshold (a bad call, or
    /// a good one while the window is still filling or once a second), None otherwise: a good call
    /// cannot raise a rate, so the common path does not sum the window.
    pub fn record(&self, failed: bool, slow: bool, now_ms: u64) -> Option<Snapshot> {
        match self {
            Window::Count(w) => w.record(failed, slow),
            Window::Time(w) => w.record(failed, slow, now_ms),
        }
    }

    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        match self {
            Window::Count(w) => w.snapshot(),
            Window::Time(w) => w.snapshot(now_ms),
        }
    }

    pub fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }
}

// === impl CountWindow ===

const RECORDED: u8 = 1;
const FAILED: u8 = 2;
const SLOW: u8 = 4;

pub struct CountWindow {
    next: AtomicU64,
    slots: Box<[AtomicU8]>,
    calls: AtomicU32,
    failed: AtomicU32,
    slow: AtomicU32,
}

impl CountWindow {
    fn new(size: u32) -> Self {
        CountWindow {
            next: AtomicU64::new(0),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            calls: AtomicU32::new(0),
            failed: AtomicU32::new(0),
            slow: AtomicU32::new(0),
        }
    }

    fn record(&self, failed: bool, slow: bool) -> Option<Snapshot> {
        let slot = (self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len() as u64) as usize;
        let new = RECORDED | if failed { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        let old = self.slots[slot].swap(new, Ordering::Relaxed);
        let filling = old & RECORDED == 0;
        if filling {
            self.calls.fetch_add(1, Ordering::Relaxed);
        }
        adjust(&self.failed, old & FAILED != 0, failed);
        adjust(&self.slow, old & SLOW != 0, slow);
        (failed || slow || filling).then(|| self.snapshot())
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            calls: self.calls.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            slow: self.slow.load(Ordering::Relaxed),
        }
    }

    fn reset(&self) {
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Relaxed);
        }
        self.calls.store(0, Ordering::Relaxed);
        self.failed.store(0, Ordering::Relaxed);
        self.slow.store(0, Ordering::Relaxed);
    }
}

fn adjust(counter: &AtomicU32, was: bool, is: bool) {
    match (was, is) {
        (false, true) => {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        (true, false) => {
            counter.fetch_sub(1, Ordering::Relaxed);
        }
        _ => {}
    }
}

// === impl TimeWindow ===

/// Seconds are tagged in the top 24 bits of each bucket word (they wrap after 194 days; a bucket is
/// only compared for equality with a second of the last `size`).
const EPOCH_SHIFT: u32 = 40;
const EPOCH_MASK: u64 = (1 << 24) - 1;
const LOW40: u64 = (1 << 40) - 1;
const LOW20: u64 = (1 << 20) - 1;

pub struct TimeWindow {
    /// Per second: [second:24][calls:40].
    calls: Box<[AtomicU64]>,
    /// Per second: [second:24][failed:20][slow:20].
    bad: Box<[AtomicU64]>,
}

impl TimeWindow {
    fn new(seconds: u32) -> Self {
        let empty = || (0..seconds).map(|_| AtomicU64::new(u64::MAX)).collect();
        TimeWindow { calls: empty(), bad: empty() }
    }

    fn record(&self, failed: bool, slow: bool, now_ms: u64) -> Option<Snapshot> {
        let second = now_ms / 1000;
        let tag = second & EPOCH_MASK;
        let i = (second % self.calls.len() as u64) as usize;
        let rotated = bump(&self.calls[i], tag, 1);
        if failed || slow {
            bump(&self.bad[i], tag, (u64::from(failed) << 20) | u64::from(slow));
        } else if self.bad[i].load(Ordering::Relaxed) >> EPOCH_SHIFT != tag {
            // Keep the failure word's second current, so a stale count is never summed.
            bump(&self.bad[i], tag, 0);
        }
        (failed || slow || rotated).then(|| self.snapshot(now_ms))
    }

    fn snapshot(&self, now_ms: u64) -> Snapshot {
        let second = now_ms / 1000;
        let size = self.calls.len() as u64;
        let mut out = Snapshot::default();
        for back in 0..size.min(second + 1) {
            let s = second - back;
            let tag = s & EPOCH_MASK;
            let i = (s % size) as usize;
            let calls = self.calls[i].load(Ordering::Relaxed);
            if calls >> EPOCH_SHIFT == tag {
                out.calls = out.calls.saturating_add(u32::try_from(calls & LOW40).unwrap_or(u32::MAX));
            }
            let bad = self.bad[i].load(Ordering::Relaxed);
            if bad >> EPOCH_SHIFT == tag {
                out.failed = out.failed.saturating_add(((bad >> 20) & LOW20) as u32);
                out.slow = out.slow.saturating_add((bad & LOW20) as u32);
            }
        }
        out
    }

    fn reset(&self) {
        for word in self.calls.iter().chain(self.bad.iter()) {
            word.store(u64::MAX, Ordering::Relaxed);
        }
    }
}

/// Adds `delta` to a bucket word of second `tag`, restarting it from zero if it counted another
/// second. True when this call restarted it.
fn bump(word: &AtomicU64, tag: u64, delta: u64) -> bool {
    let mut rotated = false;
    let _ = word.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
        rotated = old >> EPOCH_SHIFT != tag;
        let base = if rotated { tag << EPOCH_SHIFT } else { old };
        Some(base.wrapping_add(delta))
    });
    rotated
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(kind: WindowType, size: u32) -> BreakerConfig {
        BreakerConfig { sliding_window_type: kind, sliding_window_size: size, ..BreakerConfig::default() }
    }

    #[test]
    fn a_count_window_forgets_the_oldest_call() {
        let w = Window::new(&config(WindowType::CountBased, 3));
        w.record(true, false, 0);
        w.record(false, true, 0);
        w.record(false, false, 0);
        assert_eq!(w.snapshot(0), Snapshot { calls: 3, failed: 1, slow: 1 });
        // The failed call falls out; a good call is not summed, but the totals are right.
        assert_eq!(w.record(false, false, 0), None);
        assert_eq!(w.snapshot(0), Snapshot { calls: 3, failed: 0, slow: 1 });
        w.reset();
        assert_eq!(w.snapshot(0), Snapshot::default());
    }

    #[test]
    fn a_time_window_counts_only_the_last_seconds() {
        let w = Window::new(&config(WindowType::TimeBased, 2));
        w.record(true, false, 500);
        w.record(false, false, 900);
        assert_eq!(w.snapshot(900), Snapshot { calls: 2, failed: 1, slow: 0 });
        w.record(false, true, 1_200);
        assert_eq!(w.snapshot(1_200), Snapshot { calls: 3, failed: 1, slow: 1 });
        // Second 0 leaves the window at second 2; its bucket is reused.
        w.record(false, false, 2_100);
        assert_eq!(w.snapshot(2_100), Snapshot { calls: 2, failed: 0, slow: 1 });
        assert_eq!(w.snapshot(10_000), Snapshot::default(), "nothing recent");
    }

    #[test]
    fn concurrent_records_are_not_lost() {
        let w = std::sync::Arc::new(Window::new(&config(WindowType::CountBased, 100_000)));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        w.record((i + t) % 4 == 0, false, 0);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(w.snapshot(0), Snapshot { calls: 40_000, failed: 10_000, slow: 0 });
    }
}
