//! Load generators for the benchmarks in this folder (`bench/README.md` says how each is run).

/// The value at quantile `q` (0..=1) of sorted samples.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Collects fan-out delays (ms) until `expected` arrived or 10 s passed, and prints the RESULT line
/// both fan-out benchmarks print.
pub async fn report_fanout(rx: &mut tokio::sync::mpsc::UnboundedReceiver<f64>, streams: usize, changes: usize) {
    let expected = streams * changes;
    let mut samples = Vec::with_capacity(expected);
    let deadline = tokio::time::sleep(std::time::Duration::from_secs(10));
    tokio::pin!(deadline);
    while samples.len() < expected {
        tokio::select! {
            Some(ms) = rx.recv() => samples.push(ms),
            _ = &mut deadline => break,
        }
    }
    samples.sort_by(f64::total_cmp);
    let q = |p| quantile(&samples, p);
    println!(
        "RESULT streams={streams} changes={changes} deliveries={} missing={} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        samples.len(),
        expected - samples.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        samples.last().copied().unwrap_or(f64::NAN)
    );
}
