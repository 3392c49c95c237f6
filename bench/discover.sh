#!/usr/bin/env bash
# Discover through the gateway REST API (wrk -> gateway -> gRPC -> control plane memory), on SQLite
# and on PostgreSQL, interleaved round by round with nginx proxying the shared bench backend, so the
# ratio to nginx comes from one run on one machine state.
#
#   bench/discover.sh            (needs wrk and nginx: ../shared/bench/install.sh)
#
# Knobs: ROUNDS=3 DURATION=10s WARMUP=2s CONNS=50 INSTANCES=3 STRATEGY=round_robin
#        DATABASE_URL (PostgreSQL; default postgres://postgres@127.0.0.1:5432/test, skipped if down)
# Output: bench/results/discover-<timestamp>/{runs.tsv,summary.md,*.log}
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=$(cd "$ROOT/../shared/bench" && pwd)
ROUNDS=${ROUNDS:-3} DURATION=${DURATION:-10s} WARMUP=${WARMUP:-2s} CONNS=${CONNS:-50}
INSTANCES=${INSTANCES:-3} STRATEGY=${STRATEGY:-round_robin}
PG_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
OUT=${OUT:-$ROOT/bench/results/discover-$(date +%Y%m%d-%H%M%S)}
HZ=$(getconf CLK_TCK)
mkdir -p "$OUT"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cargo build --release --locked -q -p reskflow-control-plane -p reskflow-gateway --manifest-path "$ROOT/Cargo.toml"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

started_peers=0
if ! curl -sf -o /dev/null http://127.0.0.1:18081/; then
    "$SHARED/http-up.sh"
    started_peers=1
fi
[[ $started_peers == 1 ]] && trap 'cleanup; "$SHARED/http-down.sh"' EXIT

cpu_ticks() { local t=0 p a; for p in "$@"; do read -ra a <<<"$(sed 's/^.*) //' /proc/$p/stat)"; t=$((t + a[11] + a[12])); done; echo $t; }

