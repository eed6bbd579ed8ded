#!/usr/bin/env bash
# Server CPU per request for GET /healthz and POST /v1/tokens on one server:
# user+system ticks of the server process (from /proc) over a wrk run,
# divided by the requests wrk completed; also the machine's busy/idle/steal
# ticks. Needs a release build and wrk.
# Usage: [TOKENGATE_BIN=path] [CONN=64] [DUR=8] bench/cpu-per-request.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${TOKENGATE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/tokengate-target}/release/tokengate}"
WORK="$(mktemp -d /tmp/tg-cpu-XXXXXX)"
ADMIN=$("$BIN" init --json --data-dir "$WORK/data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_api_key"])')
TOKENGATE_LOG=warn "$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:18944 > "$WORK/out" 2> "$WORK/err" &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
BASE=https://127.0.0.1:18944
TG_KEY=$(curl -sk "$BASE/v1/api-keys" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
  -d '{"name":"bench","roles":["tokenize","reveal"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
export TG_KEY
TICK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$PID/stat"; }
machine() { awk '/^cpu /{print $2+$3+$4, $5, $9}' /proc/stat; }
run() {
  local name=$1; shift
  local c0 c1 u0 i0 s0 u1 i1 s1 out rps reqs p99
  c0=$(cpu); read -r u0 i0 s0 < <(machine)
  out=$(wrk -t2 -c"${CONN:-64}" -d"${DUR:-8}s" --latency "$@")
  c1=$(cpu); read -r u1 i1 s1 < <(machine)
  rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  p99=$(echo "$out" | awk '/ 99%/{print $2}')
  echo "$name req/s=$rps p99=$p99 server_us_per_req=$(( (c1 - c0) * 1000000 / TICK / reqs )) busy=$((u1 - u0)) idle=$((i1 - i0)) steal=$((s1 - s0))"
}
for _ in 1 2; do
  run healthz "$BASE/healthz"
  run tokenize -s bench/tokenize.lua "$BASE/v1/tokens"
done
