-- wrk: each thread stops sending after NREQ answers (default 3000); wrk itself runs for its -d.
local n = 0
local limit = tonumber(os.getenv("NREQ") or "3000")
response = function(status, headers, body)
  n = n + 1
  if n >= limit then wrk.thread:stop() end
end
