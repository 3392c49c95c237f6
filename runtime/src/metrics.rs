//! Metrics helpers every binary uses: a lock-free latency histogram (atomics, log buckets) with
//! percentiles, and Prometheus text rendering with conventional names (`_seconds`, `_bucket`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Latency buckets: exact below 8 µs, then 8 per power of two (at most 12.5% wide), up to ~67 s.
const SUB: u64 = 8;
const BUCKETS: usize = 200;

#[derive(Debug)]
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(), sum_us: AtomicU64::new(0) }
    }
}

fn bucket(us: u64) -> usize {
    if us < SUB {
        return us as usize;
    }
    let p = 63 - u64::from(us.leading_zeros()); // >= 3
    let m = us >> (p - 3); // 8..=15
    (((p - 2) * SUB + m - SUB) as usize).min(BUCKETS - 1)
}

/// The largest value (µs) bucket `i` holds.
fn upper(i: usize) -> u64 {
    let i = i as u64;
    if i < SUB {
        return i;
    }
    let p = i / SUB + 2;
    let m = i % SUB + SUB;
    ((m + 1) << (p - 3)) - 1
}

impl Histogram {
    pub fn record(&self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<u64> {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    /// The `q` quantile in µs (the upper bound of its bucket); None when empty.
    pub fn quantile(counts: &[u64], q: f64) -> Option<u64> {
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(upper(i));
            }
        }
        Some(upper(BUCKETS - 1))
    }
}

impl Histogram {
    /// The sum of recorded values, in µs.
    pub fn sum_us(&self) -> u64 {
        self.sum_us.load(Ordering::Relaxed)
    }

    /// Records the time until the returned guard is dropped.
    pub fn time(&self) -> Timer<'_> {
        Timer { histogram: self, started: Instant::now() }
    }

    /// Prometheus histogram lines (`<name>_bucket`, `_sum`, `_count`, in seconds) with `labels`
    /// (`key="value",...`, or empty); the `# TYPE` line is the caller's.
    pub fn prometheus(&self, out: &mut String, name: &str, labels: &str) {
        const LE: [f64; 14] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        let counts = self.snapshot();
        let sep = if labels.is_empty() { "" } else { "," };
        for le in LE {
            let bound = (le * 1e6) as u64;
            let n: u64 = counts.iter().enumerate().filter(|(i, _)| upper(*i) <= bound).map(|(_, c)| c).sum();
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {n}");
        }
        let total: u64 = counts.iter().sum();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_us() as f64 / 1e6;
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}");
            let _ = writeln!(out, "{name}_count {total}");
        } else {
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
        }
    }
}

/// Records the time from `Histogram::time` to its drop.
pub struct Timer<'a> {
    histogram: &'a Histogram,
    started: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.record(self.started.elapsed());
    }
}

/// `# HELP` and `# TYPE` lines.
pub fn describe(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A metric of one sample without labels: its `# HELP` and `# TYPE` lines, then `name value`.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    describe(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_within_an_eighth() {
        for us in [0u64, 1, 7, 8, 9, 15, 16, 17, 100, 1_000, 12_345, 1_000_000, 60_000_000] {
            let i = bucket(us);
            assert!(upper(i) >= us, "{us} in bucket {i} (upper {})", upper(i));
            assert!(i == 0 || upper(i - 1) < us, "{us}: bucket {i} is the first to hold it");
            assert!(upper(i) as f64 <= us as f64 * 1.125 + 1.0, "{us}: upper {}", upper(i));
        }
    }

    #[test]
    fn quantiles_of_a_known_spread() {
        let h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let counts = h.snapshot();
        let p50 = Histogram::quantile(&counts, 0.5).expect("p50") as f64 / 1000.0;
        let p99 = Histogram::quantile(&counts, 0.99).expect("p99") as f64 / 1000.0;
        assert!((50.0..=57.0).contains(&p50), "{p50}");
        assert!((99.0..=112.0).contains(&p99), "{p99}");
        assert_eq!(Histogram::quantile(&[0; BUCKETS], 0.5), None);
        let mut text = String::new();
        h.prometheus(&mut text, "x_seconds", "route=\"a\"");
        assert!(text.contains("x_seconds_bucket{route=\"a\",le=\"0.25\"} 100"), "{text}");
        assert!(text.contains("x_seconds_count{route=\"a\"} 100"), "{text}");
    }
}
