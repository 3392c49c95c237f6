#!/usr/bin/env bash
# The gateway as an API gateway, side by side with nginx and HAProxy in front of the shared bench
# backend (../shared/bench), in interleaved runs of ../shared/bench/proxy-compare.sh:
#
#   1. route match + JWT (HS256) check + per-user rate limit (local), cache miss   -> c50.md, c1.md
#   2. the same with the rate limit shared in Redis                                  -> redis.md
#      and Redis's script time per request (INFO commandstats; resets Redis's stats)  -> results.txt
#   3. a cached route (every request a hit)                                          -> cache.md
#   then the cold start to the first proxied 200 (startup.txt; bench/cold-start.py, COLD_RUNS=20 runs).
#
#   bench/gateway.sh        Knobs: ROUNDS=3 DURATION=10s (passed to proxy-compare.sh), SKIP_C1=0,
#                           ONLY_MISS=0 (1: the cache-miss runs only, no cache/Redis/cold-start runs),
#                           ONLY_REDIS=0 (1: the Redis runs only), ONLY_CACHE=0 (1: the cache-hit runs only),
#                           ONLY_COLD=0 (1: the cold starts only),
#                           BASELINE=path/to/an/older/gateway (measured in the same runs as "baseline"),
#                           BUILD=1 (0: run the binaries in target/release as they are)
#
# Every target gets the same `Authorization: Bearer <token>` header (nginx and HAProxy ignore it): the
# kit's proxy-compare.sh and lib.sh are copied and its wrk script gets the header, nothing else
# changes. The gateway runs on one worker thread (WORKER_THREADS=1), as nginx and HAProxy run on one.
set -euo pipefail
. "$(dirname "$0")/common.sh"
OUT=${OUT:-$ROOT/bench/results/gateway-$(date +%Y%m%d-%H%M%S)}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
mkdir -p "$OUT"

# The same packages as sidecar.sh builds: one feature set, so neither script rebuilds the other's binaries.
[[ ${BUILD:-1} == 0 ]] || cargo build --release --locked -q -p reskflow-control-plane -p reskflow-gateway -p reskflow-sidecar --manifest-path "$ROOT/Cargo.toml"

ensure_http

# An HS256 token for user "bench" (valid for a day), made with openssl.
SECRET=bench-secret-bench-secret-bench-secret-0123
TOKEN=$(hs256_token "$SECRET" "$(printf '{"sub":"bench","roles":["customer","admin"],"exp":%d}' $(($(date +%s) + 86400)))")
AUTH="Bearer $TOKEN"

# The kit, with the header on every wrk request and on its readiness probe.
KIT="$OUT/kit"
mkdir -p "$KIT"
cp "$SHARED/proxy-compare.sh" "$SHARED/lib.sh" "$KIT/"
{ printf 'wrk.headers["Authorization"] = "%s"\n' "$AUTH"; cat "$SHARED/wrk-report.lua"; } >"$KIT/wrk-report.lua"
sed -i "s|curl -s -o /dev/null|curl -s -H 'Authorization: $AUTH' -o /dev/null|; s|127.0.0.1:\$port/\"|127.0.0.1:\$port\$URLPATH\"|" "$KIT/lib.sh"
# The gateway proxies /api/*: every target is asked for the same path.
export URLPATH=/api/bench

