"""Operators and runners over HTTP: tokens, the operator routes, claiming work,
and the token matrix (who may call what)."""

from __future__ import annotations

import hashlib
import re

import pytest
from conftest import JobCredentials, bearer
from sqlalchemy import select

from jobapi.extensions import db
from jobapi.models import ApiToken


def new_job(client, operator, **fields):
    body = {"task": "align", "user": "alice", **fields}
    return client.post("/api/jobs", json=body, headers=operator)


# Tokens


def test_token_cli_create_list_revoke(app, runner, client):
    made = runner.invoke(args=["tokens", "create", "--name", "ci", "--role", "operator"])
    assert made.exit_code == 0, made.output
    secret = made.stdout.strip()
    assert re.fullmatch(r"jobapi_op_[0-9a-f]{64}", secret)
    with app.app_context():
        stored = db.session.scalars(select(ApiToken)).one()
        assert stored.token_digest == hashlib.sha256(secret.encode()).hexdigest()
        assert secret not in (stored.token_digest, stored.name)
    assert client.get("/api/jobs", headers=bearer(secret)).status_code == 200

    listed = runner.invoke(args=["tokens", "list"])
    assert listed.exit_code == 0
    assert "ci" in listed.stdout and "operator" in listed.stdout and secret not in listed.stdout

    revoked = runner.invoke(args=["tokens", "revoke", "ci"])
    assert revoked.exit_code == 0
    refused = client.get("/api/jobs", headers=bearer(secret))
    assert refused.status_code == 401
    assert refused.json["id"] == "unauthorized"
    assert refused.headers["WWW-Authenticate"] == 'Bearer realm="jobapi"'
    again = runner.invoke(args=["tokens", "revoke", "ci"])
    assert again.exit_code == 0 and "already revoked" in again.stdout


def test_token_cli_refuses_bad_input(runner):
    assert runner.invoke(args=["tokens", "create", "--name", "x", "--role", "admin"]).exit_code == 1
    assert runner.invoke(args=["tokens", "create", "--name", "x", "--role", "runner"]).exit_code == 0
    duplicate = runner.invoke(args=["tokens", "create", "--name", "x", "--role", "runner"])
    assert duplicate.exit_code == 1
    assert "already exists" in duplicate.stderr
    unknown = runner.invoke(args=["tokens", "revoke", "nobody"])
    assert unknown.exit_code == 1


def test_runner_token_prefix(make_token):
    assert re.fullmatch(r"jobapi_rn_[0-9a-f]{64}", make_token("runner"))


# The token matrix


def test_job_key_never_works_as_bearer(client, job, operator):
    assert client.get("/api/jobs", headers=bearer(job.key)).status_code == 401
    assert client.get(f"/api/jobs/{job.id}", headers=bearer(job.key)).status_code == 401


def test_bearer_token_never_works_as_job_key(client, job, make_token):
    secret = make_token("operator")
    fake = JobCredentials(id=job.id, key=secret)
    assert client.get(f"/api/jobs/{job.id}", headers=fake.auth).status_code == 401


def test_job_key_on_operator_routes_is_401(client, job):
    for method, path in [
        ("GET", "/api/jobs"),
        ("POST", "/api/jobs"),
        ("POST", f"/api/jobs/{job.id}/cancel"),
        ("DELETE", f"/api/jobs/{job.id}"),
        ("POST", "/api/jobs/claim"),
    ]:
        response = client.open(path, method=method, headers=job.auth, json={})
        assert response.status_code == 401, (method, path)
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="jobapi"'


def test_no_credentials_on_operator_routes_is_401(client):
    response = client.get("/api/jobs")
    assert response.status_code == 401
    assert response.json == {"id": "unauthorized", "message": "Missing credentials"}
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="jobapi"'


