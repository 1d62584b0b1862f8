"""The JSON error envelope (SPEC 3) on every route: 400, 404, 405, 413, 415, 500 and 503."""

from __future__ import annotations

import json

import pytest
from conftest import basic_auth

from jobapi import create_app

RUNNING = {"state": "running", "stage": "bowtie_build", "progress": 40}


def assert_envelope(response, status, error_id, message=None, extra=()):
    assert response.status_code == status
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"id", "message", *extra}
    assert body["id"] == error_id
    assert isinstance(body["message"], str) and body["message"]
    assert body["message"][0].isupper()
    if message is not None:
        assert body["message"] == message
    return body


def post_raw(client, job, data, content_type="application/json", **kwargs):
    return client.post(
        f"/api/jobs/{job.id}/status", data=data, content_type=content_type, headers=job.auth, **kwargs
    )


# 404: unknown routes.


@pytest.mark.parametrize(
    "path",
    ["/docs", "/api", "/api/jobs/", "/api/job/abcdefgh", "/api/jobs/abcdefgh/status/extra", "/api/jobs/abcdefgh/stat", "/static/x.css"],
)
def test_unknown_route_is_404_json(client, path):
    assert_envelope(client.get(path), 404, "not_found", "Not found")


def test_unknown_route_post_is_404_json(client):
    assert_envelope(client.post("/api/tasks", json={"task": "x"}), 404, "not_found", "Not found")


# 405: a known route with a method it does not take.


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/api/jobs/abcdefgh", "GET"),
        ("PATCH", "/api/jobs/abcdefgh/status", "POST"),
        ("POST", "/api/jobs/abcdefgh", "GET"),
        ("GET", "/api/jobs/abcdefgh/status", "POST"),
        ("PUT", "/api/jobs/abcdefgh/status", "POST"),
        ("DELETE", "/api/jobs/abcdefgh/status", "POST"),
    ],
)
def test_wrong_method_is_405_with_allow(client, method, path, allowed):
    response = client.open(path, method=method)

    assert_envelope(response, 405, "method_not_allowed", "Method not allowed")
    allow = {m.strip() for m in response.headers["Allow"].split(",")}
    assert allowed in allow
    assert method not in allow


def test_wrong_method_on_own_job_is_405_and_changes_nothing(client, job, stored_job):
    response = client.put(f"/api/jobs/{job.id}", json={"state": "running"}, headers=job.auth)

    assert_envelope(response, 405, "method_not_allowed")
    assert stored_job(job.id) is not None


# 400: a body that is not a JSON object.


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b'{"state": "running",', id="truncated"),
        pytest.param(b"{'state': 'running'}", id="single-quotes"),
        pytest.param(b"", id="empty"),
        pytest.param(b"   ", id="blank"),
        pytest.param(b'{"state": "running"} trailing', id="trailing"),
        pytest.param(b'\xff\xfe{"state": 1}', id="not-utf8"),
        pytest.param(b"[" * 40 + b"]" * 39, id="deep-and-truncated"),
    ],
)
def test_malformed_json_is_400(client, job, stored, data):
    response = post_raw(client, job, data)

    assert_envelope(response, 400, "bad_request", "Malformed JSON")
    assert len(stored(job.id)) == 1


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(json.dumps([RUNNING]), id="array"),
        pytest.param(json.dumps("running"), id="string"),
        pytest.param("40", id="number"),
        pytest.param("null", id="null"),
        pytest.param("true", id="boolean"),
    ],
)
def test_json_that_is_not_an_object_is_400(client, job, stored, data):
    response = post_raw(client, job, data)

    body = assert_envelope(response, 400, "bad_request")
    assert body["message"].startswith("Malformed JSON")
    assert len(stored(job.id)) == 1


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_json_number_constants_are_400(client, job, stored, constant):
    data = '{"state": "running", "stage": "s", "progress": %s}' % constant

    response = post_raw(client, job, data)

    assert_envelope(response, 400, "bad_request", "Malformed JSON")
    assert len(stored(job.id)) == 1


# 415: a body that is not JSON by its Content-Type.


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/plain", id="text-plain"),
        pytest.param("application/x-www-form-urlencoded", id="form"),
        pytest.param("application/xml", id="xml"),
        pytest.param(None, id="none"),
    ],
)
def test_non_json_content_type_is_415(client, job, stored, content_type):
    response = post_raw(client, job, json.dumps(RUNNING), content_type=content_type)

    assert_envelope(response, 415, "unsupported_media_type", "Expected application/json")
    assert len(stored(job.id)) == 1


def test_json_content_type_with_charset_is_accepted(client, job):
    response = post_raw(client, job, json.dumps(RUNNING), content_type="application/json; charset=utf-8")

    assert response.status_code == 200


# 413: a body over 64 KiB.


