#!/usr/bin/env bash
# Edge proxy throughput and latency: the same upstream (nginx `return 200`,
# its own instance), the same payload, the same client (wrk, keep-alive):
#   direct      wrk → upstream (plain HTTP)
#   nginx       wrk → nginx (TLS, proxy_pass with upstream keepalive) → upstream
#   tokengate   wrk → tokengate proxy (TLS) → upstream
# each with the card-number payload (tokengate tokenizes the card field;
# nginx passes it through) and with a card-free payload (pass-through both).
# Both proxies get the same ECDSA P-256 certificate. Each case also prints
# the CPU (user+system, from /proc) per completed request of the process
# under test (nginx: master and workers) and of the upstream.
# Usage: bench/proxy-bench.sh [duration_s] [connections] [rounds]
# Needs: a release build, nginx and wrk (apt-get install nginx wrk), openssl.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR="${1:-10}"; CONN="${2:-64}"; ROUNDS="${3:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tokengate-target}"
TG="${TOKENGATE_BIN:-$CARGO_TARGET_DIR/release/tokengate}"
BENCH="$PWD/bench"
WORK="$(mktemp -d /tmp/tg-proxy-bench-XXXXXX)"
UP=19000; NGX=19443; TGP=19444; TGAPI=19445
cd "$WORK"
mkdir -p up ngx

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout ca.key -out ca.crt -subj '/CN=tokengate bench CA' \
    -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.key 2>/dev/null
printf 'subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' > ec.ext
openssl req -new -key ec.key -subj "/CN=localhost" -out ec.csr
openssl x509 -req -in ec.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile ec.ext -out leaf.crt 2>/dev/null
cat leaf.crt ca.crt > ec.crt

common() {
    cat <<EOF
pid $WORK/$1/nginx.pid;
error_log $WORK/$1/error.log crit;
events { worker_connections 8192; }
EOF
}
temps() {
    cat <<EOF
    access_log off;
    client_body_temp_path $WORK/$1/body;
    proxy_temp_path $WORK/$1/proxy;
    fastcgi_temp_path $WORK/$1/fastcgi;
    uwsgi_temp_path $WORK/$1/uwsgi;
    scgi_temp_path $WORK/$1/scgi;
EOF
}
{ echo "worker_processes 1;"; common up; echo "http {"; temps up; cat <<EOF
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$UP;
        location / { default_type application/json; return 200 '{"ok":true}'; }
    }
}
EOF
} > up/nginx.conf
{ echo "worker_processes auto;"; common ngx; echo "http {"; temps ngx; cat <<EOF
    keepalive_requests 1000000;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache shared:TLS:20m;
    upstream app { server 127.0.0.1:$UP; keepalive 256; }
    server {
        listen 127.0.0.1:$NGX ssl;
        ssl_certificate $WORK/ec.crt;
        ssl_certificate_key $WORK/ec.key;
        client_max_body_size 1m;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
EOF
} > ngx/nginx.conf

"$TG" init --data-dir tg --json > /dev/null
TOKENGATE_TRUST_ROOTS="$WORK/ca.crt" "$TG" certs add ec.crt ec.key --name bench --data-dir tg --json > /dev/null
"$TG" domains update localhost --cert bench --data-dir tg --json > /dev/null
cat > tokengate.toml <<EOF
tls_default_cert = "bench"
[proxy]
listen = "127.0.0.1:$TGP"
[[proxy.inbound]]
name = "tokenize"
path_prefix = "/tok"
upstream = "http://127.0.0.1:$UP"
fields = [{ json = "\$.card.number", action = "tokenize" }]
[[proxy.inbound]]
name = "pass"
path_prefix = "/pass"
upstream = "http://127.0.0.1:$UP"
EOF

cleanup() {
    for d in up ngx; do [ -f "$d/nginx.pid" ] && kill "$(cat "$d/nginx.pid")" 2>/dev/null || true; done
    [ -n "${TG_PID:-}" ] && kill "$TG_PID" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
nginx -c "$WORK/up/nginx.conf" -e "$WORK/up/error.log"
nginx -c "$WORK/ngx/nginx.conf" -e "$WORK/ngx/error.log"
TOKENGATE_LOG=warn "$TG" serve --data-dir tg --listen 127.0.0.1:$TGAPI --config tokengate.toml > tg.out 2> tg.err &
TG_PID=$!
for _ in $(seq 100); do grep -q "tokengate listening" tg.out 2>/dev/null && break; sleep 0.1; done
curl -sf -o /dev/null "http://127.0.0.1:$UP/x"
curl -sfk -o /dev/null -X POST -H 'content-type: application/json' --data '{"card":{"number":"4242424242424242"}}' "https://localhost:$NGX/tok"
curl -sfk -o /dev/null -X POST -H 'content-type: application/json' --data '{"card":{"number":"4242424242424242"}}' "https://localhost:$TGP/tok"

# CPU ticks (user+system) of a set of processes, from /proc.
TICK=$(getconf CLK_TCK)
ticks() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
pids_of() { # nginx instance dir: master and workers
    local m; m=$(cat "$1/nginx.pid"); echo "$m" $(pgrep -P "$m")
}
run() { # label url script pids-of-the-proxy-under-test
    echo "== $1"
    local proxy=($4) up; up=($(pids_of up))
    local p0 u0 p1 u1 out
    p0=$(ticks "${proxy[@]}"); u0=$(ticks "${up[@]}")
    out=$(wrk -t2 -c"$CONN" -d"${DUR}s" --latency -s "$BENCH/$3" "$2")
    p1=$(ticks "${proxy[@]}"); u1=$(ticks "${up[@]}")
    echo "$out" | grep -E 'Requests/sec|Latency|^ +(50|90|99)%|Non-2xx|Socket errors'
    # CPU per completed request: the process under test (for "direct", the
    # upstream itself) and the upstream.
    echo "$out" | awk -v p=$((p1 - p0)) -v u=$((u1 - u0)) -v t="$TICK" \
        '/requests in/{printf "CPU per request: proxy %.1f us, upstream %.1f us\n", p / t * 1e6 / $1, u / t * 1e6 / $1}'
}
for r in $(seq "$ROUNDS"); do
    echo "#### round $r ($(date -u +%H:%M:%S) UTC, ${DUR}s, $CONN connections)"
    run "direct, card payload" "http://127.0.0.1:$UP/tok" proxy-tokenize.lua "$(pids_of up)"
    run "nginx proxy_pass, card payload (passed through)" "https://localhost:$NGX/tok" proxy-tokenize.lua "$(pids_of ngx)"
    run "tokengate, card payload (card field tokenized)" "https://localhost:$TGP/tok" proxy-tokenize.lua "$TG_PID"
    run "direct, card-free payload" "http://127.0.0.1:$UP/pass" proxy-pass.lua "$(pids_of up)"
    run "nginx proxy_pass, card-free payload" "https://localhost:$NGX/pass" proxy-pass.lua "$(pids_of ngx)"
    run "tokengate pass-through, card-free payload" "https://localhost:$TGP/pass" proxy-pass.lua "$TG_PID"
done
"$TG" audit verify --data-dir tg | tail -1
