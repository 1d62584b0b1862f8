"""End to end: a real gunicorn (2 workers) on the test database, driven over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import ROOT

pytestmark = pytest.mark.e2e

TIMEOUT = 30


def push(session: requests.Session, server, job, **body) -> requests.Response:
    return session.post(
        f"{server.url}/api/jobs/{job.id}/status",
        json=body,
        auth=job.requests_auth,
        timeout=TIMEOUT,
    )


def test_worker_life(live_server, job, stored):
    http = requests.Session()
    document = http.get(f"{live_server.url}/api/jobs/{job.id}", auth=job.requests_auth, timeout=TIMEOUT)
    assert document.status_code == 200
    assert document.json()["task"] == "create_subtraction"
    assert [r["state"] for r in document.json()["status"]] == ["waiting"]

    for progress, stage in ((10, "mk_subtraction_dir"), (40, "set_stats"), (70, "bowtie_build")):
        response = push(http, live_server, job, state="running", stage=stage, progress=progress)
        assert response.status_code == 200, response.text
        assert response.json()["stage"] == stage
    done = push(http, live_server, job, state="complete", stage="done", progress=100)
    assert done.status_code == 200
    again = push(http, live_server, job, state="running", stage="again", progress=100)
    assert again.status_code == 409
    assert again.json()["id"] == "conflict"

    final = http.get(f"{live_server.url}/api/jobs/{job.id}", auth=job.requests_auth, timeout=TIMEOUT).json()
    assert [r["state"] for r in final["status"]] == ["waiting", "running", "running", "running", "complete"]
    assert [r.state for r in stored(job.id)] == ["waiting", "running", "running", "running", "complete"]


def test_cross_job_access_refused(live_server, make_job, stored):
    mine, theirs = make_job(), make_job()
    read = requests.get(f"{live_server.url}/api/jobs/{theirs.id}", auth=mine.requests_auth, timeout=TIMEOUT)
    assert read.status_code == 403
    assert read.json() == {"id": "insufficient_rights", "message": "Insufficient rights"}
    write = requests.post(
        f"{live_server.url}/api/jobs/{theirs.id}/status",
        json={"state": "running", "stage": "x", "progress": 1},
        auth=mine.requests_auth,
        timeout=TIMEOUT,
    )
    assert write.status_code == 403
    assert len(stored(theirs.id)) == 1


def test_bad_key_and_unknown_route(live_server, job):
    bad = requests.get(f"{live_server.url}/api/jobs/{job.id}", auth=(f"job-{job.id}", "0" * 64), timeout=TIMEOUT)
    assert bad.status_code == 401
    assert bad.headers["WWW-Authenticate"] == 'Basic realm="jobs"'
    missing = requests.get(f"{live_server.url}/nowhere", timeout=TIMEOUT)
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/json"
    assert missing.json() == {"id": "not_found", "message": "Not found"}


def test_concurrent_pushes_to_one_job(live_server, job, stored):
    threads, pushes = 8, 50

    def worker(n: int) -> list[int]:
        http = requests.Session()
        codes = []
        for i in range(pushes):
            response = push(http, live_server, job, state="running", stage=f"t{n}-{i}", progress=i)
            codes.append(response.status_code)
        return codes

    with ThreadPoolExecutor(threads) as pool:
        codes = [code for result in pool.map(worker, range(threads)) for code in result]

    assert codes.count(200) == threads * pushes, sorted(set(codes))
    records = stored(job.id)
    assert len(records) == 1 + threads * pushes
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    timestamps = [r.timestamp for r in records]
    assert timestamps == sorted(timestamps)
    assert len({r.stage for r in records[1:]}) == threads * pushes  # none lost, none twice
    # Each thread's pushes appear in the order it sent them.
    for n in range(threads):
        mine = [int(r.stage.split("-")[1]) for r in records[1:] if r.stage.startswith(f"t{n}-")]
        assert mine == list(range(pushes))


def test_cli_made_job_works_over_http(live_server, database_url, stored):
    """The README's flow: make a job with the CLI, then read it and push with its key."""
    env = {**os.environ, "DATABASE_URL": database_url}
    made = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "jobapi", "jobs", "create", "--task", "build_index", "--user", "alice", "--args", '{"ref": "hg38"}'],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    created = json.loads(made.stdout)
    auth = (f"job-{created['id']}", created["key"])
    document = requests.get(f"{live_server.url}/api/jobs/{created['id']}", auth=auth, timeout=TIMEOUT)
    assert document.status_code == 200
    assert document.json()["args"] == {"ref": "hg38"}
    pushed = requests.post(
        f"{live_server.url}/api/jobs/{created['id']}/status",
        json={"state": "running", "stage": "index", "progress": "5"},
        auth=auth,
        timeout=TIMEOUT,
    )
    assert pushed.status_code == 200
    assert pushed.json()["progress"] == 5
    assert [r.state for r in stored(created["id"])] == ["waiting", "running"]
