-- wrk script of scripts/bench-http.sh.
--
--   wrk ... -s scripts/bench-http.lua http://HOST:PORT -- KEYS_FILE   POST /v1/verify, rotating
--                                                                      over the keys (one a line)
--   wrk ... -s scripts/bench-http.lua http://HOST:PORT -- healthz     GET /healthz
--   wrk ... -s scripts/bench-http.lua http://HOST:PORT -- KEYS_FILE proxied
--                                         GET /orders/1 with each key as a bearer token (through
--                                         a proxy: scripts/bench-nginx.sh)
--   wrk ... -s scripts/bench-http.lua http://HOST:PORT -- KEYS_FILE forward-auth
--                                         GET /v1/forward-auth/api/v1/r49/orders/7 (Envoy's path
--                                         mode) with each key as a bearer token, rotating
--
-- Both build every request up front and hand one out per call, so the client does the same work
-- per request whichever endpoint it loads. `done` prints one machine-readable RESULT line.

local reqs = {}
local n = 0
local i = 0

-- Runs in the main state, once per thread: threads start at different keys.
local threads = 0
function setup(thread)
  thread:set("offset", threads * 7919)
  threads = threads + 1
end

function init(args)
  local target = args[1]
  if target == "healthz" then
    n = 1
    reqs[1] = wrk.format("GET", "/healthz")
  elseif args[2] == "proxied" then
    for line in io.lines(target) do
      if #line > 0 then
        n = n + 1
        reqs[n] = wrk.format("GET", "/orders/1", { ["Authorization"] = "Bearer " .. line })
      end
    end
  elseif args[2] == "forward-auth" then
    for line in io.lines(target) do
      if #line > 0 then
        n = n + 1
        reqs[n] = wrk.format("GET", "/v1/forward-auth/api/v1/r49/orders/7",
          { ["Authorization"] = "Bearer " .. line })
      end
    end
  else
    local headers = { ["Content-Type"] = "application/json" }
    for line in io.lines(target) do
      if #line > 0 then
        n = n + 1
        reqs[n] = wrk.format("POST", "/v1/verify", headers, '{"key":"' .. line .. '"}')
      end
    end
  end
  i = (offset or 0) % n
end

function request()
  i = i + 1
  if i > n then
    i = 1
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT requests=%d seconds=%.3f rps=%.0f p50_us=%.0f p99_us=%.0f max_us=%.0f errors=%d non2xx=%d\n",
    summary.requests, summary.duration / 1e6, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency.max,
    e.connect + e.read + e.write + e.timeout, e.status))
end
