#!/usr/bin/env bash
# Vault throughput over HTTPS keep-alive: tokenize, reveal and /healthz on the
# same server in one run. Needs a release build and wrk (apt-get install wrk).
# Usage: [TOKENGATE_BIN=path] bench/run-vault-bench.sh [duration_s] [connections]
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-20}"; CONN="${2:-64}"
BIN="${TOKENGATE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/tokengate-target}/release/tokengate}"
WORK="$(mktemp -d /tmp/tg-bench-XXXXXX)"
ADMIN=$("$BIN" init --json --data-dir "$WORK/data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_api_key"])')
TOKENGATE_LOG=warn "$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:18943 > "$WORK/out" 2> "$WORK/err" &
PID=$!
trap 'kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
for _ in $(seq 50); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.1; done
BASE=https://127.0.0.1:18943
TG_KEY=$(curl -sk "$BASE/v1/api-keys" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
  -d '{"name":"bench","roles":["tokenize","reveal"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
export TG_KEY
# Tokens to reveal: 2,000 made through the batch API.
python3 - "$BASE" "$TG_KEY" > "$WORK/tokens" <<'PY'
import json, ssl, sys, urllib.request
base, key = sys.argv[1], sys.argv[2]
ctx = ssl._create_unverified_context()
for _ in range(2):
    body = json.dumps({"items": [{"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030}}] * 1000}).encode()
    req = urllib.request.Request(base + "/v1/tokens/batch", data=body, method="POST",
        headers={"Authorization": "Bearer " + key, "Content-Type": "application/json"})
    for r in json.load(urllib.request.urlopen(req, context=ctx))["results"]:
        print(r["token"]["token"])
PY
export TG_TOKENS="$WORK/tokens"
echo "== healthz"; wrk -t2 -c"$CONN" -d"${DUR}s" --latency "$BASE/healthz"
echo "== tokenize"; wrk -t2 -c"$CONN" -d"${DUR}s" --latency -s bench/tokenize.lua "$BASE/v1/tokens"
echo "== reveal"; wrk -t2 -c"$CONN" -d"${DUR}s" --latency -s bench/reveal.lua "$BASE"
echo "== healthz (again)"; wrk -t2 -c"$CONN" -d"${DUR}s" --latency "$BASE/healthz"
"$BIN" audit verify --data-dir "$WORK/data"
