"""The two job routes: reading a job's document (SPEC 1.1) and pushing its status (SPEC 1.2, 1.3)."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from conftest import push_body

from jobapi.fields import format_timestamp

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
RECORD_KEYS = {"state", "stage", "error", "progress", "timestamp"}
RUNNING = {"state": "running", "stage": "bowtie_build", "progress": 40}


def parse_timestamp(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def assert_invalid(response, field):
    assert response.status_code == 422, response.get_json()
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"id", "message", "errors"}
    assert body["id"] == "invalid_input"
    assert body["message"] == "Invalid input"
    assert list(body["errors"]) == [field]
    messages = body["errors"][field]
    assert isinstance(messages, list) and messages
    assert all(isinstance(message, str) and message for message in messages)


# GET /api/jobs/<id>


def test_get_returns_the_job_document(client, job):
    response = client.get(f"/api/jobs/{job.id}", headers=job.auth)

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    document = response.get_json()
    assert set(document) == {
        "id", "task", "args", "proc", "mem", "user", "status",
        # Virtool's (SPEC 7.2)
        "workflow", "state", "stage", "progress", "created_at", "acquired", "archived", "rights", "ping",
        # Virtool's 42.x dialect's (SPEC 12)
        "number", "claim",
    }
    assert document["id"] == job.id
    assert type(document["number"]) is int and document["number"] >= 1
    assert document["claim"] is None
    assert document["task"] == "create_subtraction"
    assert document["args"] == {"subtraction_id": "Thale"}
    assert document["proc"] == 2 and type(document["proc"]) is int
    assert document["mem"] == 4 and type(document["mem"]) is int
    assert document["user"] == {"id": "igboyes", "handle": "igboyes"}
    assert document["workflow"] == "create_subtraction"
    assert (document["state"], document["stage"], document["progress"]) == ("waiting", None, 0)
    assert document["created_at"] == document["status"][0]["timestamp"]
    assert document["acquired"] is False and document["archived"] is False
    assert document["rights"] == {} and document["ping"] is None


def test_get_new_job_has_one_waiting_record(client, job, stored):
    document = client.get(f"/api/jobs/{job.id}", headers=job.auth).get_json()

    [record] = document["status"]
    assert set(record) == RECORD_KEYS
    assert record["state"] == "waiting"
    assert record["stage"] is None
    assert record["error"] is None
    assert record["progress"] == 0 and type(record["progress"]) is int
    assert TIMESTAMP.match(record["timestamp"])
    [row] = stored(job.id)
    assert record["timestamp"] == format_timestamp(row.timestamp)


def test_get_job_without_args_shows_empty_object(client, make_job):
    bare = make_job()

    document = client.get(f"/api/jobs/{bare.id}", headers=bare.auth).get_json()

    assert document["args"] == {}
    assert document["proc"] == 1
    assert document["mem"] == 1


def test_get_id_is_eight_lowercase_alphanumerics(client, job):
    document = client.get(f"/api/jobs/{job.id}", headers=job.auth).get_json()

    assert re.fullmatch(r"[a-z0-9]{8}", document["id"])


def test_get_lists_status_oldest_first(client, job):
    bodies = [
        {"state": "running", "stage": "mk_subtraction_dir", "progress": 20},
        {"state": "running", "stage": "set_stats", "progress": 40},
        {"state": "running", "stage": "bowtie_build", "progress": 60},
    ]
    for body in bodies:
        assert push_body(client, job, body).status_code == 200

    status = client.get(f"/api/jobs/{job.id}", headers=job.auth).get_json()["status"]

    assert [(r["state"], r["stage"], r["progress"]) for r in status] == [
        ("waiting", None, 0),
        ("running", "mk_subtraction_dir", 20),
        ("running", "set_stats", 40),
        ("running", "bowtie_build", 60),
    ]
    stamps = [r["timestamp"] for r in status]
    assert all(TIMESTAMP.match(stamp) for stamp in stamps)
    assert stamps == sorted(stamps, key=parse_timestamp)


# POST /api/jobs/<id>/status


def test_push_returns_the_stored_record(client, job, stored):
    before = datetime.now(UTC).replace(microsecond=0)
    response = push_body(client, job, RUNNING)
    after = datetime.now(UTC)

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    record = response.get_json()
    assert set(record) == RECORD_KEYS
    assert record["state"] == "running"
    assert record["stage"] == "bowtie_build"
    assert record["error"] is None
    assert record["progress"] == 40 and type(record["progress"]) is int
    assert TIMESTAMP.match(record["timestamp"])
    # Made by the server, in UTC.
    assert before <= parse_timestamp(record["timestamp"]) <= after


def test_push_is_appended_to_the_document(client, job):
    record = push_body(client, job, RUNNING).get_json()

    status = client.get(f"/api/jobs/{job.id}", headers=job.auth).get_json()["status"]

    assert len(status) == 2
    assert status[-1] == record


def test_push_is_stored(client, job, stored):
    record = push_body(client, job, RUNNING).get_json()

    rows = stored(job.id)

    assert [row.seq for row in rows] == [1, 2]
    last = rows[-1]
    assert (last.state, last.stage, last.error, last.progress) == ("running", "bowtie_build", None, 40)
    assert format_timestamp(last.timestamp) == record["timestamp"]


def test_push_progress_digit_string_is_accepted_as_integer(client, job, stored):
    response = push_body(client, job, {"state": "running", "stage": "bowtie_build", "progress": "40"})

    assert response.status_code == 200
    assert response.get_json()["progress"] == 40
    assert type(response.get_json()["progress"]) is int
    assert stored(job.id)[-1].progress == 40


@pytest.mark.parametrize("progress", [0, 100, "0", "100"])
def test_push_progress_bounds_are_accepted(client, job, progress):
    response = push_body(client, job, {"state": "running", "stage": "s", "progress": progress})

    assert response.status_code == 200
    assert response.get_json()["progress"] == int(progress)


@pytest.mark.parametrize("stage", ["", "x" * 256, "étape ✓"])
def test_push_stage_edge_values_are_accepted(client, job, stored, stage):
    response = push_body(client, job, {"state": "running", "stage": stage, "progress": 1})

    assert response.status_code == 200
    assert response.get_json()["stage"] == stage
    assert stored(job.id)[-1].stage == stage


def test_push_error_with_error_state_is_stored(client, job, stored):
    message = "Traceback: bowtie2-build exited with 1\n" + "e" * 16000
    response = push_body(client, job, {"state": "error", "stage": "bowtie_build", "progress": 40, "error": message})

    assert response.status_code == 200
    assert response.get_json()["error"] == message
    assert stored(job.id)[-1].error == message


def test_push_explicit_null_error_is_accepted(client, job):
    response = push_body(client, job, {**RUNNING, "error": None})

    assert response.status_code == 200
    assert response.get_json()["error"] is None


def test_push_timestamps_never_go_back(client, job, stored):
    stamps = [push_body(client, job, {"state": "running", "stage": f"s{i}", "progress": i}).get_json()["timestamp"] for i in range(5)]

    document = client.get(f"/api/jobs/{job.id}", headers=job.auth).get_json()
    listed = [parse_timestamp(r["timestamp"]) for r in document["status"]]
    assert listed == sorted(listed)
    assert [r["timestamp"] for r in document["status"][1:]] == stamps
    rows = [row.timestamp for row in stored(job.id)]
    assert rows == sorted(rows)


# Validation (SPEC 1.2): 422 naming the field, and nothing stored.

INVALID = [
    pytest.param({"stage": "s", "progress": 1}, "state", id="state-missing"),
    pytest.param({"state": "paused", "stage": "s", "progress": 1}, "state", id="state-unknown"),
    pytest.param({"state": "RUNNING", "stage": "s", "progress": 1}, "state", id="state-uppercase"),
    pytest.param({"state": None, "stage": "s", "progress": 1}, "state", id="state-null"),
    pytest.param({"state": "run\u0000ning", "stage": "s", "progress": 1}, "state", id="state-nul"),
    pytest.param({"state": "running", "progress": 1}, "stage", id="stage-missing"),
    pytest.param({"state": "running", "stage": "x" * 257, "progress": 1}, "stage", id="stage-257"),
    pytest.param({"state": "running", "stage": "bowtie\u0000build", "progress": 1}, "stage", id="stage-nul"),
    pytest.param({"state": "running", "stage": None, "progress": 1}, "stage", id="stage-null"),
    pytest.param({"state": "running", "stage": 5, "progress": 1}, "stage", id="stage-number"),
    pytest.param({"state": "running", "stage": "s"}, "progress", id="progress-missing"),
    pytest.param({"state": "running", "stage": "s", "progress": -1}, "progress", id="progress--1"),
    pytest.param({"state": "running", "stage": "s", "progress": 101}, "progress", id="progress-101"),
    pytest.param({"state": "running", "stage": "s", "progress": 40.5}, "progress", id="progress-fraction"),
    pytest.param({"state": "running", "stage": "s", "progress": 0.4}, "progress", id="progress-old-fraction"),
    pytest.param({"state": "running", "stage": "s", "progress": True}, "progress", id="progress-true"),
    pytest.param({"state": "running", "stage": "s", "progress": False}, "progress", id="progress-false"),
    pytest.param({"state": "running", "stage": "s", "progress": None}, "progress", id="progress-null"),
    pytest.param({"state": "running", "stage": "s", "progress": "4x"}, "progress", id="progress-4x"),
    pytest.param({"state": "running", "stage": "s", "progress": " 40"}, "progress", id="progress-space"),
    pytest.param({"state": "running", "stage": "s", "progress": "-1"}, "progress", id="progress-negative-string"),
    pytest.param({"state": "running", "stage": "s", "progress": "101"}, "progress", id="progress-101-string"),
    pytest.param({"state": "running", "stage": "s", "progress": ""}, "progress", id="progress-empty-string"),
    pytest.param({"state": "running", "stage": "s", "progress": "٤٠"}, "progress", id="progress-non-ascii-digits"),
    pytest.param({"state": "running", "stage": "s", "progress": 10**30}, "progress", id="progress-huge"),
    pytest.param({"state": "running", "stage": "s", "progress": [40]}, "progress", id="progress-list"),
    pytest.param({"state": "error", "stage": "s", "progress": 1}, "error", id="error-missing-for-error"),
    pytest.param({"state": "error", "stage": "s", "progress": 1, "error": None}, "error", id="error-null-for-error"),
    pytest.param({"state": "error", "stage": "s", "progress": 1, "error": ""}, "error", id="error-empty-for-error"),
    pytest.param({"state": "running", "stage": "s", "progress": 1, "error": "boom"}, "error", id="error-given-for-running"),
    pytest.param({"state": "waiting", "stage": "s", "progress": 1, "error": "boom"}, "error", id="error-given-for-waiting"),
    pytest.param({"state": "cancelled", "stage": "s", "progress": 1, "error": "boom"}, "error", id="error-given-for-cancelled"),
    pytest.param({"state": "error", "stage": "s", "progress": 1, "error": "e" * 16385}, "error", id="error-16385"),
    pytest.param({"state": "error", "stage": "s", "progress": 1, "error": "disk\u0000full"}, "error", id="error-nul"),
    pytest.param({"state": "error", "stage": "s", "progress": 1, "error": 42}, "error", id="error-number"),
    pytest.param({"state": "running", "stage": "s", "progress": 1, "worker": "w1"}, "worker", id="unknown-field"),
    pytest.param({"state": "running", "stage": "s", "progress": 1, "timestamp": "2018-02-06T22:16:15.637000Z"}, "timestamp", id="timestamp-field"),
]


@pytest.mark.parametrize(("body", "field"), INVALID)
def test_push_invalid_is_422_naming_the_field(client, job, stored, stored_job, body, field):
    response = push_body(client, job, body)

    assert_invalid(response, field)
    assert [(r.seq, r.state) for r in stored(job.id)] == [(1, "waiting")]
    row = stored_job(job.id)
    assert (row.state, row.stage, row.progress, row.status_count) == ("waiting", None, 0, 1)


def test_push_invalid_names_every_bad_field(client, job, stored):
    response = push_body(client, job, {"state": "paused", "stage": "x" * 300, "progress": 101, "extra": 1})

    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"state", "stage", "progress", "extra"}
    assert len(stored(job.id)) == 1


def test_push_empty_object_names_required_fields(client, job, stored):
    response = push_body(client, job, {})

    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"state", "stage", "progress"}
    assert len(stored(job.id)) == 1


def test_push_invalid_leaves_document_unchanged(client, job):
    before = client.get(f"/api/jobs/{job.id}", headers=job.auth).get_json()

    assert push_body(client, job, {"state": "running", "stage": "a\u0000b", "progress": 1}).status_code == 422

    assert client.get(f"/api/jobs/{job.id}", headers=job.auth).get_json() == before
