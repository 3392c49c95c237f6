#!/usr/bin/env bash
# Workflow throughput: RUNS 3-step runs against a no-op action service (served by the load
# generator itself, in Rust), on SQLite and on PostgreSQL, with `pgbench -N` on the same PostgreSQL
# server in the same run as the reference. Then the control plane's memory with 100,000 finished
# runs stored.
#
#   bench/workflows.sh     Knobs: RUNS=3000 CONCURRENCY=32 RATE=100 WORKFLOW_CONCURRENCY=64 DATABASE_URL
#
# Each store gets two runs: as fast as it goes (throughput), then RATE runs/s for 10 s (the latency
# from execute to the first step call, when the engine keeps up).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${RUNS:-3000} CONCURRENCY=${CONCURRENCY:-32} WORKFLOW_CONCURRENCY=${WORKFLOW_CONCURRENCY:-64} RATE=${RATE:-100}
PG_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
OUT=${OUT:-$ROOT/bench/results/workflows-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

cargo build --release --locked -q -p reskflow-control-plane -p reskflow-bench --manifest-path "$ROOT/Cargo.toml"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
cp_pid=
trap '[[ -n $cp_pid ]] && kill $cp_pid 2>/dev/null; true' EXIT

start_cp() { # start_cp NAME DATABASE_URL PORT
    mkdir -p "$OUT/$1"
    (cd "$OUT/$1" && GRPC_ADDR=127.0.0.1:$3 METRICS_ADDR=127.0.0.1:0 DATABASE_URL=$2 WORKFLOW_CONCURRENCY=$WORKFLOW_CONCURRENCY RUST_LOG=warn \
        exec "$BIN/control-plane") >>"$OUT/$1/cp.log" 2>&1 &
    cp_pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$3) 2>/dev/null && return 0; sleep 0.1; done
    log "$1: control plane did not start"; cat "$OUT/$1/cp.log"; exit 1
}
stop_cp() { kill "$cp_pid"; wait "$cp_pid" 2>/dev/null || true; cp_pid=; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$cp_pid/status"; }

run() { # run NAME DATABASE_URL PORT
    start_cp "$1" "$2" "$3"
    local line
    line=$("$BIN/workflow-load" --url "http://127.0.0.1:$3" --runs "$RUNS" --concurrency "$CONCURRENCY" | grep '^RESULT')
    echo "$1 throughput $line cp_rss_kb=$(rss_kb)" | tee -a "$OUT/results.txt"
    line=$("$BIN/workflow-load" --url "http://127.0.0.1:$3" --runs "$((RATE * 10))" --rate "$RATE" --concurrency 256 | grep '^RESULT')
    echo "$1 rate=$RATE/s $line" | tee -a "$OUT/results.txt"
    stop_cp
}

run sqlite "sqlite://$OUT/sqlite/reskflow.db" 15081

if ! pg_isready -d "$PG_URL" >/dev/null 2>&1; then
    log "PostgreSQL at $PG_URL is down: SQLite only"; exit 0
fi
sep='?'; [[ $PG_URL == *\?* ]] && sep='&'
schema="wfbench_$(date +%s)"
psql -q "$PG_URL" -c "CREATE SCHEMA $schema" >/dev/null
PG_SCHEMA_URL="${PG_URL}${sep}options=-c%20search_path%3D$schema"

# The reference, on the same server, just before: pgbench's simple-update transaction mix.
bench_db=reskflow_pgbench
psql -q "$PG_URL" -tc "SELECT 1 FROM pg_database WHERE datname = '$bench_db'" | grep -q 1 || psql -q "$PG_URL" -c "CREATE DATABASE $bench_db" >/dev/null
PGBENCH_URL=$(sed -E "s#/[^/?]+(\?|$)#/$bench_db\1#" <<<"$PG_URL")
pgbench -q -i -s 10 "$PGBENCH_URL" >/dev/null 2>&1
tps=$(pgbench -N -c 8 -j 2 -T 15 "$PGBENCH_URL" 2>/dev/null | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
echo "pgbench-N tps=$tps" | tee -a "$OUT/results.txt"

run postgres "$PG_SCHEMA_URL" 15082

# Memory with 100,000 finished runs stored: copy a finished run 100,000 times, restart, use it.
psql -q "$PG_URL" -c "SET search_path = $schema; INSERT INTO workflow_instances (id, workflow_id, version, status, run, created_at_ms, updated_at_ms) \
    SELECT 'copy-' || g, workflow_id, version, status, run, created_at_ms - g, updated_at_ms FROM generate_series(1, 100000) g, \
    (SELECT * FROM workflow_instances WHERE status = 'COMPLETED' LIMIT 1) f" >/dev/null
start_cp postgres-100k "$PG_SCHEMA_URL" 15083
"$BIN/workflow-load" --url http://127.0.0.1:15083 --runs 200 --concurrency 8 >/dev/null
stored=$(psql -qtA "$PG_URL" -c "SELECT COUNT(*) FROM $schema.workflow_instances WHERE status = 'COMPLETED'")
echo "postgres-100k finished_runs_stored=$stored cp_rss_kb=$(rss_kb)" | tee -a "$OUT/results.txt"
stop_cp
