"""The worker client (jobapi.client) against a real gunicorn, and examples/worker.py end to end."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
from conftest import ROOT, free_port
from sqlalchemy import update

from jobapi.client import (
    Conflict,
    InsufficientRights,
    InvalidInput,
    JobAPIError,
    JobCancelled,
    JobClient,
    JobFinished,
    JobTerminated,
    JobTimedOut,
    MissingSetting,
    NotFound,
    ServiceUnavailable,
    Unauthorized,
    WrongURL,
)
from jobapi.extensions import db
from jobapi.storage.engines import write_connection
from jobapi.jobs import service
from jobapi.models import Job, utcnow

pytestmark = pytest.mark.e2e


def cancel(app, job_id: str) -> None:
    """Cancel a job as an operator would (``flask jobs cancel``)."""
    with app.app_context():
        service.cancel_job(write_connection(db.session), job_id)
        db.session.commit()


@pytest.fixture
def job_client(live_server, job) -> Iterator[JobClient]:
    with JobClient(live_server.url, job.id, job.key, retries=2, backoff_factor=0) as client:
        yield client


# Reading, pushing, pinging


def test_get_push_ping(job_client, job, stored):
    assert job_client.state is None

    document = job_client.get()
    assert document["id"] == job.id
    assert document["task"] == "create_subtraction"
    assert document["args"] == {"subtraction_id": "Thale"}
    assert (document["proc"], document["mem"]) == (2, 4)
    assert job_client.state == "waiting"

    record = job_client.push("running", "bowtie_build", 40)
    assert {k: record[k] for k in ("state", "stage", "progress", "error")} == {
        "state": "running", "stage": "bowtie_build", "progress": 40, "error": None,
    }
    assert job_client.state == "running"

    assert job_client.ping()["state"] == "running"
    done = job_client.push("complete", "done", 100)
    assert done["state"] == "complete"
    assert job_client.state == "complete"

    assert [(r.state, r.stage, r.progress) for r in stored(job.id)] == [
        ("waiting", None, 0), ("running", "bowtie_build", 40), ("complete", "done", 100),
    ]
    # Every push carried its own key.
    keys = [r.idempotency_key for r in stored(job.id)[1:]]
    assert all(keys) and len(set(keys)) == 2


def test_push_error_with_its_text(job_client, job, stored):
    job_client.push("running", "bowtie_build", 10)
    record = job_client.push("error", "bowtie_build", 10, error="bowtie2-build exited 137")
    assert record["error"] == "bowtie2-build exited 137"
    assert stored(job.id)[-1].error == "bowtie2-build exited 137"


# Refusals become typed exceptions


def test_wrong_key_is_unauthorized(live_server, job):
    with JobClient(live_server.url, job.id, "0" * 64, retries=0) as client, pytest.raises(Unauthorized) as raised:
        client.get()
    assert raised.value.status == 401
    assert raised.value.error_id == "unauthorized"


def test_unknown_job_is_not_found(live_server, job):
    with JobClient(live_server.url, "zzzzzzzz", job.key, retries=0) as client, pytest.raises(NotFound) as raised:
        client.get()
    assert raised.value.status == 404
    assert raised.value.message == "Not found"


def test_another_jobs_credentials_are_insufficient_rights(live_server, make_job):
    # The client always sends its own job's credentials; swap them to see the mapping.
    mine, theirs = make_job(), make_job()
    with JobClient(live_server.url, theirs.id, theirs.key, retries=0) as client:
        client.session.auth = (f"job-{mine.id}", mine.key)
        with pytest.raises(InsufficientRights) as raised:
            client.get()
    assert raised.value.status == 403


def test_push_after_cancel_raises_job_cancelled(app, job_client, job, stored):
    job_client.push("running", "bowtie_build", 40)
    cancel(app, job.id)

    with pytest.raises(JobCancelled) as raised:
        job_client.push("running", "bowtie_build", 50)
    assert raised.value.status == 409
    assert raised.value.state == "cancelled"
    assert raised.value.message == "Job is cancelled"
    assert isinstance(raised.value, JobFinished)
    assert job_client.state == "cancelled"

    with pytest.raises(JobCancelled):
        job_client.ping()
    assert [r.state for r in stored(job.id)] == ["waiting", "running", "cancelled"]


def test_get_after_cancel_returns_the_document_and_the_state(app, job_client, job):
    cancel(app, job.id)
    document = job_client.get()
    assert document["status"][-1]["state"] == "cancelled"
    assert job_client.state == "cancelled"


def test_push_after_complete_raises_job_finished(job_client):
    job_client.push("running", "x", 50)
    job_client.push("complete", "done", 100)
    with pytest.raises(JobFinished) as raised:
        job_client.push("running", "again", 100)
    assert not isinstance(raised.value, JobCancelled)
    assert raised.value.state == "complete"
    assert raised.value.message == "Job is complete"


def test_move_the_state_machine_refuses_is_a_conflict(job_client, job, stored):
    with pytest.raises(Conflict) as raised:
        job_client.push("complete", "done", 100)
    assert not isinstance(raised.value, JobFinished)
    assert raised.value.state == "waiting"
    assert len(stored(job.id)) == 1


def test_invalid_push_raises_invalid_input_with_errors(job_client, job, stored):
    with pytest.raises(InvalidInput) as raised:
        job_client.push("running", "x", 101)
    assert raised.value.status == 422
    assert set(raised.value.errors) == {"progress"}
    with pytest.raises(InvalidInput) as raised:
        job_client.push("error", "x", 5)
    assert set(raised.value.errors) == {"error"}
    assert len(stored(job.id)) == 1


def test_no_server_is_service_unavailable_and_says_why(job):
    url = f"http://127.0.0.1:{free_port()}"
    told: list[str] = []
    with JobClient(url, job.id, job.key, retries=1, backoff_factor=0, on_retry=lambda *retry: told.append(retry[2])) as client:
        with pytest.raises(ServiceUnavailable) as raised:
            client.get()
    assert raised.value.status is None
    assert str(raised.value) == (
        f"No answer from {url} (connection refused after 1 retries): is jobapi running there? "
        "Give the service's root URL (http://host:8000) or its API's (http://host:8000/api)."
    )
    assert told == ["connection refused"]


# One URL convention: the service's root, or its API's (ending in /api)


@pytest.mark.parametrize("suffix", ["", "/", "/api", "/api/"])
def test_the_root_url_or_the_apis(live_server, job, suffix):
    with JobClient(live_server.url + suffix, job.id, job.key, retries=0) as client:
        assert client.base_url == live_server.url
        assert client.get()["id"] == job.id
        assert client.ping()["state"] == "waiting"


def test_jobapi_url_may_end_in_api(live_server, job, monkeypatch):
    monkeypatch.setenv("JOBAPI_URL", live_server.url + "/api")
    monkeypatch.setenv("JOB_ID", job.id)
    monkeypatch.setenv("JOB_KEY", job.key)
    with JobClient.from_environment(retries=0) as client:
        assert client.get()["id"] == job.id


def test_an_unknown_job_behind_the_apis_url_is_not_found(live_server, job):
    with JobClient(live_server.url + "/api", "zzzzzzzz", job.key, retries=0) as client, pytest.raises(NotFound):
        client.get()


@pytest.mark.parametrize("suffix", ["/nothing", "/api/api", "/api/jobs"])
def test_a_url_past_the_api_is_a_wrong_url(live_server, job, suffix):
    with JobClient(live_server.url + suffix, job.id, job.key, retries=0) as client, pytest.raises(WrongURL) as raised:
        client.get()
    assert str(raised.value) == (
        f"{live_server.url}{suffix.removesuffix('/api')} does not serve jobapi's API: GET /api/jobs/{job.id} "
        "answered 404, and GET /api/openapi.json is not jobapi's API document. "
        "Give the service's root URL (http://host:8000) or its API's (http://host:8000/api)."
    )
    assert raised.value.status == 404


def test_a_web_page_is_a_wrong_url(live_server, other_site, job):
    # Under /console, paths are pages: no page here for GET (an HTML 404), 405 for POST.
    console = live_server.url + "/console"
    with JobClient(console, job.id, job.key, retries=0) as client:
        with pytest.raises(WrongURL) as raised:
            client.get()
        assert f"{console} does not serve jobapi's API: GET /api/jobs/{job.id} answered 404" in str(raised.value)
        with pytest.raises(WrongURL) as raised:
            client.push("running", "align", 10)
        assert f"POST /api/jobs/{job.id}/status answered 405, and GET /api/openapi.json is not" in str(raised.value)
    # A site that answers every path with its welcome page.
    with JobClient(other_site, job.id, job.key, retries=0) as client, pytest.raises(WrongURL) as raised:
        client.get()
    assert str(raised.value).startswith(f"{other_site} does not serve jobapi's API: GET /api/jobs/{job.id} answered 200 with text/html")
    assert "not JSON" in str(raised.value)


@pytest.fixture
def other_site() -> Iterator[str]:
    """A web server that is not jobapi: its welcome page for any path, but an HTML 404 under /missing."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            missing = self.path.startswith("/missing/")
            status, body = (404, b"<html>Not here</html>") if missing else (200, b"<html>Welcome</html>")
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_POST = do_PUT = do_GET

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_another_sites_404_is_a_wrong_url(other_site, job):
    with JobClient(other_site + "/missing", job.id, job.key, retries=0) as client, pytest.raises(WrongURL) as raised:
        client.get()
    assert "answered 404, and GET /api/openapi.json is not jobapi's API document" in str(raised.value)


