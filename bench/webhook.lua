-- wrk script: POST /webhooks/bench, a 2 KB JSON body signed per the generic
-- scheme (HMAC-SHA256 over "{timestamp}.{body}", header X-Signature). The
-- signature is PRECOMPUTED once (env WH_SIG, for WH_TS and the body in
-- WH_BODY); every request carries a FRESH event id in X-Event-Id (the id is
-- not part of the signed content in this configuration), so every request
-- is verified (a full HMAC over the 2 KB body) and stored as a new event;
-- none is a duplicate.
local body_file = assert(io.open(os.getenv("WH_BODY"), "rb"))
local body = body_file:read("*a")
body_file:close()

local headers = {
  ["Content-Type"] = "application/json",
  ["X-Signature"] = os.getenv("WH_SIG"),
  ["X-Timestamp"] = os.getenv("WH_TS"),
}

local thread_no = 0
function setup(thread)
  thread_no = thread_no + 1
  thread:set("tid", thread_no)
end

local n = 0
request = function()
  n = n + 1
  headers["X-Event-Id"] = "evt-" .. tostring(tid) .. "-" .. tostring(n)
  return wrk.format("POST", "/webhooks/bench", headers, body)
end
