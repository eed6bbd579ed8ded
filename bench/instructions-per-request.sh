#!/usr/bin/env bash
# User-space instructions the server executes per request, counted by
# valgrind's callgrind: repeatable to about ±2 % run to run, where wall-clock
# CPU per request on a shared 2-vCPU VM moves by ±15 %. Use it to compare two
# builds; use the wrk scripts for throughput. Kernel time (syscalls, the
# loopback TCP stack) is not counted, and crypto runs its non-SHA-NI code
# paths under valgrind, so hashing weighs more here than on the machine.
#
# The server runs under callgrind (≈ 50× slower); wrk warms up for 3 s with
# 8 connections, the counters are zeroed, wrk runs DUR seconds more, and the
# instructions since the zeroing are divided by the requests wrk completed.
#
# Usage: [TOKENGATE_BIN=path] [DUR=15] bench/instructions-per-request.sh MODE [OUT]
#   MODE: healthz | tokenize | reveal | webhooks | proxy-pass (the edge proxy's
#         pass-through route in front of an nginx `return 200` upstream,
#         card-free payload, as in proxy-bench.sh)
#   OUT:  callgrind output prefix (default: a temporary file, removed)
# Needs: a release build, valgrind, wrk (and nginx for proxy-pass).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:?healthz | tokenize | reveal | webhooks | proxy-pass}"
BIN="${TOKENGATE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/tokengate-target}/release/tokengate}"
WORK="$(mktemp -d /tmp/tg-instr-XXXXXX)"
OUT="${2:-$WORK/callgrind}"
PORT=18948
BASE=https://127.0.0.1:$PORT
SECRET="bench-secret-$RANDOM$RANDOM"
# shellcheck source=bench/webhook-fixture.sh
. bench/webhook-fixture.sh
{ webhook_source_toml "$SECRET"; cat <<TOML
[proxy]
listen = "127.0.0.1:$((PORT + 1))"
[[proxy.inbound]]
name = "pass"
path_prefix = "/pass"
upstream = "http://127.0.0.1:$((PORT + 2))"
TOML
} > "$WORK/tokengate.toml"
if [ "$MODE" = proxy-pass ]; then
  mkdir -p "$WORK/up"
  cat > "$WORK/up/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/up/nginx.pid;
error_log $WORK/up/error.log crit;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/up/body; proxy_temp_path $WORK/up/proxy;
    fastcgi_temp_path $WORK/up/fastcgi; uwsgi_temp_path $WORK/up/uwsgi; scgi_temp_path $WORK/up/scgi;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$((PORT + 2));
        location / { default_type application/json; return 200 '{"ok":true}'; }
    }
}
NGINX
  nginx -c "$WORK/up/nginx.conf" -e "$WORK/up/error.log"
fi
ADMIN=$("$BIN" init --json --data-dir "$WORK/data" | python3 -c 'import json,sys; print(json.load(sys.stdin)["admin_api_key"])')
TOKENGATE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$OUT" --dump-instr=no \
  "$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:$PORT --config "$WORK/tokengate.toml" \
  > "$WORK/out" 2> "$WORK/err" &
PID=$!
trap 'kill $PID 2>/dev/null; [ -f "$WORK/up/nginx.pid" ] && kill "$(cat "$WORK/up/nginx.pid")"; rm -rf "$WORK"' EXIT
for _ in $(seq 600); do grep -q listening "$WORK/out" 2>/dev/null && break; sleep 0.2; done
case "$MODE" in
  healthz) ARGS=("$BASE/healthz") ;;
  tokenize)
    TG_KEY=$(curl -sk "$BASE/v1/api-keys" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
      -d '{"name":"bench","roles":["tokenize"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
    export TG_KEY
    ARGS=(-s bench/tokenize.lua "$BASE/v1/tokens") ;;
  reveal)
    TG_KEY=$(curl -sk "$BASE/v1/api-keys" -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
      -d '{"name":"bench","roles":["tokenize","reveal"]}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
    export TG_KEY
    # 1,000 tokens made through the batch API, revealed round robin.
    curl -sk "$BASE/v1/tokens/batch" -H "Authorization: Bearer $TG_KEY" -H 'Content-Type: application/json' \
      -d "$(python3 -c 'import json; print(json.dumps({"items": [{"card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030}}] * 1000}))')" \
      | python3 -c 'import json,sys; [print(r["token"]["token"]) for r in json.load(sys.stdin)["results"]]' > "$WORK/tokens"
    export TG_TOKENS="$WORK/tokens"
    ARGS=(-s bench/reveal.lua "$BASE") ;;
  webhooks)
    # The same 2,048-byte body and precomputed signature as run-webhook-bench.sh.
    webhook_signed_body "$WORK" "$SECRET"
    ARGS=(-s bench/webhook.lua "$BASE") ;;
  proxy-pass) ARGS=(-s bench/proxy-pass.lua "https://127.0.0.1:$((PORT + 1))/pass") ;;
  *) echo "unknown mode $MODE" >&2; exit 2 ;;
esac
wrk -t1 -c8 -d3s "${ARGS[@]}" > /dev/null
callgrind_control -z $PID > /dev/null 2>&1
wrk -t1 -c8 -d"${DUR:-15}s" "${ARGS[@]}" > "$WORK/wrk"
callgrind_control -d $PID > /dev/null 2>&1
sleep 1
N=$(awk '/requests in/{print $1}' "$WORK/wrk")
grep -q 'Non-2xx' "$WORK/wrk" && { echo "non-2xx answers:"; cat "$WORK/wrk"; exit 1; }
DUMP=$(ls -t "$OUT".* | head -1)
TOTAL=$(callgrind_annotate "$DUMP" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "$MODE: $N requests, $((TOTAL / N)) instructions per request ($DUMP)"
