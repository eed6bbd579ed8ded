#!/usr/bin/env bash
# TLS 1.3 handshakes per second, full and resumed: tokengate against nginx
# (Debian package `nginx`), with the same certificate and key (ECDSA P-256
# and RSA-2048), on the same machine, in the same run, alternating which
# server goes first in each round. See docs/BENCHMARKS.md.
#
#   bench/tls-handshakes.sh                 # 2 rounds, 10 s per measurement
#   ROUNDS=3 SECS=20 bench/tls-handshakes.sh
#   PIN=none bench/tls-handshakes.sh        # no CPU pinning (both cores shared)
#   CERTS=rsa MODES=full bench/tls-handshakes.sh   # only RSA-2048 full handshakes
#   NICE=-10 bench/tls-handshakes.sh        # servers and load generator at a higher
#                                           # priority than other work on the machine
#
# Both servers run in a session of their own (nginx daemonizes; tokengate is
# started with setsid), so that with the kernel's autogroup scheduling each
# gets the same share against other work. NICE (root only) is set on those
# autogroups and on the script's own (the load generator's).
#
# PIN=split (default): the server under test runs on CPU 1 only and the load
# generator on CPU 0 only, so the server has exactly one core and does not
# compete with the client for it. nginx then gets `worker_processes 1` and
# tokengate one runtime worker (both: one per core they may use, what
# `auto` means). PIN=none: nothing pinned, nginx `worker_processes auto`.
#
# Needs: nginx, openssl, taskset (util-linux). Writes everything under $WORK.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tokengate-target}"
ROUNDS="${ROUNDS:-2}"
SECS="${SECS:-10}"
WARMUP="${WARMUP:-2}"
CONC="${CONC:-64}"
PIN="${PIN:-split}"
NICE="${NICE:-0}"
WORK="${WORK:-/tmp/tokengate-tls-bench}"
TG_PORT="${TG_PORT:-19443}"
NGX_PORT="${NGX_PORT:-19444}"
CERTS="${CERTS:-ec rsa}"        # which certificates to measure
MODES="${MODES:-full resumed}"  # which handshake kinds to measure

command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install nginx)"; exit 1; }

cargo build --release --quiet -p tokengate --bin tokengate
cargo build --release --quiet -p tokengate-server --example handshake_bench
TG="$CARGO_TARGET_DIR/release/tokengate"
LOAD="$CARGO_TARGET_DIR/release/examples/handshake_bench"

rm -rf "$WORK"
mkdir -p "$WORK/nginx"
cd "$WORK"

# ---- one private CA, two leaves ----------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -keyout ca.key -out ca.crt -subj '/CN=tokengate bench CA' \
    -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ec.key 2>/dev/null
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out rsa.key 2>/dev/null
for t in ec rsa; do
    printf 'subjectAltName=DNS:%s.bench.test\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' "$t" > "$t.ext"
    openssl req -new -key "$t.key" -subj "/CN=$t.bench.test" -out "$t.csr"
    openssl x509 -req -in "$t.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 \
        -extfile "$t.ext" -out "$t.leaf.crt" 2>/dev/null
    cat "$t.leaf.crt" ca.crt > "$t.crt"
done

# ---- tokengate -----------------------------------------------------------------
"$TG" init --data-dir tg --json > /dev/null
for t in ec rsa; do
    TOKENGATE_TRUST_ROOTS="$WORK/ca.crt" "$TG" certs add "$t.crt" "$t.key" \
        --name "bench-$t" --domain "$t.bench.test" --data-dir tg --json > /dev/null
done

# ---- nginx -----------------------------------------------------------------------
if [ "$PIN" = split ]; then
    SERVER_CPU=(nice -n "$NICE" taskset -c 1); LOAD_CPU=(nice -n "$NICE" taskset -c 0)
    WORKERS=1; LOAD_THREADS=1
else
    SERVER_CPU=(nice -n "$NICE"); LOAD_CPU=(nice -n "$NICE"); WORKERS=auto; LOAD_THREADS=2
fi
cat > nginx/nginx.conf <<EOF
worker_processes $WORKERS;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log crit;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_prefer_server_ciphers on;
    ssl_session_cache shared:TLS:20m;
    ssl_session_timeout 1h;
    ssl_session_tickets on;
    server {
        listen 127.0.0.1:$NGX_PORT ssl;
        server_name ec.bench.test;
        ssl_certificate $WORK/ec.crt;
        ssl_certificate_key $WORK/ec.key;
        location / { return 200 "ok\n"; }
    }
    server {
        listen 127.0.0.1:$NGX_PORT ssl;
        server_name rsa.bench.test;
        ssl_certificate $WORK/rsa.crt;
        ssl_certificate_key $WORK/rsa.key;
        location / { return 200 "ok\n"; }
    }
}
EOF

