-- wrk script: the same request shape with a token where the card number was
-- (what an app sends after tokenization): nothing to tokenize, the safety net
-- still scans the body.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"amount":1999,"currency":"eur","card":{"number":"tok_0000000000000000000000000000000000000000","exp_month":12,"exp_year":2030},"customer":{"email":"bench@example.test"},"description":"order 1234"}'
