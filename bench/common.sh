# Shared by the whole-binary bench scripts (sidecar.sh, gateway.sh, soak.sh). Source it after
# setting OUT: . "$(dirname "$0")/common.sh"
# Gives ROOT, SHARED (the peer kit), BIN (release binaries), log, wait_port, the rss helpers, a
# `pids` array killed on exit, and ensure_http (the kit's backend, nginx and HAProxy; stopped on
# exit if this script started them).
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHARED=${SHARED:-$(cd "$ROOT/../shared/bench" && pwd)}
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [[ -n ${started_http:-} ]] && "$SHARED/http-down.sh" >/dev/null 2>&1
    true
}
trap cleanup EXIT

ensure_http() {
    if ! curl -fs -o /dev/null http://127.0.0.1:18080/; then
        "$SHARED/http-up.sh" >/dev/null; started_http=1
    fi
}

wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; log "nothing on :$1"; exit 1; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$1/status"; }

# hs256_token SECRET PAYLOAD_JSON: a signed JWT, made with openssl.
hs256_token() {
    local b64url='openssl base64 -A | tr "+/" "-_" | tr -d "="' h p s
    h=$(printf '{"alg":"HS256","typ":"JWT"}' | eval "$b64url")
    p=$(printf '%s' "$2" | eval "$b64url")
    s=$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -hmac "$1" -binary | eval "$b64url")
    printf '%s.%s.%s' "$h" "$p" "$s"
}