cleanup() {
    [ -f nginx/nginx.pid ] && kill "$(cat nginx/nginx.pid)" 2>/dev/null || true
    [ -n "${TG_PID:-}" ] && kill "$TG_PID" 2>/dev/null || true
}
trap cleanup EXIT

"${SERVER_CPU[@]}" nginx -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log"
setsid "${SERVER_CPU[@]}" "$TG" serve --data-dir tg --listen "127.0.0.1:$TG_PORT" > tg.out 2> tg.log &
TG_PID=$!
for _ in $(seq 1 100); do
    grep -q 'listening' tg.out 2>/dev/null && [ -f nginx/nginx.pid ] && break
    sleep 0.1
done
NGX_PID="$(cat nginx/nginx.pid)"
if [ "$NICE" != 0 ] && [ -w /proc/$$/autogroup ]; then
    for p in $$ "$TG_PID" "$NGX_PID"; do echo "$NICE" > "/proc/$p/autogroup"; done
fi

# The server's processes (nginx: the master and its workers), whose CPU time
# the load generator reports for the measured window.
watch_args() {
    local p
    for p in "$1" $(pgrep -P "$1"); do printf -- '--watch-pid %s ' "$p"; done
}

run() { # server port pid cert mode round
    local server=$1 port=$2 pid=$3 cert=$4 mode=$5 round=$6 line
    # shellcheck disable=SC2046
    line="$("${LOAD_CPU[@]}" "$LOAD" --connect "127.0.0.1:$port" --sni "$cert.bench.test" \
        --mode "$mode" --tls 1.3 --concurrency "$CONC" --seconds "$SECS" --warmup "$WARMUP" \
        --threads "$LOAD_THREADS" $(watch_args "$pid"))"
    echo "{\"round\":$round,\"server\":\"$server\",\"cert\":\"$cert\",\"load\":$line}" \
        | tee -a results.jsonl
}

date -u +'started %Y-%m-%dT%H:%M:%SZ'
echo "pin=$PIN nice=$NICE rounds=$ROUNDS secs=$SECS warmup=$WARMUP concurrency=$CONC nginx=$(nginx -v 2>&1 | sed 's/.*nginx\///') $(openssl version)"
for round in $(seq 1 "$ROUNDS"); do
    for cert in $CERTS; do
        for mode in $MODES; do
            if [ $((round % 2)) -eq 1 ]; then
                run tokengate "$TG_PORT" "$TG_PID" "$cert" "$mode" "$round"
                run nginx "$NGX_PORT" "$NGX_PID" "$cert" "$mode" "$round"
            else
                run nginx "$NGX_PORT" "$NGX_PID" "$cert" "$mode" "$round"
                run tokengate "$TG_PORT" "$TG_PID" "$cert" "$mode" "$round"
            fi
        done
    done
done
date -u +'finished %Y-%m-%dT%H:%M:%SZ'

python3 - results.jsonl <<'EOF'
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1])]
by = collections.defaultdict(list)
for r in rows:
    by[(r["cert"], r["load"]["mode"], r["server"])].append(r)
print()
print("| certificate | handshake | server | handshakes/s (each run) | mean | server CPU | server CPU µs / handshake | load generator CPU | resumed | errors |")
print("|---|---|---|---|---|---|---|---|---|---|")
for cert in ("ec", "rsa"):
    for mode in ("full", "resumed"):
        means = {}
        for server in ("tokengate", "nginx"):
            rs = by[(cert, mode, server)]
            if not rs:
                continue
            rates = [r["load"]["per_sec"] for r in rs]
            mean = sum(rates) / len(rates)
            means[server] = mean
            secs = sum(r["load"]["seconds"] for r in rs)
            cpu = sum(r["load"]["server_cpu_s"] for r in rs) / secs
            ccpu = sum(r["load"]["client_cpu_s"] for r in rs) / secs
            us = sum(r["load"]["server_cpu_s"] for r in rs) / sum(r["load"]["handshakes"] for r in rs) * 1e6
            res = sum(r["load"]["resumed"] for r in rs) / max(1, sum(r["load"]["handshakes"] for r in rs))
            errs = sum(r["load"]["errors"] for r in rs)
            name = {"ec": "ECDSA P-256", "rsa": "RSA-2048"}[cert]
            print(f"| {name} | {mode} | {server} | {', '.join(f'{x:,.0f}' for x in rates)} | {mean:,.0f} | {cpu*100:.0f} % | {us:,.0f} | {ccpu*100:.0f} % | {res*100:.1f} % | {errs} |")
        if len(means) == 2:
            print(f"| | | **tokengate / nginx** | | **{means['tokengate']/means['nginx']:.2f}×** | | | | | |")
EOF
