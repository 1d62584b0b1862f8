"""The benchmark's yardstick (benchmarks/yardstick_app.py) answers as the service does.

Its rules are compared with the service's directly (validation messages,
states, digests), and end to end: the yardstick under gunicorn and the
service under gunicorn on the same PostgreSQL database, sent the same
requests, must give the same statuses, bodies and headers, and store the
same rows.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from marshmallow import ValidationError
from sqlalchemy import select, update

from conftest import ROOT, free_port
from jobapi.exceptions import FINISHED_MESSAGES
from jobapi.extensions import db
from jobapi.storage.engines import write_connection
from jobapi.jobs import service, states
from jobapi.models import Job, JobStatus, utcnow
from jobapi.jobs.schemas import status_in_schema

TIMEOUT = 30


def _load_yardstick():
    spec = importlib.util.spec_from_file_location("yardstick_app", ROOT / "benchmarks" / "yardstick_app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


yardstick_app = _load_yardstick()


# The rules, compared directly -------------------------------------------------


def test_same_states_transitions_and_messages():
    assert yardstick_app.STATES == states.STATES
    assert yardstick_app.PUSHABLE_STATES == states.PUSHABLE_STATES
    assert yardstick_app.FINAL_STATES == states.FINAL_STATES
    assert yardstick_app.TRANSITIONS == states.TRANSITIONS
    assert yardstick_app.ERROR_REQUIRED == states.ERROR_REQUIRED
    assert yardstick_app.ERROR_ALLOWED == states.ERROR_ALLOWED
    assert yardstick_app.FINISHED_MESSAGES == FINISHED_MESSAGES


PUSH_BODIES: list[dict[str, Any]] = [
    {"state": "running", "stage": "bowtie_build", "progress": 40},
    {"state": "running", "stage": "", "progress": "40"},
    {"state": "running", "stage": "x", "progress": "0040"},
    {"state": "running", "stage": "x", "progress": 40.0},
    {"state": "running", "stage": "x", "progress": 0},
    {"state": "running", "stage": "x", "progress": 100},
    {"state": "complete", "stage": "x", "progress": 100, "error": None},
    {"state": "error", "stage": "x", "progress": 3, "error": "Exited with status 1"},
    {},
    {"state": None, "stage": None, "progress": None},
    {"state": "x", "stage": 1, "progress": "a"},
    {"state": 5, "stage": ["a"], "progress": {"a": 1}},
    {"state": "running", "stage": "a" * 257, "progress": 101},
    {"state": "running", "stage": "a" * 256, "progress": -1},
    {"state": "running", "stage": "a\x00" * 200, "progress": 1},
    {"state": "running", "stage": "x", "progress": 1.5},
    {"state": "running", "stage": "x", "progress": True},
    {"state": "running", "stage": "x", "progress": "12345678901"},
    {"state": "running", "stage": "x", "progress": "1234567890"},
    {"state": "running", "stage": "x", "progress": "-1"},
    {"state": "running", "stage": "x", "progress": " 4"},
    {"state": "running", "stage": "x", "progress": "\u0664\u0660"},
    {"state": "running", "stage": "x", "progress": 1e300},
    {"state": "running", "stage": "x", "progress": 2**70},
    {"state": "error", "stage": "x", "progress": 1},
    {"state": "error", "stage": "x", "progress": 1, "error": None},
    {"state": "error", "stage": "x", "progress": 1, "error": ""},
    {"state": "error", "stage": "x", "progress": 1, "error": 1},
    {"state": "error", "stage": "x", "progress": 1, "error": "e" * 16385},
    {"state": "error", "stage": "x", "progress": 1, "error": "a\x00b"},
    {"state": "running", "stage": "x", "progress": 1, "error": "boom"},
    {"state": "running", "stage": "x", "progress": 1, "error": ""},
    {"state": "running", "stage": "x", "progress": 1, "foo": 1},
    {"state": "error", "stage": "x", "progress": 1, "foo": 1},
    {"state": "running", "stage": "x", "progress": 1, "error": "boom", "seq": 3},
    {"state": "timeout", "stage": "x", "progress": 1},
    {"state": "preparing", "stage": "x", "progress": 1},
    {"state": "terminated", "stage": "x", "progress": 1},
    {"state": "terminated", "stage": "x", "progress": 1, "error": "SIGTERM"},
    {"state": "error", "stage": "x", "progress": 1, "error": {"type": "E", "traceback": ["a"], "details": []}},
    {"state": "error", "stage": "x", "progress": 1, "error": {"message": "boom"}},
    {"state": "error", "stage": "x", "progress": 1, "error": {"message": 1}},
    {"state": "error", "stage": "x", "progress": 1, "error": {"type": "E", "traceback": "a", "details": []}},
    {"state": "error", "stage": "x", "progress": 1, "error": {"type": "E", "traceback": [], "details": [], "x": 1}},
    {"state": "error", "stage": "x", "progress": 1, "error": {"message": "a\x00"}},
    {"state": "error", "stage": "x", "progress": 1, "error": {"message": "m" * 17000}},
    {"state": "error", "stage": "x", "progress": 1, "error": []},
    {"state": "running", "stage": "x", "progress": 1, "error": {"message": "boom"}},
    {"state": "running", "stage": "x", "progress": 1, "step_name": "Build", "step_description": "Index it"},
    {"state": "running", "stage": "x", "progress": 1, "step_name": None, "step_description": None},
    {"state": "running", "stage": "x", "progress": 1, "step_name": "n" * 257, "step_description": "d\x00" * 600},
    {"state": "running", "stage": "x", "progress": 1, "step_name": 5, "step_description": ["d"]},
    {"state": "running", "stage": "x", "progress": 1, "step_name": ""},
]


@pytest.mark.parametrize("body", PUSH_BODIES, ids=range(len(PUSH_BODIES)))
def test_validation_gives_the_service_messages(body):
    try:
        expected = status_in_schema.load(body)
        expected_errors = {}
    except ValidationError as error:
        expected, expected_errors = None, error.messages
    errors, values = yardstick_app.validate_push(body)
    assert errors == expected_errors
    if expected is not None:
        assert values == expected


@pytest.mark.parametrize("push", [
    {"state": "running", "stage": "bowtie_build", "progress": 40, "error": None},
    {"state": "error", "stage": "", "progress": 0, "error": "Exited with status 1 \u00e9\u4e2d"},
    {"state": "error", "stage": "x", "progress": 3, "error": {"type": "E", "traceback": ["t"], "details": ["d"]}},
    {"state": "running", "stage": "x", "progress": 3, "error": None, "step_name": "Build", "step_description": None},
])
def test_request_digest_is_the_service_digest(push):
    assert yardstick_app.request_digest({"step_name": None, "step_description": None, **push}) \
        == service.request_digest(push)


# End to end: the yardstick and the service side by side -------------------------

e2e = pytest.mark.e2e


@pytest.fixture(scope="module")
def yardstick(is_postgresql, database_url, app, tmp_path_factory) -> Iterator[str]:
    """The yardstick under gunicorn (the repository's gunicorn.conf.py, 2 workers) on the test database."""
    if not is_postgresql:
        pytest.skip("the yardstick runs on PostgreSQL only (set TEST_DATABASE_URL)")
    port = free_port()
    log_path = tmp_path_factory.mktemp("yardstick") / "gunicorn.log"
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "4",
    }
    for variable in ("DB_POOL_SIZE", "LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR", "JOB_KEY_GRACE_SECONDS"):
        env.pop(variable, None)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--pythonpath", "benchmarks",
             "yardstick_app:app"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError("the yardstick's gunicorn exited:\n" + log_path.read_text(errors="replace"))
            try:
                requests.get(url + "/api/jobs/ready", timeout=5)
                break
            except (requests.ConnectionError, requests.Timeout):
                if time.monotonic() > deadline:
                    raise RuntimeError("the yardstick did not answer:\n" + log_path.read_text(errors="replace"))
                time.sleep(0.1)
        yield url
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


