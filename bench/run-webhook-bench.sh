#!/usr/bin/env bash
# Webhook receiver throughput over HTTPS keep-alive: verified-and-stored
# webhooks/s (2 KB bodies; each one HMAC-verified, screened for card numbers
# and committed durably to the SQLite outbox before the 200), with
# GET /healthz on the same server in the same run as the baseline.
# Needs a release build and wrk (apt-get install wrk).
# Usage: [TOKENGATE_BIN=path] bench/run-webhook-bench.sh [duration_s] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"; CONN="${2:-64}"
BIN="${TOKENGATE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/tokengate-target}/release/tokengate}"
WORK="$(mktemp -d /tmp/tg-whbench-XXXXXX)"
SECRET="bench-secret-$RANDOM$RANDOM"
# shellcheck source=bench/webhook-fixture.sh
. bench/webhook-fixture.sh
webhook_source_toml "$SECRET" > "$WORK/tokengate.toml"
"$BIN" init --json --data-dir "$WORK/data" > /dev/null
TOKENGATE_LOG=warn "$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:18944 \
  --config "$WORK/tokengate.toml" > "$WORK/out" 2> "$WORK/err" &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
BASE=https://127.0.0.1:18944
# A 2,048-byte JSON body and its signature.
webhook_signed_body "$WORK" "$SECRET"
# One request by hand: must be stored.
curl -sk "$BASE/webhooks/bench" -H "X-Signature: $WH_SIG" -H "X-Timestamp: $WH_TS" \
  -H "X-Event-Id: probe" -H 'Content-Type: application/json' --data-binary @"$WH_BODY"; echo
# Server CPU (user+system) per completed request, from /proc.
TICK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$PID/stat"; }
run() {
  local name=$1; shift
  local c0 c1 out
  c0=$(cpu)
  out=$(wrk -t2 -c"$CONN" -d"${DUR}s" --latency "$@")
  c1=$(cpu)
  echo "== $name"; echo "$out"
  echo "$out" | awk -v d=$((c1 - c0)) -v t="$TICK" '/requests in/{printf "server CPU per request: %.0f us\n", d / t * 1e6 / $1}'
}
run healthz "$BASE/healthz"
run webhooks -s bench/webhook.lua "$BASE"
run "healthz (again)" "$BASE/healthz"
# Group-commit batch sizes and times, and WAL fsync times, over the run.
curl -sk "$BASE/metrics" | grep -E '^tokengate_store_(commit|wal|batch)[a-z_]*(\{quantile="0.5"\}|\{quantile="0.99"\}|_count)' || true
kill $PID; wait $PID 2>/dev/null || true
python3 - "$WORK/data/tokengate.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
n, size = db.execute("SELECT COUNT(*), SUM(LENGTH(payload)) FROM webhook_events").fetchone()
print(f"outbox: {n} events stored, {size} payload bytes")
PY
