#!/usr/bin/env bash
# Instructions per proxied request (user space), counted by valgrind's callgrind: repeatable for
# the same binary and input whatever else this noisy machine is doing, so two builds compare
# exactly where wall-clock A/B runs differ by +-10% between rounds.
#
#   bench/instructions.sh [gateway|sidecar|nginx]   Knobs: NREQ=4000 (requests counted within 40 s, after 500 unmeasured),
#                                             BASELINE=path/to/an/older/binary (counted the same way),
#                                             URLPATH=/api/bench (gateway: /api/cached/x for cache hits),
#                                             LIMIT_REDIS=redis://127.0.0.1:6379 (gateway: the limit in Redis),
#                                             BUILD=1 (0: count the binaries in target/release as they are, e.g.
#                                             after `cargo build --release -p reskflow-sidecar` alone)
#
# The gateway runs the bench route (route match + HS256 JWT + per-user limit, cache miss); the sidecar
# proxies `GET /` to the kit's backend; `nginx` counts the peer kit's nginx proxy config (one process,
# master_process off) doing the sidecar's job, as the reference. Output: instructions per request and the top functions by
# their own instructions (results.txt and top-<name>.txt in the output folder).
set -euo pipefail
. "$(dirname "$0")/common.sh"
WHAT=${1:-gateway}
OUT=${OUT:-$ROOT/bench/results/instructions-$WHAT-$(date +%Y%m%d-%H%M%S)}
NREQ=${NREQ:-4000}
mkdir -p "$OUT"
command -v valgrind >/dev/null || { log "valgrind is needed (apt-get install valgrind)"; exit 1; }
[[ ${BUILD:-1} == 0 ]] || cargo build --release --locked -q -p reskflow-control-plane -p reskflow-gateway -p reskflow-sidecar --manifest-path "$ROOT/Cargo.toml"
ensure_http

SECRET=bench-secret-bench-secret-bench-secret-0123
TOKEN=$(hs256_token "$SECRET" "$(printf '{"sub":"bench","roles":["customer","admin"],"exp":%d}' $(($(date +%s) + 86400)))")
AUTH="Bearer $TOKEN"
mkdir -p "$OUT/cp"
(cd "$OUT/cp" && GRPC_ADDR=127.0.0.1:15291 METRICS_ADDR=127.0.0.1:0 DATABASE_URL=sqlite://reskflow.db RUST_LOG=warn exec "$BIN/control-plane") >"$OUT/cp/log" 2>&1 &
pids+=($!); wait_port 15291
# The registry is filled through a gateway of the current build (not measured).
(cd "$OUT/cp" && PORT=15292 BIND_ADDR=127.0.0.1 ORCHESTRATION_URL=http://127.0.0.1:15291 JWT_SECRET="$SECRET" RUST_LOG=warn exec "$BIN/gateway") >"$OUT/cp/gw.log" 2>&1 &
pids+=($!); wait_port 15292
api() { curl -fsS -X "$1" "http://127.0.0.1:15292$2" -H "Authorization: $AUTH" -H 'content-type: application/json' ${3:+-d "$3"} >/dev/null; }
api POST /api/registry/services '{"id":"bench"}'
api POST /api/registry/instances '{"id":"backend-18080","serviceId":"bench","address":"127.0.0.1","port":18080}'
api PUT /api/gateway/routes '{"routes":[{"id":"bench","path":"/api/*","serviceId":"bench","authentication":true,"authorization":["customer"],"rateLimit":{"requests":10000000,"window":"1s"}},{"id":"cached","path":"/api/cached/*","serviceId":"bench","authentication":true,"authorization":["customer"],"rateLimit":{"requests":10000000,"window":"1s"},"cache":{"ttl":300}}]}'

count() { # count NAME BINARY PORT: instructions per request of BINARY under callgrind
    local name=$1 binary=$2 port=$3 dir="$OUT/$1" url
    mkdir -p "$dir"
    if [[ $WHAT == nginx ]]; then
        url="http://127.0.0.1:$port/"
        mkdir -p "$dir/tmp" "$dir/logs"
        sed -e 's/master_process on/master_process off/' -e "s/127.0.0.1:18081/127.0.0.1:$port/" \
            "$SHARED/conf/nginx-proxy.conf" >"$dir/nginx.conf"
        (cd "$dir" && exec valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" nginx -p "$dir/" -c "$dir/nginx.conf" -e stderr) >"$dir/log" 2>&1 &
    elif [[ $WHAT == gateway ]]; then
        url="http://127.0.0.1:$port${URLPATH:-/api/bench}"
        (cd "$dir" && exec env PORT="$port" BIND_ADDR=127.0.0.1 ORCHESTRATION_URL=http://127.0.0.1:15291 WORKER_THREADS=1 \
            ${LIMIT_REDIS:+REDIS_URL=$LIMIT_REDIS} JWT_SECRET="$SECRET" RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$binary") >"$dir/log" 2>&1 &
    else
        url="http://127.0.0.1:$port/"
        (cd "$dir" && exec env OUTBOUND_ADDR=127.0.0.1:$port ADMIN_ADDR=127.0.0.1:$((port + 1)) ORCHESTRATION_URL=http://127.0.0.1:15291 \
            UPSTREAMS=bench DEFAULT_UPSTREAM=bench NODE_ID=instr-$name WORKER_THREADS=1 RUST_LOG=warn \
            valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out" "$binary") >"$dir/log" 2>&1 &
    fi
    local vpid=$!
    pids+=($vpid)
    for _ in $(seq 600); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $AUTH" "$url") == 200 ]] && break; sleep 0.1
    done
    NREQ=500 wrk -t1 -c10 -d15s -s "$ROOT/bench/stop-after.lua" -H "Authorization: $AUTH" "$url" >/dev/null
    callgrind_control -z "$vpid" >/dev/null 2>&1
    local served
    served=$(NREQ=$NREQ wrk -t1 -c10 -d40s -s "$ROOT/bench/stop-after.lua" -H "Authorization: $AUTH" "$url" | awk '/requests in/ {print $1}')
    callgrind_control -d "$vpid" >/dev/null 2>&1
    sleep 1
    kill "$vpid"; wait "$vpid" 2>/dev/null || true
    python3 "$ROOT/bench/callgrind-self.py" "$dir/cg.out.1" "$served" 40 >"$OUT/top-$name.txt"
    echo "$WHAT $name: $(head -1 "$OUT/top-$name.txt" | awk '{printf "%.0f", $4}') instructions per request ($served requests)" | tee -a "$OUT/results.txt"
}
if [[ $WHAT == nginx ]]; then
    count nginx nginx 18300
    exit 0
fi
count current "$BIN/$WHAT" 18300
[[ -n ${BASELINE:-} ]] && count baseline "$BASELINE" 18310
true
