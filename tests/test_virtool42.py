"""Virtool's 42.x dialect (SPEC 12) through the test client: job numbers and user ids, the
claim, a job's own routes, cancels and the reaper, the counts, and every answer held to the
contract's shapes (written from Virtool's zod schemas, with a JSON fixture of each)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from conftest import basic_auth, bearer, push
from test_console import csrf_token, sign_in
from marshmallow import ValidationError
from sqlalchemy import func, select

from jobapi import create_app
from jobapi.extensions import db
from jobapi.jobs import service
from jobapi.models import Counter, Job, JobStatus, User
from jobapi.virtool42 import schemas as contract

CONTRACT = Path(__file__).with_name("virtool42_contract")
STEPS = [
    {"id": "decompress", "name": "Decompress", "description": "Decompress the genome."},
    {"id": "build_index", "name": "Build Index", "description": "Build a Bowtie2 index."},
    {"id": "finalize", "name": "Finalize", "description": "Report the results."},
]
SHAPES = {
    "job_claimed.json": contract.JobClaimedSchema,
    "job.json": contract.JobSchema,
    "job_pending.json": contract.JobSchema,
    "job_ping.json": contract.JobPingSchema,
    "job_step_started.json": contract.JobStepStartedSchema,
    "counts.json": contract.CountsSchema,
    "claim_request.json": contract.ClaimRequestSchema,
    "message.json": contract.MessageSchema,
}


def fixture(name: str):
    return json.loads((CONTRACT / name).read_text())


def shaped(schema: type, answer) -> dict:
    """The answer, checked against a shape of the contract (every field, no other)."""
    schema().load(answer)
    return answer


def claim_body(**fields) -> dict:
    return {
        "runnerId": "create-subtraction-7d9f8-1", "mem": 4, "cpu": 2,
        "image": "ghcr.io/virtool/create-subtraction:4.0.0", "runtimeVersion": "42.12.0",
        "workflowVersion": "4.0.0", "steps": STEPS, **fields,
    }


def worker_auth(number: int, key: str) -> dict[str, str]:
    return basic_auth(f"job-{number}", key)


@pytest.fixture
def open_claims(app, monkeypatch):
    monkeypatch.setitem(app.config, "JOB_ACQUIRE", "open")


@pytest.fixture
def claim(client, open_claims):
    """Claim through the dialect as a worker does; the answer."""

    def do(workflow: str = "create_subtraction", body: dict | None = None, **headers):
        return client.post(f"/virtool42/jobs/claim?workflow={workflow}", json=body or claim_body(), headers=headers)

    return do


@pytest.fixture
def claimed(make_job, claim):
    """A create_subtraction job claimed through the dialect: (its 31.x credentials' id, the JobClaimed)."""
    job = make_job(args={"subtraction_id": 12, "files": [4, 5], "note": None})
    answer = claim()
    assert answer.status_code == 200, answer.get_json()
    return job.id, shaped(contract.JobClaimedSchema, answer.get_json())


def number_of(app, job_id: str) -> int:
    with app.app_context():
        return db.session.get(Job, job_id).number


# The contract's shapes


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_each_fixture_of_the_contract_is_its_shape(name):
    SHAPES[name]().load(fixture(name))


@pytest.mark.parametrize("name, field, value", [
    ("job.json", "id", "18"),
    ("job.json", "progress", 50.5),
    ("job.json", "state", "complete"),
    ("job.json", "args", {"n": 1}),
    ("job.json", "createdAt", "2026-11-30 14:01:58"),
    ("job.json", "workflow", "align"),
    ("job_claimed.json", "acquired", 1),
    ("job_claimed.json", "user", {"id": "igboyes", "handle": "igboyes"}),
    ("job_ping.json", "pingedAt", None),
])
def test_a_shape_refuses_a_wrong_type(name, field, value):
    document = fixture(name)
    document[field] = value
    with pytest.raises(ValidationError):
        SHAPES[name]().load(document)


@pytest.mark.parametrize("name", ["job.json", "job_claimed.json", "job_step_started.json"])
def test_a_shape_refuses_a_missing_or_misspelled_field(name):
    document = fixture(name)
    document["created_at"] = document.pop("createdAt", None) or document.pop("startedAt")
    with pytest.raises(ValidationError):
        SHAPES[name]().load(document)


# Job numbers and user ids


def test_jobs_are_numbered_in_creation_order_and_numbers_are_never_given_twice(app, make_job, operator, client):
    first, second, third = (make_job() for _ in range(3))
    numbers = [number_of(app, job.id) for job in (first, second, third)]
    assert numbers == sorted(numbers) and len(set(numbers)) == 3 and numbers[0] >= 1
    cancelled = client.post(f"/api/jobs/{third.id}/cancel", headers=operator)
    assert cancelled.status_code == 200
    assert client.delete(f"/api/jobs/{third.id}", headers=operator).status_code == 204
    # The newest job is gone; its number is not given again.
    assert number_of(app, make_job().id) == numbers[2] + 1


def test_number_follows_jobs_written_without_the_counter(app, make_job):
    # A bulk load writes numbers itself: the next job made still gets a free one.
    made = make_job()
    with app.app_context():
        db.session.get(Job, made.id).number = 500
        db.session.commit()
    assert number_of(app, make_job().id) == 501


def test_users_get_ids_the_first_time_a_job_names_them(app, make_job):
    for user in ("igboyes", "alice", "igboyes", "bob", "alice"):
        make_job(user=user)
    with app.app_context():
        users = dict(db.session.execute(select(User.handle, User.id)).all())
        counter = db.session.get(Counter, "job_number")
        assert counter.value == db.session.scalar(select(func.max(Job.number)))
    assert set(users) == {"igboyes", "alice", "bob"}
    assert users["igboyes"] < users["alice"] < users["bob"]


def test_number_is_in_the_document_the_list_and_jobs_show(app, client, runner, operator, job):
    number = number_of(app, job.id)
    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).get_json()["number"] == number
    listed = client.get("/api/jobs", headers=operator).get_json()["jobs"]
    assert [(item["id"], item["number"]) for item in listed] == [(job.id, number)]
    shown = runner.invoke(args=["jobs", "show", job.id])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["number"] == number
    table = runner.invoke(args=["jobs", "list"]).stdout.splitlines()
    assert table[0].split()[:2] == ["ID", "NUMBER"] and table[1].split()[:2] == [job.id, str(number)]


