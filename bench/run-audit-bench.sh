#!/usr/bin/env bash
# Durable audit appends/s through HTTPS, and the cost of checkpoints, proofs
# and full verification at ~1,000,000 records. Needs a release build and wrk.
# Every request carries an unknown API key: tokengate answers 401 only after
# the `auth_failure` record is committed and its WAL fsynced (fail closed), so
# wrk's req/s is durable appends/s. /healthz on the same server is the baseline.
# Usage: [TOKENGATE_BIN=path] bench/run-audit-bench.sh [seconds_per_run] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"; CONN="${2:-256}"
BIN="${TOKENGATE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/tokengate-target}/release/tokengate}"
WORK="$(mktemp -d /tmp/tg-audit-bench-XXXXXX)"
"$BIN" init --json --data-dir "$WORK/data" > /dev/null
# One checkpoint at start, then none for an hour: the timed checkpoint below
# covers every record written by the load.
TOKENGATE_LOG=warn TOKENGATE_AUDIT_CHECKPOINT_SECS=3600 "$BIN" serve --data-dir "$WORK/data" \
  --listen 127.0.0.1:18945 > "$WORK/out" 2> "$WORK/err" &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
BASE=https://127.0.0.1:18945
echo "== healthz";       wrk -t2 -c"$CONN" -d"${DUR}s" --latency "$BASE/healthz"
echo "== audit appends"; wrk -t2 -c"$CONN" -d"${DUR}s" --latency -s bench/audit-append.lua "$BASE/v1/tokens/tok_x"
echo "== healthz (again)"; wrk -t2 -c"$CONN" -d"${DUR}s" --latency "$BASE/healthz"
if [ "${FILL:-0}" -gt 0 ]; then
  echo "== filling to ${FILL} records"
  while :; do
    n=$("$BIN" audit verify --json --data-dir "$WORK/data" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_seq"])')
    [ "$n" -ge "$FILL" ] && break
    wrk -t2 -c"$CONN" -d20s -s bench/audit-append.lua "$BASE/v1/tokens/tok_x" > /dev/null
  done
fi
kill $PID; wait $PID 2>/dev/null || true
t() { local s e; s=$(date +%s.%N); "$@" > /dev/null; e=$(date +%s.%N); python3 -c "print(f'{$e-$s:.2f} s')"; }
N=$("$BIN" audit verify --json --data-dir "$WORK/data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_seq"])')
echo "== records: $N"
echo -n "checkpoint over all new records: "; t "$BIN" audit checkpoint --data-dir "$WORK/data"
echo -n "checkpoint again (nothing new):  "; t "$BIN" audit checkpoint --data-dir "$WORK/data"
echo -n "inclusion proof (middle record): "; t "$BIN" audit prove --seq $((N / 2)) --data-dir "$WORK/data"
echo -n "consistency proof (from N/3):    "; t "$BIN" audit prove --from $((N / 3)) --data-dir "$WORK/data"
echo -n "audit verify (everything):       "; t "$BIN" audit verify --data-dir "$WORK/data"
ls -la "$WORK/data" | grep tokengate.db
