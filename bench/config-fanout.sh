#!/usr/bin/env bash
# Config-stream fan-out: bench/watch-fanout.sh with FANOUT=config (1,000 config streams that ACK
# every update, as sidecars; the time from a registry write to each stream's new config).
FANOUT=config exec "$(dirname "$0")/watch-fanout.sh" "$@"
