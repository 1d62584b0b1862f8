"""Job lifecycle through the test client: idempotent retries, current state, cancellation,
heartbeats and reaping, key lifetime and rotation."""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pytest
from conftest import push
from sqlalchemy import update

from jobapi.extensions import db
from jobapi.jobs.reaper import seconds
from jobapi.models import Job, utcnow


def set_job(app, job_id, **values):
    """Change a job's row directly, as time passing would."""
    with app.app_context():
        db.session.execute(update(Job).where(Job.id == job_id).values(**values))
        db.session.commit()


# Idempotent retries


def test_retry_with_same_key_returns_original_record(client, job, stored):
    first = push(client, job, headers={"Idempotency-Key": "push-1"}, state="running", stage="a", progress="40")
    again = push(client, job, headers={"Idempotency-Key": "push-1"}, state="running", stage="a", progress=40)
    assert first.status_code == again.status_code == 200
    assert again.json == first.json
    assert [r.state for r in stored(job.id)] == ["waiting", "running"]


def test_retry_replays_even_after_later_pushes(client, job, stored):
    first = push(client, job, headers={"Idempotency-Key": "k1"}, state="running", stage="a", progress=10)
    push(client, job, headers={"Idempotency-Key": "k2"}, state="running", stage="b", progress=20)
    again = push(client, job, headers={"Idempotency-Key": "k1"}, state="running", stage="a", progress=10)
    assert again.status_code == 200
    assert again.json == first.json
    assert len(stored(job.id)) == 3


def test_same_key_different_body_is_422_naming_header(client, job, stored):
    push(client, job, headers={"Idempotency-Key": "k"}, state="running", stage="a", progress=10)
    reused = push(client, job, headers={"Idempotency-Key": "k"}, state="running", stage="b", progress=10)
    assert reused.status_code == 422
    assert reused.json["id"] == "invalid_input"
    assert list(reused.json["errors"]) == ["Idempotency-Key"]
    assert len(stored(job.id)) == 2


@pytest.mark.parametrize("key", ["", "x" * 129, "caf\u00e9", "tab\there"])
def test_malformed_idempotency_key_is_422(client, job, stored, key):
    response = push(client, job, headers={"Idempotency-Key": key}, state="running", stage="a", progress=1)
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json["errors"]
    assert len(stored(job.id)) == 1


def test_longest_idempotency_key_is_accepted(client, job):
    key = "k" * 128
    assert push(client, job, headers={"Idempotency-Key": key}, state="running", stage="a", progress=1).status_code == 200


def test_keys_are_per_job(client, make_job, stored):
    one, two = make_job(), make_job()
    assert push(client, one, headers={"Idempotency-Key": "same"}, state="running", stage="a", progress=1).status_code == 200
    assert push(client, two, headers={"Idempotency-Key": "same"}, state="running", stage="b", progress=2).status_code == 200
    assert len(stored(one.id)) == len(stored(two.id)) == 2


def test_final_push_replays_after_finish(client, job, stored):
    final = push(client, job, headers={"Idempotency-Key": "done"}, state="error", stage="x", progress=3, error="boom")
    again = push(client, job, headers={"Idempotency-Key": "done"}, state="error", stage="x", progress=3, error="boom")
    assert again.status_code == 200
    assert again.json == final.json
    other = push(client, job, headers={"Idempotency-Key": "other"}, state="error", stage="x", progress=3, error="boom")
    assert other.status_code == 409
    assert len(stored(job.id)) == 2


# Current state on the job


def test_job_row_follows_each_push(client, job, stored_job):
    push(client, job, state="running", stage="align", progress=30)
    row = stored_job(job.id)
    assert (row.state, row.stage, row.progress, row.status_count) == ("running", "align", 30, 2)
    record = push(client, job, state="complete", stage="done", progress=100).json
    row = stored_job(job.id)
    assert (row.state, row.stage, row.progress, row.status_count) == ("complete", "done", 100, 3)
    assert row.updated_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ") == record["timestamp"]


