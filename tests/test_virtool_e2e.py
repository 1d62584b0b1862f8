"""A Virtool worker's life against a real gunicorn (JOB_ACQUIRE=open), byte for byte as
virtool-workflow 7.x and 1.x send it: acquire without credentials, pushes, pings, failures
and an operator's cancel."""

from __future__ import annotations

import base64
import http.client
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import pytest
from conftest import LiveServer, start_gunicorn, stop_gunicorn
from virtool_core.models.job import Job as VirtoolJob
from virtool_core.models.job import JobAcquired, JobStatus

from jobapi.extensions import db
from jobapi.storage.engines import write_connection
from jobapi.jobs import service

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

FIVE_KEYS = ["state", "stage", "error", "progress", "timestamp"]


@pytest.fixture(scope="module")
def virtool_server(app, database_url, tmp_path_factory) -> Iterator[LiveServer]:
    """gunicorn as a Virtool deployment runs it: anyone on the network may acquire a job."""
    server = start_gunicorn(
        database_url, tmp_path_factory.mktemp("virtool") / "gunicorn.log", extra_env={"JOB_ACQUIRE": "open"}
    )
    yield server
    stop_gunicorn(server.process)


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self):
        assert self.headers["content-type"] == "application/json", self.headers
        return json.loads(self.body)


@dataclass
class VirtoolWorker:
    """The HTTP a virtool-workflow worker sends: aiohttp's headers, ``json.dumps`` bodies,
    the acquire on a connection of its own (``Connection: close``), then one keep-alive
    connection with Basic auth for pushes and pings."""

    api: str  # http://host:port/api, as VT_JOBS_API_CONNECTION_STRING
    job_id: str
    key: str | None = None
    sent: list[tuple[str, str, dict]] = field(default_factory=list)
    _connection: http.client.HTTPConnection | None = None

    def _request(self, connection, method: str, path: str, body: dict, headers: dict[str, str]) -> Answer:
        payload = json.dumps(body).encode()
        base = urlsplit(self.api).path
        connection.request(method, base + path, body=payload, headers={
            "Accept": "*/*",
            "Accept-Encoding": "gzip, deflate",
            "User-Agent": "Python/3.12 aiohttp/3.9.5",
            "Content-Type": "application/json",
            **headers,
        })
        response = connection.getresponse()
        answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        self.sent.append((method, path, body))
        assert "content-encoding" not in answer.headers  # 1.x reads answers undecoded
        return answer

    def _new_connection(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.api)
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)

    def acquire(self) -> Answer:
        connection = self._new_connection()
        try:
            answer = self._request(connection, "PATCH", f"/jobs/{self.job_id}", {"acquired": True}, {"Connection": "close"})
        finally:
            connection.close()
        if answer.status == 200:
            self.key = answer.json["key"]
        return answer

    def _authenticated(self, method: str, path: str, body: dict) -> Answer:
        if self._connection is None:
            self._connection = self._new_connection()
        credentials = base64.b64encode(f"job-{self.job_id}:{self.key}".encode()).decode()
        return self._request(self._connection, method, path, body, {"Authorization": f"Basic {credentials}"})

    def push(self, body: dict) -> Answer:
        return self._authenticated("POST", f"/jobs/{self.job_id}/status", body)

    def ping(self) -> Answer:
        return self._authenticated("PUT", f"/jobs/{self.job_id}/ping", {})

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()


def step(state: str, progress: int, stage: str, name: str, description: str, error=None) -> dict:
    """A 7.x push: always these six keys, in this order (virtool_workflow/data/jobs.py)."""
    return {"error": error, "progress": progress, "stage": stage, "state": state,
            "step_description": description, "step_name": name}


def new_job(app, task: str = "create_sample") -> str:
    with app.app_context():
        new = service.create_job(write_connection(db.session), task=task, user="igboyes", args={"sample_id": "s1"}, proc=2, mem=4)
        db.session.commit()
        return new.job.id


@pytest.fixture
def worker(app, virtool_server) -> Iterator[VirtoolWorker]:
    made = VirtoolWorker(api=virtool_server.url + "/api", job_id=new_job(app))
    yield made
    made.close()


