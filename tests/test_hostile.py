"""Hostile clients (SPEC 8): a stalled body holds no lock, concurrent retries all get their replay,
the reaper skips what a request holds, and no input (depth, bytes, size, headers) gets past
its limit or into a log line."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta

import pytest
import requests
from conftest import JobCredentials, basic_auth, bearer, push, push_body
from sqlalchemy import create_engine, text, update

from jobapi import create_app
from jobapi.extensions import db
from jobapi.logs import TextFormatter
from jobapi.models import Job, utcnow

TIMEOUT = 15
# Well under SQLITE_BUSY_TIMEOUT and the PostgreSQL lock timeout: an answer this quick
# waited on no lock.
PROMPT = 3.0


def raw_request(url: str, request: bytes, *, wait: float = 5.0) -> bytes:
    """Send raw bytes to the server and read what it answers until it closes or goes quiet."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                    break
        except (TimeoutError, ConnectionResetError):
            pass
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def body_of(answer: bytes) -> dict:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


@contextmanager
def stalled_push(url: str, job: JobCredentials):
    """A push whose headers promise 47 bytes of body, of which 5 arrive; then silence."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    credentials = base64.b64encode(f"job-{job.id}:{job.key}".encode()).decode()
    sock.sendall(
        f"POST /api/jobs/{job.id}/status HTTP/1.1\r\nHost: {host}\r\n"
        f"Authorization: Basic {credentials}\r\nContent-Type: application/json\r\n"
        "Content-Length: 47\r\n\r\n{\"sta".encode()
    )
    time.sleep(0.3)  # the server has the headers and is waiting for the rest
    try:
        yield sock
    finally:
        sock.close()


def timed(call):
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


# 1. A stalled body takes no lock


def test_a_stalled_push_holds_no_lock(app, live_server, make_job, make_token):
    operator = bearer(make_token("operator"))
    stalled, other = make_job(), make_job()
    assert requests.post(f"{live_server.url}/api/jobs/{stalled.id}/status", json={"state": "running", "stage": "a", "progress": 1},
                         auth=stalled.requests_auth, timeout=TIMEOUT).status_code == 200
    with app.app_context():
        db.session.execute(update(Job).where(Job.id == stalled.id).values(updated_at=utcnow() - timedelta(hours=1)))
        db.session.commit()

    with stalled_push(live_server.url, stalled):
        pushed, seconds = timed(lambda: requests.post(
            f"{live_server.url}/api/jobs/{other.id}/status", json={"state": "running", "stage": "b", "progress": 2},
            auth=other.requests_auth, timeout=TIMEOUT))
        assert pushed.status_code == 200 and seconds < PROMPT
        created, seconds = timed(lambda: requests.post(
            f"{live_server.url}/api/jobs", json={"task": "t", "user": "u"}, headers=operator, timeout=TIMEOUT))
        assert created.status_code == 201 and seconds < PROMPT
        # The stalled job's own row is not locked either: the reaper and a cancel go through.
        reaped, seconds = timed(lambda: app.test_cli_runner().invoke(args=["jobs", "reap", "--timeout", "60"]))
        assert reaped.exit_code == 0, reaped.output
        assert f"Reaped job {stalled.id}" in reaped.output and seconds < PROMPT
        cancelled, seconds = timed(lambda: requests.post(
            f"{live_server.url}/api/jobs/{other.id}/cancel", headers=operator, timeout=TIMEOUT))
        assert cancelled.status_code == 200 and seconds < PROMPT
        health, seconds = timed(lambda: requests.get(f"{live_server.url}/healthz", timeout=TIMEOUT))
        assert health.status_code == 200 and seconds < PROMPT


# 2. Concurrent retries of one push all get its replay


@pytest.mark.parametrize("state", ["complete", "running"])
def test_concurrent_identical_retries_all_get_the_replay(live_server, make_job, stored, state):
    trials = 15
    jobs = [make_job() for _ in range(trials)]
    for job in jobs:
        assert requests.post(f"{live_server.url}/api/jobs/{job.id}/status", json={"state": "running", "stage": "a", "progress": 1},
                             auth=job.requests_auth, timeout=TIMEOUT).status_code == 200

    def retry(job: JobCredentials, barrier: threading.Barrier) -> requests.Response:
        barrier.wait(timeout=TIMEOUT)
        return requests.post(
            f"{live_server.url}/api/jobs/{job.id}/status",
            json={"state": state, "stage": "done", "progress": 100},
            headers={"Idempotency-Key": "the-final-push"}, auth=job.requests_auth, timeout=TIMEOUT,
        )

    with ThreadPoolExecutor(4) as pool:
        for job in jobs:
            barrier = threading.Barrier(4)
            answers = list(pool.map(lambda _: retry(job, barrier), range(4)))
            assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
            assert len({a.text for a in answers}) == 1
            assert [r.state for r in stored(job.id)] == ["waiting", "running", state]


# 6. The reaper skips a job a request holds


def test_the_reaper_skips_a_locked_job_and_reaps_the_rest(app, database_url, is_postgresql, client, make_job):
    held, free = make_job(), make_job()
    for job in (held, free):
        assert push(client, job, "running", "work", 10).status_code == 200
    with app.app_context():
        db.session.execute(update(Job).values(updated_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
    reaper = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "SQLITE_BUSY_TIMEOUT": 1})
    holder = create_engine(database_url)
    with holder.connect() as connection:
        if is_postgresql:
            connection.execute(text("BEGIN"))
            connection.execute(text("SELECT id FROM jobs WHERE id = :id FOR UPDATE"), {"id": held.id})
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        result = reaper.test_cli_runner().invoke(args=["jobs", "reap", "--timeout", "60"])
        connection.rollback()
    holder.dispose()
    with reaper.app_context():
        db.engine.dispose()

    assert result.exit_code == 0, result.output
    assert f"Skipped job {held.id}" in result.stderr
    assert "Traceback" not in result.output
    if is_postgresql:
        # Only the held row is locked: the other job is reaped in its own transaction.
        assert f"Reaped job {free.id}" in result.stdout
        assert "1 job reaped, 1 skipped" in result.stdout
    with app.app_context():
        assert db.session.get(Job, held.id).state == "running"
        db.session.rollback()


def test_a_database_error_in_the_reaper_is_one_line(tmp_path):
    # Nothing listens on port 1: the database cannot be reached.
    broken = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://postgres@127.0.0.1:1/none",
                         "DB_CONNECT_TIMEOUT": 1})
    result = broken.test_cli_runner().invoke(args=["jobs", "reap"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Database error: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.output


# 7. Depth


def nested(depth: int) -> dict:
    value: object = "leaf"
    for _ in range(depth - 1):
        value = [value]
    return {"deep": value}


@pytest.mark.parametrize("depth", [33, 400, 30000])
def test_json_nested_deeper_than_32_levels_is_422(client, make_token, depth):
    operator = bearer(make_token("operator"))
    body = b'{"task": "t", "user": "u", "args": {"deep": ' + b"[" * depth + b"1" + b"]" * depth + b"}}"
    response = client.post("/api/jobs", data=body, content_type="application/json", headers=operator)
    assert response.status_code == 422
    assert response.json["errors"] == {"_schema": ["Nested deeper than 32 levels."]}


def test_json_32_levels_deep_is_taken(client, make_token):
    operator = bearer(make_token("operator"))
    # The body object is the first level; args the second.
    response = client.post("/api/jobs", json={"task": "t", "user": "u", "args": nested(31)}, headers=operator)
    assert response.status_code == 201


def test_a_deep_push_is_422(client, job, stored):
    response = push_body(client, job, {"state": "running", "stage": "s", "progress": 1, **nested(40)})
    assert response.status_code == 422
    assert len(stored(job.id)) == 1


def test_deep_args_on_the_command_line_are_one_line(runner):
    result = runner.invoke(args=["jobs", "create", "--task", "t", "--user", "u", "--args", json.dumps(nested(400))])
    assert result.exit_code == 1
    assert result.stderr == "Error: --args is nested deeper than 32 levels\n"


# 8. Credentials that are not valid base64 or UTF-8


@pytest.mark.parametrize(
    "header",
    [
        "Basic " + base64.b64encode(b"job-abcdefgh:\xff\xfe").decode(),  # not UTF-8
        "Basic " + base64.b64encode("job-abcdefgh:clé".encode("latin-1")).decode(),
        "Basic !!!notbase64",
        "Basic am9iLWFiY2RlZmdoOmtleQ",  # missing padding
        "Basic",
    ],
)
def test_credentials_that_do_not_decode_are_401(client, header):
    response = client.get("/api/jobs/abcdefgh", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.json == {"id": "unauthorized", "message": "Malformed credentials"}
    assert response.headers["WWW-Authenticate"] == 'Basic realm="jobs"'


def test_non_ascii_bytes_in_the_header_are_401_over_http(live_server, job):
    answer = raw_request(
        live_server.url,
        f"GET /api/jobs/{job.id} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
        + b"Authorization: Basic \xc3\xa9\xff\xfe\r\n\r\n",
    )
    assert status_of(answer) == 401
    assert body_of(answer)["id"] == "unauthorized"
    bearer_answer = raw_request(
        live_server.url,
        b"GET /api/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer jobapi_op_\xe9\r\n\r\n",
    )
    assert status_of(bearer_answer) == 401


# 9. Bodies over 64 KiB, however sent


def chunked(body: bytes, size: int = 8192) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


def job_request(method: str, path: str, job: JobCredentials, headers: str = "") -> bytes:
    credentials = base64.b64encode(f"job-{job.id}:{job.key}".encode()).decode()
    return (f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {credentials}\r\n"
            f"Content-Type: application/json\r\nConnection: close\r\n{headers}").encode()


def padded_push(size: int) -> bytes:
    """A valid push of exactly ``size`` bytes: JSON may end with white space."""
    body = json.dumps({"state": "running", "stage": "x", "progress": 1}).encode()
    return body + b" " * (size - len(body))


@pytest.mark.parametrize("size", [64 * 1024 + 1, 200 * 1024])
def test_a_chunked_body_over_the_limit_is_413_and_stores_nothing(live_server, job, stored, size):
    body = padded_push(size)
    answer = raw_request(live_server.url, job_request("POST", f"/api/jobs/{job.id}/status", job,
                                                     "Transfer-Encoding: chunked\r\n\r\n") + chunked(body))
    assert status_of(answer) == 413
    assert body_of(answer) == {"id": "payload_too_large", "message": "Payload too large"}
    assert len(stored(job.id)) == 1


def test_a_chunked_body_of_exactly_the_limit_is_read(live_server, job, stored):
    body = padded_push(64 * 1024)
    assert len(body) == 64 * 1024
    answer = raw_request(live_server.url, job_request("POST", f"/api/jobs/{job.id}/status", job,
                                                     "Transfer-Encoding: chunked\r\n\r\n") + chunked(body))
    assert status_of(answer) == 200
    assert len(stored(job.id)) == 2


def test_a_large_body_on_a_route_that_ignores_it_is_413(live_server, job):
    declared = raw_request(live_server.url, job_request("PUT", f"/api/jobs/{job.id}/ping", job,
                                                       f"Content-Length: {50 * 1024 * 1024}\r\n\r\n") + b"{}")
    assert status_of(declared) == 413
    sent = raw_request(live_server.url, job_request("PUT", f"/api/jobs/{job.id}/ping", job,
                                                   "Transfer-Encoding: chunked\r\n\r\n") + chunked(b" " * (100 * 1024)))
    assert status_of(sent) == 413
    probe = raw_request(live_server.url, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"x" * (70 * 1024)))
    assert status_of(probe) == 413


def test_the_test_client_gets_413_for_a_large_body_everywhere(client, job):
    big = b"x" * (64 * 1024 + 1)
    assert client.put(f"/api/jobs/{job.id}/ping", data=big, headers=job.auth).status_code == 413
    assert client.get("/healthz", data=big).status_code == 413
    assert client.post("/api/nowhere", data=big).status_code == 413


# 10. Request ids, the history cap


@pytest.mark.parametrize(
    "supplied", ["abc def", "x job_id=zzzzzzzz", "a" * 129, "é", "id\t1", "", "id=1"],
)
def test_an_unsafe_request_id_is_replaced(client, supplied):
    response = client.get("/healthz", headers={"X-Request-ID": supplied})
    assert response.headers["X-Request-ID"] != supplied
    assert len(response.headers["X-Request-ID"]) == 32


@pytest.mark.parametrize("supplied", ["9f1c-2a", "a" * 128, "trace:1.2_3-x"])
def test_a_safe_request_id_is_kept(client, supplied):
    assert client.get("/healthz", headers={"X-Request-ID": supplied}).headers["X-Request-ID"] == supplied


def test_no_header_can_forge_a_log_field(client, job, caplog):
    forged = "x job_id=zzzzzzzz request_id=forged"
    client.get(f"/api/jobs/{job.id}", headers={**job.auth, "X-Request-ID": forged})
    client.get("/api/nowhere job_id=zzzzzzzz", headers={"X-Request-ID": forged})
    records = [record for record in caplog.records if record.name == "jobapi.request"]
    lines = [TextFormatter().format(record) for record in records]
    assert len(lines) == 2
    assert all("job_id=zzzzzzzz" not in line and "forged" not in line for line in lines), lines
    assert all(line.count(" job_id=") == 1 and line.count(" request_id=") == 1 for line in lines), lines
    assert all(r.fields["request_id"] != forged and r.fields["job_id"] != "zzzzzzzz" for r in records)


def test_the_history_cap_refuses_pushes_and_stores_nothing(app, client, job, stored, monkeypatch):
    monkeypatch.setitem(app.config, "JOB_MAX_STATUS_RECORDS", 3)
    assert push(client, job, "running", "a", 1).status_code == 200
    assert push(client, job, "running", "b", 2).status_code == 200
    refused = push(client, job, "running", "c", 3)
    assert refused.status_code == 409
    assert refused.json == {"id": "conflict", "message": "Job has too many status records", "state": "running"}
    final = push(client, job, "complete", "d", 100)
    assert final.status_code == 409
    assert [r.stage for r in stored(job.id)] == [None, "a", "b"]
    # The operator's cancel is no push: it still ends the job.
    assert app.test_cli_runner().invoke(args=["jobs", "cancel", job.id]).exit_code == 0


def test_the_cap_defaults_to_ten_thousand(app):
    assert app.config["JOB_MAX_STATUS_RECORDS"] == 10_000


def test_a_bad_basic_credential_with_a_body_is_401_not_a_body_error(client, job):
    response = client.post(f"/api/jobs/{job.id}/status", data=b"{not json", content_type="application/json",
                           headers=basic_auth(f"job-{job.id}", "0" * 64))
    assert response.status_code == 401
    assert response.json["message"] == "Wrong key"
