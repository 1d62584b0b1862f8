"""Operators and runners against a real gunicorn: a whole operator session, and
16 runners claiming from one queue at once."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from sqlalchemy import select

from jobapi.extensions import db
from jobapi.models import ApiToken, Job
from jobapi.tokens import create_token

pytestmark = pytest.mark.e2e

TIMEOUT = 30


@pytest.fixture
def tokens(app):
    with app.app_context():
        operator = create_token(db.session, name="ops", role="operator").secret
        runners = [create_token(db.session, name=f"runner-{n}", role="runner").secret for n in range(16)]
        db.session.commit()
    yield operator, runners
    with app.app_context():
        db.session.execute(ApiToken.__table__.delete())
        db.session.commit()


def test_operator_session(live_server, tokens):
    operator, _ = tokens
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {operator}"
    made = http.post(f"{live_server.url}/api/jobs", json={"task": "align", "user": "alice", "args": {"ref": "hg38"}}, timeout=TIMEOUT)
    assert made.status_code == 201
    job_id, key = made.json()["id"], made.json()["key"]
    worker = requests.post(
        f"{live_server.url}/api/jobs/{job_id}/status",
        json={"state": "running", "stage": "index", "progress": 10},
        auth=(f"job-{job_id}", key),
        timeout=TIMEOUT,
    )
    assert worker.status_code == 200
    listed = http.get(f"{live_server.url}/api/jobs?state=running", timeout=TIMEOUT).json()
    assert [(j["id"], j["progress"]) for j in listed["jobs"]] == [(job_id, 10)]
    assert http.get(f"{live_server.url}/api/jobs/{job_id}", timeout=TIMEOUT).json()["status"][-1]["stage"] == "index"
    assert http.delete(f"{live_server.url}/api/jobs/{job_id}", timeout=TIMEOUT).status_code == 409
    cancelled = http.post(f"{live_server.url}/api/jobs/{job_id}/cancel", timeout=TIMEOUT)
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert http.delete(f"{live_server.url}/api/jobs/{job_id}", timeout=TIMEOUT).status_code == 204
    assert http.get(f"{live_server.url}/api/jobs/{job_id}", timeout=TIMEOUT).status_code == 404


def test_concurrent_claimers_never_share_a_job(app, live_server, tokens, make_job):
    _, runners = tokens
    jobs = {make_job(task="align").id for _ in range(200)}
    barrier = threading.Barrier(len(runners))

    def run(secret: str) -> tuple[list[str], list[int]]:
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {secret}"
        claimed, codes = [], []
        barrier.wait(timeout=TIMEOUT)
        while True:
            response = http.post(f"{live_server.url}/api/jobs/claim", json={"tasks": ["align"], "proc": 1, "mem": 1}, timeout=TIMEOUT)
            codes.append(response.status_code)
            if response.status_code != 200:
                return claimed, codes
            claimed.append(response.json()["id"])

    with ThreadPoolExecutor(len(runners)) as pool:
        results = list(pool.map(run, runners))

    claimed = [job_id for ids, _ in results for job_id in ids]
    codes = Counter(code for _, cs in results for code in cs)
    assert set(codes) == {200, 204}, codes
    assert Counter(claimed).most_common(1)[0][1] == 1, "a job was handed out twice"
    assert set(claimed) == jobs
    with app.app_context():
        owners = dict(db.session.execute(select(Job.id, Job.claimed_by)).all())
    assert all(owners[job_id] is not None for job_id in jobs)
    by_runner = {f"runner-{n}": set(ids) for n, (ids, _) in enumerate(results)}
    assert all(owners[job_id] == name for name, ids in by_runner.items() for job_id in ids)
