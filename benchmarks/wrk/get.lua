-- wrk: GET /api/jobs/<id>, each request authenticated as the job (HTTP Basic job-<id>:<key>).
-- Arguments and output: see common.lua. Example, from the repository root:
--   wrk -t16 -c16 -d10s -s benchmarks/wrk/get.lua http://127.0.0.1:8000 -- threads=16 connections=16 <id>:<token>
dofile((os.getenv("BENCH_WRK_DIR") or "benchmarks/wrk") .. "/common.lua")

function init(args)
   bench_init(args, function(job)
      return wrk.format("GET", "/api/jobs/" .. job.id, {["Authorization"] = "Basic " .. job.token})
   end)
end
