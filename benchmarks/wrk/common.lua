-- Shared by get.lua, post.lua and claim42.lua (loaded with dofile; see BENCH_WRK_DIR below).
--
-- Arguments after wrk's "--":
--   threads=<T>          wrk's -t, so each thread knows which jobs are its own
--   connections=<C>      wrk's -c (C a multiple of T; default T): each thread drives C/T connections
--   max=<N>              optional: each thread stops after its share of N responses
--                        and prints BENCH_THREAD_DONE
--   <id>:<token>         a job: its id and base64("job-<id>:<key>"), one argument per job
--
-- Which jobs a connection uses. With at least as many jobs as threads,
-- thread t owns jobs t, t+T, t+2T, ... and no other thread touches them
-- (64 jobs, 16 threads: 4 jobs per thread). With fewer jobs than threads,
-- thread t uses job ((t-1) mod n)+1 (one job: every connection on it).
-- A thread with one connection sends its jobs in turn, so with -t16 -c16 and
-- 64 jobs each connection keeps to its own 4. wrk does not tell a script
-- which of a thread's connections a request or response belongs to, so a
-- script that must keep jobs apart across one thread's connections (post.lua
-- sets bench_lease) leases them: a request takes a job from the thread's
-- queue of free jobs, and the response gives it back, found by the job id
-- that post.lua writes into the pushed stage ("bench-<id>"). A job is then
-- never in flight on two connections at once, as long as the thread owns at
-- least as many jobs as it has connections (4 jobs per connection: 256
-- connections, 1,024 jobs). A request sent when no job was free (a response
-- that named no job never gives its job back) is counted as "shared".
--
-- A script that sets bench_expected_status (claim42.lua: 404) counts any other status as
-- non-2xx instead.
--
-- done() prints one parseable line:
--   BENCH requests=.. duration_us=.. p50_us=.. p90_us=.. p99_us=.. max_us=..
--         non2xx=.. codes=<status>:<count>,.. connect_errors=.. read_errors=..
--         write_errors=.. timeouts=.. shared=..
-- and, when a response was not 2xx, BENCH_FIRST_ERROR <status> <body start>.

local threads = {}
local thread_count_seen = 0

function setup(thread)
   thread_count_seen = thread_count_seen + 1
   thread:set("thread_index", thread_count_seen)
   table.insert(threads, thread)
end

-- Called by init() of get.lua / post.lua with a function (job) -> request string.
function bench_init(args, build_request)
   local jobs, thread_total, connection_total, max_total = {}, nil, nil, nil
   for _, arg in ipairs(args) do
      local key, value = arg:match("^(%a+)=(%d+)$")
      if key == "threads" then
         thread_total = tonumber(value)
      elseif key == "connections" then
         connection_total = tonumber(value)
      elseif key == "max" then
         max_total = tonumber(value)
      else
         local id, token = arg:match("^([%w]+):([%w+/=]+)$")
         if not id then error("bad argument: " .. arg) end
         table.insert(jobs, {id = id, token = token})
      end
   end
   if #jobs == 0 then error("no jobs given") end
   if not thread_total then error("threads=<T> is required") end
   connection_total = connection_total or thread_total
   local per_thread = math.floor(connection_total / thread_total)

   local t = thread_index
   local mine = {}
   if #jobs >= thread_total then
      for j = t, #jobs, thread_total do table.insert(mine, jobs[j]) end
   else
      table.insert(mine, jobs[((t - 1) % #jobs) + 1])
   end

   requests_ = {}
   by_id = {}
   for i, job in ipairs(mine) do
      requests_[i] = build_request(job)
      by_id[job.id] = requests_[i]
   end
   next_request = 0

   leasing = bench_lease and per_thread > 1 and #mine >= per_thread
   if leasing then
      free, free_head, free_tail = {}, 1, #mine
      for i, job in ipairs(mine) do free[i] = job.id end
   end
   shared = 0

   responses = 0
   non2xx = 0
   codes = {}
   first_error = nil
   if max_total then
      limit = math.floor(max_total / thread_total)
      if t <= max_total % thread_total then limit = limit + 1 end
   end
end

function request()
   -- wrk calls the first thread's request() once before the run, to check the
   -- request it builds, and never sends it: that call must not lease a job.
   if thread_index == 1 and not probed then
      probed = true
      return requests_[1]
   end
   if leasing then
      if free_head <= free_tail then
         local id = free[free_head]
         free[free_head] = nil
         free_head = free_head + 1
         return by_id[id]
      end
      shared = shared + 1
   end
   next_request = next_request % #requests_ + 1
   return requests_[next_request]
end

function response(status, headers, body)
   responses = responses + 1
   if leasing and body then
      local id = body:match('"stage":"bench%-(%w+)"')
      if id and by_id[id] then
         free_tail = free_tail + 1
         free[free_tail] = id
      end
   end
   -- A script may expect another answer (claim42.lua: 404); anything else is an error.
   local unexpected
   if bench_expected_status then
      unexpected = status ~= bench_expected_status
   else
      unexpected = status < 200 or status > 299
   end
   if unexpected then
      non2xx = non2xx + 1
      codes[status] = (codes[status] or 0) + 1
      if not first_error then
         first_error = status .. " " .. string.gsub(string.sub(body or "", 1, 300), "%s+", " ")
      end
   end
   if limit and responses >= limit and not stopped then
      -- run.py waits for every thread's line, then ends wrk (its main thread sleeps out -d otherwise).
      stopped = true
      io.write("BENCH_THREAD_DONE\n")
      io.flush()
      wrk.thread:stop()
   end
end

function done(summary, latency, requests)
   local non2xx_total, shared_total, all_codes, first = 0, 0, {}, nil
   for _, thread in ipairs(threads) do
      non2xx_total = non2xx_total + (thread:get("non2xx") or 0)
      shared_total = shared_total + (thread:get("shared") or 0)
      for status, count in pairs(thread:get("codes") or {}) do
         all_codes[status] = (all_codes[status] or 0) + count
      end
      first = first or thread:get("first_error")
   end
   local parts = {}
   for status, count in pairs(all_codes) do table.insert(parts, status .. ":" .. count) end
   table.sort(parts)
   local errors = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d p50_us=%d p90_us=%d p99_us=%d max_us=%d non2xx=%d codes=%s connect_errors=%d read_errors=%d write_errors=%d timeouts=%d shared=%d\n",
      summary.requests, summary.duration,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
      non2xx_total, (#parts > 0) and table.concat(parts, ",") or "-",
      errors.connect, errors.read, errors.write, errors.timeout, shared_total))
   if first then io.write("BENCH_FIRST_ERROR " .. first .. "\n") end
end
