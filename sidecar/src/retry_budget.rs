//! A retry budget as Finagle and linkerd keep it: over the last 10 seconds, retries may add at most
//! `ratio` of the requests, plus a floor of `min_per_second` so a quiet service can still retry.
//! Counts live in ten one-second slots of atomics: a request costs one clock read (already made)
//! and one `fetch_add`, no lock; only a retry sums the slots.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

const SLOTS: usize = 10;
const SLOT_MS: u64 = 1_000;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    slots: [Slot; SLOTS],
}

#[derive(Debug, Default)]
struct Slot {
    /// Which second (clock ms / 1,000) the counts are for; +1 so 0 means never used.
    second: AtomicU64,
    requests: AtomicU32,
    retries: AtomicU32,
}

impl RetryBudget {
    /// `ratio` is a fraction (0.2 = retries may add 20% to the requests).
    pub fn new(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget { ratio: ratio.max(0.0), min_per_second, slots: Default::default() }
    }

    fn slot(&self, now_ms: u64) -> &Slot {
        let second = now_ms / SLOT_MS + 1;
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let seen = slot.second.load(Ordering::Relaxed);
        if seen != second && slot.second.compare_exchange(seen, second, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            // This thread moved the slot on to a new second; counts of another thread racing on
            // the old second may land in it, which errs by a request or two.
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// A request that could be retried is being sent.
    pub fn deposit(&self, now_ms: u64) {
        self.slot(now_ms).requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Asks for one retry; true (and counted) if the budget allows it.
    pub fn withdraw(&self, now_ms: u64) -> bool {
        let current = now_ms / SLOT_MS + 1;
        let (mut requests, mut retries) = (0u64, 0u64);
        for slot in &self.slots {
            let second = slot.second.load(Ordering::Relaxed);
            if second != 0 && current.saturating_sub(second) < SLOTS as u64 {
                requests += u64::from(slot.requests.load(Ordering::Relaxed));
                retries += u64::from(slot.retries.load(Ordering::Relaxed));
            }
        }
        let allowed = requests as f64 * self.ratio + f64::from(self.min_per_second) * SLOTS as f64;
        if (retries as f64) < allowed.floor() {
            self.slot(now_ms).retries.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_allows_min_per_second_times_window() {
        let budget = RetryBudget::new(0.0, 1);
        let allowed = (0..20).filter(|_| budget.withdraw(5_000)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn ratio_of_requests() {
        let budget = RetryBudget::new(0.2, 0);
        for _ in 0..100 {
            budget.deposit(1_000);
        }
        let allowed = (0..100).filter(|_| budget.withdraw(1_500)).count();
        assert_eq!(allowed, 20);
    }

    #[test]
    fn old_seconds_fall_out_of_the_window() {
        let budget = RetryBudget::new(0.5, 0);
        for _ in 0..10 {
            budget.deposit(0);
        }
        assert!(budget.withdraw(100));
        // Eleven seconds later the deposits (and the retry) are gone.
        assert!(!budget.withdraw(11_000));
        for _ in 0..4 {
            budget.deposit(11_000);
        }
        assert!(budget.withdraw(11_200));
        assert!(budget.withdraw(11_300));
        assert!(!budget.withdraw(11_400));
    }
}
