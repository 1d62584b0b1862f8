"""Methods and headers (SPEC 8, sessions and headers): HEAD never runs a view that writes, a route
that takes only POST answers 405 to HEAD, no header is built from input holding CR or LF, and
API answers carry ``X-Content-Type-Options: nosniff``."""

from __future__ import annotations

import re
from contextlib import contextmanager
from urllib.parse import quote

import pytest
import requests
from sqlalchemy import event, select

from jobapi.extensions import db
from jobapi.models import ConsoleSession, Job
from test_console import COOKIE, csrf_token, sign_in

# Statements that change something, or begin a transaction that may.
WRITES = re.compile(r"^\s*(INSERT|UPDATE|DELETE|BEGIN)\b", re.IGNORECASE)


@contextmanager
def statements_sent(app):
    """The statements sent to the database while the block runs."""
    sent: list[str] = []

    def note(_conn, _cursor, statement, _parameters, _context, _many):
        sent.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield sent
    finally:
        event.remove(engine, "before_cursor_execute", note)


@pytest.fixture
def console(client, make_token):
    assert sign_in(client, make_token("operator", "console-ops")).status_code == 303
    return client


def _path_of(rule: str, job_id: str) -> str:
    return re.sub(r"<[^>]*>", lambda m: job_id if "job_id" in m.group(0) else "x", rule)


# HEAD


def test_head_on_the_remove_form_shows_the_page_and_removes_nothing(console, job, stored_job):
    answer = console.head(f"/console/jobs/{job.id}/remove", data={"force": "1"})
    assert answer.status_code == 200 and answer.data == b""
    assert stored_job(job.id) is not None


def test_head_on_sign_in_with_a_token_signs_nobody_in(app, client, make_token):
    secret = make_token("operator", "ops")
    answer = client.head("/console/sign-in", data={"token": secret})
    assert answer.status_code == 200
    assert not [c for c in answer.headers.getlist("Set-Cookie") if c.startswith(COOKIE + "=") and "sid" in c]
    assert client.get("/console/").status_code == 302
    with app.app_context():
        assert db.session.scalars(select(ConsoleSession)).all() == []


def test_head_on_the_new_job_form_makes_no_job(app, console):
    assert console.head("/console/jobs/new", data={"task": "align", "user": "mallory"}).status_code == 200
    with app.app_context():
        assert db.session.scalars(select(Job)).all() == []


@pytest.mark.parametrize("signed_in", [True, False], ids=["signed in", "signed out"])
def test_a_route_that_takes_only_post_answers_405_to_head_and_get(client, make_token, job, signed_in):
    if signed_in:
        sign_in(client, make_token("operator", "ops"))
    for path in (f"/console/jobs/{job.id}/cancel", "/console/sign-out"):
        for method in ("HEAD", "GET"):
            answer = client.open(path, method=method)
            assert answer.status_code == 405, (method, path, answer.status_code)
            assert set(answer.headers["Allow"].replace(" ", "").split(",")) == {"POST", "OPTIONS"}


def test_every_route_answers_head_without_writing_or_405(app, console, job, operator):
    """Every rule of the app: HEAD runs its GET view, which sends no write, or is 405."""
    console_form = csrf_token(console.get("/console/").text)
    for rule in app.url_map.iter_rules():
        path = _path_of(rule.rule, job.id)
        if rule.endpoint == "static":
            path = "/static/console.css"
        with statements_sent(app) as sent:
            answer = console.open(
                path, method="HEAD", headers={**job.auth} if rule.rule.startswith("/api/jobs/<") else operator,
                data={"csrf_token": console_form, "force": "1", "token": "x", "task": "t", "user": "u"},
            )
            answer.close()
        if "GET" in rule.methods:
            assert answer.status_code != 405, (rule.rule, answer.status_code)
        else:
            # The rule takes no GET: HEAD is 405 unless a GET rule of the same path answered it.
            others = [r for r in app.url_map.iter_rules() if r.rule == rule.rule and "GET" in r.methods]
            assert others or answer.status_code == 405, (rule.rule, answer.status_code)
        assert not [s for s in sent if WRITES.match(s)], (rule.rule, sent)
    assert console.get("/console/").status_code == 200


def test_api_routes_that_take_only_post_put_patch_or_delete_answer_405_to_head(client, job, operator):
    for path in (f"/api/jobs/{job.id}/status", f"/api/jobs/{job.id}/ping", f"/api/jobs/{job.id}/cancel", "/api/jobs/claim"):
        answer = client.head(path, headers=operator)
        assert answer.status_code == 405, path
        assert "HEAD" not in answer.headers["Allow"]


# CR and LF


NEXT_PAYLOADS = [
    "/console/%0D%0AX:%20y",
    "/console/%0AX-Injected:%201",
    "/console/%0D",
    "/console/%00",
    "/console/%09tab",
    "/console/%E2%80%A8line-separator",
    "/console/%C2%85next-line",
    "/console/%E4%B8%AD",
]


@pytest.mark.parametrize("payload", NEXT_PAYLOADS)
def test_next_holding_cr_lf_or_controls_never_reaches_a_header(console, payload):
    answer = console.get(f"/console/sign-in?next={payload}")
    assert answer.status_code == 302
    location = answer.headers["Location"]
    assert not re.search(r"[\x00-\x20\x7f-\x9f]", location)
    assert location.startswith("/console/")
    assert "X-Injected" not in answer.headers and "X" not in answer.headers


