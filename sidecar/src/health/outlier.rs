//! Passive outlier detection, as Envoy's: an endpoint that answers `consecutive5xx` server errors in
//! a row, or `consecutiveGatewayFailure` gateway failures (502/503/504, refused or broken
//! connections, timeouts), is ejected for `baseEjectionTime` times the number of times it was
//! ejected (capped by `maxEjectionTime`), unless that would eject more than `maxEjectionPercent` of
//! the endpoints (one ejection is always allowed, as in Envoy). It comes back by itself when the
//! time runs out. Any other answer resets its counts.

use std::sync::atomic::Ordering;
use std::time::Duration;

pub use reskflow_proto::policy::OutlierConfig;

use crate::balance::{Balancer, Endpoint};

/// Outlier detection for one upstream service.
#[derive(Debug, Clone, Default)]
pub struct OutlierDetector {
    pub config: OutlierConfig,
}

/// How a request to an endpoint ended, as outlier detection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Any status below 500.
    Ok,
    /// A 5xx status.
    Status(u16),
    /// Refused, reset or timed out: no answer.
    NoAnswer,
}

impl OutlierDetector {
    pub fn new(config: OutlierConfig) -> Self {
        OutlierDetector { config }
    }

    /// Counts `answer` against `endpoint` of `balancer`; true when this ejected the endpoint.
    pub fn observe(&self, balancer: &Balancer, endpoint: &Endpoint, answer: Answer, now_ms: u64) -> bool {
        let config = &self.config;
        if !config.enabled {
            return false;
        }
        let o = &endpoint.outlier;
        let (server, gateway) = match answer {
            Answer::Ok => {
                // Cheap on the common path: only write when there is something to reset.
                if o.consecutive_5xx.load(Ordering::Relaxed) != 0 {
                    o.consecutive_5xx.store(0, Ordering::Relaxed);
                }
                if o.consecutive_gateway.load(Ordering::Relaxed) != 0 {
                    o.consecutive_gateway.store(0, Ordering::Relaxed);
                }
                return false;
            }
            Answer::Status(code) => (true, matches!(code, 502..=504)),
            Answer::NoAnswer => (true, true),
        };
        let fives = if server { o.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1 } else { 0 };
        let gateways = if gateway {
            o.consecutive_gateway.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            o.consecutive_gateway.store(0, Ordering::Relaxed);
            0
        };
        let tripped = (config.consecutive_5xx > 0 && fives >= config.consecutive_5xx)
            || (config.consecutive_gateway_failure > 0 && gateways >= config.consecutive_gateway_failure);
        if !tripped || endpoint.ejected(now_ms) {
            return false;
        }
        let total = balancer.endpoints().len();
        let ejected = total - balancer.available(now_ms);
        let limit = (total * config.max_ejection_percent as usize / 100).max(1);
        if ejected >= limit {
            return false;
        }
        o.consecutive_5xx.store(0, Ordering::Relaxed);
        o.consecutive_gateway.store(0, Ordering::Relaxed);
        let times = o.times_ejected.fetch_add(1, Ordering::Relaxed) + 1;
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4);
        let duration =
            (ms(config.base_ejection_time).saturating_mul(u64::from(times))).min(ms(config.max_ejection_time));
        o.ejected_until_ms.store(now_ms + duration, Ordering::Relaxed);
        tracing::info!(endpoint = %endpoint.spec.id, ms = duration, times, "endpoint ejected");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balance::{EndpointSpec, LbConfig, Locality, PickContext};

    fn balancer(n: usize) -> Balancer {
        let specs: Vec<_> = (0..n)
            .map(|i| EndpointSpec {
                id: format!("e{i}"),
                address: "127.0.0.1".into(),
                port: 8000 + i as u16,
                scheme: "http".into(),
                weight: 1,
                region: String::new(),
                zone: String::new(),
            })
            .collect();
        Balancer::new(LbConfig::default(), &specs, &Locality::default(), None)
    }

    #[test]
    fn consecutive_server_errors_eject_for_a_growing_time() {
        let b = balancer(3);
        let cfg = OutlierDetector::new(OutlierConfig { max_ejection_percent: 50, ..OutlierConfig::default() });
        let e = b.endpoints()[0].clone();
        for _ in 0..4 {
            assert!(!cfg.observe(&b, &e, Answer::Status(500), 0));
        }
        assert!(cfg.observe(&b, &e, Answer::Status(500), 0), "the fifth in a row ejects");
        assert_eq!(e.ejected_until_ms(), 30_000);
        for _ in 0..10 {
            let picked = b.pick(PickContext { now_ms: 1_000, ..Default::default() }).expect("one");
            assert_ne!(picked.spec.id, "e0");
        }
        // Back after the ejection time; the second ejection lasts twice as long.
        assert!(!e.ejected(30_000));
        for _ in 0..5 {
            cfg.observe(&b, &e, Answer::NoAnswer, 40_000);
        }
        assert_eq!(e.ejected_until_ms(), 100_000);
    }

    #[test]
    fn a_good_answer_resets_the_count() {
        let b = balancer(3);
        let cfg = OutlierDetector::default();
        let e = b.endpoints()[1].clone();
        for _ in 0..4 {
            cfg.observe(&b, &e, Answer::Status(503), 0);
        }
        cfg.observe(&b, &e, Answer::Ok, 0);
        for _ in 0..4 {
            assert!(!cfg.observe(&b, &e, Answer::Status(503), 0));
        }
    }

    #[test]
    fn no_more_than_the_max_percent_is_ejected_but_always_one() {
        let b = balancer(3);
        let cfg = OutlierDetector::new(OutlierConfig { consecutive_5xx: 1, ..OutlierConfig::default() });
        let ejected: Vec<bool> = b.endpoints().iter().map(|e| cfg.observe(&b, e, Answer::Status(500), 0)).collect();
        assert_eq!(ejected, [true, false, false], "10% of 3 rounds down to 0, but one is allowed");
    }
}
