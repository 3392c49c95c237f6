//! Smooth weighted round robin (nginx's), precomputed once per config into a schedule that the
//! request path walks with one atomic counter: weights 5:1:1 give a, a, b, a, c, a, a rather than
//! five a's in a row.

/// Longest schedule; larger weight sums are scaled down (each weight stays at least 1).
const MAX_SCHEDULE: u64 = 4_096;

/// Positions (into `weights`) in smooth weighted round-robin order, one cycle long.
pub fn schedule(weights: &[u32]) -> Vec<u32> {
    let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
    let scaled: Vec<i64> = weights
        .iter()
        .map(|&w| {
            let w = u64::from(w.max(1));
            let w = if total > MAX_SCHEDULE { (w * MAX_SCHEDULE / total).max(1) } else { w };
            i64::try_from(w).unwrap_or(1)
        })
        .collect();
    let sum: i64 = scaled.iter().sum();
    let mut current = vec![0i64; scaled.len()];
    let mut out = Vec::with_capacity(usize::try_from(sum).unwrap_or(0));
    for _ in 0..sum {
        for (c, w) in current.iter_mut().zip(&scaled) {
            *c += w;
        }
        let Some((best, _)) = current.iter().enumerate().max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i))) else {
            break;
        };
        current[best] -= sum;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavier_endpoints_come_up_more_often_but_spread_out() {
        assert_eq!(schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(schedule(&[1, 1]), [0, 1]);
        let big = schedule(&[100_000, 1]);
        assert!(big.len() <= 4_097 && big.contains(&1), "scaled down, the light one still appears");
    }
}