def test_the_console_shows_the_number_and_the_worker(app, client, claimed, make_token):
    job_id, answer = claimed
    console = client.application.test_client()
    assert sign_in(console, make_token("operator", "console-ops")).status_code == 303
    listed = console.get("/console/").text
    assert f'<td data-label="Number" class="number">{answer["id"]}</td>' in listed
    page = console.get(f"/console/jobs/{job_id}").text
    assert f'<span class="number">#{answer["id"]}</span>' in page
    assert f'<dd id="number">{answer["id"]}</dd>' in page
    assert "ghcr.io/virtool/create-subtraction:4.0.0 (workflow 4.0.0, runtime 42.12.0)" in page


# The claim


def test_claim_hands_out_the_oldest_waiting_job_of_the_workflow_whatever_its_size(app, make_job, claim, stored, stored_job):
    other_task = make_job(task="nuvs")
    oldest = make_job(proc=64, mem=512)  # bigger than the worker says it is: a pod's size is its deployment's
    make_job()

    answer = claim(body=claim_body(mem=4, cpu=2))

    assert answer.status_code == 200
    claimed = shaped(contract.JobClaimedSchema, answer.get_json())
    assert claimed["id"] == number_of(app, oldest.id)
    assert claimed["state"] == "running" and claimed["acquired"] is True
    assert claimed["workflow"] == "create_subtraction"
    assert claimed["steps"] == [{**step, "startedAt": None} for step in STEPS]
    assert claimed["claim"] == {key: value for key, value in claim_body().items() if key != "steps"}
    assert claimed["user"]["handle"] == "igboyes" and claimed["user"]["id"] >= 1
    row = stored_job(oldest.id)
    assert row.state == "running" and row.claimed_by == "create-subtraction-7d9f8-1"
    assert row.claim == {
        "runner_id": "create-subtraction-7d9f8-1", "mem": 4, "cpu": 2,
        "image": "ghcr.io/virtool/create-subtraction:4.0.0", "runtime_version": "42.12.0",
        "workflow_version": "4.0.0",
    }
    assert [(record.state, record.stage) for record in stored(oldest.id)] == [("waiting", None), ("running", None)]
    assert stored_job(other_task.id).claimed_at is None