def test_wrong_role_is_403(client, job, operator, runner_token):
    for method, path in [
        ("GET", "/api/jobs"),
        ("POST", "/api/jobs"),
        ("GET", f"/api/jobs/{job.id}"),
        ("POST", f"/api/jobs/{job.id}/cancel"),
        ("DELETE", f"/api/jobs/{job.id}"),
        ("POST", f"/api/jobs/{job.id}/status"),
        ("PUT", f"/api/jobs/{job.id}/ping"),
    ]:
        response = client.open(path, method=method, headers=runner_token, json={})
        assert response.status_code == 403, (method, path)
        assert response.json == {"id": "insufficient_rights", "message": "Insufficient rights"}
    claim = client.post("/api/jobs/claim", headers=operator, json={"tasks": ["align"], "proc": 1, "mem": 1})
    assert claim.status_code == 403


def test_operator_may_read_any_job_but_not_push_or_ping(client, job, operator, stored):
    read = client.get(f"/api/jobs/{job.id}", headers=operator)
    assert read.status_code == 200
    assert read.json["id"] == job.id
    assert read.headers["Job-State"] == "waiting"
    assert client.post(f"/api/jobs/{job.id}/status", headers=operator, json={"state": "running", "stage": "a", "progress": 1}).status_code == 403
    assert client.put(f"/api/jobs/{job.id}/ping", headers=operator).status_code == 403
    assert len(stored(job.id)) == 1
    assert client.get("/api/jobs/zzzzzzzz", headers=operator).status_code == 404


def test_unknown_bearer_token_is_401(client, job):
    for headers in (bearer("jobapi_op_" + "0" * 64), bearer(""), {"Authorization": "Bearer"}):
        response = client.get("/api/jobs", headers=headers)
        assert response.status_code == 401
    # On a job's own route the challenge stays the job's (SPEC 2).
    response = client.get(f"/api/jobs/{job.id}", headers=bearer("jobapi_op_" + "0" * 64))
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="jobs"'


# POST /api/jobs


def test_operator_creates_job(client, operator, stored):
    response = new_job(client, operator, args={"ref": "hg38"}, proc=4, mem=8, user={"id": "alice"})
    assert response.status_code == 201
    body = response.json
    assert re.fullmatch(r"[a-z0-9]{8}", body["id"])
    assert re.fullmatch(r"[0-9a-f]{64}", body["key"])
    assert (body["task"], body["args"], body["proc"], body["mem"], body["user"]) == ("align", {"ref": "hg38"}, 4, 8, {"id": "alice", "handle": "alice"})
    assert [r["state"] for r in body["status"]] == ["waiting"]
    assert response.headers["Location"].endswith(f"/api/jobs/{body['id']}")
    job = JobCredentials(id=body["id"], key=body["key"])
    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).status_code == 200
    assert len(stored(job.id)) == 1


