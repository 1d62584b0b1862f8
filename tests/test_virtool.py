"""Virtool's workers (SPEC 7): acquiring a job, Virtool's job document, its eight states,
error objects and step fields, checked against virtool-core's own models."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from conftest import JobCredentials, bearer, push, push_body
from sqlalchemy import update
from virtool_core.models.job import Job as VirtoolJob
from virtool_core.models.job import JobAcquired, JobStatus

from jobapi.extensions import db
from jobapi.jobs.states import STATES
from jobapi.models import Job, utcnow

RECORD_KEYS = {"state", "stage", "error", "progress", "timestamp"}
ERROR_OBJECT = {
    "type": "ValueError",
    "traceback": ['  File "/work/workflow.py", line 12, in second\n    raise ValueError("boom")\n'],
    "details": ["boom"],
}


def assert_virtool_job(document: dict, *, acquired: bool = False) -> None:
    """The document parses as virtool-core's Job (JobAcquired with its key), and has the JSON
    types pydantic would otherwise coerce."""
    (JobAcquired if acquired else VirtoolJob).parse_obj(document)
    assert isinstance(document["id"], str) and document["workflow"] == document["task"]
    assert type(document["progress"]) is int and type(document["archived"]) is bool
    assert type(document["acquired"]) is bool and document["rights"] == {}
    assert document["user"] == {"id": document["user"]["id"], "handle": document["user"]["id"]}
    assert document["ping"] is None or set(document["ping"]) == {"pinged_at"}
    last = document["status"][-1]
    assert (document["state"], document["stage"], document["progress"]) == (last["state"], last["stage"], last["progress"])
    for record in document["status"]:
        assert type(record["progress"]) is int
        if record["error"] is None or isinstance(record["error"], dict):
            JobStatus.parse_obj(record)
    if acquired:
        assert isinstance(document["key"], str)


def acquire(client, job_id: str, headers: dict[str, str] | None = None, body=None):
    return client.patch(
        f"/api/jobs/{job_id}", json={"acquired": True} if body is None else body, headers=headers or {}
    )


@pytest.fixture
def open_acquire(app, monkeypatch):
    monkeypatch.setitem(app.config, "JOB_ACQUIRE", "open")


# Acquire (SPEC 7.1)


def test_acquire_open_gives_the_document_and_a_fresh_key(client, job, stored_job, open_acquire):
    response = acquire(client, job.id)

    assert response.status_code == 200
    assert response.headers["Job-State"] == "waiting"
    document = response.json
    assert_virtool_job(document, acquired=True)
    assert document["id"] == job.id and document["acquired"] is True
    assert document["key"] != job.key
    fresh = JobCredentials(id=job.id, key=document["key"])
    assert client.get(f"/api/jobs/{job.id}", headers=fresh.auth).json["acquired"] is True
    stale = client.get(f"/api/jobs/{job.id}", headers=job.auth)
    assert stale.status_code == 401
    assert stale.json == {"id": "unauthorized", "message": "Key was replaced"}
    row = stored_job(job.id)
    assert row.claimed_at is not None and row.claimed_by is None


def test_acquire_twice_is_400_already_acquired(client, job, open_acquire):
    assert acquire(client, job.id).status_code == 200
    again = acquire(client, job.id)
    assert again.status_code == 400
    assert again.json == {"id": "bad_request", "message": "Job already acquired"}


def test_acquire_and_claim_are_one_event(client, make_job, make_token, open_acquire):
    runner = bearer(make_token("runner", "node-1"))
    make_job()
    claimed = client.post("/api/jobs/claim", json={"tasks": ["create_subtraction"], "proc": 8, "mem": 8}, headers=runner)
    assert claimed.status_code == 200
    assert_virtool_job(claimed.json, acquired=True)
    assert acquire(client, claimed.json["id"]).status_code == 400

    acquired = make_job()
    assert acquire(client, acquired.id).status_code == 200
    nothing = client.post("/api/jobs/claim", json={"tasks": ["create_subtraction"], "proc": 8, "mem": 8}, headers=runner)
    assert nothing.status_code == 204


@pytest.mark.parametrize("final", [False, True])
def test_acquire_a_job_not_waiting_is_409_naming_its_state(client, job, open_acquire, final):
    state = "cancelled" if final else "running"
    assert push(client, job, state, "align", 10).status_code == 200
    response = acquire(client, job.id)
    assert response.status_code == 409
    assert response.json["state"] == state
    assert state in response.json["message"]


def test_acquire_unknown_job_is_404(client, open_acquire):
    assert acquire(client, "zzzzzzzz").status_code == 404
    assert acquire(client, "not-an-id").status_code == 404


@pytest.mark.parametrize(
    "body",
    [{"acquired": False}, {"acquired": "true"}, {"acquired": 1}, {}, {"acquired": True, "by": "me"}, {"acquired": None}],
)
def test_acquire_with_any_other_body_is_422(client, job, stored_job, open_acquire, body):
    response = acquire(client, job.id, body=body)
    assert response.status_code == 422
    assert response.json["id"] == "invalid_input"
    assert stored_job(job.id).claimed_at is None


def test_acquire_by_default_needs_a_runner_token(client, job, make_token, stored_job):
    anonymous = acquire(client, job.id)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == 'Bearer realm="jobapi"'
    operator = acquire(client, job.id, bearer(make_token("operator")))
    assert operator.status_code == 403
    as_job = acquire(client, job.id, job.auth)
    assert as_job.status_code == 401
    response = acquire(client, job.id, bearer(make_token("runner", "node-7")))
    assert response.status_code == 200
    assert stored_job(job.id).claimed_by == "node-7"


# Virtool's job document on every route and command (SPEC 7.2)


def test_every_document_validates_as_virtool_job(client, runner, make_job, make_token, open_acquire):
    operator = bearer(make_token("operator"))
    made = client.post("/api/jobs", json={"task": "build_index", "user": "igboyes", "args": {"ref": "hg38"}}, headers=operator)
    assert made.status_code == 201
    assert_virtool_job(made.json, acquired=True)

    acquired = acquire(client, made.json["id"])
    assert_virtool_job(acquired.json, acquired=True)
    worker = JobCredentials(id=made.json["id"], key=acquired.json["key"])
    assert push(client, worker, "preparing", "setup", 3, step_name="Setup", step_description="").status_code == 200
    assert push(client, worker, "running", "build", 40).status_code == 200
    assert client.put(f"/api/jobs/{worker.id}/ping", json={}, headers=worker.auth).status_code == 200
    assert push(client, worker, "error", "build", 40, error=ERROR_OBJECT).status_code == 200

    own = client.get(f"/api/jobs/{worker.id}", headers=worker.auth).json
    assert_virtool_job(own)
    assert own["ping"] is not None and own["state"] == "error"
    assert_virtool_job(client.get(f"/api/jobs/{worker.id}", headers=operator).json)

    make_job()
    claimed = client.post("/api/jobs/claim", json={"tasks": ["create_subtraction"], "proc": 4, "mem": 4},
                          headers=bearer(make_token("runner")))
    assert_virtool_job(claimed.json, acquired=True)

    created = runner.invoke(args=["jobs", "create", "--task", "align", "--user", "bob"])
    assert_virtool_job(json.loads(created.stdout), acquired=True)
    shown = runner.invoke(args=["jobs", "show", worker.id])
    assert_virtool_job(json.loads(shown.stdout))


# Pushes (SPEC 7.3)


def bring_to(app, client, runner, job: JobCredentials, state: str) -> None:
    """Bring a new job into a state the way a worker (or the reaper) would."""
    paths = {
        "waiting": [], "preparing": ["preparing"], "running": ["running"],
        "complete": ["running", "complete"], "error": ["running", "error"], "cancelled": ["cancelled"],
        "terminated": ["running", "terminated"],
    }
    if state == "timeout":
        bring_to(app, client, runner, job, "running")
        with app.app_context():
            db.session.execute(update(Job).where(Job.id == job.id).values(updated_at=utcnow() - timedelta(hours=1)))
            db.session.commit()
        assert runner.invoke(args=["jobs", "reap", "--timeout", "60"]).exit_code == 0
        return
    for step in paths[state]:
        assert push(client, job, step, "s", 10, error=ERROR_OBJECT if step == "error" else None).status_code == 200


MOVES = {
    "waiting": {"waiting", "preparing", "running", "error", "cancelled", "terminated"},
    "preparing": {"preparing", "running", "error", "cancelled", "terminated"},
    "running": {"running", "complete", "error", "cancelled", "terminated"},
}
FINISHED = {
    "complete": "Job is complete", "error": "Job has errored", "cancelled": "Job is cancelled",
    "terminated": "Job was terminated", "timeout": "Job timed out",
}


@pytest.mark.parametrize("current", STATES)
def test_the_transition_table(app, client, runner, make_job, current):
    for pushed in [state for state in STATES if state != "timeout"]:
        job = make_job()
        bring_to(app, client, runner, job, current)
        response = push(client, job, pushed, "next", 50, error=ERROR_OBJECT if pushed == "error" else None)
        if current in FINISHED:
            assert response.status_code == 409, (current, pushed)
            assert response.json == {"id": "conflict", "message": FINISHED[current], "state": current}
        elif pushed in MOVES[current]:
            assert response.status_code == 200, (current, pushed, response.json)
            assert response.headers["Job-State"] == pushed
        else:
            assert response.status_code == 409, (current, pushed)
            assert response.json["state"] == current
            assert current in response.json["message"] and pushed in response.json["message"]


def test_timeout_cannot_be_pushed(client, job, stored):
    response = push(client, job, "timeout", "s", 10)
    assert response.status_code == 422
    assert "state" in response.json["errors"]
    assert len(stored(job.id)) == 1


@pytest.mark.parametrize(
    "error",
    [
        ERROR_OBJECT,
        {"details": [], "traceback": [], "type": "JobsAPIConflict"},  # another key order, kept
        {"message": "boom"},  # virtool-workflow 1.x
        "bowtie2-build exited 137",
    ],
)
def test_error_is_stored_and_answered_exactly_as_given(client, job, stored, error):
    assert push(client, job, "running", "build", 10).status_code == 200
    response = push(client, job, "error", "build", 10, error=error)
    assert response.status_code == 200
    assert response.json["error"] == error
    answered = client.get(f"/api/jobs/{job.id}", headers=job.auth).get_data(as_text=True)
    if isinstance(error, dict):
        assert json.dumps(error, separators=(",", ":")) in answered  # same keys, same order
    assert stored(job.id)[-1].error == error


@pytest.mark.parametrize("error", [None, ERROR_OBJECT, "stopped by SIGTERM"])
def test_terminated_may_carry_an_error(client, job, error):
    response = push(client, job, "terminated", "build", 10, error=error)
    assert response.status_code == 200
    assert response.json["error"] == error


@pytest.mark.parametrize(
    ("state", "error"),
    [
        ("error", None),
        ("running", ERROR_OBJECT),
        ("complete", {"message": "x"}),
        ("error", {"type": "ValueError"}),
        ("error", {"type": "ValueError", "traceback": "line", "details": []}),
        ("error", {"type": "ValueError", "traceback": [], "details": [], "extra": 1}),
        ("error", {"message": 5}),
        ("error", {"message": "a", "type": "b"}),
        ("error", {"type": "Value\u0000Error", "traceback": [], "details": []}),
        ("error", {"type": "ValueError", "traceback": ["x" * 17000], "details": []}),
        ("error", ["boom"]),
        ("error", 42),
        ("error", ""),
    ],
)
def test_error_rules(client, job, stored, state, error):
    if state == "complete":
        assert push(client, job, "running", "s", 1).status_code == 200
    response = push(client, job, state, "s", 10, error=error)
    assert response.status_code == 422, response.json
    assert "error" in response.json["errors"]


def test_an_error_object_of_exactly_16_kib_is_taken(client, job):
    skeleton = {"type": "E", "traceback": [""], "details": []}
    room = 16 * 1024 - len(json.dumps(skeleton, separators=(",", ":")))
    error = {"type": "E", "traceback": ["x" * room], "details": []}
    assert push(client, job, "error", "s", 1, error=error).status_code == 200


def test_step_fields_are_kept_and_shown_only_when_given(client, job, stored):
    given = push(client, job, "running", "first", 0, step_name="First", step_description="Description of First.")
    assert given.json["step_name"] == "First" and given.json["step_description"] == "Description of First."
    empty = push(client, job, "running", "third", 66, step_name="Third", step_description="")
    assert empty.json["step_description"] == ""
    nulls = push(client, job, "running", "x", 70, step_name=None, step_description=None)
    assert set(nulls.json) == RECORD_KEYS
    seed = push(client, job, "running", "y", 80)
    assert set(seed.json) == RECORD_KEYS

    records = client.get(f"/api/jobs/{job.id}", headers=job.auth).json["status"]
    assert [set(r) - RECORD_KEYS for r in records] == [
        set(), {"step_name", "step_description"}, {"step_name", "step_description"}, set(), set(),
    ]
    assert [(r.step_name, r.step_description) for r in stored(job.id)][1:3] == [
        ("First", "Description of First."), ("Third", ""),
    ]
    for record in records:
        JobStatus.parse_obj(record)


@pytest.mark.parametrize(
    "fields",
    [{"step_name": "x" * 257}, {"step_description": "x" * 1025}, {"step_name": 5}, {"step_name": "a\u0000b"}],
)
def test_step_field_rules(client, job, fields):
    response = push(client, job, "running", "s", 1, **fields)
    assert response.status_code == 422
    assert set(response.json["errors"]) == set(fields)


@pytest.mark.parametrize(
    "body",
    [
        {"state": "running", "stage": "s", "progress": 500},
        {"state": "banana"},
        {"worker": "w1"},
        {"state": "error", "stage": "s", "progress": 1, "error": {"type": "JobsAPIConflict", "traceback": [], "details": ["Job is cancelled"]}},
    ],
)
def test_a_push_to_a_finished_job_is_409_whatever_its_fields(client, job, body):
    assert push(client, job, "cancelled", "s", 10).status_code == 200
    response = push_body(client, job, body)
    assert response.status_code == 409
    assert response.json == {"id": "conflict", "message": "Job is cancelled", "state": "cancelled"}


def test_a_retry_to_a_finished_job_is_still_replayed(client, job):
    key = {"Idempotency-Key": "final-push"}
    first = push(client, job, "terminated", "s", 10, headers=key)
    assert first.status_code == 200
    again = push(client, job, "terminated", "s", 10, headers=key)
    assert again.status_code == 200 and again.json == first.json
    other = push(client, job, "running", "s", 500, headers=key)
    assert other.status_code == 422


# Every route and command knows all eight states


def test_the_reaper_times_out_preparing_jobs_keeping_stage_and_progress(app, client, runner, job, stored):
    assert push(client, job, "preparing", "download", 3).status_code == 200
    with app.app_context():
        db.session.execute(update(Job).where(Job.id == job.id).values(updated_at=utcnow() - timedelta(hours=1)))
        db.session.commit()
    result = runner.invoke(args=["jobs", "reap", "--timeout", "60"])
    assert result.exit_code == 0, result.output
    last = stored(job.id)[-1]
    assert (last.state, last.stage, last.progress) == ("timeout", "download", 3)
    assert last.error.startswith("No heartbeat for")


def test_lists_filter_by_virtool_states(app, client, runner, make_job, make_token):
    operator = bearer(make_token("operator"))
    jobs = {state: make_job() for state in ("preparing", "terminated", "timeout")}
    for state, job in jobs.items():
        bring_to(app, client, runner, job, state)
    for state, job in jobs.items():
        listed = client.get(f"/api/jobs?state={state}", headers=operator).json["jobs"]
        assert [item["id"] for item in listed] == [job.id]
        cli = json.loads(runner.invoke(args=["jobs", "list", "--json", "--state", state]).stdout)
        assert [item["id"] for item in cli] == [job.id]


def test_cancel_and_remove_know_virtool_states(app, client, runner, make_job, make_token):
    operator = bearer(make_token("operator"))
    preparing, terminated, timed_out = make_job(), make_job(), make_job()
    bring_to(app, client, runner, preparing, "preparing")
    bring_to(app, client, runner, terminated, "terminated")
    bring_to(app, client, runner, timed_out, "timeout")

    cancelled = client.post(f"/api/jobs/{preparing.id}/cancel", headers=operator)
    assert cancelled.status_code == 200 and cancelled.json["state"] == "cancelled"
    refused = client.post(f"/api/jobs/{terminated.id}/cancel", headers=operator)
    assert refused.status_code == 409 and refused.json["state"] == "terminated"
    assert runner.invoke(args=["jobs", "cancel", timed_out.id]).exit_code == 1
    # Finished jobs go without force.
    assert client.delete(f"/api/jobs/{terminated.id}", headers=operator).status_code == 204
    assert runner.invoke(args=["jobs", "remove", timed_out.id]).exit_code == 0


def test_watch_ends_with_terminated(app, client, runner, job):
    bring_to(app, client, runner, job, "terminated")
    result = runner.invoke(args=["jobs", "watch", job.id, "--interval", "0.05"])
    assert result.exit_code == 1
    assert result.stderr == f"Job {job.id} was terminated at stage s\n"


def test_openapi_names_all_eight_states(client):
    document = client.get("/api/openapi.json").json
    assert document["components"]["schemas"]["JobSummary"]["properties"]["state"]["enum"] == list(STATES)
    pushed = document["components"]["schemas"]["StatusIn"]["properties"]["state"]["enum"]
    assert pushed == [state for state in STATES if state != "timeout"]
    assert "patch" in document["paths"]["/api/jobs/{job_id}"]

