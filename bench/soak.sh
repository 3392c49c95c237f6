#!/usr/bin/env bash
# Sustained load (issue 7): the gateway at 200 connections for DURATION (60 s) on four routes at
# once, 50 connections each, whose non-2xx answers are all deliberate (a route that answers 200, one
# with a small per-IP limit: 429, one that needs a token: 401, one whose service has no instance:
# 503); then the control plane with 1,000 config streams while an instance changes every second.
# RSS of each process at the start and the end. Fails when any answer is not the expected kind.
#
#   bench/soak.sh           Knobs: DURATION=60s STREAMS=1000
set -euo pipefail
. "$(dirname "$0")/common.sh"
OUT=${OUT:-$ROOT/bench/results/soak-$(date +%Y%m%d-%H%M%S)}
DURATION=${DURATION:-60s}
STREAMS=${STREAMS:-1000}
mkdir -p "$OUT"
ulimit -n 65536 2>/dev/null || true

cargo build --release --locked -q -p reskflow-control-plane -p reskflow-gateway -p reskflow-bench --manifest-path "$ROOT/Cargo.toml"
ensure_http
# sample PID FILE: RSS every second until killed. summary FILE: RSS after the first 10% of the
# samples (warm) and at the end, and the largest.
sample() { while kill -0 "$1" 2>/dev/null; do rss_mb "$1" >>"$2" && echo >>"$2"; sleep 1; done; }
summary() { awk 'NF { a[++n] = $1 } END { w = a[int(n / 10) + 1]; m = 0; for (i = 1; i <= n; i++) if (a[i] > m) m = a[i];
                  printf "warm=%.1f end=%.1f max=%.1f samples=%d", w, a[n], m, n }' "$1"; }

mkdir -p "$OUT/cp" "$OUT/gw"
(cd "$OUT/cp" && GRPC_ADDR=127.0.0.1:15291 METRICS_ADDR=127.0.0.1:0 DATABASE_URL=sqlite://reskflow.db RUST_LOG=warn exec "$BIN/control-plane") >"$OUT/cp/log" 2>&1 &
cp_pid=$!; pids+=($cp_pid); wait_port 15291
(cd "$OUT/gw" && PORT=15292 BIND_ADDR=127.0.0.1 ORCHESTRATION_URL=http://127.0.0.1:15291 JWT_SECRET=soak-secret-soak-secret-soak-secret-0123 \
    RUST_LOG=warn exec "$BIN/gateway") >"$OUT/gw/log" 2>&1 &
gw_pid=$!; pids+=($gw_pid); wait_port 15292

# The management API needs the admin role once JWT_SECRET is set: an HS256 token made with openssl.
AUTH="Bearer $(hs256_token soak-secret-soak-secret-soak-secret-0123 "$(printf '{"sub":"soak","roles":["admin"],"exp":%d}' $(($(date +%s) + 3600)))")"
api() { curl -fsS -X "$1" "http://127.0.0.1:15292$2" -H "Authorization: $AUTH" -H 'content-type: application/json' ${3:+-d "$3"} >/dev/null; }
api POST /api/registry/services '{"id":"bench"}'
api POST /api/registry/services '{"id":"ghost"}'
api POST /api/registry/instances '{"id":"backend-18080","serviceId":"bench","address":"127.0.0.1","port":18080}'
api PUT /api/gateway/routes '{"routes":[
  {"id":"ok","path":"/api/ok/*","serviceId":"bench"},
  {"id":"limited","path":"/api/limited/*","serviceId":"bench","rateLimit":{"requests":200,"window":"1s","per":["ip"]}},
  {"id":"secure","path":"/api/secure/*","serviceId":"bench","authentication":true},
  {"id":"ghost","path":"/api/ghost/*","serviceId":"ghost"}]}'
for _ in $(seq 100); do [[ $(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:15292/api/ok/x) == 200 ]] && break; sleep 0.1; done

gw_start=$(rss_mb "$gw_pid")
sample "$gw_pid" "$OUT/gw-rss.txt" & sampler=$!
log "gateway: 4 x 50 connections for $DURATION"
for route in ok limited secure ghost; do
    wrk -t1 -c50 -d"$DURATION" -s "$ROOT/bench/soak.lua" "http://127.0.0.1:15292/api/$route/item" >"$OUT/wrk-$route.txt" 2>&1 &
    wrks+=($!)
done
for w in "${wrks[@]}"; do wait "$w"; done
kill "$sampler" 2>/dev/null || true
gw_end=$(rss_mb "$gw_pid")
ok=1
check() { # check ROUTE EXPECTED: every answer of ROUTE is EXPECTED, no socket errors
    local line; line=$(grep '^SOAK ' "$OUT/wrk-$1.txt") || { log "$1: no SOAK line"; ok=0; return; }
    echo "gateway $1: ${line#SOAK }" | tee -a "$OUT/results.txt"
    declare -A m=(); for kv in ${line#SOAK }; do m[${kv%%=*}]=${kv#*=}; done
    local bad=$((m[other] + m[connect_errors] + m[read_errors] + m[write_errors] + m[timeouts]))
    for k in 2xx 401 429 503; do [[ $k == "$2" || ($1 == limited && $k == 2xx) ]] || bad=$((bad + m[$k])); done
    [[ $bad == 0 ]] || { log "$1: $bad answers that are not $2"; ok=0; }
}
check ok 2xx; check limited 429; check secure 401; check ghost 503
echo "gateway rss_mb idle=$gw_start under load: $(summary "$OUT/gw-rss.txt")" | tee -a "$OUT/results.txt"

cp_start=$(rss_mb "$cp_pid")
sample "$cp_pid" "$OUT/cp-rss.txt" & sampler=$!
secs=${DURATION%s}
log "control plane: $STREAMS config streams, an instance change every second for ${secs} s"
"$BIN/config-fanout" --url http://127.0.0.1:15291 --streams "$STREAMS" --changes "$secs" --interval-ms 1000 >"$OUT/fanout.txt" 2>&1
kill "$sampler" 2>/dev/null || true
tail -2 "$OUT/fanout.txt" | tee -a "$OUT/results.txt"
echo "control-plane rss_mb idle=$cp_start with the streams: $(summary "$OUT/cp-rss.txt")" | tee -a "$OUT/results.txt"
[[ $ok == 1 ]] || { log "FAILED: see $OUT"; exit 1; }
log "done: $OUT/results.txt"
