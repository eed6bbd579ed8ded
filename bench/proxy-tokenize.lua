-- wrk script: a checkout request whose card number the edge proxy tokenizes
-- (one JSON card field); the upstream answers 200. Every request makes a
-- new token (non-deterministic), i.e. one durable vault write.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"amount":1999,"currency":"eur","card":{"number":"4242424242424242","exp_month":12,"exp_year":2030},"customer":{"email":"bench@example.test"},"description":"order 1234"}'
