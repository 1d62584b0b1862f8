"""What fuzzing against the OpenAPI document found, kept as regression tests.

The fuzzer (tests/test_fuzz.py) found the first; the others came out of probing the
same input space by hand while making the document exact (inputs schemathesis does
not generate: escaped lone surrogates, numbers beyond a float, crafted cursors).
"""

from __future__ import annotations

import base64
import json

import pytest

from jobapi.extensions import db
from jobapi.tokens import create_token


@pytest.fixture
def operator(app) -> dict[str, str]:
    with app.app_context():
        secret = create_token(db.session, name="regression-operator", role="operator").secret
        db.session.commit()
    yield {"Authorization": f"Bearer {secret}"}
    with app.app_context():
        from sqlalchemy import delete

        from jobapi.models import ApiToken

        db.session.execute(delete(ApiToken).where(ApiToken.name == "regression-operator"))
        db.session.commit()


def post_json(client, url: str, body: str, headers: dict[str, str]):
    return client.post(url, data=body, headers={**headers, "Content-Type": "application/json"})


# Found by schemathesis: `{"progress": 57.0}` is an integer to JSON Schema (the document
# says integer), and was 422 "Not a valid integer". JSON does not tell 57 from 57.0.


def test_an_integral_json_number_is_an_integer_progress(client, job):
    body = '{"state": "running", "stage": "s", "progress": 57.0}'
    response = post_json(client, f"/api/jobs/{job.id}/status", body, job.auth)
    assert response.status_code == 200
    assert response.get_json()["progress"] == 57


def test_an_integral_json_number_is_an_integer_proc_and_mem(client, operator):
    body = '{"task": "t", "user": "u", "proc": 4.0, "mem": 16.0}'
    response = post_json(client, "/api/jobs", body, operator)
    assert response.status_code == 201
    assert (response.get_json()["proc"], response.get_json()["mem"]) == (4, 16)


@pytest.mark.parametrize("progress", ["40.5", "0.4", "true", "1e2"])
def test_fractions_and_booleans_are_still_refused(client, job, progress):
    # 1e2 is 100.0: an integer, so accepted; the others are not integers.
    body = f'{{"state": "running", "stage": "s", "progress": {progress}}}'
    response = post_json(client, f"/api/jobs/{job.id}/status", body, job.auth)
    assert response.status_code == (200 if progress == "1e2" else 422)


# An escaped lone surrogate ("\ud800") is valid JSON syntax but no Unicode text: it was a
# 500 on both databases (UnicodeEncodeError when the driver encoded it). Now 400.


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/api/jobs", '{"task": "t", "user": "\\ud800"}'),
        ("/api/jobs", '{"task": "t", "user": "u", "args": {"a": ["\\udc00"]}}'),
        ("/api/jobs", '{"task": "t", "user": "u", "args": {"\\ud800": 1}}'),
    ],
)
def test_a_lone_surrogate_is_malformed_json(client, operator, url, body):
    response = post_json(client, url, body, operator)
    assert response.status_code == 400
    assert response.get_json()["id"] == "bad_request"


def test_a_lone_surrogate_in_a_push_is_malformed_json(client, job, stored):
    body = '{"state": "running", "stage": "\\ud800", "progress": 1}'
    response = post_json(client, f"/api/jobs/{job.id}/status", body, job.auth)
    assert response.status_code == 400
    assert len(stored(job.id)) == 1


def test_a_surrogate_pair_is_text(client, job):
    body = '{"state": "running", "stage": "\\ud83d\\ude00", "progress": 1}'
    response = post_json(client, f"/api/jobs/{job.id}/status", body, job.auth)
    assert response.status_code == 200
    assert response.get_json()["stage"] == "\U0001f600"


# A number beyond a float (1e400) parsed as infinity: answered back as `Infinity` (not
# JSON) on SQLite, a 500 on PostgreSQL. Now 400, like NaN and Infinity.


@pytest.mark.parametrize("number", ["1e400", "-1e400"])
def test_a_number_beyond_a_float_is_malformed_json(client, operator, number):
    body = f'{{"task": "t", "user": "u", "args": {{"f": {number}}}}}'
    response = post_json(client, "/api/jobs", body, operator)
    assert response.status_code == 400


# `limit` went through int(), which takes " 5", "1_0" and other scripts' digits; the
# document says an integer.


@pytest.mark.parametrize("limit", [" 5", "5 ", "1_0", "\u0663", "+5", "5.0"])
def test_limit_takes_only_ascii_digits(client, operator, limit):
    response = client.get("/api/jobs", query_string={"limit": limit}, headers=operator)
    assert response.status_code == 422
    assert "limit" in response.get_json()["errors"]


# Known bugs, reported, not fixed here (outside schemas.py, payload.py and errors.py).
# Each is strict: it fails once the bug is fixed, so the marker comes off with the fix.


@pytest.mark.parametrize("position", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_a_cursor_out_of_range_is_invalid_input(client, operator, position):
    raw = json.dumps([position, "abcdefgh"]).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    response = client.get("/api/jobs", query_string={"cursor": cursor}, headers=operator)
    assert response.status_code == 422


def test_get_on_the_claim_route_is_method_not_allowed(client, operator):
    response = client.get("/api/jobs/claim", headers=operator)
    assert response.status_code == 405
    assert sorted(response.headers["Allow"].split(", ")) == ["OPTIONS", "POST"]
