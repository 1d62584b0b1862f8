"""Job authentication (SPEC 2): each check in its order, its status, body and header; keys stored as digests."""

from __future__ import annotations

import base64
import hashlib

import pytest
from conftest import basic_auth

CHALLENGE = 'Basic realm="jobs"'
RUNNING = {"state": "running", "stage": "bowtie_build", "progress": 40}


def request(client, method, job_id, headers):
    if method == "GET":
        return client.get(f"/api/jobs/{job_id}", headers=headers)
    return client.post(f"/api/jobs/{job_id}/status", json=RUNNING, headers=headers)


def assert_unauthorized(response):
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == CHALLENGE
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"id", "message"}
    assert body["id"] == "unauthorized"
    assert body["message"]


def assert_insufficient_rights(response):
    assert response.status_code == 403
    assert "WWW-Authenticate" not in response.headers
    assert response.get_json() == {"id": "insufficient_rights", "message": "Insufficient rights"}


def assert_not_found(response):
    assert response.status_code == 404
    assert "WWW-Authenticate" not in response.headers
    assert response.get_json() == {"id": "not_found", "message": "Not found"}


def raw_basic(payload: bytes) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(payload).decode()}


METHODS = pytest.mark.parametrize("method", ["GET", "POST"])


# 1. Header missing, not Basic, not decodable, or user name not job-<id>: 401.

BAD_HEADERS = [
    pytest.param({}, id="missing"),
    pytest.param({"Authorization": ""}, id="empty"),
    pytest.param({"Authorization": "Bearer 0123456789abcdef"}, id="bearer"),
    pytest.param({"Authorization": "Digest username=\"job-x\""}, id="digest"),
    pytest.param({"Authorization": "Basic"}, id="basic-without-credentials"),
    pytest.param({"Authorization": "Basic %%%%not-base64%%%%"}, id="not-base64"),
    pytest.param({"Authorization": "Basic " + base64.b64encode(b"\xff\xfe:key").decode()}, id="not-utf8"),
]


@METHODS
@pytest.mark.parametrize("headers", BAD_HEADERS)
def test_bad_header_is_401(client, job, stored, method, headers):
    response = request(client, method, job.id, headers)

    assert_unauthorized(response)
    assert len(stored(job.id)) == 1


@METHODS
def test_user_name_without_job_prefix_is_401(client, job, method):
    assert_unauthorized(request(client, method, job.id, basic_auth(job.id, job.key)))


@METHODS
def test_user_name_of_a_person_is_401(client, job, method):
    assert_unauthorized(request(client, method, job.id, basic_auth("igboyes", job.key)))


@METHODS
def test_user_name_with_empty_job_id_is_401(client, job, method):
    assert_unauthorized(request(client, method, job.id, basic_auth("job-", job.key)))


@METHODS
def test_credentials_without_colon_are_401(client, job, method):
    assert_unauthorized(request(client, method, job.id, raw_basic(f"job-{job.id}".encode())))


def test_bad_header_is_401_even_for_missing_job(client):
    assert_unauthorized(client.get("/api/jobs/abcdefgh", headers={"Authorization": "Bearer x"}))


# 2. Credentials for another job than the path's: 403, whether or not it exists.


@METHODS
def test_other_jobs_credentials_are_403(client, make_job, stored, method):
    job_a, job_b = make_job(), make_job()

    response = request(client, method, job_b.id, job_a.auth)

    assert_insufficient_rights(response)
    assert len(stored(job_a.id)) == 1
    assert len(stored(job_b.id)) == 1


@METHODS
def test_credentials_for_missing_job_path_are_403(client, job, method):
    assert_insufficient_rights(request(client, method, "zzzzzzzz", job.auth))


@METHODS
def test_other_job_with_wrong_key_is_403(client, make_job, method):
    job_a, job_b = make_job(), make_job()

    response = request(client, method, job_b.id, basic_auth(f"job-{job_a.id}", "0" * 64))

    assert_insufficient_rights(response)


@METHODS
def test_other_jobs_credentials_with_its_key_are_403(client, make_job, method):
    job_a, job_b = make_job(), make_job()

    response = request(client, method, job_b.id, basic_auth(f"job-{job_a.id}", job_b.key))

    assert_insufficient_rights(response)


# 3. The job does not exist: 404.


@METHODS
def test_never_made_job_is_404(client, method):
    assert_not_found(request(client, method, "abcdefgh", basic_auth("job-abcdefgh", "0" * 64)))


@METHODS
def test_malformed_job_id_is_404(client, method):
    assert_not_found(request(client, method, "NOT-AN-ID", basic_auth("job-NOT-AN-ID", "0" * 64)))


@METHODS
def test_removed_job_is_404(client, runner, job, stored_job, method):
    result = runner.invoke(args=["jobs", "remove", job.id, "--force"])
    assert result.exit_code == 0, result.output
    assert stored_job(job.id) is None

    assert_not_found(request(client, method, job.id, job.auth))


