"""Virtool 42.x workflow pods against a real gunicorn (JOB_ACQUIRE=open), over HTTP: one polls
an empty queue, claims the job ``jobapi jobs create`` makes, reads it, pings, starts each
step and finishes; one is cancelled by an operator mid-step and stops at its next ping; one
is killed and its job timed out by the reaper. Every answer is held to the contract. Then
claims through the dialect race the 31.x acquire for one job: one winner.

The pods are ``tests/virtool42_worker.mjs``, which drives the jobs API exactly as Virtool's
runtime (@virtool/workflow 42.x) does, with Node's fetch: that runtime is no published
package, so it cannot be installed here; the script follows its code request by request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from conftest import LiveServer, require_program, start_gunicorn, stop_gunicorn
from sqlalchemy import select

from jobapi.extensions import db
from jobapi.models import Job, JobStatus
from jobapi.virtool42 import schemas as contract

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

HERE = Path(__file__).resolve().parent
WORKER = HERE / "virtool42_worker.mjs"
JOBAPI = Path(sys.executable).with_name("jobapi")
TIMEOUT = 30
STEPS = [
    {"id": "decompress", "name": "Decompress", "description": "Decompress the genome.", "seconds": 1},
    {"id": "build_index", "name": "Build Index", "description": "Build a Bowtie2 index.", "seconds": 1},
    {"id": "finalize", "name": "Finalize", "description": "Report the results.", "seconds": 0.5},
]


@pytest.fixture(scope="module")
def node() -> str:
    return require_program("node", "Virtool 42.x's worker runtime in its pods", "nodejs")


@pytest.fixture(scope="module")
def server(app, database_url, tmp_path_factory) -> Iterator[LiveServer]:
    """gunicorn as a lab running Virtool's workers serves it: anyone on its network may claim."""
    live = start_gunicorn(database_url, tmp_path_factory.mktemp("virtool42") / "gunicorn.log",
                          extra_env={"JOB_ACQUIRE": "open"})
    yield live
    stop_gunicorn(live.process)


