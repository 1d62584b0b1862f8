"""Lifecycle rules under concurrency, against a real gunicorn on the test database."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from conftest import start_gunicorn, stop_gunicorn

from jobapi.extensions import db
from jobapi.storage.engines import write_connection
from jobapi.jobs import service
from jobapi.models import FINAL_STATES

pytestmark = pytest.mark.e2e

TIMEOUT = 30


def status_url(server, job) -> str:
    return f"{server.url}/api/jobs/{job.id}/status"


def test_many_threads_pushing_to_one_job(live_server, job, stored):
    threads, pushes = 16, 100
    results: list[tuple[int, str]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        http = requests.Session()
        for i in range(pushes):
            stage = f"t{n}-{i}"
            response = http.post(
                status_url(live_server, job),
                json={"state": "running", "stage": stage, "progress": i % 101},
                auth=job.requests_auth,
                timeout=TIMEOUT,
            )
            with lock:
                results.append((response.status_code, stage))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))

    codes = [code for code, _ in results]
    assert not [c for c in codes if c >= 500], "server errors"
    accepted = {stage for code, stage in results if code == 200}
    records = stored(job.id)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    assert {r.stage for r in records[1:]} == accepted
    assert len(records) == 1 + len(accepted) == 1 + threads * pushes
    timestamps = [r.timestamp for r in records]
    assert timestamps == sorted(timestamps)


def test_racing_final_states_store_exactly_one(live_server, job, stored, client):
    client.post(f"/api/jobs/{job.id}/status", json={"state": "running", "stage": "a", "progress": 1}, headers=job.auth)
    finals = ["complete", "cancelled", "error"]
    barrier = threading.Barrier(20)

    def racer(n: int) -> requests.Response:
        state = finals[n % 3]
        body = {"state": state, "stage": f"racer-{n}", "progress": 100}
        if state == "error":
            body["error"] = "failed"
        barrier.wait(timeout=TIMEOUT)
        return requests.post(status_url(live_server, job), json=body, auth=job.requests_auth, timeout=TIMEOUT)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(racer, range(20)))

    codes = sorted(r.status_code for r in responses)
    assert codes == [200] + [409] * 19
    winner = next(r for r in responses if r.status_code == 200).json()
    for loser in (r for r in responses if r.status_code == 409):
        assert loser.json()["state"] == winner["state"]
        assert loser.headers["Job-State"] == winner["state"]
    records = stored(job.id)
    assert [r.state in FINAL_STATES for r in records] == [False, False, True]
    assert records[-1].stage == winner["stage"]


def test_concurrent_retries_of_one_key_store_one_record(live_server, job, stored):
    barrier = threading.Barrier(8)

    def retry(_: int) -> requests.Response:
        barrier.wait(timeout=TIMEOUT)
        return requests.post(
            status_url(live_server, job),
            json={"state": "running", "stage": "upload", "progress": 10},
            headers={"Idempotency-Key": "upload-once"},
            auth=job.requests_auth,
            timeout=TIMEOUT,
        )

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(retry, range(8)))

    assert [r.status_code for r in responses] == [200] * 8
    assert len({r.text for r in responses}) == 1
    records = stored(job.id)
    assert [r.stage for r in records] == [None, "upload"]


def test_cancelled_worker_told_over_http(app, live_server, job):
    http = requests.Session()
    url = f"{live_server.url}/api/jobs/{job.id}"
    http.post(url + "/status", json={"state": "running", "stage": "align", "progress": 20}, auth=job.requests_auth, timeout=TIMEOUT)
    with app.app_context():
        service.cancel_job(write_connection(db.session), job.id)
        db.session.commit()
    read = http.get(url, auth=job.requests_auth, timeout=TIMEOUT)
    assert read.status_code == 200
    assert read.headers["Job-State"] == "cancelled"
    pinged = http.put(url + "/ping", auth=job.requests_auth, timeout=TIMEOUT)
    assert pinged.status_code == 409
    pushed = http.post(url + "/status", json={"state": "running", "stage": "sort", "progress": 30}, auth=job.requests_auth, timeout=TIMEOUT)
    assert pushed.status_code == 409
    assert pushed.json() == {"id": "conflict", "message": "Job is cancelled", "state": "cancelled"}


def test_reaping_a_silent_worker(app, live_server, job, stored):
    http = requests.Session()
    url = f"{live_server.url}/api/jobs/{job.id}"
    assert http.post(url + "/status", json={"state": "running", "stage": "align", "progress": 20}, auth=job.requests_auth, timeout=TIMEOUT).status_code == 200
    assert http.put(url + "/ping", auth=job.requests_auth, timeout=TIMEOUT).status_code == 200
    time.sleep(1.2)
    result = app.test_cli_runner().invoke(args=["jobs", "reap", "--timeout", "1"])
    assert result.exit_code == 0, result.output
    assert f"Reaped job {job.id}" in result.output
    read = http.get(url, auth=job.requests_auth, timeout=TIMEOUT)
    assert read.headers["Job-State"] == "timeout"
    assert read.json()["status"][-1]["state"] == "timeout"
    assert read.json()["status"][-1]["stage"] == "align"


def test_key_grace_expiry_over_http(app, database_url, tmp_path, job):
    server = start_gunicorn(database_url, tmp_path / "grace.log", extra_env={"JOB_KEY_GRACE_SECONDS": "1"})
    try:
        http = requests.Session()
        url = f"{server.url}/api/jobs/{job.id}"
        body = {"state": "cancelled", "stage": "stop", "progress": 0}
        first = http.post(url + "/status", json=body, headers={"Idempotency-Key": "stop"}, auth=job.requests_auth, timeout=TIMEOUT)
        assert first.status_code == 200
        replay = http.post(url + "/status", json=body, headers={"Idempotency-Key": "stop"}, auth=job.requests_auth, timeout=TIMEOUT)
        assert replay.status_code == 200
        assert replay.json() == first.json()
        assert http.get(url, auth=job.requests_auth, timeout=TIMEOUT).status_code == 200
        time.sleep(1.3)
        expired = http.get(url, auth=job.requests_auth, timeout=TIMEOUT)
        assert expired.status_code == 401
        assert expired.json()["message"] == "Job is no longer active"
    finally:
        stop_gunicorn(server.process)