def test_claim_makes_a_fresh_key_and_the_old_one_dies(client, make_job, claim):
    job = make_job()
    claimed = claim().get_json()
    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).status_code == 401
    assert client.get(f"/virtool42/jobs/{claimed['id']}", headers=worker_auth(claimed["id"], job.key)).get_json() == {
        "message": "Key was replaced"
    }
    fresh = client.get(f"/virtool42/jobs/{claimed['id']}", headers=worker_auth(claimed["id"], claimed["key"]))
    assert fresh.status_code == 200


def test_claim_keeps_a_runner_id_of_255_characters_whole(make_job, claim, stored_job):
    job = make_job()
    runner_id = "pod-" + "x" * 247 + "-123"
    assert claim(body=claim_body(runnerId=runner_id)).status_code == 200
    assert stored_job(job.id).claimed_by == runner_id and len(runner_id) == 255


def test_claim_skips_jobs_already_taken(make_job, claim, client):
    first, second = make_job(), make_job()
    client.application.config["JOB_ACQUIRE"] = "open"
    assert client.patch(f"/api/jobs/{first.id}", json={"acquired": True}).status_code == 200
    claimed = claim().get_json()
    assert claimed["id"] == number_of(client.application, second.id)
    assert claim().status_code == 404


def test_nothing_waiting_is_404_and_writes_nothing(app, claim, make_job, stored_job):
    job = make_job(task="nuvs")
    with app.app_context():
        before = db.session.execute(select(Job.__table__)).all(), db.session.execute(select(Counter.__table__)).all()
    answer = claim("create_sample")
    assert answer.status_code == 404
    assert shaped(contract.MessageSchema, answer.get_json()) == {"message": "No job available"}
    with app.app_context():
        after = db.session.execute(select(Job.__table__)).all(), db.session.execute(select(Counter.__table__)).all()
    assert before == after
    assert stored_job(job.id).claimed_at is None


@pytest.mark.parametrize("query", ["", "?workflow=", "?workflow=Create", "?workflow=" + "a" * 65, "?workflow=a%20b"])
def test_claim_checks_the_workflow_first(client, app, monkeypatch, query):
    # Before the credentials and before the body: 422 however the rest is wrong.
    monkeypatch.setitem(app.config, "JOB_ACQUIRE", "runner")
    answer = client.post(f"/virtool42/jobs/claim{query}", data=b"{not json")
    assert answer.status_code == 422
    assert "workflow" in shaped(contract.MessageSchema, answer.get_json())["message"]


def test_claim_with_job_acquire_runner_refuses_loudly_without_a_runner_token(app, client, make_job, monkeypatch, make_token):
    monkeypatch.setitem(app.config, "JOB_ACQUIRE", "runner")
    make_job()
    for headers in ({}, bearer(make_token("operator")), bearer("jobapi_rn_" + "0" * 64), basic_auth("job-1", "x")):
        answer = client.post("/virtool42/jobs/claim?workflow=create_subtraction", json=claim_body(), headers=headers)
        assert answer.status_code == 401, headers
        assert "JOB_ACQUIRE=open" in shaped(contract.MessageSchema, answer.get_json())["message"]
    # Never the 404 of an idle queue, even with nothing waiting.
    assert client.post("/virtool42/jobs/claim?workflow=nuvs", json=claim_body()).status_code == 401
    answer = client.post("/virtool42/jobs/claim?workflow=create_subtraction", json=claim_body(),
                         headers=bearer(make_token("runner")))
    assert answer.status_code == 200
    shaped(contract.JobClaimedSchema, answer.get_json())


@pytest.mark.parametrize("data, content_type", [
    (b"", None), (b"{", "application/json"), (b"\xff\xfe", "application/json"), (b"NaN", "application/json"),
])
def test_claim_with_unreadable_json_is_400_malformed_body(client, open_claims, data, content_type):
    answer = client.post("/virtool42/jobs/claim?workflow=nuvs", data=data, content_type=content_type)
    assert answer.status_code == 400
    assert shaped(contract.MessageSchema, answer.get_json()) == {"message": "Malformed body"}


