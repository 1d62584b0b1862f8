-- wrk: an empty claim through Virtool's 42.x dialect, as an idle pod polls it every 2 s:
-- POST /virtool42/jobs/claim?workflow=create_sample with the pod's JSON body and no
-- credentials, on a queue with no create_sample job. Its answer is 404 "No job available";
-- any other status is counted as an error. The job arguments are required by common.lua
-- and not used. Example, from the repository root (JOB_ACQUIRE=open on the server):
--   wrk -t16 -c16 -d10s -s benchmarks/wrk/claim42.lua http://127.0.0.1:8000 -- threads=16 connections=16 <id>:<token>
dofile((os.getenv("BENCH_WRK_DIR") or "benchmarks/wrk") .. "/common.lua")

bench_expected_status = 404

local body = '{"runnerId":"create-sample-5d8c7-1","mem":4,"cpu":2,'
   .. '"image":"ghcr.io/virtool/create-sample:6.0.0","runtimeVersion":"42.12.0","workflowVersion":"6.0.0",'
   .. '"steps":[{"id":"download","name":"Download","description":"Download the reads."},'
   .. '{"id":"trim","name":"Trim","description":"Trim the reads."},'
   .. '{"id":"upload","name":"Upload","description":"Upload the results."}]}'

function init(args)
   bench_init(args, function(_job)
      return wrk.format("POST", "/virtool42/jobs/claim?workflow=create_sample",
                        {["Content-Type"] = "application/json", ["Accept"] = "application/json"}, body)
   end)
end