def test_the_example_worker_says_when_its_url_is_wrong(live_server, job, stored):
    worker = run_worker(live_server, job, "--url", live_server.url + "/nothing", "--job-id", job.id, "--key", job.key)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 1
    assert err == (
        f"job {job.id}: {live_server.url}/nothing does not serve jobapi's API: GET /api/jobs/{job.id} answered 404, "
        "and GET /api/openapi.json is not jobapi's API document. Give the service's root URL (http://host:8000) "
        "or its API's (http://host:8000/api).\n"
    )
    assert len(stored(job.id)) == 1


# Retries, through a proxy that fails on purpose


@dataclass
class Seen:
    """A request the proxy received."""

    method: str
    path: str
    headers: dict[str, str]
    at: float


@dataclass
class FlakyProxy:
    """An HTTP proxy to the live server that fails the requests its plan says to.

    Plan entries, one per request received: ``"forward"``; ``"503"`` (answer
    503 with ``Retry-After``, never forwarding); ``"forward-502"`` (forward,
    then answer 502 as if the answer were lost on the way back). Requests
    past the plan are forwarded.
    """

    upstream: str
    plan: list[str]
    retry_after: str = "0"
    seen: list[Seen] = field(default_factory=list)
    url: str = ""

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        self.seen.append(Seen(handler.command, handler.path, dict(handler.headers), time.monotonic()))
        action = self.plan.pop(0) if self.plan else "forward"
        if action == "503":
            self._answer(handler, 503, b'{"id": "service_unavailable", "message": "Try later"}',
                         {"Retry-After": self.retry_after, "Content-Type": "application/json"})
            return
        headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("host", "content-length", "connection")}
        upstream = requests.request(handler.command, self.upstream + handler.path, headers=headers, data=body, timeout=30)
        if action == "forward-502":
            self._answer(handler, 502, b"Bad gateway", {"Content-Type": "text/plain"})
            return
        passed = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "job-state", "x-request-id")}
        self._answer(handler, upstream.status_code, upstream.content, passed)

    @staticmethod
    def _answer(handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str]) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