@pytest.mark.parametrize(
    "fields, bad",
    [
        ({"task": "Bad Task"}, "task"),
        ({"task": ""}, "task"),
        ({"proc": 0}, "proc"),
        ({"mem": "4"}, "mem"),
        ({"proc": True}, "proc"),
        ({"args": [1]}, "args"),
        ({"args": {"x": "a\u0000b"}}, "args"),
        ({"args": {"big": "x" * 70000}}, None),
        ({"user": ""}, "user"),
        ({"user": "u" * 65}, "user"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_create_refuses_bad_job(client, operator, fields, bad):
    response = new_job(client, operator, **fields)
    if bad is None:
        assert response.status_code == 413
        return
    assert response.status_code == 422
    assert bad in response.json["errors"]
    assert client.get("/api/jobs", headers=operator).json["jobs"] == []


def test_create_needs_json(client, operator):
    assert client.post("/api/jobs", data="task=x", headers=operator).status_code == 415
    assert client.post("/api/jobs", data="{", headers={**operator, "Content-Type": "application/json"}).status_code == 400


# GET /api/jobs


def test_list_newest_first_with_current_state(client, operator, make_job):
    first, second = make_job(task="one"), make_job(task="two")
    client.post(f"/api/jobs/{first.id}/status", json={"state": "running", "stage": "go", "progress": 30}, headers=first.auth)
    response = client.get("/api/jobs", headers=operator)
    assert response.status_code == 200
    jobs = response.json["jobs"]
    assert [j["id"] for j in jobs] == [second.id, first.id]
    assert jobs[1]["state"] == "running" and jobs[1]["stage"] == "go" and jobs[1]["progress"] == 30
    assert "status" not in jobs[0]  # no history in lists
    assert response.json["next_cursor"] is None


def test_list_filters(client, operator, make_job):
    a = make_job(task="align", user="alice")
    b = make_job(task="sort", user="bob")
    client.post(f"/api/jobs/{b.id}/status", json={"state": "running", "stage": "s", "progress": 1}, headers=b.auth)

    def ids(query):
        return [j["id"] for j in client.get(f"/api/jobs?{query}", headers=operator).json["jobs"]]

    assert ids("task=align") == [a.id]
    assert ids("user=bob") == [b.id]
    assert ids("state=running") == [b.id]
    assert ids("state=waiting&task=sort") == []


@pytest.mark.parametrize(
    "query, field",
    [("limit=0", "limit"), ("limit=101", "limit"), ("limit=x", "limit"), ("state=done", "state"), ("cursor=nonsense", "cursor"), ("page=2", "page")],
)
def test_list_refuses_bad_query(client, operator, query, field):
    response = client.get(f"/api/jobs?{query}", headers=operator)
    assert response.status_code == 422
    assert field in response.json["errors"]


def test_pagination_while_jobs_are_added(client, operator, make_job):
    made = [make_job().id for _ in range(7)]
    seen: list[str] = []
    page = client.get("/api/jobs?limit=3", headers=operator).json
    seen += [j["id"] for j in page["jobs"]]
    added_meanwhile = [make_job().id for _ in range(2)]
    while page["next_cursor"]:
        page = client.get(f"/api/jobs?limit=3&cursor={page['next_cursor']}", headers=operator).json
        seen += [j["id"] for j in page["jobs"]]
        added_meanwhile.append(make_job().id)
    assert seen == list(reversed(made))  # each once, newest first, none skipped
    assert not set(seen) & set(added_meanwhile)


def test_list_limit_at_most_100(client, operator, make_job):
    for _ in range(3):
        make_job()
    response = client.get("/api/jobs?limit=100", headers=operator)
    assert response.status_code == 200
    assert len(response.json["jobs"]) == 3


# Cancel and remove


def test_cancel_and_cancel_again(client, operator, job, stored):
    client.post(f"/api/jobs/{job.id}/status", json={"state": "running", "stage": "index", "progress": 45}, headers=job.auth)
    first = client.post(f"/api/jobs/{job.id}/cancel", headers=operator)
    assert first.status_code == 200
    assert (first.json["state"], first.json["stage"], first.json["progress"]) == ("cancelled", "index", 45)
    assert first.headers["Job-State"] == "cancelled"
    again = client.post(f"/api/jobs/{job.id}/cancel", headers=operator)
    assert again.status_code == 200
    assert again.json == first.json
    assert [r.state for r in stored(job.id)] == ["waiting", "running", "cancelled"]
    told = client.post(f"/api/jobs/{job.id}/status", json={"state": "running", "stage": "x", "progress": 50}, headers=job.auth)
    assert told.json == {"id": "conflict", "message": "Job is cancelled", "state": "cancelled"}


def test_cancel_finished_job_is_409(client, operator, job, stored):
    client.post(f"/api/jobs/{job.id}/status", json={"state": "running", "stage": "a", "progress": 1}, headers=job.auth)
    client.post(f"/api/jobs/{job.id}/status", json={"state": "complete", "stage": "a", "progress": 100}, headers=job.auth)
    response = client.post(f"/api/jobs/{job.id}/cancel", headers=operator)
    assert response.status_code == 409
    assert response.json == {"id": "conflict", "message": "Job is complete", "state": "complete"}
    assert len(stored(job.id)) == 3
    assert client.post("/api/jobs/zzzzzzzz/cancel", headers=operator).status_code == 404


def test_remove(client, operator, job, stored, stored_job):
    unfinished = client.delete(f"/api/jobs/{job.id}", headers=operator)
    assert unfinished.status_code == 409
    assert unfinished.json["state"] == "waiting"
    assert stored_job(job.id) is not None
    client.post(f"/api/jobs/{job.id}/cancel", headers=operator)
    removed = client.delete(f"/api/jobs/{job.id}", headers=operator)
    assert removed.status_code == 204
    assert removed.data == b""
    assert "Content-Type" not in removed.headers and "Job-State" not in removed.headers
    assert stored_job(job.id) is None and stored(job.id) == []
    assert client.delete(f"/api/jobs/{job.id}", headers=operator).status_code == 404


def test_remove_with_force(client, operator, job, stored_job):
    assert client.delete(f"/api/jobs/{job.id}?force=false", headers=operator).status_code == 409
    assert client.delete(f"/api/jobs/{job.id}?force=maybe", headers=operator).status_code == 422
    assert client.delete(f"/api/jobs/{job.id}?force=true", headers=operator).status_code == 204
    assert stored_job(job.id) is None


# Claiming work


def claim(client, token, tasks=("align",), proc=4, mem=8):
    return client.post("/api/jobs/claim", json={"tasks": list(tasks), "proc": proc, "mem": mem}, headers=token)


def test_claim_oldest_fitting_job_with_fresh_key(client, runner_token, make_job, stored_job):
    too_big = make_job(task="align", proc=16)
    other_task = make_job(task="sort")
    oldest = make_job(task="align", proc=2, mem=4)
    newer = make_job(task="align")
    response = claim(client, runner_token)
    assert response.status_code == 200
    body = response.json
    assert body["id"] == oldest.id
    assert body["key"] != oldest.key
    assert client.get(f"/api/jobs/{oldest.id}", headers=oldest.auth).status_code == 401  # creation key dead
    claimed = JobCredentials(id=oldest.id, key=body["key"])
    assert client.get(f"/api/jobs/{oldest.id}", headers=claimed.auth).status_code == 200
    assert stored_job(oldest.id).claimed_by == "runner-1"
    assert claim(client, runner_token).json["id"] == newer.id
    nothing = claim(client, runner_token)
    assert nothing.status_code == 204
    assert nothing.data == b""
    assert stored_job(too_big.id).claimed_by is None and stored_job(other_task.id).claimed_by is None


def test_claim_skips_jobs_no_longer_waiting(client, runner_token, make_job):
    started = make_job()
    client.post(f"/api/jobs/{started.id}/status", json={"state": "running", "stage": "a", "progress": 1}, headers=started.auth)
    assert claim(client, runner_token).status_code == 204


@pytest.mark.parametrize(
    "body, field",
    [
        ({"tasks": [], "proc": 1, "mem": 1}, "tasks"),
        ({"tasks": ["Bad"], "proc": 1, "mem": 1}, "tasks"),
        ({"tasks": ["a"], "proc": 0, "mem": 1}, "proc"),
        ({"tasks": ["a"], "proc": 1}, "mem"),
        ({"tasks": "a", "proc": 1, "mem": 1}, "tasks"),
    ],
)
def test_claim_refuses_bad_input(client, runner_token, body, field):
    response = client.post("/api/jobs/claim", json=body, headers=runner_token)
    assert response.status_code == 422
    assert field in response.json["errors"]


def test_cli_and_http_share_the_rules(client, runner, operator, job):
    client.post(f"/api/jobs/{job.id}/status", json={"state": "running", "stage": "a", "progress": 1}, headers=job.auth)
    client.post(f"/api/jobs/{job.id}/status", json={"state": "error", "stage": "a", "progress": 1, "error": "bad"}, headers=job.auth)
    http = client.post(f"/api/jobs/{job.id}/cancel", headers=operator)
    cli = runner.invoke(args=["jobs", "cancel", job.id])
    assert http.status_code == 409 and cli.exit_code == 1
    assert http.json["message"] in cli.stderr
