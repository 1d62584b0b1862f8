-- wrk: POST /api/jobs/<id>/status {"state":"running","stage":"bench-<id>","progress":50} as the job itself.
-- Arguments and output: see common.lua (which jobs each connection pushes to; the stage
-- names the job so that a response gives its job back to the thread's free jobs).
-- Example, 64 jobs over 16 connections (4 jobs per connection, no job shared):
--   wrk -t16 -c16 -d10s -s benchmarks/wrk/post.lua http://127.0.0.1:8000 -- threads=16 connections=16 <id>:<token> ...
dofile((os.getenv("BENCH_WRK_DIR") or "benchmarks/wrk") .. "/common.lua")

bench_lease = true

function init(args)
   bench_init(args, function(job)
      return wrk.format("POST", "/api/jobs/" .. job.id .. "/status", {
         ["Authorization"] = "Basic " .. job.token,
         ["Content-Type"] = "application/json",
      }, '{"state":"running","stage":"bench-' .. job.id .. '","progress":50}')
   end)
end
