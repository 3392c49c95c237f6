#!/usr/bin/env bash
# Fan-out: STREAMS concurrent streams (one connection each, as sidecars hold them) on one control
# plane; CHANGES registry changes made one at a time; for each stream, the time from the write call
# to the change arriving. On SQLite and on PostgreSQL. FANOUT=watch: registry Watch streams;
# FANOUT=config: config streams that ACK every update (bench/config-fanout.sh sets it).
#
#   bench/watch-fanout.sh        Knobs: FANOUT=watch STREAMS=1000 CHANGES=50 INTERVAL_MS=100 DATABASE_URL
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FANOUT=${FANOUT:-watch} STREAMS=${STREAMS:-1000} CHANGES=${CHANGES:-50} INTERVAL_MS=${INTERVAL_MS:-100}
PG_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
OUT=${OUT:-$ROOT/bench/results/$FANOUT-fanout-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
# Each stream is a connection: the server and the load generator each hold STREAMS sockets.
ulimit -n "$(ulimit -Hn)"

cargo build --release --locked -q -p reskflow-control-plane -p reskflow-bench --manifest-path "$ROOT/Cargo.toml"
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
cp_pid=
trap '[[ -n $cp_pid ]] && kill $cp_pid 2>/dev/null; true' EXIT

run() { # run NAME DATABASE_URL PORT
    local name=$1 db=$2 port=$3
    mkdir -p "$OUT/$name"
    (cd "$OUT/$name" && GRPC_ADDR=127.0.0.1:$port METRICS_ADDR=127.0.0.1:0 DATABASE_URL=$db RUST_LOG=warn exec "$BIN/control-plane") >"$OUT/$name/cp.log" 2>&1 &
    cp_pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
    local rss_before rss_after line
    rss_before=$(awk '/VmRSS/ {print $2}' /proc/$cp_pid/status)
    line=$("$BIN/$FANOUT-fanout" --url "http://127.0.0.1:$port" --streams "$STREAMS" --changes "$CHANGES" --interval-ms "$INTERVAL_MS" | grep '^RESULT')
    rss_after=$(awk '/VmRSS/ {print $2}' /proc/$cp_pid/status)
    echo "$name $line cp_rss_idle_kb=$rss_before cp_rss_streams_kb=$rss_after" | tee -a "$OUT/results.txt"
    kill $cp_pid; wait $cp_pid 2>/dev/null || true; cp_pid=
}

run sqlite "sqlite://$OUT/sqlite/reskflow.db" 15071
if pg_isready -d "$PG_URL" >/dev/null 2>&1; then
    schema="fanout_$(date +%s)"
    psql -q "$PG_URL" -c "CREATE SCHEMA $schema" >/dev/null
    sep='?'; [[ $PG_URL == *\?* ]] && sep='&'
    run postgres "${PG_URL}${sep}options=-c%20search_path%3D$schema" 15072
fi