# start_system NAME DATABASE_URL GRPC_PORT REST_PORT: control plane + gateway, with a bench service.
start_system() {
    local name=$1 db=$2 grpc=$3 rest=$4
    local dir="$OUT/$name"; mkdir -p "$dir"
    (cd "$dir" && GRPC_ADDR=127.0.0.1:$grpc METRICS_ADDR=127.0.0.1:0 DATABASE_URL=$db RUST_LOG=warn exec "$BIN/control-plane") >"$dir/cp.log" 2>&1 &
    pids+=($!); eval "${name}_cp=$!"
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$grpc) 2>/dev/null && break; sleep 0.1; done
    (PORT=$rest BIND_ADDR=127.0.0.1 ORCHESTRATION_URL=http://127.0.0.1:$grpc RUST_LOG=warn exec "$BIN/gateway") >"$dir/gw.log" 2>&1 &
    pids+=($!); eval "${name}_gw=$!"
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$rest/ready" && break; sleep 0.1; done
    curl -sf -o /dev/null -XPOST "http://127.0.0.1:$rest/api/registry/services" -H 'content-type: application/json' \
        -d '{"id":"bench","tags":["bench"]}' || true
    for i in $(seq "$INSTANCES"); do
        curl -sf -o /dev/null -XPOST "http://127.0.0.1:$rest/api/registry/instances" -H 'content-type: application/json' \
            -d "{\"id\":\"bench-$i\",\"serviceId\":\"bench\",\"address\":\"127.0.0.1\",\"port\":$((9000 + i)),\"zone\":\"z$((i % 2))\"}" || true
    done
    curl -sf -XPOST "http://127.0.0.1:$rest/api/registry/discover" -H 'content-type: application/json' \
        -d '{"serviceId":"bench"}' >/dev/null || { log "$name: discover does not answer 200"; cat "$dir"/*.log; exit 1; }
}

# Fresh state for each run of the bench: a new SQLite file and a new PostgreSQL schema.
targets=("nginx")
start_system sqlite "sqlite://$OUT/sqlite/reskflow.db" 15051 13024
targets+=("sqlite")
if pg_isready -d "$PG_URL" >/dev/null 2>&1; then
    schema="bench_$(date +%s)"
    psql -q "$PG_URL" -c "CREATE SCHEMA $schema" >/dev/null
    sep='?'; [[ $PG_URL == *\?* ]] && sep='&'
    start_system postgres "${PG_URL}${sep}options=-c%20search_path%3D$schema" 15052 13025
    targets+=("postgres")
else
    log "PostgreSQL at $PG_URL is down: measuring SQLite only"
fi

body="{\"serviceId\":\"bench\",\"strategy\":\"$STRATEGY\"}"
printf 'round\ttarget\trps\tp50_us\tp99_us\terrors\tnon2xx\tcpu_us_per_req\n' >"$OUT/runs.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
    n=${#targets[@]}
    for ((k = 0; k < n; k++)); do
        t=${targets[$(((k + r - 1) % n))]}
        case $t in
            nginx) url=http://127.0.0.1:18081/; script=$SHARED/wrk-report.lua; procs=$(ss -Htlnp 'sport = :18081' | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u | xargs) ;;
            sqlite) url=http://127.0.0.1:13024/api/registry/discover; script=$ROOT/bench/discover.lua; procs="$sqlite_cp $sqlite_gw" ;;
            postgres) url=http://127.0.0.1:13025/api/registry/discover; script=$ROOT/bench/discover.lua; procs="$postgres_cp $postgres_gw" ;;
        esac
        export REPORT_LUA=$SHARED/wrk-report.lua DISCOVER_BODY=$body
        wrk -t1 -c"$CONNS" -d"$WARMUP" -s "$script" "$url" >/dev/null 2>&1 || true
        # shellcheck disable=SC2086
        before=$(cpu_ticks $procs)
        line=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency -s "$script" "$url" | tee -a "$OUT/wrk-$t.txt" | grep '^RESULT')
        # shellcheck disable=SC2086
        after=$(cpu_ticks $procs)
        get() { sed -n "s/.* $1=\([0-9.]*\).*/\1/p" <<<"$line"; }
        req=$(get requests); errs=$(( $(get err_connect) + $(get err_read) + $(get err_write) + $(get err_timeout) ))
        cpu=$(awk -v d=$((after - before)) -v hz="$HZ" -v n="$req" 'BEGIN { printf "%.2f", n ? d / hz * 1e6 / n : 0 }')
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$(get rps)" "$(get p50_us)" "$(get p99_us)" "$errs" "$(get non2xx3xx)" "$cpu" >>"$OUT/runs.tsv"
        log "round $r $t: $(get rps) req/s p99 $(get p99_us) us, cpu $cpu us/req"
    done
done

{
    echo "# discover via gateway, $(date -Is)"
    echo
    echo "wrk -t1 -c$CONNS -d$DURATION, $ROUNDS interleaved rounds, $INSTANCES instances, strategy $STRATEGY; medians."
    echo "CPU us/req: gateway + control plane (nginx: its worker and master)."
    echo
    echo "| target | rps (median) | p50 ms | p99 ms | CPU us/req | rps / nginx | errors |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    awk -F'\t' 'NR > 1 { rps[$2] = rps[$2] " " $3; p50[$2] = p50[$2] " " $4; p99[$2] = p99[$2] " " $5; cpu[$2] = cpu[$2] " " $8; err[$2] += $6 + $7 }
        function med(s,   a, n, i, j, t) { n = split(s, a, " "); for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }; return a[int((n + 1) / 2)] }
        END { base = med(rps["nginx"]); for (t in rps) printf "| %s | %.0f | %.3f | %.3f | %.1f | %.2f | %d |\n", t, med(rps[t]), med(p50[t]) / 1000, med(p99[t]) / 1000, med(cpu[t]), med(rps[t]) / base, err[t] }' "$OUT/runs.tsv" | sort
} >"$OUT/summary.md"
cat "$OUT/summary.md"