@pytest.mark.parametrize("change", [
    {"runnerId": ""}, {"runnerId": "x" * 256}, {"mem": "4"}, {"cpu": True}, {"image": None},
    {"runtimeVersion": 42}, {"steps": None}, {"steps": {}}, {"extra": 1},
    {"steps": [{"id": "Decompress", "name": "D", "description": "d"}]},
    {"steps": [{"id": "1st", "name": "D", "description": "d"}]},
    {"steps": [{"id": "a" * 257, "name": "D", "description": "d"}]},
    {"steps": [{"id": "a", "name": " ", "description": "d"}]},
    {"steps": [{"id": "a", "name": "A", "description": "d" * 1025}]},
    {"steps": [{"id": "a", "name": "A"}]},
    {"steps": [{"id": "a", "name": "A", "description": "x"}, {"id": "a", "name": "B", "description": "y"}]},
])
def test_claim_with_a_body_of_the_wrong_shape_is_400_invalid_body(client, open_claims, make_job, stored_job, change):
    job = make_job()
    answer = client.post("/virtool42/jobs/claim?workflow=create_subtraction", json=claim_body(**change))
    assert answer.status_code == 400
    body = shaped(contract.MessageSchema, answer.get_json())
    assert body["message"] == "Invalid body" and body["errors"]
    assert stored_job(job.id).claimed_at is None


def test_a_job_claimed_through_the_dialect_cannot_be_acquired(client, claimed):
    job_id, _ = claimed
    refused = client.patch(f"/api/jobs/{job_id}", json={"acquired": True})
    assert refused.status_code == 400 and refused.get_json()["message"] == "Job already acquired"


def test_a_job_claimed_through_the_dialect_is_an_ordinary_job(client, operator, claimed):
    job_id, answer = claimed
    document = client.get(f"/api/jobs/{job_id}", headers=operator).get_json()
    assert document["number"] == answer["id"] and document["acquired"] is True
    assert document["claim"]["runner_id"] == answer["claim"]["runnerId"]
    assert document["state"] == "running"
    listed = client.get("/api/jobs?state=running", headers=operator).get_json()["jobs"]
    assert [(item["id"], item["claimed_by"]) for item in listed] == [(job_id, "create-subtraction-7d9f8-1")]


# A job's own routes


def test_get_answers_the_job(client, claimed):
    _, answer = claimed
    got = client.get(f"/virtool42/jobs/{answer['id']}", headers=worker_auth(answer["id"], answer["key"]))
    assert got.status_code == 200
    job = shaped(contract.JobSchema, got.get_json())
    assert job["id"] == answer["id"] and job["state"] == "running" and job["progress"] == 0
    # Every top-level argument as text; null left out.
    assert job["args"] == {"subtraction_id": "12", "files": "[4,5]"}
    assert job["claim"] == answer["claim"] and job["claimedAt"] == answer["claimedAt"]
    assert job["createdAt"] == answer["createdAt"] and job["finishedAt"] is None
    assert job["steps"] == answer["steps"] and job["user"] == answer["user"]


def test_get_of_a_job_nobody_claimed_is_pending(app, client, make_job):
    job = make_job(task="nuvs", args={"sample_id": "s1", "paired": True, "ratio": 0.5})
    number = number_of(app, job.id)
    got = shaped(contract.JobSchema, client.get(f"/virtool42/jobs/{number}", headers=worker_auth(number, job.key)).get_json())
    assert (got["state"], got["progress"], got["claim"], got["steps"], got["claimedAt"]) == ("pending", 0, None, None, None)
    assert got["args"] == {"sample_id": "s1", "paired": "true", "ratio": "0.5"}


@pytest.mark.parametrize("login", [
    "job-007", "job-0", "job-2147483648", "job-99999999999", "JOB-{n}", "job-{n}-2", "job-+{n}", "job- {n}", "{n}", "job-",
])
def test_a_login_that_is_not_job_and_a_number_is_401(client, claimed, login):
    _, answer = claimed
    headers = basic_auth(login.format(n=answer["id"]), answer["key"])
    got = client.get(f"/virtool42/jobs/{answer['id']}", headers=headers)
    assert got.status_code == 401
    assert shaped(contract.MessageSchema, got.get_json()) == {"message": "Invalid credentials"}


