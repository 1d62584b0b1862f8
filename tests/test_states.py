"""The job state machine (SPEC 4): allowed moves, refused moves, final states, and the jobs row kept in step."""

from __future__ import annotations

import pytest

STATES = ["waiting", "running", "complete", "cancelled", "error"]
FINAL = ["complete", "error", "cancelled"]
ALLOWED = {
    "waiting": ["waiting", "running", "error", "cancelled"],
    "running": ["running", "complete", "error", "cancelled"],
}
# Every move from a non-final state that ALLOWED does not list.
REFUSED = [("waiting", "complete"), ("running", "waiting")]


def body_for(state: str, stage: str = "step", progress: int = 50) -> dict:
    body = {"state": state, "stage": stage, "progress": progress}
    if state == "error":
        body["error"] = "something broke"
    return body


def push(client, job, state, **kwargs):
    return client.post(f"/api/jobs/{job.id}/status", json=body_for(state, **kwargs), headers=job.auth)


PATHS = {
    "waiting": [],
    "running": ["running"],
    "complete": ["running", "complete"],
    "error": ["running", "error"],
    "cancelled": ["running", "cancelled"],
}


def bring_to(client, job, state):
    """Push the records that take a new (waiting) job to ``state``."""
    for step in PATHS[state]:
        response = push(client, job, step, stage=f"to_{step}", progress=30)
        assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize(
    ("current", "new"), [(current, new) for current, targets in ALLOWED.items() for new in targets]
)
def test_allowed_move_is_200(client, job, stored, stored_job, current, new):
    bring_to(client, job, current)
    count = len(stored(job.id))

    response = push(client, job, new, stage="next", progress=60)

    assert response.status_code == 200, response.get_json()
    assert response.get_json()["state"] == new
    records = stored(job.id)
    assert len(records) == count + 1
    assert (records[-1].state, records[-1].stage, records[-1].progress) == (new, "next", 60)
    assert stored_job(job.id).state == new


def test_error_straight_from_waiting_is_200(client, job, stored):
    response = push(client, job, "error", stage="setup", progress=0)

    assert response.status_code == 200
    assert [r.state for r in stored(job.id)] == ["waiting", "error"]
    assert stored(job.id)[-1].error == "something broke"


@pytest.mark.parametrize(("current", "new"), REFUSED)
def test_refused_move_is_409_naming_both_states(client, job, stored, stored_job, current, new):
    bring_to(client, job, current)
    before = [(r.seq, r.state) for r in stored(job.id)]

    response = push(client, job, new)

    assert response.status_code == 409
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["id"] == "conflict"
    assert current in body["message"] and new in body["message"]
    assert body["message"].index(current) < body["message"].rindex(new)
    assert [(r.seq, r.state) for r in stored(job.id)] == before
    assert stored_job(job.id).state == current


def test_refused_move_body_names_current_state(client, job):
    response = push(client, job, "complete")

    assert response.status_code == 409
    assert response.get_json() == {
        "id": "conflict",
        "message": "Cannot move a job from waiting to complete",
        "state": "waiting",
    }


@pytest.mark.parametrize("new", STATES)
@pytest.mark.parametrize("final", FINAL)
def test_push_after_final_state_is_409(client, job, stored, stored_job, final, new):
    bring_to(client, job, final)
    before = [(r.seq, r.state, r.stage, r.progress) for r in stored(job.id)]
    row_before = stored_job(job.id)

    response = push(client, job, new, stage="late", progress=99)

    assert response.status_code == 409
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["id"] == "conflict"
    assert body["message"].startswith("Job ")
    assert [(r.seq, r.state, r.stage, r.progress) for r in stored(job.id)] == before
    row = stored_job(job.id)
    assert (row.state, row.stage, row.progress, row.status_count) == (
        row_before.state, row_before.stage, row_before.progress, row_before.status_count,
    )
    assert row.state == final


FINISHED_MESSAGES = {
    "complete": "Job is complete",
    "error": "Job has errored",
    "cancelled": "Job is cancelled",
}


@pytest.mark.parametrize("final", FINAL)
def test_push_after_final_state_says_which(client, job, final):
    bring_to(client, job, final)

    response = push(client, job, "running")

    assert response.status_code == 409
    assert response.get_json() == {"id": "conflict", "message": FINISHED_MESSAGES[final], "state": final}


@pytest.mark.parametrize("final", FINAL)
def test_final_job_can_still_be_read(client, job, final):
    bring_to(client, job, final)

    response = client.get(f"/api/jobs/{job.id}", headers=job.auth)

    assert response.status_code == 200
    assert response.get_json()["status"][-1]["state"] == final


def test_any_push_to_a_finished_job_is_409_before_its_fields_are_checked(client, job):
    # SPEC 7.3: a stopped worker hears "finished" whatever it sends.
    bring_to(client, job, "complete")

    response = client.post(
        f"/api/jobs/{job.id}/status", json={"state": "running", "stage": "s", "progress": 500}, headers=job.auth
    )

    assert response.status_code == 409
    assert response.json == {"id": "conflict", "message": "Job is complete", "state": "complete"}


def test_a_body_that_is_no_object_to_a_finished_job_is_still_400(client, job):
    bring_to(client, job, "complete")

    response = client.post(
        f"/api/jobs/{job.id}/status", data=b"[1, 2]", content_type="application/json", headers=job.auth
    )

    assert response.status_code == 400


def test_new_job_row_is_waiting(job, stored_job):
    row = stored_job(job.id)

    assert (row.state, row.stage, row.progress, row.status_count) == ("waiting", None, 0, 1)


def test_job_row_follows_the_last_record(client, job, stored, stored_job):
    pushes = [
        ("running", "mk_subtraction_dir", 10),
        ("running", "set_stats", 40),
        ("running", "bowtie_build", 75),
        ("complete", "done", 100),
    ]
    for state, stage, progress in pushes:
        assert push(client, job, state, stage=stage, progress=progress).status_code == 200
        row = stored_job(job.id)
        last = stored(job.id)[-1]
        assert (row.state, row.stage, row.progress) == (state, stage, progress)
        assert (last.state, last.stage, last.progress) == (state, stage, progress)
        assert row.status_count == last.seq == len(stored(job.id))

    assert stored_job(job.id).status_count == 5


def test_job_row_follows_progress_going_down(client, job, stored_job):
    push(client, job, "running", stage="a", progress=80)
    push(client, job, "running", stage="b", progress=20)

    row = stored_job(job.id)
    assert (row.state, row.stage, row.progress) == ("running", "b", 20)


def test_job_row_unchanged_by_refused_push(client, job, stored_job):
    push(client, job, "running", stage="bowtie_build", progress=40)

    assert push(client, job, "waiting", stage="back", progress=0).status_code == 409

    row = stored_job(job.id)
    assert (row.state, row.stage, row.progress, row.status_count) == ("running", "bowtie_build", 40, 2)


def test_jobs_do_not_share_state(client, make_job, stored_job):
    job_a, job_b = make_job(), make_job()

    bring_to(client, job_a, "complete")

    assert stored_job(job_a.id).state == "complete"
    assert stored_job(job_b.id).state == "waiting"
    assert push(client, job_b, "running").status_code == 200
