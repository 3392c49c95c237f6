-- wrk script for bench/soak.sh: counts answers by status (per thread, summed in done) and prints
-- one SOAK line. WRK_AUTH (optional) is sent as the Authorization header.
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   c2xx, c401, c429, c503, cother = 0, 0, 0, 0, 0
   local auth = os.getenv("WRK_AUTH")
   if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
end

function response(status, headers, body)
   if status >= 200 and status < 300 then c2xx = c2xx + 1
   elseif status == 401 then c401 = c401 + 1
   elseif status == 429 then c429 = c429 + 1
   elseif status == 503 then c503 = c503 + 1
   else cother = cother + 1 end
end

function done(summary, latency, requests)
   local t = {c2xx = 0, c401 = 0, c429 = 0, c503 = 0, cother = 0}
   for _, thread in ipairs(threads) do
      for k, _ in pairs(t) do t[k] = t[k] + (thread:get(k) or 0) end
   end
   local e = summary.errors
   io.write(string.format(
      "SOAK requests=%d rps=%.0f p99_ms=%.2f 2xx=%d 401=%d 429=%d 503=%d other=%d connect_errors=%d read_errors=%d write_errors=%d timeouts=%d\n",
      summary.requests, summary.requests / (summary.duration / 1e6), latency:percentile(99) / 1000,
      t.c2xx, t.c401, t.c429, t.c503, t.cother, e.connect, e.read, e.write, e.timeout))
end
