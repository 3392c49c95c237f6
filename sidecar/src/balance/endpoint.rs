//! An upstream endpoint (one service instance) and what the data plane learns about it while
//! calling it: requests in flight, a peak-EWMA of its latency (as linkerd2-proxy keeps), and its
//! passive-health (outlier) state. Every field that changes is an atomic: the request path reads
//! and updates them without a lock. Stats survive config updates: a new endpoint set reuses the
//! `Arc<Endpoint>` of an instance it already knew.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::fields::Fields;

pub use reskflow_proto::dataplane::EndpointSpec;

/// Latency assumed for an endpoint that has not answered yet (linkerd's default RTT).
const DEFAULT_RTT_NS: f64 = 30_000_000.0;
/// How fast the EWMA forgets (linkerd: 10 s).
const DECAY_NS: f64 = 10_000_000_000.0;

/// Names the instance that answered, on every proxied answer.
pub const ENDPOINT_HEADER: http::HeaderName = http::HeaderName::from_static("x-reskflow-endpoint");

#[derive(Debug)]
pub struct Endpoint {
    pub spec: EndpointSpec,
    /// `address:port`, bracketed for IPv6, for URIs.
    pub authority: String,
    /// The same, parsed once for the request path (None if the spec is not a valid URI part).
    pub uri_scheme: Option<http::uri::Scheme>,
    pub uri_authority: Option<http::uri::Authority>,
    /// `X-Reskflow-Endpoint: <instance id>` for answers from it, made once (empty if the id cannot
    /// be a field's value).
    pub answer_fields: Fields,
    /// `Host` for requests to it.
    pub host_header: Option<http::HeaderValue>,
    /// Idle HTTP/1.1 connections to it.
    pub pool: crate::client::Pool,
    in_flight: AtomicU32,
    /// f64 bits: the peak-EWMA latency in ns.
    rtt_ns: AtomicU64,
    /// When `rtt_ns` was last updated, in ms on the data plane's clock.
    rtt_at_ms: AtomicU64,
    pub(crate) outlier: OutlierState,
}

/// Passive health: consecutive failures and ejection.
#[derive(Debug, Default)]
pub(crate) struct OutlierState {
    pub consecutive_5xx: AtomicU32,
    pub consecutive_gateway: AtomicU32,
    pub times_ejected: AtomicU32,
    /// Ejected until this time (ms on the data plane's clock); 0 = not ejected.
    pub ejected_until_ms: AtomicU64,
}

impl Endpoint {
    pub fn new(spec: EndpointSpec) -> Endpoint {
        let authority = if spec.address.contains(':') {
            format!("[{}]:{}", spec.address, spec.port)
        } else {
            format!("{}:{}", spec.address, spec.port)
        };
        Endpoint {
            uri_scheme: http::uri::Scheme::try_from(spec.scheme.as_str()).ok(),
            uri_authority: http::uri::Authority::try_from(authority.as_str()).ok(),
            answer_fields: {
                let mut fields = Fields::with_capacity(ENDPOINT_HEADER.as_str().len() + spec.id.len() + 4);
                if let Ok(id) = http::HeaderValue::from_str(&spec.id) {
                    fields.push(&ENDPOINT_HEADER, &id);
                }
                fields
            },
            host_header: http::HeaderValue::from_str(&authority).ok(),
            pool: crate::client::Pool::default(),
            spec,
            authority,
            in_flight: AtomicU32::new(0),
            rtt_ns: AtomicU64::new(DEFAULT_RTT_NS.to_bits()),
            rtt_at_ms: AtomicU64::new(0),
            outlier: OutlierState::default(),
        }
    }

    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// A request to this endpoint starts (pair with [`Endpoint::finish`]).
    pub fn start(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A request ends after `rtt`; feeds the peak-EWMA: a slower answer than the average is taken
    /// at once, a faster one is blended in with a weight that decays with the time since the last.
    pub fn finish(&self, rtt: Duration, now_ms: u64) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let sample = rtt.as_nanos() as f64;
        let current = f64::from_bits(self.rtt_ns.load(Ordering::Relaxed));
        let next = if sample > current {
            sample
        } else {
            let last = self.rtt_at_ms.load(Ordering::Relaxed);
            let elapsed_ns = now_ms.saturating_sub(last) as f64 * 1e6;
            let w = (-elapsed_ns / DECAY_NS).exp();
            current * w + sample * (1.0 - w)
        };
        self.rtt_ns.store(next.to_bits(), Ordering::Relaxed);
        self.rtt_at_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The peak-EWMA latency, in ns.
    pub fn rtt_ns(&self) -> f64 {
        f64::from_bits(self.rtt_ns.load(Ordering::Relaxed))
    }

    /// linkerd's load estimate: latency times the requests it would queue behind.
    pub fn cost(&self) -> f64 {
        self.rtt_ns() * f64::from(self.in_flight() + 1)
    }

    pub fn ejected(&self, now_ms: u64) -> bool {
        self.outlier.ejected_until_ms.load(Ordering::Relaxed) > now_ms
    }

    pub fn ejected_until_ms(&self) -> u64 {
        self.outlier.ejected_until_ms.load(Ordering::Relaxed)
    }
}