# 4. The key does not match: 401.


WRONG_KEYS = [
    pytest.param("", id="empty"),
    pytest.param("0" * 64, id="zeros"),
    pytest.param("not-a-key", id="short"),
]


@METHODS
@pytest.mark.parametrize("key", WRONG_KEYS)
def test_wrong_key_is_401(client, job, stored, method, key):
    response = request(client, method, job.id, basic_auth(f"job-{job.id}", key))

    assert_unauthorized(response)
    assert len(stored(job.id)) == 1


@METHODS
def test_key_differing_in_case_is_401(client, job, method):
    assert_unauthorized(request(client, method, job.id, basic_auth(f"job-{job.id}", job.key.upper())))


@METHODS
def test_key_digest_as_key_is_401(client, job, stored_job, method):
    digest = stored_job(job.id).key_digest

    assert_unauthorized(request(client, method, job.id, basic_auth(f"job-{job.id}", digest)))


@METHODS
def test_another_jobs_key_is_401(client, make_job, method):
    job_a, job_b = make_job(), make_job()

    response = request(client, method, job_a.id, basic_auth(f"job-{job_a.id}", job_b.key))

    assert_unauthorized(response)


# The right key: 200.


def test_right_key_reads_the_job(client, job):
    response = client.get(f"/api/jobs/{job.id}", headers=job.auth)

    assert response.status_code == 200
    assert response.get_json()["id"] == job.id
    assert "WWW-Authenticate" not in response.headers


def test_right_key_pushes_status(client, job, stored):
    response = client.post(f"/api/jobs/{job.id}/status", json=RUNNING, headers=job.auth)

    assert response.status_code == 200
    assert [r.state for r in stored(job.id)] == ["waiting", "running"]


def test_each_job_reads_only_itself(client, make_job):
    job_a, job_b = make_job(task="task_a"), make_job(task="task_b")

    assert client.get(f"/api/jobs/{job_a.id}", headers=job_a.auth).get_json()["task"] == "task_a"
    assert client.get(f"/api/jobs/{job_b.id}", headers=job_b.auth).get_json()["task"] == "task_b"


# The key at rest.


def test_key_is_64_hex_characters(job):
    assert len(job.key) == 64
    assert all(c in "0123456789abcdef" for c in job.key)


def test_keys_differ_between_jobs(make_job):
    assert make_job().key != make_job().key


def test_stored_digest_is_sha256_of_key(job, stored_job):
    row = stored_job(job.id)

    assert row.key_digest == hashlib.sha256(job.key.encode()).hexdigest()
    assert row.key_digest != job.key
    assert job.key not in (row.key_digest, str(row.args), row.task, row.user_id)


# What each 401 says (its id stays unauthorized)


def test_401_messages_say_what_is_wrong(app, client, runner, job, make_job):
    def message(headers):
        response = client.get(f"/api/jobs/{job.id}", headers=headers)
        assert response.status_code == 401
        assert response.json["id"] == "unauthorized"
        assert response.headers["WWW-Authenticate"] == 'Basic realm="jobs"'
        return response.json["message"]

    assert message({}) == "Missing credentials"
    assert message({"Authorization": "Digest abc"}) == "Malformed credentials"
    assert message({"Authorization": "Basic ???"}) == "Malformed credentials"
    assert message(basic_auth("someone", job.key)) == "Malformed credentials"
    assert message(basic_auth(f"job-{job.id}", "0" * 64)) == "Wrong key"
    assert message({"Authorization": "Bearer jobapi_op_" + "0" * 64}) == "Invalid or revoked token"

    rotated = runner.invoke(args=["jobs", "rotate-key", job.id])
    assert rotated.exit_code == 0
    assert message(job.auth) == "Key was replaced"


def test_401_after_the_grace_period_says_the_job_is_no_longer_active(app, client, job, monkeypatch):
    assert client.post(f"/api/jobs/{job.id}/status", json={"state": "cancelled", "stage": "s", "progress": 0},
                       headers=job.auth).status_code == 200
    monkeypatch.setitem(app.config, "JOB_KEY_GRACE_SECONDS", -1)
    response = client.get(f"/api/jobs/{job.id}", headers=job.auth)
    assert response.status_code == 401
    assert response.json == {"id": "unauthorized", "message": "Job is no longer active"}


def test_the_401_order_holds_whatever_the_message(client, make_job):
    one, other = make_job(), make_job()
    # Malformed credentials answer before anything about the path's job.
    assert client.get("/api/jobs/zzzzzzzz", headers={"Authorization": "Basic ???"}).status_code == 401
    # Another job's credentials, right key or wrong: 403 before the job is looked up.
    assert client.get(f"/api/jobs/{other.id}", headers=basic_auth(f"job-{one.id}", "0" * 64)).status_code == 403
    # A job that does not exist: 404 before the key is checked.
    assert client.get("/api/jobs/zzzzzzzz", headers=basic_auth("job-zzzzzzzz", "0" * 64)).status_code == 404
