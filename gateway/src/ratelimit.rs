//! Per-route rate limits with GCRA (a smooth limit: `requests` per `window`, up to `requests` in a
//! burst, then one every `window / requests`), per caller (token subject or API key consumer) and
//! optionally per client IP.
//!
//! Locally each route has a keyed `governor` limiter. With `REDIS_URL` the limit is shared by every
//! gateway replica: a GCRA script timed by Redis's clock so replicas agree, one `EVALSHA` deciding
//! every request that arrived while the previous calls were in flight (one round trip each). When
//! Redis fails (or answers slower than `RATE_LIMIT_REDIS_TIMEOUT`) the gateway stops asking it for
//! a second and decides by `RATE_LIMIT_REDIS_FAILURE`: `local` (the replica's own
//! limit), `open` (allow) or `closed` (refuse with 503); the metrics count each such decision.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use reskflow_proto::route::RateLimit;
use reskflow_sidecar::clock;
use reskflow_sidecar::fields::{decimal, Fields};
use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::edge::{RATELIMIT_LIMIT, RATELIMIT_POLICY};

/// Callers' states by key, hashed with foldhash (seeded per limiter) rather than SipHash: the key
/// is hashed on every request, and SipHash was most of the local decision's cost.
type Keyed = RateLimiter<
    String,
    DashMapStateStore<String, foldhash::quality::RandomState>,
    DefaultClock,
    StateInformationMiddleware,
>;

/// What to do when Redis cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Use the replica's local limit.
    #[default]
    Local,
    /// Allow the request.
    Open,
    /// Refuse the request (503).
    Closed,
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allowed {
        remaining: u32,
        reset: Duration,
    },
    Limited {
        retry_after: Duration,
        reset: Duration,
    },
    /// Redis is unreachable and the failure mode is `closed`.
    Unavailable,
}

/// One route's limit.
pub struct RouteLimiter {
    pub config: RateLimit,
    /// `RateLimit-Limit` and `RateLimit-Policy`, made once.
    pub fixed_fields: Fields,
    local: Keyed,
    /// Emission interval and burst tolerance in microseconds, as the script's arguments (fractions
    /// kept, so limits above a million a second stay exact; formatted once, not per request).
    interval_arg: Bytes,
    tolerance_arg: Bytes,
    interval_us: f64,
}

impl std::fmt::Debug for RouteLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteLimiter").field("config", &self.config).finish_non_exhaustive()
    }
}

impl RouteLimiter {
    pub fn new(config: &RateLimit) -> Result<RouteLimiter, String> {
        let burst = NonZeroU32::new(config.requests).ok_or("rateLimit.requests must be positive")?;
        let interval = config.window / config.requests;
        let quota = Quota::with_period(interval).ok_or("rateLimit.window is too short")?.allow_burst(burst);
        let window_us = config.window.as_secs_f64() * 1e6;
        let interval_us = window_us / f64::from(config.requests);
        let window_secs = config.window.as_secs() + u64::from(config.window.subsec_nanos() > 0);
        let mut fixed_fields = Fields::default();
        fixed_fields.push_number(&RATELIMIT_LIMIT, u64::from(config.requests));
        let policy = format!("{};w={window_secs}", config.requests);
        fixed_fields.push_bytes(&RATELIMIT_POLICY, policy.as_bytes());
        Ok(RouteLimiter {
            config: config.clone(),
            fixed_fields,
            local: RateLimiter::dashmap_with_hasher(quota, foldhash::quality::RandomState::default())
                .with_middleware::<StateInformationMiddleware>(),
            interval_arg: Bytes::from(interval_us.to_string()),
            tolerance_arg: Bytes::from((window_us - interval_us).to_string()),
            interval_us,
        })
    }

    /// Decides locally.
    pub fn check_local(&self, key: &String) -> Decision {
        match self.local.check_key(key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let used = self.config.requests.saturating_sub(remaining);
                Decision::Allowed { remaining, reset: self.per_request() * used }
            }
            Err(not_until) => {
                let retry_after = not_until.wait_time_from(self.local.clock().now());
                Decision::Limited { retry_after, reset: retry_after + self.per_request() * (self.config.requests - 1) }
            }
        }
    }

    fn per_request(&self) -> Duration {
        self.config.window / self.config.requests
    }

    /// Forgets callers whose state is back to full (keeps memory bounded by active callers).
    pub fn forget_idle(&self) {
        self.local.retain_recent();
        self.local.shrink_to_fit();
    }

    pub fn callers(&self) -> usize {
        self.local.len()
    }
}