def test_job_state_header_on_every_response(client, job):
    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).headers["Job-State"] == "waiting"
    ok = push(client, job, state="running", stage="a", progress=1)
    assert ok.headers["Job-State"] == "running"
    invalid = push(client, job, state="running", stage="a", progress=101)
    assert invalid.status_code == 422
    assert invalid.headers["Job-State"] == "running"
    bad = push(client, job, state="waiting", stage="a", progress=1)
    assert bad.status_code == 409
    assert bad.headers["Job-State"] == "running"
    assert bad.json == {
        "id": "conflict",
        "message": "Cannot move a job from running to waiting",
        "state": "running",
    }
    pinged = client.put(f"/api/jobs/{job.id}/ping", headers=job.auth)
    assert pinged.headers["Job-State"] == "running"


def test_no_job_state_header_before_authentication(client, job):
    response = client.get(f"/api/jobs/{job.id}", headers={**job.auth, "Authorization": "Basic bm9wZQ=="})
    assert response.status_code == 401
    assert "Job-State" not in response.headers


# Cancellation reaches the worker


@pytest.mark.parametrize(
    "state, error, message",
    [
        ("complete", None, "Job is complete"),
        ("error", "disk full", "Job has errored"),
        ("cancelled", None, "Job is cancelled"),
    ],
)
def test_push_after_final_state_names_it(client, job, state, error, message):
    push(client, job, state="running", stage="a", progress=5)
    body = {"state": state, "stage": "a", "progress": 5}
    if error:
        body["error"] = error
    assert push(client, job, **body).status_code == 200
    refused = push(client, job, state="running", stage="b", progress=6)
    assert refused.status_code == 409
    assert refused.json == {"id": "conflict", "message": message, "state": state}
    assert refused.headers["Job-State"] == state


def test_cancelled_worker_told_on_next_get_and_push(client, runner, job, stored):
    push(client, job, state="running", stage="bowtie_build", progress=60)
    result = runner.invoke(args=["jobs", "cancel", job.id])
    assert result.exit_code == 0, result.output
    read = client.get(f"/api/jobs/{job.id}", headers=job.auth)
    assert read.status_code == 200
    assert read.headers["Job-State"] == "cancelled"
    assert read.json["status"][-1] == {**read.json["status"][-1], "state": "cancelled", "stage": "bowtie_build", "progress": 60}
    refused = push(client, job, state="running", stage="next", progress=70)
    assert refused.status_code == 409
    assert refused.json == {"id": "conflict", "message": "Job is cancelled", "state": "cancelled"}
    assert [r.state for r in stored(job.id)] == ["waiting", "running", "cancelled"]


# Heartbeats and reaping


def test_ping_records_heartbeat(client, job, stored_job):
    push(client, job, state="running", stage="a", progress=1)
    response = client.put(f"/api/jobs/{job.id}/ping", headers=job.auth)
    assert response.status_code == 200
    assert set(response.json) == {"state", "pinged_at"}
    assert response.json["state"] == "running"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", response.json["pinged_at"])
    row = stored_job(job.id)
    assert row.pinged_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ") == response.json["pinged_at"]
    assert row.status_count == 2  # a ping is no status record


def test_ping_needs_the_jobs_own_key(client, make_job):
    mine, theirs = make_job(), make_job()
    assert client.put(f"/api/jobs/{theirs.id}/ping", headers=mine.auth).status_code == 403
    assert client.put(f"/api/jobs/{mine.id}/ping").status_code == 401


def test_ping_on_finished_job_is_409(client, job):
    push(client, job, state="cancelled", stage="a", progress=0)
    response = client.put(f"/api/jobs/{job.id}/ping", headers=job.auth)
    assert response.status_code == 409
    assert response.json == {"id": "conflict", "message": "Job is cancelled", "state": "cancelled"}


