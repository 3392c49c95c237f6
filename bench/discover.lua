-- wrk: POST /api/registry/discover with a fixed body, then the shared RESULT line.
wrk.method = "POST"
wrk.body = os.getenv("DISCOVER_BODY") or '{"serviceId":"bench"}'
wrk.headers["Content-Type"] = "application/json"
dofile(os.getenv("REPORT_LUA"))