/// GCRA for a batch of requests in one round trip, timed by Redis's own clock so every replica
/// measures time alike.
/// - KEYS: the batch's callers, each once.
/// - ARGV: groups of consecutive requests of one caller under one limit, each as `key index,
///   count, emission interval, burst tolerance` (µs, may have fractions). The groups are decided
///   in order; a caller's state is read once and written once (when it changed), after the batch,
///   so a caller's burst costs one `GET` and one `SET` however many of its requests the batch holds.
/// - Returns one string: per group `allowed first-remaining first-reset retry-after reset` (µs),
///   joined by commas ([`parse_groups`]): the group's first `allowed` requests pass, the first
///   of them with `first-remaining` left and its allowance back to full after `first-reset`, each
///   next one with one fewer left and one interval later; the rest are refused with `retry-after`
///   and `reset`. Work and reply per group, not per request, keep Redis's time and the client's
///   parsing flat under a caller's burst.
const GCRA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local out = {}
local tats = {}
local changed = {}
for g = 1, #ARGV, 4 do
  local k = tonumber(ARGV[g])
  local count = tonumber(ARGV[g + 1])
  local interval = tonumber(ARGV[g + 2])
  local tolerance = tonumber(ARGV[g + 3])
  local tat = tats[k]
  if tat == nil then tat = tonumber(redis.call('GET', KEYS[k]) or now) end
  if tat < now then tat = now end
  local allowed = 0
  local remaining = 0
  local reset = 0
  local room = tolerance - (tat - now)
  if room >= 0 then
    -- Request i (from 0) passes while i intervals fit in the room; the ratio is nudged up by a
    -- relative 1e-12 so that n - 1 computed as 5.999999999999 counts as 6.
    local fit = math.floor(room / interval * (1 + 1e-12))
    allowed = math.min(count, fit + 1)
    remaining = fit
    reset = math.ceil(tat + interval - now)
    tat = tat + allowed * interval
  end
  tats[k] = tat
  if allowed > 0 then changed[k] = true end
  out[#out + 1] = string.format('%d %d %d %d %d', allowed, remaining, reset,
    math.max(0, math.ceil(tat - tolerance - now)), math.ceil(tat - now))