def test_reap_times_out_silent_running_jobs_only(app, client, runner, make_job, stored):
    silent, pinged, waiting, fresh = make_job(), make_job(), make_job(), make_job()
    for job in (silent, pinged, fresh):
        push(client, job, state="running", stage="work", progress=50)
    long_ago = utcnow() - timedelta(seconds=1000)
    for job in (silent, pinged, waiting):
        set_job(app, job.id, updated_at=long_ago)
    set_job(app, pinged.id, pinged_at=utcnow())

    result = runner.invoke(args=["jobs", "reap", "--timeout", "300"])
    assert result.exit_code == 0, result.output
    assert silent.id in result.output
    assert all(job.id not in result.output for job in (pinged, waiting, fresh))

    last = stored(silent.id)[-1]
    # Virtool's timeout state, keeping the stage and progress (SPEC 7.3).
    assert (last.state, last.stage, last.progress) == ("timeout", "work", 50)
    assert "No heartbeat for 1000 seconds" in last.error
    for job in (pinged, waiting, fresh):
        assert stored(job.id)[-1].state in {"running", "waiting"}
    refused = push(client, silent, state="running", stage="late", progress=60)
    assert refused.json == {"id": "conflict", "message": "Job timed out", "state": "timeout"}


def test_reap_with_short_timeout(client, runner, job, stored):
    push(client, job, state="running", stage="work", progress=5)
    assert runner.invoke(args=["jobs", "reap", "--timeout", "5"]).exit_code == 0
    assert stored(job.id)[-1].state == "running"
    time.sleep(1.2)
    result = runner.invoke(args=["jobs", "reap", "--timeout", "1"])
    assert result.exit_code == 0
    assert f"Reaped job {job.id}" in result.output
    assert result.output.endswith("\n1 job reaped\n")
    assert stored(job.id)[-1].state == "timeout"
    # One second, one job: the words agree with their numbers.
    silence = r"(1 second|(?!1 )\d+ seconds)"
    assert re.fullmatch(rf"No heartbeat for {silence} \(last at [^)]+\); the timeout is 1 second", stored(job.id)[-1].error)


@pytest.mark.parametrize(("number", "words"), [("1", "1 second"), ("0", "0 seconds"), ("0.5", "0.5 seconds"), ("300", "300 seconds")])
def test_a_number_of_seconds_agrees_with_its_unit(number, words):
    assert seconds(number) == words


def test_reap_rejects_bad_timeout(runner):
    result = runner.invoke(args=["jobs", "reap", "--timeout", "0"])
    assert result.exit_code != 0


# Key lifetime


def test_finished_key_reads_during_grace_then_expires(app, client, job):
    push(client, job, state="running", stage="work", progress=50)
    final = push(client, job, headers={"Idempotency-Key": "last"}, state="complete", stage="done", progress=100)
    assert final.status_code == 200
    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).status_code == 200
    set_job(app, job.id, updated_at=utcnow() - timedelta(seconds=601))
    expired = client.get(f"/api/jobs/{job.id}", headers=job.auth)
    assert expired.status_code == 401
    assert expired.json == {"id": "unauthorized", "message": "Job is no longer active"}
    assert expired.headers["WWW-Authenticate"] == 'Basic realm="jobs"'
    replay = push(client, job, headers={"Idempotency-Key": "last"}, state="complete", stage="done", progress=100)
    assert replay.status_code == 401


def test_grace_period_is_configurable(app, client, job, monkeypatch):
    push(client, job, state="cancelled", stage="x", progress=0)
    monkeypatch.setitem(app.config, "JOB_KEY_GRACE_SECONDS", 0.5)
    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).status_code == 200
    time.sleep(0.7)
    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).status_code == 401


def test_active_job_key_never_expires(app, client, job):
    set_job(app, job.id, updated_at=utcnow() - timedelta(days=30))
    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).status_code == 200


def test_rotate_key_kills_old_key_at_once(client, runner, job, stored_job):
    result = runner.invoke(args=["jobs", "rotate-key", job.id])
    assert result.exit_code == 0, result.output
    rotated = json.loads(result.stdout)
    assert rotated["id"] == job.id
    assert re.fullmatch(r"[0-9a-f]{64}", rotated["key"])
    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).status_code == 401
    from conftest import JobCredentials

    new = JobCredentials(id=job.id, key=rotated["key"])
    assert client.get(f"/api/jobs/{job.id}", headers=new.auth).status_code == 200
    assert rotated["key"] not in stored_job(job.id).key_digest


def test_rotate_key_unknown_job(runner):
    result = runner.invoke(args=["jobs", "rotate-key", "zzzzzzzz"])
    assert result.exit_code == 1
    assert "not found" in result.stderr
