#!/usr/bin/env bash
# Key rotation at scale on SQLite: rewrap throughput over N records (default
# 1,000,000), then tokenize throughput over HTTPS with and without a rewrap
# running. Needs a release build of the `tokengate` binary and the
# `seed_records` example, and wrk (apt-get install wrk).
# Usage: [TOKENGATE_BIN=path] [SEED_BIN=path] [RATE=records_per_s] [BUSY_SHARE=x] bench/run-rewrap-bench.sh [records] [wrk_seconds] [connections]
# RATE caps the two rewraps that run next to tokenize traffic (default: no
# cap); with RATE set they are not waited for (the script reports progress).
# BUSY_SHARE sets the rewraps' share of time while live traffic is seen
# (default: the product default, 0.2; BUSY_SHARE=1 never yields).
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1000000}"; DUR="${2:-10}"; CONN="${3:-32}"; RATE="${RATE:-}"
BODY_FIELDS=(); CLI_RATE=()
if [ -n "$RATE" ]; then BODY_FIELDS+=("\"rate\": $RATE"); CLI_RATE+=(--rate "$RATE"); fi
if [ -n "${BUSY_SHARE:-}" ]; then BODY_FIELDS+=("\"busy_share\": $BUSY_SHARE"); CLI_RATE+=(--busy-share "$BUSY_SHARE"); fi
BODY="{$(IFS=,; echo "${BODY_FIELDS[*]}")}"
TARGET="${CARGO_TARGET_DIR:-$HOME/.cache/tokengate-target}/release"
BIN="${TOKENGATE_BIN:-$TARGET/tokengate}"
SEED="${SEED_BIN:-$TARGET/examples/seed_records}"
WORK="$(mktemp -d /tmp/tg-rewrap-XXXXXX)"
PID=""
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
ADMIN=$("$BIN" init --json --data-dir "$WORK/data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_api_key"])')
echo "== seeding $N records"
"$SEED" "$WORK/data" "$ADMIN" "$N"

echo "== rewrap of $N records (nothing else running)"
"$BIN" keys rotate --purpose data --data-dir "$WORK/data"
/usr/bin/time -f "wall %e s, cpu user %U s sys %S s, max rss %M KiB" \
  "$BIN" keys rewrap --json --data-dir "$WORK/data" > "$WORK/rewrap1.json"
python3 - "$WORK/rewrap1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"moved {r['moved']} of {r['total']} in {r['millis']/1000:.2f} s = {r['moved']/(r['millis']/1000):,.0f} records/s (yielded {r['yielded_millis']/1000:.2f} s, failed {r['failed']}, remaining {r['remaining']})")
PY

echo "== tokenize while idle vs while a rewrap runs"
TOKENGATE_LOG=warn "$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:18944 > "$WORK/out" 2> "$WORK/err" &
PID=$!
for _ in $(seq 100); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
BASE=https://127.0.0.1:18944
TG_KEY=$(curl -sk "$BASE/v1/api-keys" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
  -d '{"name":"bench","roles":["tokenize","reveal"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
export TG_KEY
echo "-- idle"
wrk -t2 -c"$CONN" -d"${DUR}s" --latency -s bench/tokenize.lua "$BASE/v1/tokens"
# (a) the rewrap runs inside the server (admin API): it shares the server's
# writer and group committer with the tokenize traffic.
"$BIN" keys rotate --purpose data --data-dir "$WORK/data"
sleep 1.5   # the server reloads the ring within key_reload_ms
curl -sk -X POST "$BASE/v1/keys/rewrap" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' -d "$BODY" > /dev/null
sleep 0.5
echo "-- while the server rewraps (admin API)"
wrk -t2 -c"$CONN" -d"${DUR}s" --latency -s bench/tokenize.lua "$BASE/v1/tokens"
curl -sk "$BASE/v1/keys/rewrap" -H "Authorization: Bearer $ADMIN" | python3 -c 'import json,sys; s=json.load(sys.stdin); print("(the rewrap was still running when wrk ended: %d of %d)" % (s["done"], s["total"]) if s["running"] else "WARNING: the rewrap ended before wrk did")'
while [ -z "$RATE" ]; do
  curl -sk "$BASE/v1/keys/rewrap" -H "Authorization: Bearer $ADMIN" > "$WORK/status.json"
  python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["running"] else 1)' "$WORK/status.json" || break
  sleep 1
done
[ -z "$RATE" ] && python3 - "$WORK/status.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["report"]
print(f"server rewrap: moved {r['moved']} of {r['total']} in {r['millis']/1000:.2f} s = {r['moved']/(r['millis']/1000):,.0f} records/s (yielded {r['yielded_millis']/1000:.2f} s, skipped {r['skipped']}, failed {r['failed']}, remaining {r['remaining']})")
PY

# (b) the rewrap runs in another process (the CLI): two SQLite writers.
"$BIN" keys rotate --purpose data --data-dir "$WORK/data"
"$BIN" keys rewrap "${CLI_RATE[@]}" --json --data-dir "$WORK/data" > "$WORK/rewrap2.json" &
RW=$!
sleep 0.5
echo "-- while the CLI rewraps (separate process)"
wrk -t2 -c"$CONN" -d"${DUR}s" --latency -s bench/tokenize.lua "$BASE/v1/tokens"
if kill -0 $RW 2>/dev/null; then echo "(the rewrap was still running when wrk ended)"; else echo "WARNING: the rewrap ended before wrk did"; fi
if [ -n "$RATE" ]; then kill $RW; exit 0; fi
wait $RW
python3 - "$WORK/rewrap2.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"concurrent rewrap: moved {r['moved']} of {r['total']} in {r['millis']/1000:.2f} s = {r['moved']/(r['millis']/1000):,.0f} records/s (yielded {r['yielded_millis']/1000:.2f} s, skipped {r['skipped']}, failed {r['failed']}, remaining {r['remaining']})")
PY
echo "-- idle again"
wrk -t2 -c"$CONN" -d"${DUR}s" --latency -s bench/tokenize.lua "$BASE/v1/tokens"
"$BIN" keys --data-dir "$WORK/data" | grep -E '^(PURPOSE|data )'