def test_a_7x_worker_runs_three_steps_to_complete(worker, stored):
    acquired = worker.acquire()
    assert acquired.status == 200
    JobAcquired(**acquired.json)  # as virtool_workflow/api/acquire.py parses it

    pushes = [
        step("running", 0, "first", "First", "Description of First."),
        step("running", 33, "second", "Second", "Description of Second."),
        step("running", 66, "third", "Third", ""),
        step("complete", 100, "", "", ""),
    ]
    for n, body in enumerate(pushes):
        answer = worker.push(body)
        assert answer.status == 200, answer.body
        record = answer.json
        assert (record["state"], record["progress"], record["stage"]) == (body["state"], body["progress"], body["stage"])
        assert (record["step_name"], record["step_description"]) == (body["step_name"], body["step_description"])
        JobStatus.parse_obj(record)
        if n == 0:
            pinged = worker.ping()
            assert pinged.status == 200 and pinged.json["state"] == "running"

    records = stored(worker.job_id)
    assert [(r.state, r.progress, r.step_name) for r in records] == [
        ("waiting", 0, None), ("running", 0, "First"), ("running", 33, "Second"),
        ("running", 66, "Third"), ("complete", 100, ""),
    ]
    again = worker.acquire()
    assert again.status == 400 and "already acquired" in again.body.decode()


def test_a_7x_step_failure_keeps_its_traceback(worker, stored):
    assert worker.acquire().status == 200
    assert worker.push(step("running", 0, "first", "First", "")).status == 200
    error = {
        "type": "ValueError",
        "traceback": [
            '  File "/virtool_workflow/runtime/run.py", line 96, in execute\n    await bound_step()\n',
            '  File "/workflow.py", line 12, in second\n    raise ValueError("boom")\n',
        ],
        "details": ["boom"],
    }
    failed = worker.push(step("error", 33, "second", "Second", "Description of Second.", error=error))
    assert failed.status == 200
    assert failed.json["error"] == error
    VirtoolJob.parse_obj(json.loads(worker._authenticated("GET", f"/jobs/{worker.job_id}", {}).body))
    # A stopped worker's last word, after the failure, hears that the job is finished.
    late = worker.push(step("terminated", 33, "second", "Second", ""))
    assert late.status == 409
    assert late.json == {"id": "conflict", "message": "Job has errored", "state": "error"}
    assert stored(worker.job_id)[-1].error == error


def test_a_7x_worker_stopped_by_sigterm_pushes_terminated(worker, stored):
    assert worker.acquire().status == 200
    assert worker.push(step("running", 0, "first", "First", "")).status == 200
    terminated = worker.push(step("terminated", 0, "first", "First", ""))
    assert terminated.status == 200
    assert (terminated.json["state"], terminated.json["error"]) == ("terminated", None)
    assert worker.ping().status == 409


def test_a_7x_worker_hears_of_a_cancel_on_its_next_ping_and_push(app, worker, runner, stored):
    assert worker.acquire().status == 200
    assert worker.push(step("running", 0, "first", "First", "")).status == 200
    assert runner.invoke(args=["jobs", "cancel", worker.job_id]).exit_code == 0

    pinged = worker.ping()
    assert pinged.status == 409
    assert pinged.json == {"id": "conflict", "message": "Job is cancelled", "state": "cancelled"}
    pushed = worker.push(step("running", 33, "second", "Second", ""))
    assert pushed.status == 409
    # virtool-workflow then reports the 409 itself as the step's failure; that is refused too.
    conflict = {"type": "JobsAPIConflict", "traceback": ["  File ...\n"], "details": [pushed.json["message"]]}
    assert worker.push(step("error", 33, "second", "Second", "", error=conflict)).status == 409
    assert [r.state for r in stored(worker.job_id)] == ["waiting", "running", "cancelled"]


def test_a_1x_worker_acquires_pushes_and_fails(app, virtool_server, stored):
    worker = VirtoolWorker(api=virtool_server.url + "/api", job_id=new_job(app, "build_index"))
    try:
        acquired = worker.acquire()
        assert acquired.status == 200
        document = acquired.json
        for key in ("id", "args", "status", "workflow", "key", "mem", "proc"):
            assert key in document  # virtool_workflow/api/jobs.py builds its Job from these
        for progress, stage in ((33, "first"), (66, "second")):
            answer = worker.push({"state": "running", "stage": stage, "error": None, "progress": progress})
            assert answer.status in (200, 201)
            # Status(**json): exactly the five fields of the seed, nothing more.
            assert list(answer.json) == FIVE_KEYS
        failed = worker.push({"state": "error", "stage": "second", "error": {"message": "boom"}, "progress": 66})
        assert failed.status == 200 and list(failed.json) == FIVE_KEYS
        assert failed.json["error"] == {"message": "boom"}
        assert stored(worker.job_id)[-1].error == {"message": "boom"}
    finally:
        worker.close()