def test_body_over_64_kib_is_413(client, job, stored):
    data = json.dumps({**RUNNING, "stage": "x" * (64 * 1024)})

    response = post_raw(client, job, data)

    assert_envelope(response, 413, "payload_too_large", "Payload too large")
    assert len(stored(job.id)) == 1


def test_body_at_64_kib_is_read(client, job):
    # Exactly the limit is read and validated (422 for the long stage), not refused.
    prefix = json.dumps({**RUNNING, "stage": ""})[:-1]
    filler = 64 * 1024 - len(prefix) - len(', "pad": ""}')
    data = prefix + ', "pad": "' + "p" * filler + '"}'
    assert len(data.encode()) == 64 * 1024

    response = post_raw(client, job, data)

    assert response.status_code == 422
    assert set(response.get_json()["errors"]) == {"pad"}


# Validation errors add "errors" and nothing else.


def test_validation_error_envelope(client, job):
    response = client.post(f"/api/jobs/{job.id}/status", json={"state": "nope"}, headers=job.auth)

    assert response.status_code == 422
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"id", "message", "errors"}
    assert (body["id"], body["message"]) == ("invalid_input", "Invalid input")
    assert set(body["errors"]) == {"state", "stage", "progress"}


# Every error of the API itself is the same envelope.


def provoke(kind, client, make_job):
    """Make the API answer one of its own errors."""
    job_a, job_b = make_job(), make_job()
    if kind == "unauthorized":
        return client.get(f"/api/jobs/{job_a.id}")
    if kind == "insufficient_rights":
        return client.get(f"/api/jobs/{job_b.id}", headers=job_a.auth)
    if kind == "not_found":
        return client.get("/api/jobs/abcdefgh", headers=basic_auth("job-abcdefgh", "k"))
    if kind == "conflict":
        return client.post(f"/api/jobs/{job_a.id}/status", json={**RUNNING, "state": "complete"}, headers=job_a.auth)
    if kind == "conflict_after_final":
        client.post(f"/api/jobs/{job_a.id}/status", json={**RUNNING, "state": "cancelled"}, headers=job_a.auth)
        return client.post(f"/api/jobs/{job_a.id}/status", json=RUNNING, headers=job_a.auth)
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "status", "error_id"),
    [
        ("unauthorized", 401, "unauthorized"),
        ("insufficient_rights", 403, "insufficient_rights"),
        ("not_found", 404, "not_found"),
        ("conflict", 409, "conflict"),
        ("conflict_after_final", 409, "conflict"),
    ],
)
def test_api_errors_are_the_envelope(client, make_job, kind, status, error_id):
    response = provoke(kind, client, make_job)

    # A 409 also names the job's current state, so a worker learns it (lifecycle rules).
    assert_envelope(response, status, error_id, extra=("state",) if status == 409 else ())
    assert b"<html" not in response.data.lower()


# 503: the database cannot be reached.


@pytest.fixture
def unreachable_app():
    """An app whose database refuses connections (nothing listens on port 1)."""
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": "postgresql+psycopg://postgres@127.0.0.1:1/nothing",
            "DB_CONNECT_TIMEOUT": 1,
        }
    )
    yield app
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


@pytest.mark.timeout(30)
def test_unreachable_database_get_is_503(unreachable_app):
    client = unreachable_app.test_client()

    response = client.get("/api/jobs/abcdefgh", headers=basic_auth("job-abcdefgh", "0" * 64))

    assert_envelope(response, 503, "service_unavailable", "Database unavailable")
    assert int(response.headers["Retry-After"]) > 0
    assert b"psycopg" not in response.data and b"127.0.0.1" not in response.data


@pytest.mark.timeout(30)
def test_unreachable_database_push_is_503(unreachable_app):
    client = unreachable_app.test_client()

    response = client.post(
        "/api/jobs/abcdefgh/status", json=RUNNING, headers=basic_auth("job-abcdefgh", "0" * 64)
    )

    assert_envelope(response, 503, "service_unavailable", "Database unavailable")
    assert int(response.headers["Retry-After"]) > 0


@pytest.mark.timeout(30)
def test_unreachable_database_still_checks_credentials_first(unreachable_app):
    client = unreachable_app.test_client()

    response = client.get("/api/jobs/abcdefgh")

    assert_envelope(response, 401, "unauthorized")


# 500: a bug answers the envelope and leaks nothing.


def test_unexpected_exception_is_500_without_traceback(database_url):
    app = create_app({"SQLALCHEMY_DATABASE_URI": database_url})

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret detail 7f3a in /srv/jobapi/views.py")

    response = app.test_client().get("/boom")

    assert_envelope(response, 500, "internal_error", "Internal server error")
    for leak in (b"Traceback", b"RuntimeError", b"secret detail", b"7f3a", b"views.py"):
        assert leak not in response.data
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()