end
for k in pairs(changed) do
  local tat = tats[k]
  redis.call('SET', KEYS[k], string.format('%.3f', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
end
return table.concat(out, ',')
";

/// Most requests decided by one script call, and most calls in flight at once: requests that
/// arrive while the calls are in flight wait for the next one, so under load a round trip decides
/// several requests (one Lua call and one reply instead of one each) and at low load a request
/// goes at once. One call in flight made batches of ~19 but was slower on a busy 2-core host
/// (every round trip waits for Redis to be scheduled); four were measured best so far.
const MAX_BATCH: usize = 64;
const MAX_IN_FLIGHT: usize = 4;

/// Shared limits in Redis, with the fallback.
pub struct Shared {
    asks: tokio::sync::mpsc::UnboundedSender<Ask>,
    failure_mode: FailureMode,
    /// Until when (clock ms) Redis is not asked, after a failure.
    down_until_ms: AtomicU64,
    /// Whether the last call to Redis succeeded.
    up: AtomicBool,
    pub stats: Arc<SharedStats>,
}

/// Serialized as `redis` in `/api/gateway/metrics` (with `healthy` added there).
#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SharedStats {
    /// Script calls made, and the requests they decided (their ratio is the batch size).
    #[serde(rename = "calls")]
    pub redis_calls: AtomicU64,
    #[serde(rename = "checks")]
    pub redis_checks: AtomicU64,
    /// The script calls' round trips, summed (µs): over `redis_calls`, the mean round trip.
    #[serde(rename = "callMicros")]
    pub redis_call_micros: AtomicU64,
    #[serde(rename = "errors")]
    pub redis_errors: AtomicU64,
    /// Requests decided without Redis because it was failing.
    pub fallback_decisions: AtomicU64,
}

const BACKOFF_MS: u64 = 1_000;

/// The script's answer for one request: allowed (0/1), remaining, retry after (µs), reset (µs).
type GcraAnswer = (u8, u64, u64, u64);

/// Why a request's batch failed, with the request's key handed back for the fallback.
struct Failed {
    why: Arc<str>,
    key: String,
}

/// The script's answer for a group of requests: allowed, the first one's remaining and reset,
/// the refused ones' retry after and reset (µs).
type GroupAnswer = [u64; 5];

/// One request waiting for its decision: the caller's key (moved here, and handed back if the
/// batch fails) and the route's limit. An `Ask` dropped unanswered (its batch task gone) answers
/// its request with the failure, so the key always comes back.
struct Ask {
    key: String,
    limiter: Arc<RouteLimiter>,
    answer: Option<tokio::sync::oneshot::Sender<Result<GcraAnswer, Failed>>>,
}

impl Drop for Ask {
    fn drop(&mut self) {
        self.reply(Err("the Redis batch task ended".into()));
    }
}

impl Ask {
    /// Answers the request (once; a failure hands the key back).
    fn reply(&mut self, answer: Result<GcraAnswer, Arc<str>>) {
        if let Some(tx) = self.answer.take() {
            let _ = tx.send(answer.map_err(|why| Failed { why, key: std::mem::take(&mut self.key) }));
        }
    }

    /// Whether `self` and `other` are decided in one group (one caller, one limit).
    fn same_group(&self, other: &Ask) -> bool {
        self.key == other.key
            && self.limiter.interval_arg == other.limiter.interval_arg
            && self.limiter.tolerance_arg == other.limiter.tolerance_arg
    }
}

/// The `j`th request (from 0) of a group's answer `a`.
fn answer_in_group(a: &GroupAnswer, j: u64, interval_us: f64) -> GcraAnswer {
    let [allowed, remaining, reset, retry_after, refused_reset] = *a;
    if j < allowed {
        // Each allowed request pushes the caller's state one interval further.
        let later = (j as f64 * interval_us).round() as u64;
        (1, remaining.saturating_sub(j), 0, reset.saturating_add(later))
    } else {
        (0, 0, retry_after, refused_reset)
    }
}

impl Shared {
    /// Limits on `conn` (from `connect_redis`; `up`: whether Redis answered then). Starts the task
    /// that sends the requests' checks to Redis in batches; it ends when this is dropped.
    pub fn new(conn: redis::aio::ConnectionManager, up: bool, timeout: Duration, failure_mode: FailureMode) -> Shared {
        let (asks, queue) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(SharedStats::default());
        tokio::spawn(batches(conn, queue, timeout, stats.clone()));
        Shared { asks, failure_mode, down_until_ms: AtomicU64::new(0), up: AtomicBool::new(up), stats }
    }
}

/// Takes waiting requests in batches of up to `MAX_BATCH`, with up to `MAX_IN_FLIGHT` script calls
/// on the (multiplexed) connection at once, and answers each request.
async fn batches(
    conn: redis::aio::ConnectionManager,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Ask>,
    timeout: Duration,
    stats: Arc<SharedStats>,
) {
    use futures::StreamExt;
    let script = redis::Script::new(GCRA);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        tokio::select! {
            ask = queue.recv(), if in_flight.len() < MAX_IN_FLIGHT => {
                let Some(ask) = ask else { break };
                let mut batch = Vec::with_capacity(8);
                batch.push(ask);
                while batch.len() < MAX_BATCH {
                    match queue.try_recv() {
                        Ok(ask) => batch.push(ask),
                        Err(_) => break,
                    }
                }
                in_flight.push(decide(conn.clone(), &script, batch, timeout, &stats));
            }
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
        }
    }
    while in_flight.next().await.is_some() {}
}