@pytest.fixture
def flaky_proxy(live_server) -> Iterator[FlakyProxy]:
    proxy = FlakyProxy(upstream=live_server.url, plan=[])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            proxy.handle(self)

        do_POST = do_PUT = do_GET

        def log_message(self, *args) -> None:  # keep pytest's output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    proxy.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield proxy
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_retried_push_resends_its_idempotency_key_and_is_stored_once(flaky_proxy, job, stored):
    # The first attempt reaches the service and is stored, but its answer is
    # lost (502); the retry must be recognised as the same push.
    flaky_proxy.plan = ["forward-502"]
    with JobClient(flaky_proxy.url, job.id, job.key, retries=3, backoff_factor=0) as client:
        record = client.push("running", "bowtie_build", 40)

    assert record["stage"] == "bowtie_build"
    pushes = [s for s in flaky_proxy.seen if s.method == "POST"]
    assert len(pushes) == 2
    keys = [s.headers.get("Idempotency-Key") for s in pushes]
    assert keys[0] and keys[0] == keys[1]
    records = stored(job.id)
    assert [(r.state, r.stage) for r in records] == [("waiting", None), ("running", "bowtie_build")]
    assert records[1].idempotency_key == keys[0]


def test_each_push_has_a_key_of_its_own(flaky_proxy, job):
    with JobClient(flaky_proxy.url, job.id, job.key, retries=0) as client:
        client.push("running", "a", 10)
        client.push("running", "b", 20)
    keys = [s.headers["Idempotency-Key"] for s in flaky_proxy.seen]
    assert len(keys) == 2 and keys[0] != keys[1]


def test_503_is_retried_after_retry_after(flaky_proxy, job):
    flaky_proxy.plan = ["503"]
    flaky_proxy.retry_after = "1"
    with JobClient(flaky_proxy.url, job.id, job.key, retries=2, backoff_factor=0) as client:
        document = client.get()
    assert document["id"] == job.id
    assert len(flaky_proxy.seen) == 2
    assert flaky_proxy.seen[1].at - flaky_proxy.seen[0].at >= 0.9


def test_retries_spent_raise_service_unavailable(flaky_proxy, job, stored):
    flaky_proxy.plan = ["503"] * 3
    with JobClient(flaky_proxy.url, job.id, job.key, retries=2, backoff_factor=0) as client:
        with pytest.raises(ServiceUnavailable) as raised:
            client.push("running", "x", 1)
    assert raised.value.status == 503
    assert len(flaky_proxy.seen) == 3
    assert len(stored(job.id)) == 1