@pytest.mark.parametrize("payload", NEXT_PAYLOADS)
def test_a_sign_in_form_with_such_a_next_goes_to_the_console(client, make_token, payload):
    secret = make_token("operator", "ops")
    form = client.get(f"/console/sign-in?next={payload}")
    assert form.status_code == 200
    next_page = re.search(r'name="next" value="([^"]*)"', form.text).group(1)
    answer = client.post(
        "/console/sign-in", data={"token": secret, "csrf_token": csrf_token(form.text), "next": next_page}
    )
    assert answer.status_code == 303
    assert not re.search(r"[\x00-\x20\x7f-\x9f]", answer.headers["Location"])
    # Sent straight in the form too, never through the page's own field.
    other = client.post(
        "/console/sign-in",
        data={"token": secret, "csrf_token": csrf_token(client.get("/console/").text),
              "next": "/console/\r\nX-Injected: 1"},
    )
    assert other.status_code == 303 and other.headers["Location"] == "/console/"


def test_a_plain_next_still_comes_back_percent_encoded(console):
    answer = console.get("/console/sign-in?next=/console/jobs/abcdefgh%3Fx%3D%C3%A9")
    assert answer.headers["Location"] == "/console/jobs/abcdefgh?x=%C3%A9"


def test_paths_holding_cr_lf_lead_to_sign_in_safely(client):
    for path in ("/console/jobs/%0D%0AX:%20y", "/console/%0D%0ASet-Cookie:%20a=b", "/console/jobs/a%0Ab/remove"):
        answer = client.get(path)
        assert answer.status_code in (302, 404), path
        for name, value in answer.headers.items():
            assert "\r" not in value and "\n" not in value, (name, value)
        assert "a=b" not in answer.headers.getlist("Set-Cookie")


# nosniff


def test_api_answers_carry_nosniff(client, job, operator):
    answers = [
        client.get(f"/api/jobs/{job.id}", headers=job.auth),
        client.post(f"/api/jobs/{job.id}/status", headers=job.auth, json={"state": "running", "stage": "", "progress": 1}),
        client.post(f"/api/jobs/{job.id}/status", headers=job.auth, data="{", content_type="application/json"),
        client.get("/api/jobs/abcdefgh"),
        client.get("/api/jobs", headers=operator),
        client.get("/api/nothing-here"),
        client.delete("/healthz"),
        client.get("/healthz"),
        client.get("/readyz"),
        client.get("/metrics"),
        client.get("/api/openapi.json"),
    ]
    for answer in answers:
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", (answer.request.path, answer.status)


# Over HTTP, against a real gunicorn


@pytest.mark.e2e
def test_over_http_head_writes_nothing_and_post_only_routes_are_405(live_server, make_token, job, stored_job):
    url = live_server.url
    secret = make_token("operator", "ops")
    http = requests.Session()
    form = http.get(f"{url}/console/sign-in", timeout=10)
    headed = http.head(f"{url}/console/sign-in", data={"token": secret}, allow_redirects=False, timeout=10)
    assert headed.status_code == 200
    assert http.get(f"{url}/console/", allow_redirects=False, timeout=10).status_code == 302
    answer = http.post(
        f"{url}/console/sign-in", data={"token": secret, "csrf_token": csrf_token(form.text)},
        allow_redirects=False, timeout=10,
    )
    assert answer.status_code == 303
    removed = http.head(f"{url}/console/jobs/{job.id}/remove", data={"force": "1"}, timeout=10)
    assert removed.status_code == 200
    assert stored_job(job.id) is not None
    for path in (f"/console/jobs/{job.id}/cancel", "/console/sign-out", f"/api/jobs/{job.id}/status"):
        assert http.head(url + path, allow_redirects=False, timeout=10).status_code == 405, path
    assert http.get(f"{url}/console/", allow_redirects=False, timeout=10).status_code == 200


@pytest.mark.e2e
def test_over_http_cr_lf_in_next_is_never_a_header(live_server, make_token):
    url = live_server.url
    http = requests.Session()
    form = http.get(f"{url}/console/sign-in", timeout=10)
    http.post(f"{url}/console/sign-in", data={"token": make_token("operator", "ops"), "csrf_token": csrf_token(form.text)},
              allow_redirects=False, timeout=10)
    for payload in NEXT_PAYLOADS:
        answer = http.get(f"{url}/console/sign-in?next={payload}", allow_redirects=False, timeout=10)
        assert answer.status_code == 302, (payload, answer.status_code)
        assert "X-Injected" not in answer.headers
        assert not re.search(r"[\x00-\x20\x7f-\x9f]", answer.headers["Location"])


@pytest.mark.e2e
def test_over_http_api_answers_carry_nosniff(live_server, job):
    for answer in (
        requests.get(f"{live_server.url}/api/jobs/{job.id}", auth=job.requests_auth, timeout=10),
        requests.get(f"{live_server.url}/api/jobs/{job.id}", timeout=10),
        requests.get(f"{live_server.url}/healthz", timeout=10),
        requests.get(f"{live_server.url}/{quote('nothing here')}", timeout=10),
    ):
        assert answer.headers.get("X-Content-Type-Options") == "nosniff", answer.url