def test_credentials_that_open_nothing_are_401(client, claimed):
    _, answer = claimed
    number = answer["id"]
    for headers in ({}, {"Authorization": "Basic !!!"}, bearer(answer["key"]), worker_auth(number, "0" * 64),
                    worker_auth(number + 1000, answer["key"])):
        got = client.put(f"/virtool42/jobs/{number}/ping", headers=headers)
        assert got.status_code == 401 and got.get_json() == {"message": "Invalid credentials"}, headers
        assert "WWW-Authenticate" not in got.headers


def test_another_jobs_path_is_403_and_a_path_that_names_no_job_404(app, client, claimed, make_job):
    _, answer = claimed
    auth = worker_auth(answer["id"], answer["key"])
    other = number_of(app, make_job().id)
    got = client.get(f"/virtool42/jobs/{other}", headers=auth)
    assert got.status_code == 403 and got.get_json() == {"message": "Job key does not match the requested job"}
    for path in (f"0{answer['id']}", "abc", "-1", "2147483648"):
        got = client.put(f"/virtool42/jobs/{path}/ping", headers=auth)
        assert got.status_code == 404 and got.get_json() == {"message": "Job not found"}, path


def test_ping_stores_a_heartbeat_from_a_bare_request(client, claimed, stored_job):
    job_id, answer = claimed
    environ = {"CONTENT_TYPE": None}
    got = client.put(f"/virtool42/jobs/{answer['id']}/ping", headers=worker_auth(answer["id"], answer["key"]),
                     environ_overrides=environ)
    assert got.status_code == 200
    pinged = shaped(contract.JobPingSchema, got.get_json())
    stored = stored_job(job_id).pinged_at
    assert stored is not None and pinged["pingedAt"] == service.format_timestamp(stored)


@pytest.mark.parametrize("data, content_type", [
    (b"", None), (b"{}", "application/json"), (b'{"x": [1]}', None), (b"anything", "text/plain"),
])
def test_ping_start_and_finish_take_any_body(client, claimed, data, content_type):
    _, answer = claimed
    auth = worker_auth(answer["id"], answer["key"])
    base = f"/virtool42/jobs/{answer['id']}"
    assert client.put(f"{base}/ping", headers=auth, data=data, content_type=content_type).status_code == 200
    started = client.post(f"{base}/steps/decompress/start", headers=auth, data=data, content_type=content_type)
    assert started.status_code == 200
    for step in ("build_index", "finalize"):
        assert client.post(f"{base}/steps/{step}/start", headers=auth).status_code == 200
    assert client.post(f"{base}/finish", headers=auth, data=data, content_type=content_type).status_code == 200


def test_starting_steps_makes_running_records_at_the_share_of_steps_started(app, client, claimed, stored):
    job_id, answer = claimed
    auth = worker_auth(answer["id"], answer["key"])
    base = f"/virtool42/jobs/{answer['id']}"
    for index, step in enumerate(STEPS, start=1):
        got = client.post(f"{base}/steps/{step['id']}/start", headers=auth, json={})
        assert got.status_code == 200
        started = shaped(contract.JobStepStartedSchema, got.get_json())
        assert {key: started[key] for key in ("id", "name", "description")} == step
        record = stored(job_id)[-1]
        assert (record.state, record.stage, record.step_name, record.step_description, record.progress) == (
            "running", step["id"], step["name"], step["description"], index * 100 // len(STEPS),
        )
        assert started["startedAt"] == service.format_timestamp(record.timestamp)
        job = shaped(contract.JobSchema, client.get(base, headers=auth).get_json())
        assert job["progress"] == index * 100 // len(STEPS)
        assert [s["startedAt"] is not None for s in job["steps"]] == [i < index for i in range(len(STEPS))]


