#!/usr/bin/env bash
# The sidecar as a proxy, side by side with nginx and HAProxy in front of the shared bench backend
# (../shared/bench), in one interleaved run of ../shared/bench/proxy-compare.sh; then its memory idle
# and with 1,000 endpoints configured.
#
#   bench/sidecar.sh        Knobs: ROUNDS=3 DURATION=10s (passed to proxy-compare.sh), SKIP_C1=0,
#                           BASELINE=path/to/an/older/sidecar (measured in the same run as "baseline")
#
# The sidecar runs on one worker thread (WORKER_THREADS=1), as nginx and HAProxy run on one worker.
# It learns the backend from a control plane (SQLite) where the script registers service "bench" with
# the instance 127.0.0.1:18080; it is the sidecar's DEFAULT_UPSTREAM, so every target gets `GET /`.
set -euo pipefail
. "$(dirname "$0")/common.sh"
OUT=${OUT:-$ROOT/bench/results/sidecar-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

cargo build --release --locked -q -p reskflow-control-plane -p reskflow-gateway -p reskflow-sidecar --manifest-path "$ROOT/Cargo.toml"

ensure_http

mkdir -p "$OUT/cp" "$OUT/gw" "$OUT/sidecar" "$OUT/sidecar-wide"
(cd "$OUT/cp" && GRPC_ADDR=127.0.0.1:15091 METRICS_ADDR=127.0.0.1:0 DATABASE_URL=sqlite://reskflow.db RUST_LOG=warn exec "$BIN/control-plane") >"$OUT/cp/log" 2>&1 &
pids+=($!); wait_port 15091
(cd "$OUT/gw" && PORT=15092 BIND_ADDR=127.0.0.1 ORCHESTRATION_URL=http://127.0.0.1:15091 RUST_LOG=warn exec "$BIN/gateway") >"$OUT/gw/log" 2>&1 &
pids+=($!); wait_port 15092
api() { curl -fsS -X "$1" "http://127.0.0.1:15092$2" -H 'content-type: application/json' ${3:+-d "$3"} >/dev/null; }
api POST /api/registry/services '{"id":"bench"}'
api POST /api/registry/instances '{"id":"backend-18080","serviceId":"bench","address":"127.0.0.1","port":18080}'

start_sidecar() { # start_sidecar DIR OUTBOUND ADMIN UPSTREAMS [BINARY]
    (cd "$1" && OUTBOUND_ADDR=127.0.0.1:$2 ADMIN_ADDR=127.0.0.1:$3 ORCHESTRATION_URL=http://127.0.0.1:15091 \
        UPSTREAMS=$4 DEFAULT_UPSTREAM=bench NODE_ID=bench-$2 WORKER_THREADS=1 RUST_LOG=warn exec "${5:-$BIN/sidecar}") >"$1/log" 2>&1 &
    pids+=($!)
    for _ in $(seq 200); do curl -fs -o /dev/null "http://127.0.0.1:$3/ready" && return 0; sleep 0.05; done
    log "sidecar on :$2 not ready"; cat "$1/log"; exit 1
}
start_sidecar "$OUT/sidecar" 18084 18085 bench
sidecar_pid=${pids[-1]}
idle=$(rss_kb "$sidecar_pid")
echo "sidecar idle_rss_kb=$idle" | tee -a "$OUT/results.txt"

targets=(direct=18080 nginx=18081 haproxy=18082 sidecar=18084)
if [[ -n ${BASELINE:-} ]]; then
    mkdir -p "$OUT/baseline"
    start_sidecar "$OUT/baseline" 18088 18089 bench "$BASELINE"
    targets+=(baseline=18088)
fi
OUT="$OUT/c50" "$SHARED/proxy-compare.sh" "${targets[@]}" | tee "$OUT/c50.md"
if [[ ${SKIP_C1:-0} != 1 ]]; then
    CONNS=1 OUT="$OUT/c1" "$SHARED/proxy-compare.sh" "${targets[@]}" | tee "$OUT/c1.md"
fi
echo "sidecar after_load_rss_kb=$(rss_kb "$sidecar_pid")" | tee -a "$OUT/results.txt"

# 1,000 endpoints of one service (addresses nobody calls) in a second sidecar's config.
api POST /api/registry/services '{"id":"wide"}'
for i in $(seq 1000); do
    printf '{"id":"wide-%d","serviceId":"wide","address":"10.%d.%d.%d","port":8080}\n' "$i" $((i / 65536)) $((i / 256 % 256)) $((i % 256))
done | while read -r body; do api POST /api/registry/instances "$body"; done
start_sidecar "$OUT/sidecar-wide" 18086 18087 bench,wide
wide_pid=${pids[-1]}
for _ in $(seq 100); do
    n=$(curl -fs http://127.0.0.1:18087/config_dump | grep -o '"id":"wide-' | wc -l)
    [[ $n -ge 1000 ]] && break; sleep 0.1
done
echo "sidecar with_1000_endpoints=$n rss_kb=$(rss_kb "$wide_pid")" | tee -a "$OUT/results.txt"
