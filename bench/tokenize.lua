-- wrk script: POST /v1/tokens with a valid card; API key from env TG_KEY.
-- Each request creates a new opaque token (non-deterministic mode).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TG_KEY")
wrk.body = '{"card":{"number":"4242 4242 4242 4242","exp_month":12,"exp_year":2030},"metadata":{"order":"bench"}}'
