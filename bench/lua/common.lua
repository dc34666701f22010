-- Prepended to every benchmark script by bench/wrk.py.
-- Every response's status is tallied per thread; done() adds them up and
-- prints one parseable line, so the harness can refuse a benchmark of errors.
-- Script arguments (after --): a file of lines and a number prefix.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

statuses = {}
lines = {}
prefix = "7"
counter = 0

function init(args)
  if args[1] and args[1] ~= "" then
    for line in io.lines(args[1]) do
      if line ~= "" then table.insert(lines, line) end
    end
  end
  prefix = (args[2] or "7") .. tostring(tid or 1)
  if prepare then prepare() end
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

-- The next line of the argument file, round robin.
local next_line = 0
function rotate()
  next_line = next_line % #lines + 1
  return lines[next_line]
end

-- A fresh order number passing Luhn: prefix, thread, counter, check digit.
function fresh_number()
  counter = counter + 1
  local payload = prefix .. string.format("%010d", counter)
  local sum, double = 0, true
  for i = #payload, 1, -1 do
    local d = payload:byte(i) - 48
    if double then
      d = d * 2
      if d > 9 then d = d - 9 end
    end
    sum = sum + d
    double = not double
  end
  return payload .. tostring((10 - sum % 10) % 10)
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      counts[code] = (counts[code] or 0) + n
    end
  end
  local parts = {}
  for code, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', code, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"socket_errors": %d, "timeouts": %d, "statuses": {%s}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write, e.timeout, table.concat(parts, ", ")))
end
