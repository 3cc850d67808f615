-- POST JSON bodies read from the file named by BERTH_BENCH_BODIES (one document per line), cycled
-- request by request, so the server sees varied rows rather than one cached input. Requests are
-- formatted once per wrk thread; at the end one line "BENCH_JSON {...}" carries exact figures
-- (latencies in microseconds) for bench/serve_bench.py to parse.

local path = os.getenv("BERTH_BENCH_BODIES")
if path == nil then
  error("set BERTH_BENCH_BODIES to a file of JSON bodies, one per line")
end

local bodies = {}
for line in io.lines(path) do
  if #line > 0 then
    bodies[#bodies + 1] = line
  end
end

local prepared = {}
local next_index = 0

function init(args)
  local headers = { ["Content-Type"] = "application/json" }
  for i, body in ipairs(bodies) do
    prepared[i] = wrk.format("POST", nil, headers, body)
  end
end

function request()
  next_index = next_index % #prepared + 1
  return prepared[next_index]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeout_errors": %d, ' ..
    '"latency_mean_us": %.1f, "latency_p50_us": %d, "latency_p90_us": %d, ' ..
    '"latency_p99_us": %d, "latency_max_us": %d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency.mean, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
