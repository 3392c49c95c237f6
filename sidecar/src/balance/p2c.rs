//! Least request by the power of two choices: two endpoints drawn at random, the one with the lower
//! cost (peak-EWMA latency times requests in flight plus one) wins, as linkerd2-proxy balances. It
//! avoids the herd behaviour of always picking the global least-loaded endpoint and costs O(1).

use std::sync::Arc;

use super::Endpoint;

/// Draws that may land on ejected endpoints before giving up on randomness.
const DRAWS: usize = 4;

pub fn pick<'a>(endpoints: &'a [Arc<Endpoint>], members: &[u32], now_ms: u64) -> Option<&'a Arc<Endpoint>> {
    let n = members.len();
    let at = |k: usize| &endpoints[members[k] as usize];
    let first = (0..DRAWS).map(|_| fastrand::usize(..n)).find(|&k| !at(k).ejected(now_ms)).or_else(|| {
        // Most are ejected: look at every one.
        (0..n).find(|&k| !at(k).ejected(now_ms))
    })?;
    if n == 1 {
        return Some(at(first));
    }
    // The second choice is another endpoint.
    let second = (0..DRAWS)
        .map(|_| {
            let k = fastrand::usize(..n - 1);
            if k >= first {
                k + 1
            } else {
                k
            }
        })
        .find(|&k| !at(k).ejected(now_ms));
    match second {
        Some(k) if at(k).cost() < at(first).cost() => Some(at(k)),
        _ => Some(at(first)),
    }
}
