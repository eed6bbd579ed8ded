-- wrk script: every request is refused with 401 after its `auth_failure`
-- audit record is durably committed (tokengate fails closed), so req/s here
-- is durable audit appends/s through the whole HTTPS path.
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer tg_aaaaaaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
