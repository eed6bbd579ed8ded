-- wrk script: POST /v1/tokens/{token}/reveal round-robin over tokens listed
-- one per line in the file named by env TG_TOKENS.
local tokens = {}
for line in io.lines(os.getenv("TG_TOKENS")) do tokens[#tokens + 1] = line end
local i = 0
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TG_KEY")
request = function()
  i = i % #tokens + 1
  return wrk.format(nil, "/v1/tokens/" .. tokens[i] .. "/reveal")
end
