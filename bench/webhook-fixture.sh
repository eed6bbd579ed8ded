# Sourced by the webhook benchmarks: one webhook source and one signed body,
# the same for every script that measures the receiver.
#   webhook_source_toml SECRET   prints the `[[webhooks.sources]]` table of
#                                the source "bench" (generic scheme: HMAC-SHA256
#                                over "{timestamp}.{body}", hex, X-Signature)
#   webhook_signed_body DIR SECRET
#                                writes a 2,048-byte JSON body to DIR/body.json
#                                and exports WH_BODY, WH_TS (now) and WH_SIG for
#                                bench/webhook.lua (a run must end within the
#                                300 s timestamp tolerance)

webhook_source_toml() {
  cat <<TOML
[[webhooks.sources]]
name = "bench"
kind = "generic"
secrets = ["$1"]
header = "X-Signature"
algorithm = "sha256"
encoding = "hex"
prefix = "sha256="
signed_content = "{timestamp}.{body}"
timestamp_header = "X-Timestamp"
id_header = "X-Event-Id"
rate_limit_per_sec = 1000000
TOML
}

webhook_signed_body() {
  WH_BODY="$1/body.json"
  WH_TS="$(date +%s)"
  WH_SIG=$(python3 - "$WH_BODY" "$WH_TS" "$2" <<'PY'
import hashlib, hmac, json, sys
path, ts, secret = sys.argv[1], sys.argv[2], sys.argv[3]
ev = {"type": "charge.succeeded", "data": {"object": {"amount": 1999, "currency": "eur", "description": ""}}}
pad = 2048 - len(json.dumps(ev, separators=(",", ":")))
ev["data"]["object"]["description"] = "x" * pad
body = json.dumps(ev, separators=(",", ":")).encode()
assert len(body) == 2048, len(body)
open(path, "wb").write(body)
print("sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest())
PY
)
  export WH_BODY WH_TS WH_SIG
}