TIMESTAMPS = ("timestamp", "created_at", "pinged_at")


def _comparable(value: Any) -> Any:
    """A body without its timestamps, and a job document without its id and number (the twins differ
    in these)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()
                if k not in TIMESTAMPS and not (k in ("id", "number") and "status" in value)}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def assert_same_answer(answer: requests.Response, expected: requests.Response, *, exact: bool = False) -> None:
    """The yardstick's answer equals the service's: status, JSON body (timestamps and job ids aside), headers."""
    context = f"{answer.request.method} {answer.request.url}: yardstick {answer.status_code} {answer.text[:300]!r}, " \
              f"service {expected.status_code} {expected.text[:300]!r}"
    assert answer.status_code == expected.status_code, context
    assert answer.headers["Content-Type"] == expected.headers["Content-Type"] == "application/json", context
    if exact:
        assert answer.json() == expected.json(), context
    else:
        assert _comparable(answer.json()) == _comparable(expected.json()), context
    for header in ("WWW-Authenticate", "Job-State", "Retry-After"):
        assert answer.headers.get(header) == expected.headers.get(header), f"{header}: {context}"


def _push(url: str, job_id: str, auth, body: Any = None, *, key: str | None = None,
          data: bytes | None = None, content_type: str = "application/json",
          session: requests.Session | None = None) -> requests.Response:
    headers = {"Content-Type": content_type}
    if key is not None:
        headers["Idempotency-Key"] = key
    if data is None:
        data = json.dumps(body).encode()
    return (session or requests).post(f"{url}/api/jobs/{job_id}/status", data=data, headers=headers, auth=auth,
                                      timeout=TIMEOUT)


def _get(url: str, job_id: str, auth=None, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.get(f"{url}/api/jobs/{job_id}", auth=auth, headers=headers, timeout=TIMEOUT)


# Each step is sent to the service on one job and to the yardstick on its twin.
STEPS: list[tuple[str, dict[str, Any]]] = [
    ("get", {}),
    ("push", {"body": {"state": "preparing", "stage": "setup", "progress": 0,
                       "step_name": "Set up", "step_description": "Prepare the files"}}),
    ("push", {"body": {"state": "running", "stage": "mk_subtraction_dir", "progress": "20"}}),
    ("push", {"body": {"state": "running", "stage": "bowtie_build", "progress": 40, "step_name": "Build"},
              "key": "retry-1"}),
    ("push", {"body": {"state": "running", "stage": "bowtie_build", "progress": 40, "step_name": "Build"},
              "key": "retry-1"}),
    ("push", {"body": {"state": "running", "stage": "bowtie_build", "progress": 41}, "key": "retry-1"}),
    ("push", {"body": {"state": "running", "stage": "x", "progress": 1.5, "foo": 1}, "key": "retry-1"}),
    ("push", {"body": {"state": "running", "stage": "x", "progress": 1.5, "foo": 1}}),
    ("push", {"body": {"state": "error", "stage": "x", "progress": 1}}),
    ("push", {"body": {"state": "running", "stage": "x", "progress": 1, "error": "boom"}}),
    ("push", {"body": {"state": "timeout", "stage": "x", "progress": 1}}),
    ("push", {"body": {"state": "running", "stage": "x", "progress": 1}, "key": "k" * 129}),
    ("push", {"body": {"state": "running", "stage": "x", "progress": 1.5}, "key": "k" * 129}),
    ("push", {"data": b'{"state": "running",'}),
    ("push", {"data": b"[1, 2]"}),
    ("push", {"data": b'{"state": "running", "stage": "\\ud800", "progress": 1}'}),
    ("push", {"data": b'{"state": "running", "stage": "x", "progress": NaN}'}),
    ("push", {"data": b'{"state": "running", "stage": "x", "progress": 1, "e": ' + b"[" * 40 + b"]" * 40 + b"}"}),
    ("push", {"body": {"state": "running", "stage": "x", "progress": 1}, "content_type": "text/plain"}),
    ("push", {"data": b'{"stage": "' + b"a" * (65 * 1024) + b'"}'}),
    ("push", {"data": b'{"stage": "' + b"a" * (65 * 1024) + b'"}', "no_auth": True}),
    ("push", {"body": {"state": "waiting", "stage": "back", "progress": 1}}),
    ("push", {"body": {"state": "running", "stage": "x", "progress": 1}, "wrong_key": True}),
    ("push", {"body": {"state": "running", "stage": "x", "progress": 1}, "no_auth": True}),
    ("push", {"body": {"state": "running", "stage": "x", "progress": 1}, "bearer": True}),
    ("get", {"wrong_key": True}),
    ("get", {"no_auth": True}),
    ("get", {"bearer": True}),
    ("get", {"garbled": True}),
    ("push", {"body": {"state": "running", "stage": "sort", "progress": 90, "error": None,
                       "step_name": None, "step_description": "Sort the reads"}}),
    ("push", {"body": {"state": "error", "stage": "sort", "progress": 90,
                       "error": {"type": "OSError", "traceback": ["line 1"], "details": ["disk full"]}},
              "key": "final"}),
    ("push", {"body": {"state": "running", "stage": "again", "progress": 100}}),
    ("push", {"body": {"state": "bogus", "stage": "again", "progress": 100}}),
    ("push", {"body": {"state": "bogus", "stage": "again", "progress": 100}, "key": "final"}),
    ("push", {"data": b"[1]"}),
    ("push", {"body": {"state": "running", "stage": "again", "progress": 100}, "key": "late"}),
    ("push", {"body": {"state": "running", "stage": "bowtie_build", "progress": 40, "step_name": "Build"},
              "key": "retry-1"}),
    ("push", {"body": {"state": "error", "stage": "sort", "progress": 90,
                       "error": {"type": "OSError", "traceback": ["line 1"], "details": ["disk full"]}},
              "key": "final"}),
    ("get", {}),
]


def _send(url: str, job, step: tuple[str, dict[str, Any]]) -> requests.Response:
    kind, options = step
    auth = job.requests_auth
    headers = None
    if options.get("wrong_key"):
        auth = (f"job-{job.id}", "0" * 64)
    elif options.get("no_auth"):
        auth = None
    elif options.get("bearer"):
        auth, headers = None, {"Authorization": "Bearer jobapi_op_" + "0" * 64}
    elif options.get("garbled"):
        auth, headers = None, {"Authorization": "Basic %%%not-base64"}
    if kind == "get":
        return _get(url, job.id, auth, headers)
    if options.get("no_auth") and "data" in options:
        return requests.post(f"{url}/api/jobs/{job.id}/status", data=options["data"],
                             headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    if headers is not None:
        return requests.post(f"{url}/api/jobs/{job.id}/status", json=options["body"], headers=headers,
                             timeout=TIMEOUT)
    return _push(url, job.id, auth, options.get("body"), key=options.get("key"), data=options.get("data"),
                 content_type=options.get("content_type", "application/json"))


def _rows(app, job_id: str) -> tuple[tuple, list[tuple]]:
    with app.app_context():
        job = db.session.execute(
            select(Job.state, Job.stage, Job.progress, Job.status_count).where(Job.id == job_id)
        ).one()
        records = db.session.execute(
            select(JobStatus.seq, JobStatus.state, JobStatus.stage, JobStatus.error, JobStatus.progress,
                   JobStatus.idempotency_key, JobStatus.request_digest, JobStatus.timestamp)
            .where(JobStatus.job_id == job_id).order_by(JobStatus.seq)
        ).all()
        return tuple(job), [tuple(r) for r in records]


@e2e
def test_same_answers_as_the_service(live_server, yardstick, make_job, app):
    fields = {"args": {"subtraction_id": "Thale", "file_id": "vlekszor-ATgenomeTAIR9.171"}, "proc": 2, "mem": 4}
    served, measured = make_job(**fields), make_job(**fields)
    codes = []
    for step in STEPS:
        expected = _send(live_server.url, served, step)
        answer = _send(yardstick, measured, step)
        assert_same_answer(answer, expected)
        codes.append(expected.status_code)
    # The steps cover what they mean to: a GET, pushes, a replay, 409s, 401s, 422s, 400s, 415, 413.
    assert {200, 400, 401, 409, 413, 415, 422} <= set(codes), codes
    assert codes.count(200) >= 10, codes

    # The same rows stored, timestamps in order.
    served_job, served_records = _rows(app, served.id)
    measured_job, measured_records = _rows(app, measured.id)
    assert measured_job == served_job
    assert [r[:7] for r in measured_records] == [r[:7] for r in served_records]
    timestamps = [r[7] for r in measured_records]
    assert timestamps == sorted(timestamps)

    # Each job read through the other server: the very same document, timestamps included.
    for job in (served, measured):
        assert_same_answer(_get(yardstick, job.id, job.requests_auth),
                           _get(live_server.url, job.id, job.requests_auth), exact=True)


@e2e
def test_same_refusals_for_other_jobs(live_server, yardstick, make_job):
    mine, theirs = make_job(), make_job()
    for url_job, auth in (
        (theirs.id, mine.requests_auth),            # 403: another job's path
        ("nojob", mine.requests_auth),              # 403: whether or not the path's job exists
        ("zzzzzzzz", ("job-zzzzzzzz", "0" * 64)),   # 404: no such job
        ("nojob", ("job-nojob", "0" * 64)),         # 404: not even a job id
    ):
        assert_same_answer(_get(yardstick, url_job, auth), _get(live_server.url, url_job, auth))
        body = {"state": "running", "stage": "x", "progress": 1}
        assert_same_answer(_push(yardstick, url_job, auth, body), _push(live_server.url, url_job, auth, body))
        # A refused body still answers the job's absence first.
        assert_same_answer(_push(yardstick, url_job, auth, {"bad": 1}), _push(live_server.url, url_job, auth, {"bad": 1}))


@e2e
def test_finished_job_key_expires_alike(live_server, yardstick, make_job, app):
    job = make_job()
    assert _push(live_server.url, job.id, job.requests_auth, {"state": "running", "stage": "x", "progress": 1}).ok
    assert _push(live_server.url, job.id, job.requests_auth, {"state": "complete", "stage": "x", "progress": 100}).ok
    with app.app_context():
        db.session.execute(update(Job).where(Job.id == job.id).values(updated_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
    expected = _get(live_server.url, job.id, job.requests_auth)
    assert expected.status_code == 401
    assert_same_answer(_get(yardstick, job.id, job.requests_auth), expected)
    body = {"state": "running", "stage": "x", "progress": 1}
    assert_same_answer(_push(yardstick, job.id, job.requests_auth, body),
                       _push(live_server.url, job.id, job.requests_auth, body))


@e2e
def test_replays_cross_between_the_two(live_server, yardstick, make_job):
    """A push stored by one is replayed by the other: the same digest, the same record, timestamp included."""
    body = {"state": "running", "stage": "bowtie_build", "progress": "40"}
    for first, second in ((live_server.url, yardstick), (yardstick, live_server.url)):
        job = make_job()
        stored = _push(first, job.id, job.requests_auth, body, key="cross")
        assert stored.status_code == 200
        replayed = _push(second, job.id, job.requests_auth, body, key="cross")
        assert_same_answer(replayed, stored, exact=True)
        other = _push(second, job.id, job.requests_auth, {**body, "progress": 41}, key="cross")
        assert_same_answer(other, _push(first, job.id, job.requests_auth, {**body, "progress": 41}, key="cross"))
        assert other.status_code == 422


@e2e
def test_concurrent_retries_all_replay_one_record(yardstick, make_job, app):
    """Retries arriving at once: all 200 with the one record stored (a retry that lost the race replays)."""
    body = {"state": "running", "stage": "once", "progress": 7}
    threads = 8
    for _ in range(4):
        job = make_job()
        start = threading.Barrier(threads)

        def push_once(_):
            session = requests.Session()
            session.get(f"{yardstick}/api/jobs/ready", timeout=TIMEOUT)  # connected before the race
            start.wait(timeout=TIMEOUT)
            return _push(yardstick, job.id, job.requests_auth, body, key="same", session=session)

        with ThreadPoolExecutor(threads) as pool:
            answers = list(pool.map(push_once, range(threads)))
        assert [a.status_code for a in answers] == [200] * threads, [a.text for a in answers]
        assert len({a.text for a in answers}) == 1
        _, records = _rows(app, job.id)
        assert [(r[1], r[2], r[5]) for r in records] == [("waiting", None, None), ("running", "once", "same")]


@e2e
def test_replaced_key_and_history_cap_alike(live_server, yardstick, make_job, app):
    """A key that a new one replaced is told so; a job at its history cap refuses a push and stores nothing."""
    body = {"state": "running", "stage": "x", "progress": 1}
    job = make_job()
    with app.app_context():
        service.rotate_key(write_connection(db.session), job.id)
        db.session.commit()
    expected = _get(live_server.url, job.id, job.requests_auth)
    assert expected.json()["message"] == "Key was replaced"
    assert_same_answer(_get(yardstick, job.id, job.requests_auth), expected)
    assert_same_answer(_push(yardstick, job.id, job.requests_auth, body),
                       _push(live_server.url, job.id, job.requests_auth, body))

    served, measured = make_job(), make_job()
    with app.app_context():
        db.session.execute(update(Job).where(Job.id.in_([served.id, measured.id])).values(status_count=10_000))
        db.session.commit()
    expected = _push(live_server.url, served.id, served.requests_auth, body)
    assert expected.status_code == 409 and expected.json()["message"] == "Job has too many status records"
    assert_same_answer(_push(yardstick, measured.id, measured.requests_auth, body), expected)
    assert len(_rows(app, measured.id)[1]) == 1