/// One script call for `batch`; every request gets its answer or the error. Counts the call, its
/// requests and its time (a failed call's until its error or the timeout) in `stats`.
async fn decide(
    mut conn: redis::aio::ConnectionManager,
    script: &redis::Script,
    batch: Vec<Ask>,
    timeout: Duration,
    stats: &SharedStats,
) {
    let groups: Vec<&[Ask]> = batch.chunk_by(Ask::same_group).collect();
    let sizes: Vec<usize> = groups.iter().map(|group| group.len()).collect();
    stats.redis_calls.fetch_add(1, Ordering::Relaxed);
    stats.redis_checks.fetch_add(batch.len() as u64, Ordering::Relaxed);
    let sent = clock::now_ns();
    let answer = tokio::time::timeout(timeout, evaluate(&mut conn, script, &groups)).await;
    stats.redis_call_micros.fetch_add(clock::now_ns().saturating_sub(sent) / 1_000, Ordering::Relaxed);
    let answers = match answer {
        Ok(Ok(redis::Value::BulkString(reply))) => parse_groups(&reply, groups.len()),
        Ok(Ok(other)) => Err(format!("the script answered {other:?}, not a string")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    };
    match answers {
        Ok(answers) => {
            let mut asks = batch.into_iter();
            for (a, size) in answers.iter().zip(sizes) {
                for (j, mut ask) in (0..).zip(asks.by_ref().take(size)) {
                    let answer = answer_in_group(a, j, ask.limiter.interval_us);
                    ask.reply(Ok(answer));
                }
            }
        }
        Err(why) => {
            let why: Arc<str> = why.into();
            for mut ask in batch {
                ask.reply(Err(why.clone()));
            }
        }
    }
}

/// `EVALSHA` of the script for a batch's `groups` (one caller's consecutive requests under one
/// limit each), loading it first if Redis does not have it (a restarted
/// Redis). Built as one command (every argument in one buffer) rather than through
/// `ScriptInvocation`, which keeps each key and argument in its own allocation and copies them all
/// again into the command.
async fn evaluate(
    conn: &mut redis::aio::ConnectionManager,
    script: &redis::Script,
    groups: &[&[Ask]],
) -> redis::RedisResult<redis::Value> {
    // The callers, each once (a linear look-up: a batch holds at most `MAX_BATCH` requests, and
    // under load most of them are a few busy callers').
    let mut keys: Vec<&str> = Vec::with_capacity(4);
    let mut indexes = Vec::with_capacity(groups.len());
    for group in groups {
        let k = match keys.iter().position(|key| *key == group[0].key) {
            Some(k) => k,
            None => {
                keys.push(&group[0].key);
                keys.len() - 1
            }
        };
        indexes.push(k + 1);
    }
    let data = keys.iter().map(|key| key.len()).sum::<usize>() + groups.len() * 32;
    let mut cmd = redis::Cmd::with_capacity(3 + keys.len() + 4 * groups.len(), 64 + data);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys.len());
    for key in keys {
        cmd.arg(key);
    }
    for (k, group) in indexes.into_iter().zip(groups) {
        let limiter = &group[0].limiter;
        cmd.arg(k).arg(group.len()).arg(&limiter.interval_arg[..]).arg(&limiter.tolerance_arg[..]);
    }
    match cmd.query_async(conn).await {
        Err(err) if err.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        answer => answer,
    }
}

/// The script's reply for `n` groups: five numbers per group, joined by commas.
fn parse_groups(reply: &[u8], n: usize) -> Result<Vec<GroupAnswer>, String> {
    let mut answers = Vec::with_capacity(n);
    for one in reply.split(|&b| b == b',') {
        match parse_group(one) {
            Some(answer) => answers.push(answer),
            None => return Err(format!("the script answered {:?}", String::from_utf8_lossy(reply))),
        }
    }
    if answers.len() != n {
        return Err(format!("the script answered {} decisions for {n} groups", answers.len()));
    }
    Ok(answers)
}

/// One group's five numbers, each a plain decimal number, separated by single spaces.
fn parse_group(one: &[u8]) -> Option<GroupAnswer> {
    let mut fields = one.split(|&b| b == b' ');
    let mut answer = [0; 5];
    for n in &mut answer {
        *n = decimal(fields.next()?)?;
    }
    fields.next().is_none().then_some(answer)
}

/// A Redis connection (multiplexed, reconnecting); `false` when Redis did not answer at start (the
/// connection keeps trying).
pub async fn connect_redis(url: &str, timeout: Duration) -> anyhow::Result<(redis::aio::ConnectionManager, bool)> {
    {
        use redis::IntoConnectionInfo;
        // TCP_NODELAY (redis-rs leaves Nagle on): a call written while an earlier one is still
        // unacknowledged goes out at once instead of waiting for that acknowledgement.
        let info = url
            .into_connection_info()
            .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info).map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1);
        let mut up = true;
        let conn = match tokio::time::timeout(
            Duration::from_secs(2),
            redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await
        {
            Ok(Ok(conn)) => conn,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                warn!(%why, "Redis is not reachable at start; rate limits fall back until it is");
                up = false;
                redis::aio::ConnectionManager::new_lazy_with_config(client, config)
                    .map_err(|e| anyhow::anyhow!("REDIS_URL: {e}"))?
            }
        };
        Ok((conn, up))
    }
}

