"""Metrics at /metrics, read with Prometheus's own text parser: through the test client, and from
a real gunicorn whose workers' counts add up."""

from __future__ import annotations

import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from conftest import free_port, push, start_gunicorn, stop_gunicorn
from prometheus_client.parser import text_string_to_metric_families

from jobapi import create_app
from jobapi.extensions import db

REQUESTS = "jobapi_http_requests"
DURATION = "jobapi_http_request_duration_seconds"
PUSHES = "jobapi_status_pushes"
JOBS = "jobapi_jobs"


def parse(text: str) -> dict[str, dict[tuple, float]]:
    """Sample name -> {sorted label items: value}."""
    samples: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def scrape(client) -> dict[str, dict[tuple, float]]:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain; version=")
    return parse(response.get_data(as_text=True))


# Through the test client (one process)


def test_requests_counted_by_route_method_and_status(client, job):
    before = scrape(client)
    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).status_code == 200
    assert client.get(f"/api/jobs/{job.id}").status_code == 401
    assert client.get("/no/such/route").status_code == 404
    after = scrape(client)

    route = "/api/jobs/<job_id>"
    for status, count in (("200", 1), ("401", 1)):
        key = dict(route=route, method="GET", status=status)
        assert value(after, REQUESTS + "_total", **key) - value(before, REQUESTS + "_total", **key) == count
    unmatched = dict(route="<unmatched>", method="GET", status="404")
    assert value(after, REQUESTS + "_total", **unmatched) - value(before, REQUESTS + "_total", **unmatched) == 1
    # One latency observation per request, in a histogram.
    assert value(after, DURATION + "_count", route=route) - value(before, DURATION + "_count", route=route) == 2
    assert value(after, DURATION + "_bucket", route=route, le="+Inf") == value(after, DURATION + "_count", route=route)


def test_odd_methods_share_one_label(client):
    before = scrape(client)
    client.open("/healthz", method="BREW")
    after = scrape(client)
    key = dict(route="/healthz", method="other", status="405")
    assert value(after, REQUESTS + "_total", **key) - value(before, REQUESTS + "_total", **key) == 1
    assert not any(("method", "BREW") in labels for labels in after[REQUESTS + "_total"])


def test_status_pushes_counted_by_state_once_each(client, job):
    before = scrape(client)
    assert push(client, job, "running", "a", 10).status_code == 200
    key = {"Idempotency-Key": "push-1"}
    assert push(client, job, "running", "b", 20, headers=key).status_code == 200
    assert push(client, job, "running", "b", 20, headers=key).status_code == 200  # a retry, replayed
    assert push(client, job, "running", "c", 101).status_code == 422
    assert push(client, job, "complete", "done", 100).status_code == 200
    assert push(client, job, "running", "late", 100).status_code == 409
    after = scrape(client)

    def pushed(state):
        return value(after, PUSHES + "_total", state=state) - value(before, PUSHES + "_total", state=state)

    assert (pushed("running"), pushed("complete"), pushed("error")) == (2, 1, 0)


def test_jobs_by_current_state(client, make_job):
    jobs = [make_job() for _ in range(4)]
    assert push(client, jobs[1], "running", "a", 10).status_code == 200
    assert push(client, jobs[2], "running", "a", 10).status_code == 200
    assert push(client, jobs[2], "complete", "done", 100).status_code == 200

    samples = scrape(client)

    assert {labels[0][1]: count for labels, count in samples[JOBS].items()} == {
        "waiting": 2, "preparing": 0, "running": 1, "complete": 1, "cancelled": 0, "error": 0,
        "terminated": 0, "timeout": 0,
    }


def test_metrics_without_the_database(tmp_path):
    app = create_app({
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere",
        "DB_CONNECT_TIMEOUT": 1,
    })
    try:
        client = app.test_client()
        client.get("/healthz")
        samples = scrape(client)
        # The request metrics are still served; the job counts are left out.
        assert value(samples, REQUESTS + "_total", route="/healthz", method="GET", status="200") >= 1
        assert JOBS not in samples
    finally:
        with app.app_context():
            db.engine.dispose()


def test_metrics_need_no_credentials(client):
    response = client.get("/metrics", headers={"Authorization": "Basic !!!"})
    assert response.status_code == 200
    assert "# TYPE jobapi_http_requests_total counter" in response.get_data(as_text=True)


# A real gunicorn with two workers


def test_counts_of_all_workers_add_up(live_server, job):
    url = f"{live_server.url}/api/jobs/{job.id}"
    route = dict(route="/api/jobs/<job_id>", method="GET", status="200")
    before = parse(requests.get(f"{live_server.url}/metrics", timeout=10).text)
    marker = uuid.uuid4().hex[:8]
    sent = 0
    pids: set[str] = set()

    def read(n: int) -> int:
        # A connection per request, so either worker may take it.
        response = requests.get(url, auth=job.requests_auth, headers={"X-Request-ID": f"{marker}-{n}"}, timeout=10)
        return response.status_code

    for _ in range(5):  # until both workers have answered some
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(read, range(sent, sent + 40)))
        assert codes == [200] * 40
        sent += 40
        time.sleep(0.2)
        pids = set(re.findall(rf"\[(\d+)\] \[INFO\] GET .* request_id={marker}-", live_server.log()))
        if len(pids) == 2:
            break
    assert len(pids) == 2, "one worker answered every request"

    # Whichever worker answers the scrape, it counts both workers' requests.
    for _ in range(4):
        after = parse(requests.get(f"{live_server.url}/metrics", timeout=10).text)
        counted = value(after, REQUESTS + "_total", **route) - value(before, REQUESTS + "_total", **route)
        assert counted == sent
        assert (
            value(after, DURATION + "_count", route=route["route"])
            - value(before, DURATION + "_count", route=route["route"])
        ) >= sent


def test_pushes_and_jobs_over_http(live_server, make_job):
    before = parse(requests.get(f"{live_server.url}/metrics", timeout=10).text)
    jobs = [make_job() for _ in range(3)]
    for job in jobs[:2]:
        response = requests.post(
            f"{live_server.url}/api/jobs/{job.id}/status",
            json={"state": "running", "stage": "a", "progress": 1}, auth=job.requests_auth, timeout=10,
        )
        assert response.status_code == 200
    after = parse(requests.get(f"{live_server.url}/metrics", timeout=10).text)

    assert value(after, PUSHES + "_total", state="running") - value(before, PUSHES + "_total", state="running") == 2
    assert value(after, JOBS, state="running") == 2
    assert value(after, JOBS, state="waiting") == 1


def test_gunicorn_makes_and_removes_its_metrics_directory(app, database_url, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    server = start_gunicorn(
        database_url, tmp_path / "gunicorn.log", workers=2, threads=2,
        extra_env={"TMPDIR": str(scratch)},
    )
    try:
        [directory] = [p for p in scratch.iterdir() if p.name.startswith("jobapi-metrics-")]
        requests.get(f"{server.url}/healthz", timeout=10)
        assert any(Path(directory).glob("*.db"))
    finally:
        stop_gunicorn(server.process)
    assert not directory.exists()