mkdir -p "$OUT/cp"
(cd "$OUT/cp" && GRPC_ADDR=127.0.0.1:15191 METRICS_ADDR=127.0.0.1:0 DATABASE_URL=sqlite://reskflow.db RUST_LOG=warn exec "$BIN/control-plane") >"$OUT/cp/log" 2>&1 &
pids+=($!); wait_port 15191

start_gateway() { # start_gateway NAME PORT [ENV=VALUE...]; GATEWAY_BIN overrides the binary
    local name=$1 port=$2; shift 2
    mkdir -p "$OUT/$name"
    (cd "$OUT/$name" && env PORT="$port" BIND_ADDR=127.0.0.1 ORCHESTRATION_URL=http://127.0.0.1:15191 \
        WORKER_THREADS=1 JWT_SECRET="$SECRET" RUST_LOG=warn "$@" "${GATEWAY_BIN:-$BIN/gateway}") >"$OUT/$name/log" 2>&1 &
    pids+=($!); wait_port "$port"
}
start_gateway gw 18090
api() { curl -fsS -X "$1" "http://127.0.0.1:18090$2" -H "Authorization: $AUTH" -H 'content-type: application/json' ${3:+-d "$3"} >/dev/null; }
api POST /api/registry/services '{"id":"bench"}'
api POST /api/registry/instances '{"id":"backend-18080","serviceId":"bench","address":"127.0.0.1","port":18080}'
# Every path: authenticated, 10 million requests a second per user (never reached: the check runs).
# /api/cached/* is the same with a 5-minute cache.
api PUT /api/gateway/routes '{"routes":[{"id":"bench","path":"/api/*","serviceId":"bench","authentication":true,"authorization":["customer"],"rateLimit":{"requests":10000000,"window":"1s"}},{"id":"cached","path":"/api/cached/*","serviceId":"bench","authentication":true,"authorization":["customer"],"rateLimit":{"requests":10000000,"window":"1s"},"cache":{"ttl":300}}]}'
ready() { for _ in $(seq 100); do [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $AUTH" "http://127.0.0.1:$1/api/bench") == 200 ]] && break; sleep 0.1; done; }
ready 18090

if [[ ${ONLY_COLD:-0} != 1 ]]; then
    if [[ ${ONLY_REDIS:-0} != 1 ]]; then
        targets=(direct=18080 nginx=18081 haproxy=18082 gateway=18090)
        if [[ -n ${BASELINE:-} ]]; then
            GATEWAY_BIN=$BASELINE start_gateway baseline 18092
            ready 18092
            targets+=(baseline=18092)
        fi
        if [[ ${ONLY_CACHE:-0} != 1 ]]; then
            OUT="$OUT/c50" "$KIT/proxy-compare.sh" "${targets[@]}" | tee "$OUT/c50.md"
            if [[ ${SKIP_C1:-0} != 1 ]]; then
                CONNS=1 OUT="$OUT/c1" "$KIT/proxy-compare.sh" "${targets[@]}" | tee "$OUT/c1.md"
            fi
        fi
        [[ ${ONLY_MISS:-0} == 1 ]] && exit 0

        # Cache hits: every request after the first is answered from the gateway's cache.
        targets=(direct=18080 nginx=18081 gateway-cache=18090)
        [[ -n ${BASELINE:-} ]] && targets+=(baseline-cache=18092)
        URLPATH=/api/cached/item OUT="$OUT/cache" "$KIT/proxy-compare.sh" "${targets[@]}" | tee "$OUT/cache.md"
        [[ ${ONLY_CACHE:-0} == 1 ]] && exit 0
    fi

    # The same route with the limit in Redis (a second gateway; same control plane).
    start_gateway gw-redis 18091 REDIS_URL="$REDIS_URL"
    ready 18091
    targets=(direct=18080 nginx=18081 gateway-redis=18091)
    if [[ -n ${BASELINE:-} ]]; then
        GATEWAY_BIN=$BASELINE start_gateway baseline-redis 18093 REDIS_URL="$REDIS_URL"
        ready 18093
        targets+=(baseline-redis=18093)
    fi
    OUT="$OUT/redis" "$KIT/proxy-compare.sh" "${targets[@]}" | tee "$OUT/redis.md"
    echo "gateway-redis fallback: $(curl -s -H "Authorization: $AUTH" http://127.0.0.1:18091/api/gateway/metrics | grep -o '"redis":{[^}]*}')" | tee -a "$OUT/results.txt"

    # Redis's own CPU per decided request, each gateway alone for 5 s at c=50: the script's time in
    # Redis (INFO commandstats, EVALSHA) over the requests the gateway's batches decided.
    redis_cost() { # redis_cost NAME PORT
        local before after calls checks usec
        before=$(curl -s -H "Authorization: $AUTH" "http://127.0.0.1:$2/api/gateway/metrics" | grep -o '"redis":{[^}]*}' | grep -o '"checks":[0-9]*' | cut -d: -f2)
        redis-cli -u "$REDIS_URL" CONFIG RESETSTAT >/dev/null
        wrk -t1 -c50 -d5s -H "Authorization: $AUTH" "http://127.0.0.1:$2/api/bench" >"$OUT/redis-cost-$1.txt"
        read -r calls usec < <(redis-cli -u "$REDIS_URL" INFO commandstats | tr -d '\r' | awk -F'[=,]' '/^cmdstat_evalsha:/ {print $2, $4}')
        after=$(curl -s -H "Authorization: $AUTH" "http://127.0.0.1:$2/api/gateway/metrics" | grep -o '"redis":{[^}]*}' | grep -o '"checks":[0-9]*' | cut -d: -f2)
        checks=$((after - before))
        echo "$1: $checks requests decided in $calls script calls ($(awk -v c="$checks" -v n="$calls" 'BEGIN{printf "%.1f", c / n}') per call), Redis $(awk -v u="$usec" -v c="$checks" 'BEGIN{printf "%.2f", u / c}') us of script time per request, $(awk '/Requests\/sec/ {print $2}' "$OUT/redis-cost-$1.txt") req/s" | tee -a "$OUT/results.txt"
    }
    redis_cost gateway-redis 18091
    [[ -n ${BASELINE:-} ]] && redis_cost baseline-redis 18093
    [[ ${ONLY_REDIS:-0} == 1 ]] && exit 0
fi

# Cold start: exec to the first proxied 200, with the routes and endpoints from the saved config
# of the first gateway's node name (what a restarted gateway does) and the control plane up. One
# process spawns the gateway and polls it (bench/cold-start.py): a `curl` per try cost several ms.
: >"$OUT/startup.txt"
for i in $(seq "${COLD_RUNS:-20}"); do
    dir="$OUT/cold-$i"; mkdir -p "$dir"; cp "$OUT/gw"/reskflow-*.json "$dir/saved.json"
    python3 "$ROOT/bench/cold-start.py" 18095 "$AUTH" "$dir" "$BIN/gateway" PORT=18095 BIND_ADDR=127.0.0.1 \
        ORCHESTRATION_URL=http://127.0.0.1:15191 WORKER_THREADS=1 JWT_SECRET="$SECRET" CONFIG_CACHE=saved.json \
        NODE_ID=cold-$i RUST_LOG=info >>"$OUT/startup.txt"
done
sort -t= -k2 -n "$OUT/startup.txt" | awk -F'[= ]' '{a[NR]=$2} END{printf "gateway cold start to first proxied 200: median %.1f ms, p90 %.1f ms, max %.1f ms (%d runs)\n", a[int((NR+1)/2)], a[int(NR*0.9+0.5)], a[NR], NR}' | tee -a "$OUT/results.txt"