impl Shared {
    /// Whether Redis answered its last call.
    pub fn healthy(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Decides in Redis; on failure by the failure mode.
    pub async fn check(&self, limiter: &Arc<RouteLimiter>, key: String) -> Decision {
        let now = reskflow_sidecar::clock::now_ms();
        if now < self.down_until_ms.load(Ordering::Relaxed) {
            return self.fallback(limiter, &key);
        }
        let (answer, decision) = tokio::sync::oneshot::channel();
        // Refused by a closed queue, the `Ask` drops here and answers with the failure.
        let _ = self.asks.send(Ask { key, limiter: limiter.clone(), answer: Some(answer) });
        // Never closed unanswered (an `Ask` answers when dropped); were it, the key is gone and the
        // fallback decides under an empty one.
        let answer = decision.await.unwrap_or_else(|_| Err(Failed { why: "no answer".into(), key: String::new() }));
        match answer {
            Ok((allowed, remaining, retry_after_us, reset_us)) => {
                self.up.store(true, Ordering::Relaxed);
                let reset = Duration::from_micros(reset_us);
                if allowed == 1 {
                    Decision::Allowed { remaining: u32::try_from(remaining).unwrap_or(u32::MAX), reset }
                } else {
                    Decision::Limited { retry_after: Duration::from_micros(retry_after_us), reset }
                }
            }
            Err(Failed { why, key }) => {
                if self.up.swap(false, Ordering::Relaxed) {
                    warn!(%why, "Redis rate limit failed; falling back (Redis is retried every second)");
                }
                self.stats.redis_errors.fetch_add(1, Ordering::Relaxed);
                self.down_until_ms.store(now + BACKOFF_MS, Ordering::Relaxed);
                self.fallback(limiter, &key)
            }
        }
    }

    fn fallback(&self, limiter: &RouteLimiter, key: &String) -> Decision {
        self.stats.fallback_decisions.fetch_add(1, Ordering::Relaxed);
        match self.failure_mode {
            FailureMode::Local => limiter.check_local(key),
            FailureMode::Open => Decision::Allowed { remaining: limiter.config.requests, reset: Duration::ZERO },
            FailureMode::Closed => Decision::Unavailable,
        }
    }
}

/// Local or shared, per the configuration.
pub struct Limits {
    pub shared: Option<Arc<Shared>>,
}

impl Limits {
    pub async fn check(&self, limiter: &Arc<RouteLimiter>, key: String) -> Decision {
        match &self.shared {
            Some(shared) => shared.check(limiter, key).await,
            None => limiter.check_local(&key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection to the test Redis (`REDIS_URL`, which must be running) and limits decided there.
    async fn in_redis() -> (redis::aio::ConnectionManager, Shared) {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let (conn, up) = connect_redis(&url, Duration::from_secs(2)).await.expect("redis");
        assert!(up, "Redis at {url} must be running for this test");
        let shared = Shared::new(conn.clone(), up, Duration::from_secs(2), FailureMode::Closed);
        (conn, shared)
    }

    /// A key no earlier run has used.
    fn fresh(name: &str) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        format!("test-{name}-{nanos}")
    }

    fn limit(requests: u32, window: &str) -> RouteLimiter {
        let config: RateLimit =
            serde_json::from_value(serde_json::json!({"requests": requests, "window": window})).expect("limit");
        RouteLimiter::new(&config).expect("limiter")
    }

    #[test]
    fn the_scripts_reply_is_read_exactly_or_refused() {
        assert_eq!(parse_groups(b"1 4 200000 0 200000", 1), Ok(vec![[1, 4, 200_000, 0, 200_000]]));
        assert_eq!(
            parse_groups(b"3 2 20000000 0 60000000,0 0 0 12000000 60000000", 2),
            Ok(vec![[3, 2, 20_000_000, 0, 60_000_000], [0, 0, 0, 12_000_000, 60_000_000]])
        );
        for bad in [
            &b""[..],
            b"1 4 0 2",
            b"1 4 0 2 9 9",
            b"1 -4 0 2 9",
            b"1 4 0 2 9,",
            b"1 4 0 2e3 9",
            b"1  4 0 2 9",
            b"1 4 0 2 99999999999999999999",
        ] {
            assert!(parse_groups(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse_groups(b"1 4 0 2 2,1 3 0 2 2", 1).is_err(), "more decisions than groups");
        assert!(parse_groups(b"1 4 0 2 2", 2).is_err(), "fewer decisions than groups");
    }

    /// A group's answer read for each of its requests: the allowed ones one fewer left and one
    /// interval later each, then the refused ones.
    #[test]
    fn a_groups_answer_spreads_over_its_requests() {
        let a = [3, 9, 100, 250, 400];
        let each: Vec<GcraAnswer> = (0..5).map(|j| answer_in_group(&a, j, 100.4)).collect();
        assert_eq!(each, [(1, 9, 0, 100), (1, 8, 0, 200), (1, 7, 0, 301), (0, 0, 250, 400), (0, 0, 250, 400)]);
    }

    #[test]
    fn a_burst_of_the_limit_then_refusals_per_caller() {
        let l = limit(3, "1m");
        for expected in [2, 1, 0] {
            assert!(
                matches!(l.check_local(&"alice".into()), Decision::Allowed { remaining, .. } if remaining == expected)
            );
        }
        match l.check_local(&"alice".into()) {
            Decision::Limited { retry_after, .. } => {
                assert!(
                    retry_after > Duration::from_secs(15) && retry_after <= Duration::from_secs(20),
                    "{retry_after:?}"
                )
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(matches!(l.check_local(&"bob".into()), Decision::Allowed { remaining: 2, .. }), "callers are apart");
        assert_eq!(l.callers(), 2);
    }

    /// Many checks at once in Redis (batched, one caller several times in a batch), two callers
    /// under two limits: each gets exactly its allowance, with the remaining counts of a sequence.
    #[tokio::test]
    async fn concurrent_checks_in_redis_are_decided_in_batches_exactly() {
        let shared = Arc::new(in_redis().await.1);
        let five = Arc::new(limit(5, "1m"));
        let twenty = Arc::new(limit(20, "1h"));
        let (a, b) = (fresh("a"), fresh("b"));
        let checks = (0..100).map(|i| {
            let (shared, limiter, key) = if i % 2 == 0 {
                (shared.clone(), five.clone(), a.clone())
            } else {
                (shared.clone(), twenty.clone(), b.clone())
            };
            tokio::spawn(async move { (i % 2, shared.check(&limiter, key).await) })
        });
        let mut remaining = [Vec::new(), Vec::new()];
        let mut limited = [0, 0];
        for check in futures::future::join_all(checks).await {
            match check.expect("task") {
                (who, Decision::Allowed { remaining: r, .. }) => remaining[who].push(r),
                (who, Decision::Limited { retry_after, .. }) => {
                    assert!(retry_after > Duration::ZERO);
                    limited[who] += 1;
                }
                (_, Decision::Unavailable) => panic!("Redis failed"),
            }
        }
        for r in &mut remaining {
            r.sort_unstable();
        }
        assert_eq!(remaining[0], (0..5).collect::<Vec<u32>>());
        assert_eq!(remaining[1], (0..20).collect::<Vec<u32>>());
        assert_eq!(limited, [45, 30]);
        assert_eq!(shared.stats.redis_errors.load(Ordering::Relaxed), 0);
    }

    /// A caller's burst that arrives at once is one batch and one group in it: its requests are
    /// decided in their order, each with one fewer left and a later reset, then refused.
    #[tokio::test]
    async fn a_callers_burst_is_decided_as_one_group_in_order() {
        let (_, shared) = in_redis().await;
        let ten = Arc::new(limit(10, "1m"));
        let key = fresh("burst");
        // Polled in order on this one thread: all 30 are asked before the batch task runs.
        let decisions = futures::future::join_all((0..30).map(|_| shared.check(&ten, key.clone()))).await;
        assert_eq!(shared.stats.redis_calls.load(Ordering::Relaxed), 1, "one script call");
        let mut last_reset = Duration::ZERO;
        for (i, decision) in decisions.iter().enumerate() {
            match *decision {
                Decision::Allowed { remaining, reset } if i < 10 => {
                    assert_eq!(remaining, 9 - i as u32, "request {i}");
                    assert!(reset > last_reset, "request {i}: each reset is later");
                    assert!(reset <= Duration::from_secs(60));
                    last_reset = reset;
                }
                Decision::Limited { retry_after, reset } if i >= 10 => {
                    assert!(
                        retry_after > Duration::from_secs(5) && retry_after <= Duration::from_secs(6),
                        "{retry_after:?}"
                    );
                    assert!(reset >= last_reset && reset <= Duration::from_secs(60), "{reset:?}");
                }
                other => panic!("request {i}: {other:?}"),
            }
        }
        // The state was written: the next request (another batch) is refused too.
        assert!(matches!(shared.check(&ten, key.clone()).await, Decision::Limited { .. }));
    }

    /// With the batch task gone, each request is decided by the fallback under its own key (an
    /// `Ask` dropped unanswered hands its key back): callers stay apart in the local limit.
    #[tokio::test]
    async fn without_the_batch_task_the_fallback_keeps_callers_apart() {
        let (asks, queue) = tokio::sync::mpsc::unbounded_channel();
        drop(queue);
        let shared = Shared {
            asks,
            failure_mode: FailureMode::Local,
            down_until_ms: AtomicU64::new(0),
            up: AtomicBool::new(true),
            stats: Arc::default(),
        };
        let one = Arc::new(limit(1, "1h"));
        assert!(matches!(shared.check(&one, "alice".into()).await, Decision::Allowed { remaining: 0, .. }));
        // Redis is now skipped for a second: the fallback decides directly.
        assert!(matches!(shared.check(&one, "alice".into()).await, Decision::Limited { .. }));
        shared.down_until_ms.store(0, Ordering::Relaxed);
        assert!(matches!(shared.check(&one, "alice".into()).await, Decision::Limited { .. }), "through the drop");
        shared.down_until_ms.store(0, Ordering::Relaxed);
        assert!(matches!(shared.check(&one, "bob".into()).await, Decision::Allowed { remaining: 0, .. }));
        assert!(!shared.healthy());
        assert_eq!(shared.stats.redis_errors.load(Ordering::Relaxed), 3);
        assert_eq!(shared.stats.fallback_decisions.load(Ordering::Relaxed), 4);
    }

    /// A burst in one batch gets exactly its limit, also where the limit's interval has no exact
    /// binary fraction (9 a minute, 13 an hour: adding up intervals one by one fell one short).
    #[tokio::test]
    async fn a_burst_in_one_batch_gets_exactly_its_limit() {
        let (_, shared) = in_redis().await;
        for (requests, window) in [(9, "1m"), (13, "1h"), (23, "1m"), (47, "1m"), (7, "1h")] {
            let limiter = Arc::new(limit(requests, window));
            let key = fresh(&format!("exact-{requests}-{window}"));
            let calls = shared.stats.redis_calls.load(Ordering::Relaxed);
            let decisions =
                futures::future::join_all((0..requests + 5).map(|_| shared.check(&limiter, key.clone()))).await;
            assert_eq!(shared.stats.redis_calls.load(Ordering::Relaxed), calls + 1, "one script call");
            let remaining: Vec<u32> = decisions
                .iter()
                .filter_map(|d| match d {
                    Decision::Allowed { remaining, .. } => Some(*remaining),
                    _ => None,
                })
                .collect();
            assert_eq!(remaining, (0..requests).rev().collect::<Vec<u32>>(), "{requests} per {window}");
        }
    }

    /// A Redis that lost its scripts (restarted, or `SCRIPT FLUSH`) gets the script again and the
    /// check is decided there, not by the fallback.
    #[tokio::test]
    async fn a_flushed_script_is_loaded_again() {
        let (mut conn, shared) = in_redis().await;
        let two = Arc::new(limit(2, "1h"));
        let key = fresh("flush");
        for expected in [1, 0] {
            redis::cmd("SCRIPT").arg("FLUSH").query_async::<()>(&mut conn).await.expect("flush");
            match shared.check(&two, key.clone()).await {
                Decision::Allowed { remaining, .. } => assert_eq!(remaining, expected),
                other => panic!("expected an allowance, got {other:?}"),
            }
        }
        assert!(matches!(shared.check(&two, key.clone()).await, Decision::Limited { .. }));
        assert_eq!(shared.stats.redis_errors.load(Ordering::Relaxed), 0);
        assert_eq!(shared.stats.fallback_decisions.load(Ordering::Relaxed), 0);
    }
}