def test_starting_the_latest_step_again_is_a_harmless_200(client, claimed, stored):
    job_id, answer = claimed
    auth = worker_auth(answer["id"], answer["key"])
    base = f"/virtool42/jobs/{answer['id']}"
    first = client.post(f"{base}/steps/decompress/start", headers=auth).get_json()
    records = len(stored(job_id))
    again = client.post(f"{base}/steps/decompress/start", headers=auth)
    assert again.status_code == 200 and again.get_json() == first
    assert len(stored(job_id)) == records
    assert client.post(f"{base}/steps/build_index/start", headers=auth).status_code == 200
    # An earlier step started again would move the job back.
    refused = client.post(f"{base}/steps/decompress/start", headers=auth)
    assert refused.status_code == 409
    assert shaped(contract.MessageSchema, refused.get_json()) == {"message": "Step already started"}
    assert len(stored(job_id)) == records + 1


def test_a_step_the_claim_did_not_declare_is_404(client, claimed, stored):
    job_id, answer = claimed
    got = client.post(f"/virtool42/jobs/{answer['id']}/steps/align/start", headers=worker_auth(answer["id"], answer["key"]))
    assert got.status_code == 404 and got.get_json() == {"message": "Step not found"}
    assert len(stored(job_id)) == 2


def test_finish_succeeds_the_job(client, claimed, stored, stored_job):
    job_id, answer = claimed
    auth = worker_auth(answer["id"], answer["key"])
    base = f"/virtool42/jobs/{answer['id']}"
    client.post(f"{base}/steps/decompress/start", headers=auth)
    got = client.post(f"{base}/finish", headers=auth)
    assert got.status_code == 200
    job = shaped(contract.JobSchema, got.get_json())
    last = stored(job_id)[-1]
    assert (job["state"], job["progress"]) == ("succeeded", 100)
    assert job["finishedAt"] == service.format_timestamp(last.timestamp)
    assert (last.state, last.stage, last.progress) == ("complete", "decompress", 100)
    assert stored_job(job_id).state == "complete"
    # Its key opens nothing now.
    for method, path in (("put", "/ping"), ("post", "/finish"), ("get", ""), ("post", "/steps/finalize/start")):
        again = getattr(client, method)(f"{base}{path}", headers=auth)
        assert again.status_code == 401 and again.get_json() == {"message": "Job has succeeded."}


def test_finish_of_a_job_that_is_not_running_is_409(app, client, make_job, stored):
    job = make_job()
    number = number_of(app, job.id)
    got = client.post(f"/virtool42/jobs/{number}/finish", headers=worker_auth(number, job.key))
    assert got.status_code == 409 and got.get_json() == {"message": "Job is not running"}
    assert len(stored(job.id)) == 1


# Cancels and the reaper


@pytest.mark.parametrize("how", ["http", "cli", "console"])
def test_an_operators_cancel_refuses_the_workers_next_ping(client, runner, operator, claimed, how, make_token):
    job_id, answer = claimed
    auth = worker_auth(answer["id"], answer["key"])
    assert client.put(f"/virtool42/jobs/{answer['id']}/ping", headers=auth).status_code == 200
    if how == "http":
        assert client.post(f"/api/jobs/{job_id}/cancel", headers=operator).status_code == 200
    elif how == "cli":
        assert runner.invoke(args=["jobs", "cancel", job_id]).exit_code == 0
    else:
        console = client.application.test_client()
        assert sign_in(console, make_token("operator", "console-ops")).status_code == 303
        token = csrf_token(console.get(f"/console/jobs/{job_id}").text)
        assert console.post(f"/console/jobs/{job_id}/cancel", data={"csrf_token": token}).status_code == 303
    got = client.put(f"/virtool42/jobs/{answer['id']}/ping", headers=auth)
    assert got.status_code == 401
    assert shaped(contract.MessageSchema, got.get_json()) == {"message": "Job is cancelled."}


@pytest.mark.parametrize("state, message", [
    ("error", "Job has failed."), ("terminated", "Job has failed."), ("complete", "Job has succeeded."),
])
def test_a_final_jobs_key_hears_its_state(app, client, make_job, state, message):
    job = make_job()
    number = number_of(app, job.id)
    assert push(client, job, "running", "work", 10).status_code == 200
    fields = {"error": "boom"} if state == "error" else {}
    assert push(client, job, state, "work", 10, **fields).status_code == 200
    got = client.put(f"/virtool42/jobs/{number}/ping", headers=worker_auth(number, job.key))
    assert got.status_code == 401 and got.get_json() == {"message": message}


