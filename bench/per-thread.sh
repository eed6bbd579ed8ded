#!/usr/bin/env bash
# Where a request's cost goes, per server thread: one wrk run against a
# fresh server, then per request the server's CPU, the bytes it wrote to
# disk and the load generator's own CPU, and for each thread name (tokio
# workers summed) voluntary and involuntary context switches and CPU per
# request, and the share of the run it spent runnable but waiting for a
# CPU (run-queue wait, from /proc/<pid>/task/<tid>/schedstat). Also the
# group-commit and WAL-sync summaries from /metrics, read one second
# before wrk stops. Use it to compare two builds or settings: alternate
# them, one run each, several rounds (a shared 2-vCPU VM moves a run by
# ±10 % or more).
#
# Usage: [TOKENGATE_BIN=path] [CONN=64] [DUR=8] [SERVER_ENV="K=V …"] \
#        bench/per-thread.sh tokenize|healthz|webhook
#   SERVER_ENV: extra environment of the server process only.
# Needs: a release build, wrk, GNU time (/usr/bin/time), and root: tokengate
# marks itself not dumpable, which makes its /proc/<pid>/io root-only.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:?tokenize | healthz | webhook}"
BIN="${TOKENGATE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/tokengate-target}/release/tokengate}"
CONN="${CONN:-64}"; DUR="${DUR:-8}"
WORK="$(mktemp -d /tmp/tg-per-thread-XXXXXX)"
SECRET="bench-secret-$RANDOM$RANDOM"
# shellcheck source=bench/webhook-fixture.sh
. bench/webhook-fixture.sh
webhook_source_toml "$SECRET" > "$WORK/tokengate.toml"
ADMIN=$("$BIN" init --json --data-dir "$WORK/data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_api_key"])')
# shellcheck disable=SC2086 # SERVER_ENV is a list of K=V words
env ${SERVER_ENV:-} TOKENGATE_LOG=warn "$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:18946 \
  --config "$WORK/tokengate.toml" > "$WORK/out" 2> "$WORK/err" &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
BASE=https://127.0.0.1:18946
case "$MODE" in
  tokenize)
    TG_KEY=$(curl -sk "$BASE/v1/api-keys" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
      -d '{"name":"bench","roles":["tokenize"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
    export TG_KEY
    ARGS=(-s bench/tokenize.lua "$BASE/v1/tokens") ;;
  healthz) ARGS=("$BASE/healthz") ;;
  webhook)
    webhook_signed_body "$WORK" "$SECRET"
    ARGS=(-s bench/webhook.lua "$BASE") ;;
  *) echo "unknown mode $MODE" >&2; exit 2 ;;
esac
# thread name, voluntary and involuntary switches, CPU ticks, run-queue
# wait (ns); threads of one name summed.
snap() {
  for t in /proc/$PID/task/*; do
    echo "$(tr ' ' _ < "$t/comm") $(awk '/^voluntary/{v=$2}/^nonvoluntary/{n=$2}END{print v, n}' "$t/status") \
$(awk '{print $14+$15}' "$t/stat") $(awk '{print $2}' "$t/schedstat")"
  done | awk '{v[$1]+=$2; n[$1]+=$3; t[$1]+=$4; w[$1]+=$5} END{for(k in v) print k, v[k], n[k], t[k], w[k]}' | sort
}
TICK=$(getconf CLK_TCK)
wrk -t2 -c"$CONN" -d2s "${ARGS[@]}" > /dev/null
s0=$(snap); w0=$(awk '/^write_bytes/{print $2}' "/proc/$PID/io"); c0=$(awk '{print $14+$15}' "/proc/$PID/stat")
( sleep $((DUR - 1)); curl -sk "$BASE/metrics" > "$WORK/metrics" ) &
SCRAPE=$!
out=$(/usr/bin/time -f "wrkcpu %U %S" wrk -t2 -c"$CONN" -d"${DUR}s" --latency "${ARGS[@]}" 2>&1)
s1=$(snap); w1=$(awk '/^write_bytes/{print $2}' "/proc/$PID/io"); c1=$(awk '{print $14+$15}' "/proc/$PID/stat")
wait "$SCRAPE"
n=$(echo "$out" | awk '/requests in/{print $1}')
echo "$MODE, $CONN connections: $(echo "$out" | awk '/Requests\/sec/{r=$2} / 50%/{p50=$2} / 99%/{p99=$2} END{printf "%s req/s, p50 %s, p99 %s", r, p50, p99}')"
echo "per request: server CPU $(( (c1 - c0) * 1000000 / TICK / n )) us, disk writes $(( (w1 - w0) / n )) bytes, \
$(echo "$out" | awk -v n="$n" '/wrkcpu/{printf "wrk CPU %.1f us", ($2 + $3) * 1e6 / n}')"
join <(echo "$s0") <(echo "$s1") | awk -v n="$n" -v d="$DUR" -v tick="$TICK" \
  '{printf "  %-16s switches/req %.3f voluntary %.3f involuntary, CPU %.1f us/req, run-queue wait %.1f %% of the run\n",
    $1, ($6 - $2) / n, ($7 - $3) / n, ($8 - $4) * 1e6 / tick / n, ($9 - $5) / 1e7 / d}'
grep -E '^tokengate_store_(commit|wal)[a-z_]*(\{quantile="0.5"\}|\{quantile="0.99"\}|_count)' "$WORK/metrics" || true