def test_client_errors_are_not_retried(flaky_proxy, job):
    with JobClient(flaky_proxy.url, job.id, "0" * 64, retries=3, backoff_factor=0) as client:
        with pytest.raises(JobAPIError):
            client.get()
    assert len(flaky_proxy.seen) == 1


# examples/worker.py, end to end


def run_worker(live_server, job, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "worker.py"), *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_example_worker_runs_a_job_to_completion(live_server, job, stored):
    worker = run_worker(
        live_server, job, "--stage-seconds", "0.1",
        env={"JOBAPI_URL": live_server.url, "JOB_ID": job.id, "JOB_KEY": job.key},
    )
    out, err = worker.communicate(timeout=60)

    assert worker.returncode == 0, err
    assert "complete" in out
    assert [(r.state, r.stage, r.progress) for r in stored(job.id)] == [
        ("waiting", None, 0),
        ("running", "mk_subtraction_dir", 0),
        ("running", "bowtie_build", 30),
        ("running", "set_stats", 80),
        ("complete", "done", 100),
    ]


def test_example_worker_stops_when_cancelled_midway(app, live_server, job, stored):
    worker = run_worker(
        live_server, job, "--url", live_server.url + "/api", "--job-id", job.id, "--key", job.key,
        "--stage-seconds", "1",
    )
    try:
        deadline = time.monotonic() + 30
        while not any(r.stage == "bowtie_build" for r in stored(job.id)):
            assert worker.poll() is None, worker.communicate()
            assert time.monotonic() < deadline, "the worker never reached its second stage"
            time.sleep(0.05)
        cancel(app, job.id)
        out, err = worker.communicate(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()

    assert worker.returncode == 3, (out, err)
    assert err.strip() == f"job {job.id} was cancelled; stopping"
    states = [r.state for r in stored(job.id)]
    assert states[-1] == "cancelled"
    assert "complete" not in states
    assert [r.stage for r in stored(job.id)][1:3] == ["mk_subtraction_dir", "bowtie_build"]


def test_example_worker_needs_credentials(live_server):
    env = {k: v for k, v in os.environ.items() if k not in ("JOB_ID", "JOB_KEY")}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "worker.py"), "--url", live_server.url],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "--job-id" in done.stderr


def test_each_retry_is_reported_to_the_listener(flaky_proxy, job):
    flaky_proxy.plan = ["503", "forward-502"]
    told: list[tuple[str, str, str]] = []
    with JobClient(flaky_proxy.url, job.id, job.key, retries=3, backoff_factor=0,
                   on_retry=lambda *retry: told.append(retry)) as client:
        client.push("running", "align", 10)
    assert [(method, reason) for method, _, reason in told] == [("POST", "HTTP 503"), ("POST", "HTTP 502")]
    assert all(url.endswith(f"/api/jobs/{job.id}/status") for _, url, _ in told)


def test_from_environment_names_what_is_missing(monkeypatch):
    monkeypatch.setenv("JOBAPI_URL", "http://127.0.0.1:1")
    monkeypatch.delenv("JOB_ID", raising=False)
    monkeypatch.setenv("JOB_KEY", " ")
    with pytest.raises(MissingSetting) as raised:
        JobClient.from_environment()
    assert raised.value.names == ["JOB_ID", "JOB_KEY"]
    assert "JOB_ID, JOB_KEY" in str(raised.value)


@pytest.mark.parametrize(
    ("final", "error", "exception"),
    [
        ("cancelled", None, JobCancelled),
        ("terminated", None, JobTerminated),
        ("complete", None, JobFinished),
        ("error", "boom", JobFinished),
    ],
)
def test_a_push_after_a_final_state_raises_its_exception(job_client, final, error, exception):
    job_client.push("running", "align", 10)
    job_client.push(final, "align", 10, error=error)
    with pytest.raises(exception) as raised:
        job_client.push("running", "late", 20)
    assert type(raised.value) is exception
    assert raised.value.state == final


def test_a_timed_out_job_raises_job_timed_out(app, job_client, job):
    job_client.push("running", "align", 10)
    with app.app_context():
        db.session.execute(update(Job).where(Job.id == job.id).values(updated_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
    assert app.test_cli_runner().invoke(args=["jobs", "reap", "--timeout", "60"]).exit_code == 0
    with pytest.raises(JobTimedOut) as raised:
        job_client.ping()
    assert raised.value.state == "timeout"


def test_the_example_worker_reports_retries_on_stderr(flaky_proxy, job):
    flaky_proxy.plan = ["503"]
    worker = run_worker(
        None, job, "--url", flaky_proxy.url, "--job-id", job.id, "--key", job.key, "--stage-seconds", "0.05",
    )
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert f"retrying GET /api/jobs/{job.id}: HTTP 503" in err