def test_a_worker_that_stops_pinging_is_timed_out_and_reads_failed(app, client, runner, claimed, stored_job):
    job_id, answer = claimed
    with app.app_context():
        row = db.session.get(Job, job_id)
        long_ago = row.updated_at.replace(year=row.updated_at.year - 1)
        row.updated_at = long_ago
        db.session.execute(JobStatus.__table__.update().values(timestamp=long_ago))
        db.session.commit()
    reaped = runner.invoke(args=["jobs", "reap", "--timeout", "60"])
    assert reaped.exit_code == 0 and "1 job reaped" in reaped.stdout
    assert stored_job(job_id).state == "timeout"
    got = client.put(f"/virtool42/jobs/{answer['id']}/ping", headers=worker_auth(answer["id"], answer["key"]))
    assert got.status_code == 401 and got.get_json() == {"message": "Job has failed."}
    counts = client.get("/virtool42/jobs/counts").get_json()
    assert counts["running"]["create_subtraction"] == 0 and counts["failed"]["create_subtraction"] == 0


# Counts and health


def test_counts_need_no_credentials_and_count_active_jobs(client, make_job, claim, operator, monkeypatch, app):
    monkeypatch.setitem(app.config, "COUNTS_PUBLIC", False)
    make_job(task="create_sample")
    make_job(task="create_sample")
    make_job(task="align")  # not one of Virtool's: counted all the same
    preparing = make_job(task="nuvs")
    assert push(client, preparing, "preparing", "download", 0).status_code == 200
    make_job()
    claim()
    done = make_job(task="pathoscope")
    assert client.post(f"/api/jobs/{done.id}/cancel", headers=operator).status_code == 200

    got = client.get("/virtool42/jobs/counts")

    assert got.status_code == 200
    counts = shaped(contract.CountsSchema, got.get_json())
    workflows = {"build_index", "create_sample", "create_subtraction", "nuvs", "pathoscope", "align"}
    assert all(set(by_workflow) == workflows for by_workflow in counts.values())
    assert counts["pending"] == {**dict.fromkeys(workflows, 0), "create_sample": 2, "align": 1}
    assert counts["running"] == {**dict.fromkeys(workflows, 0), "nuvs": 1, "create_subtraction": 1}
    assert all(n == 0 for state in ("cancelled", "failed", "succeeded") for n in counts[state].values())


def test_counts_with_no_jobs_are_all_zero_over_virtools_workflows(client):
    counts = shaped(contract.CountsSchema, client.get("/virtool42/jobs/counts").get_json())
    assert counts == fixture("counts.json") | {
        state: dict.fromkeys(contract.JOB_WORKFLOWS, 0) for state in contract.JOB_STATES
    }


def test_counts_on_a_database_that_cannot_answer_are_503_never_zeros(tmp_path):
    broken = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'empty.sqlite'}"})
    got = broken.test_client().get("/virtool42/jobs/counts")
    assert got.status_code == 503
    assert set(got.get_json()) == {"message"} and "Retry-After" in got.headers
    with broken.app_context():
        db.engine.dispose()


def test_health_is_as_healthz_and_readyz(client):
    assert client.get("/virtool42/health/live").get_json() == client.get("/healthz").get_json()
    ready = client.get("/virtool42/health/ready")
    assert ready.status_code == 200 and ready.get_json() == client.get("/readyz").get_json()


def test_errors_outside_the_dialects_checks_are_a_message_too(client, claimed):
    _, answer = claimed
    too_large = client.put(f"/virtool42/jobs/{answer['id']}/ping", data=b"x" * (64 * 1024 + 1),
                           headers=worker_auth(answer["id"], answer["key"]))
    assert too_large.status_code == 413
    assert shaped(contract.MessageSchema, too_large.get_json()) == {"message": "Payload too large"}
    wrong_method = client.delete("/virtool42/jobs/counts")
    assert wrong_method.status_code == 405 and "message" in wrong_method.get_json()


def test_basic_credentials_are_read_as_the_runtime_writes_them(client, claimed):
    _, answer = claimed
    token = base64.b64encode(f"job-{answer['id']}:{answer['key']}".encode()).decode()
    for header in (f"Basic {token}", f"basic {token}", f"Basic  {token}"):
        assert client.get(f"/virtool42/jobs/{answer['id']}", headers={"Authorization": header}).status_code == 200