@dataclass
class Pod:
    """One workflow pod: its process and the log of what it sent and heard."""

    process: subprocess.Popen
    log_path: Path

    def entries(self) -> list[dict]:
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def exchanges(self) -> list[dict]:
        return [entry for entry in self.entries() if entry["kind"] == "exchange"]

    def events(self) -> list[dict]:
        return [entry for entry in self.entries() if entry["kind"] == "event"]

    def wait_for(self, what: str, found: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if found():
                return
            if self.process.poll() is not None and not found():
                break
            time.sleep(0.1)
        pytest.fail(f"pod: {what} did not happen; exit {self.process.poll()}; log:\n"
                    + "\n".join(json.dumps(entry) for entry in self.entries()))

    def wait_for_event(self, event: str, **fields) -> None:
        self.wait_for(f"event {event} {fields}", lambda: any(
            e["event"] == event and all(e.get(k) == v for k, v in fields.items()) for e in self.events()))

    def exit_code(self, timeout: float = 60) -> int:
        return self.process.wait(timeout=timeout)


@pytest.fixture
def start_pod(node, server, tmp_path) -> Iterator[Callable[..., Pod]]:
    pods: list[Pod] = []

    def start(steps=STEPS, workflow: str = "create_subtraction", name: str = "pod") -> Pod:
        log_path = tmp_path / f"{name}.jsonl"
        env = {
            **os.environ,
            "VT_JOBS_API_URL": f"{server.url}/virtool42",
            "VT_WORKFLOW": workflow,
            "VT_MEM": "4",
            "VT_PROC": "2",
            "VT_IMAGE": "ghcr.io/virtool/create-subtraction:4.0.0",
            "VT_TIMEOUT": "120",
            "V42_STEPS": json.dumps(steps),
            "V42_LOG": str(log_path),
        }
        process = subprocess.Popen([node, str(WORKER)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pod = Pod(process=process, log_path=log_path)
        pods.append(pod)
        return pod

    yield start
    for pod in pods:
        if pod.process.poll() is None:
            pod.process.kill()
        pod.process.wait()
        pod.process.stdout.close()


def jobapi(database_url: str, *args: str) -> subprocess.CompletedProcess:
    """The operator's command, as a separate process on the same database."""
    done = subprocess.run([str(JOBAPI), *args], env={**os.environ, "DATABASE_URL": database_url},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def create_job(database_url: str, task: str = "create_subtraction") -> dict:
    made = jobapi(database_url, "jobs", "create", "--task", task, "--user", "igboyes",
                  "--args", '{"subtraction_id": 7, "files": [3, 4]}')
    return json.loads(made.stdout)


def check_answer(exchange: dict) -> None:
    """An answer the dialect gave, held to the contract's shape of that route."""
    method, path, status, answer = exchange["method"], exchange["path"], exchange["status"], exchange["answer"]
    assert exchange["contentType"] == "application/json", exchange
    if status >= 400:
        contract.MessageSchema().load(answer)
    elif path.startswith("/virtool42/jobs/claim"):
        contract.JobClaimedSchema().load(answer)
    elif method == "PUT":
        contract.JobPingSchema().load(answer)
    elif path.endswith("/start"):
        contract.JobStepStartedSchema().load(answer)
    else:
        contract.JobSchema().load(answer)


def records(app, job_id: str) -> list[tuple]:
    with app.app_context():
        rows = db.session.execute(select(JobStatus.state, JobStatus.stage, JobStatus.progress)
                                  .where(JobStatus.job_id == job_id).order_by(JobStatus.seq)).all()
        return [tuple(row) for row in rows]


def test_a_pod_polls_claims_runs_each_step_and_finishes(app, database_url, server, start_pod):
    pod = start_pod(name="runs")
    # Nothing waits: the pod polls, every 2 s, and hears 404 each time.
    pod.wait_for("two empty claims", lambda: sum(x.get("status") == 404 for x in pod.exchanges()) >= 2)
    job = create_job(database_url)

    assert pod.exit_code() == 0
    exchanges = pod.exchanges()
    for exchange in exchanges:
        check_answer(exchange)
    claims = [x for x in exchanges if x["path"].startswith("/virtool42/jobs/claim")]
    assert claims[-1]["status"] == 200 and all(x["status"] == 404 for x in claims[:-1])
    assert all(x["answer"] == {"message": "No job available"} for x in claims[:-1])
    assert all(x["path"] == "/virtool42/jobs/claim?workflow=create_subtraction" for x in claims)
    claimed = claims[-1]["answer"]
    assert claimed["id"] == job["number"] and claimed["state"] == "running"
    number = claimed["id"]

    after = [(x["method"], x["path"]) for x in exchanges[len(claims):] if x["method"] != "PUT"]
    assert after == [
        ("GET", f"/virtool42/jobs/{number}"),
        *[("POST", f"/virtool42/jobs/{number}/steps/{step['id']}/start") for step in STEPS],
        ("POST", f"/virtool42/jobs/{number}/finish"),
    ]
    pings = [x for x in exchanges if x["method"] == "PUT"]
    assert pings and all(x["status"] == 200 and x["body"] is None for x in pings)
    assert all("content-type" not in x["headers"] for x in pings)
    finish = exchanges[-1]
    assert finish["body"] is None and "content-type" not in finish["headers"]
    assert finish["status"] == 200 and finish["answer"]["state"] == "succeeded"
    assert finish["answer"]["progress"] == 100 and finish["answer"]["finishedAt"] is not None
    read = next(x["answer"] for x in exchanges if x["method"] == "GET")
    assert read["args"] == {"subtraction_id": "7", "files": "[3,4]"}
    assert read["user"] == claimed["user"] and read["user"]["handle"] == "igboyes"

    # The same job, as the operator sees it.
    shown = json.loads(jobapi(database_url, "jobs", "show", job["id"]).stdout)
    assert (shown["state"], shown["progress"], shown["number"]) == ("complete", 100, number)
    assert shown["claim"]["runtime_version"] == "42.12.0" and shown["acquired"] is True
    assert records(app, job["id"]) == [
        ("waiting", None, 0), ("running", None, 0), ("running", "decompress", 33),
        ("running", "build_index", 66), ("running", "finalize", 100), ("complete", "finalize", 100),
    ]


def test_an_operators_cancel_stops_the_pod_at_its_next_ping(app, database_url, server, start_pod):
    job = create_job(database_url)
    steps = [{**STEPS[0], "seconds": 0.2}, {**STEPS[1], "seconds": 120}, STEPS[2]]
    pod = start_pod(steps, name="cancelled")
    pod.wait_for_event("step running", step="build_index")

    # What KEDA reads meanwhile: one create_subtraction job running, none pending.
    counts = requests.get(f"{server.url}/virtool42/jobs/counts", timeout=TIMEOUT)
    assert counts.status_code == 200
    assert contract.CountsSchema().load(counts.json())
    assert counts.json()["running"]["create_subtraction"] == 1 and counts.json()["pending"]["create_subtraction"] == 0

    cancelled_at = time.monotonic()
    jobapi(database_url, "jobs", "cancel", job["id"])
    assert pod.exit_code(timeout=30) == 0
    # Pings go every 5 s: the next one heard the cancel.
    assert time.monotonic() - cancelled_at < 15
    exchanges = pod.exchanges()
    for exchange in exchanges:
        check_answer(exchange)
    last_ping = [x for x in exchanges if x["method"] == "PUT"][-1]
    assert (last_ping["status"], last_ping["answer"]) == (401, {"message": "Job is cancelled."})
    assert not [x for x in exchanges if x["path"].endswith(("/finish", "/finalize/start"))]
    assert {"kind": "event", "event": "outcome", "outcome": "cancelled"}.items() <= pod.events()[-1].items()
    assert records(app, job["id"])[-1] == ("cancelled", "build_index", 66)


def test_a_killed_pods_job_is_timed_out_by_the_reaper_and_reads_failed(app, database_url, server, start_pod):
    job = create_job(database_url)
    pod = start_pod([{**STEPS[0], "seconds": 120}], name="killed")
    pod.wait_for_event("step running", step="decompress")
    pod.wait_for("a ping", lambda: any(x["method"] == "PUT" for x in pod.exchanges()))
    pod.process.send_signal(signal.SIGKILL)
    pod.process.wait(timeout=TIMEOUT)
    claimed = next(x["answer"] for x in pod.exchanges() if x["status"] == 200)

    time.sleep(2.5)
    reaped = jobapi(database_url, "jobs", "reap", "--timeout", "2")
    assert "1 job reaped" in reaped.stdout

    auth = (f"job-{claimed['id']}", claimed["key"])
    refused = requests.put(f"{server.url}/virtool42/jobs/{claimed['id']}/ping", auth=auth, timeout=TIMEOUT)
    assert refused.status_code == 401 and refused.json() == {"message": "Job has failed."}
    counts = requests.get(f"{server.url}/virtool42/jobs/counts", timeout=TIMEOUT).json()
    assert counts["running"]["create_subtraction"] == 0
    assert json.loads(jobapi(database_url, "jobs", "show", job["id"]).stdout)["state"] == "timeout"


def test_claims_through_the_dialect_and_31x_acquires_race_for_one_job_one_winner(app, server, make_job):
    body = {"runnerId": "pod", "mem": 4, "cpu": 2, "image": "img", "runtimeVersion": "42.12.0",
            "workflowVersion": "1", "steps": [{"id": "work", "name": "Work", "description": "Work."}]}
    claimers, acquirers = 6, 6

    for round_number in range(8):
        job = make_job()
        barrier = threading.Barrier(claimers + acquirers)

        def claim(_: int) -> tuple[str, int, dict]:
            barrier.wait(timeout=TIMEOUT)
            answer = requests.post(f"{server.url}/virtool42/jobs/claim?workflow=create_subtraction",
                                   json={**body, "runnerId": f"pod-{_}"}, timeout=TIMEOUT)
            return "claim", answer.status_code, answer.json()

        def acquire(_: int) -> tuple[str, int, dict]:
            barrier.wait(timeout=TIMEOUT)
            answer = requests.patch(f"{server.url}/api/jobs/{job.id}", json={"acquired": True}, timeout=TIMEOUT)
            return "acquire", answer.status_code, answer.json()

        with ThreadPoolExecutor(claimers + acquirers) as pool:
            futures = [pool.submit(claim, n) for n in range(claimers)] + [pool.submit(acquire, n) for n in range(acquirers)]
            results = [future.result() for future in futures]

        winners = [(how, answer) for how, status, answer in results if status == 200]
        assert len(winners) == 1, (round_number, results)
        for how, status, answer in results:
            if status == 200:
                continue
            if how == "claim":
                assert (status, answer) == (404, {"message": "No job available"}), results
            else:
                assert status == 400 and answer["message"] == "Job already acquired", results
        with app.app_context():
            row = db.session.get(Job, job.id)
            states = db.session.scalars(
                select(JobStatus.state).where(JobStatus.job_id == job.id).order_by(JobStatus.seq)).all()
        how, answer = winners[0]
        if how == "claim":
            contract.JobClaimedSchema().load(answer)
            assert row.claimed_by == answer["claim"]["runnerId"] and states == ["waiting", "running"]
        else:
            assert row.claimed_by is None and states == ["waiting"]
