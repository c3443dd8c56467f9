-- Replays raw HTTP requests prepared by bench/gateway_bench.py and checks every answer.
--
--   wrk -t T -c C -d 5s --timeout 30s -s bench/wrk/mcp.lua http://127.0.0.1:P -- FILE T
--
-- FILE holds complete HTTP/1.1 requests separated by NUL bytes (bodies are JSON, which
-- never contains one). Thread i of T cycles through requests i, i+T, i+2T, ...: a
-- legacy-era run prepares one request per connection slot, each in its own session
-- (initialized beforehand by the harness), so sessions are spread over the threads; a
-- 2026-07-28 run is stateless and prepares a single request that every thread sends.
-- An answer counts as an error unless it is HTTP 200 without a JSON-RPC error.
-- done() prints one line, "BENCH key=value ...", that the harness parses.

local threads = {}

function setup(thread)
   thread:set("index", #threads)
   table.insert(threads, thread)
end

local requests = {}
local position = 0
calls = 0
errors = 0
first_error = ""

function init(args)
   local file = assert(io.open(args[1], "rb"))
   local data = file:read("*a")
   file:close()
   local all = {}
   for chunk in string.gmatch(data, "([^%z]+)") do
      table.insert(all, chunk)
   end
   local count = tonumber(args[2])
   for i = index + 1, #all, count do
      table.insert(requests, all[i])
   end
   if #requests == 0 then
      requests = all
   end
end

function request()
   position = position % #requests + 1
   return requests[position]
end

function response(status, headers, body)
   calls = calls + 1
   if status ~= 200 or string.find(body, '"error":{', 1, true) then
      errors = errors + 1
      if first_error == "" then
         first_error = status .. " " .. string.sub(body, 1, 200)
      end
   end
end

function done(summary, latency, requests)
   local total_errors, total_calls, sample = 0, 0, ""
   for _, thread in ipairs(threads) do
      total_errors = total_errors + thread:get("errors")
      total_calls = total_calls + thread:get("calls")
      local first = thread:get("first_error")
      if sample == "" and first ~= nil then
         sample = first
      end
   end
   local socket = summary.errors
   io.write(string.format(
      "BENCH requests=%d calls=%d errors=%d socket_errors=%d duration_us=%d "
         .. "p50_us=%.1f p95_us=%.1f p99_us=%.1f mean_us=%.1f max_us=%.1f\n",
      summary.requests, total_calls, total_errors,
      socket.connect + socket.read + socket.write + socket.timeout, summary.duration,
      latency:percentile(50), latency:percentile(95), latency:percentile(99),
      latency.mean, latency.max))
   io.write("BENCH_ERROR " .. string.gsub(sample, "[\r\n]", " ") .. "\n")
end
