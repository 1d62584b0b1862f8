"""The operator console through the Flask test client: sign-in and its refusals, the session
cookie, CSRF on every form (and never on the API), the jobs page and its keyset pages, the
job page, making, cancelling and removing jobs, and errors as HTML pages."""

from __future__ import annotations

import html
import itertools
import re
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from sqlalchemy import event, select
from sqlalchemy import exc as sa_exc
from werkzeug.middleware.proxy_fix import ProxyFix

from jobapi import tokens
from jobapi.console import actions
from jobapi.console.timeline import entries, format_duration, segments
from jobapi.extensions import db
from jobapi.storage.engines import write_connection
from jobapi.jobs import service as jobs_service
from jobapi.models import STATES, ApiToken, Job

COOKIE = "jobapi_session"


@pytest.fixture
def make_token(app):
    numbers = itertools.count(1)

    def make(role: str = "operator", name: str | None = None) -> str:
        with app.app_context():
            new = tokens.create_token(db.session, name=name or f"{role}-{next(numbers)}", role=role)
            db.session.commit()
            return new.secret

    yield make
    with app.app_context():
        db.session.execute(ApiToken.__table__.delete())
        db.session.commit()


def session_data(app, client) -> dict:
    """What the client's session cookie holds, as the server reads it."""
    cookie = client.get_cookie(COOKIE, path="/console")
    if cookie is None:
        return {}
    return app.session_interface.get_signing_serializer(app).loads(cookie.value)


def csrf_token(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found, "no CSRF token on the page"
    return found.group(1)


def sign_in(client, secret: str, **extra):
    token = csrf_token(client.get("/console/sign-in").text)
    return client.post("/console/sign-in", data={"token": secret, "csrf_token": token, **extra})


@pytest.fixture
def operator(make_token) -> str:
    return make_token("operator", "ops")


@pytest.fixture
def console(client, operator):
    """A test client signed in as the operator ``ops``."""
    answer = sign_in(client, operator)
    assert answer.status_code == 303
    return client


def form_token(console, path: str = "/console/") -> str:
    return csrf_token(console.get(path).text)


def text(response) -> str:
    """The page's text, tags removed, entities decoded, white space collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", response.text)).split())


def push(client, job, state: str, stage: str, progress: int, **extra):
    answer = client.post(
        f"/api/jobs/{job.id}/status", headers=job.auth,
        json={"state": state, "stage": stage, "progress": progress, **extra},
    )
    assert answer.status_code == 200, answer.get_json()
    return answer


def row_ids(page: str) -> list[str]:
    return re.findall(r'<tr id="job-([a-z0-9]{8})"', page)


# Sign-in


def test_the_root_and_the_console_lead_to_the_sign_in_form(client):
    root = client.get("/")
    assert root.status_code == 302 and root.headers["Location"] == "/console/"
    console = client.get("/console/")
    assert console.status_code == 302
    assert console.headers["Location"] == "/console/sign-in?next=/console/"
    form = client.get("/console/sign-in")
    assert form.status_code == 200 and form.mimetype == "text/html"
    assert '<label for="token">Operator token</label>' in form.text


def test_an_operator_token_signs_in_and_the_jobs_page_names_the_operator(client, operator):
    answer = sign_in(client, operator)
    assert answer.status_code == 303 and answer.headers["Location"] == "/console/"
    page = client.get("/console/")
    assert page.status_code == 200
    assert '<b id="operator-name">ops</b>' in page.text
    assert "Signed in as ops." in text(page)


def test_sign_in_goes_back_to_the_page_asked_for_but_never_to_another_site(client, operator, job):
    asked = client.get(f"/console/jobs/{job.id}")
    assert asked.headers["Location"] == f"/console/sign-in?next=/console/jobs/{job.id}"
    answer = sign_in(client, operator, next=f"/console/jobs/{job.id}")
    assert answer.headers["Location"] == f"/console/jobs/{job.id}"
    client.post("/console/sign-out", data={"csrf_token": form_token(client)})
    for elsewhere in ("https://evil.example/", "//evil.example/console/", "/api/jobs"):
        assert sign_in(client, operator, next=elsewhere).headers["Location"] == "/console/"
        client.post("/console/sign-out", data={"csrf_token": form_token(client)})


def test_a_path_that_is_no_page_is_never_offered_after_sign_in(client, operator):
    asked = client.get("/console/login")
    assert asked.status_code == 404 and "Location" not in asked.headers
    form = client.get("/console/sign-in?next=/console/login")
    assert '<input type="hidden" name="next" value="/console/">' in form.text
    for target in ("/console/login", "/console/jobs/_rows", "/console/sign-in", "/console/jobs/abcdefgh/_live"):
        assert sign_in(client, operator, next=target).headers["Location"] == "/console/"
        client.post("/console/sign-out", data={"csrf_token": form_token(client)})


@pytest.mark.parametrize(
    "kind, status, message",
    [
        ("unknown", 401, "Invalid or revoked token"),
        ("revoked", 401, "Invalid or revoked token"),
        ("runner", 403, "That is a runner's token: the console takes an operator's token"),
        ("job key", 401, "Invalid or revoked token"),
        ("empty", 401, "Invalid or revoked token"),
    ],
)
def test_sign_in_refuses_anything_but_an_active_operator_token(app, client, make_token, job, kind, status, message):
    if kind == "unknown":
        secret = "jobapi_op_" + "0" * 64
    elif kind == "revoked":
        secret = make_token("operator", "gone")
        with app.app_context():
            tokens.revoke_token(db.session, "gone")
            db.session.commit()
    elif kind == "runner":
        secret = make_token("runner")
    elif kind == "job key":
        secret = job.key
    else:
        secret = ""
    answer = sign_in(client, secret)
    assert answer.status_code == status
    assert message in text(answer)
    assert client.get("/console/").status_code == 302  # still not signed in


def test_a_revoked_token_signs_the_operator_out_on_the_next_page(app, console, job):
    assert console.get("/console/").status_code == 200
    with app.app_context():
        tokens.revoke_token(db.session, "ops")
        db.session.commit()
    fragment = console.get("/console/jobs/_rows")
    assert fragment.status_code == 401
    page = console.get(f"/console/jobs/{job.id}")
    assert page.status_code == 302 and page.headers["Location"].startswith("/console/sign-in")
    assert "sid" not in session_data(app, console)
    form = console.get(page.headers["Location"])
    assert "Your token was revoked or is no longer valid: sign in again." in text(form)
    assert console.get("/console/").status_code == 302


def test_sign_out_needs_the_form_token_and_ends_the_session(console):
    refused = console.post("/console/sign-out")
    assert refused.status_code == 400
    assert console.get("/console/").status_code == 200
    signed_out = console.post("/console/sign-out", data={"csrf_token": form_token(console)})
    assert signed_out.status_code == 303 and signed_out.headers["Location"] == "/console/sign-in"
    assert console.get("/console/").status_code == 302


# The session cookie


def _session_cookie(response) -> str:
    cookies = [value for value in response.headers.getlist("Set-Cookie") if value.startswith(COOKIE + "=")]
    assert len(cookies) == 1, response.headers.getlist("Set-Cookie")
    return cookies[0]


def test_the_session_cookie_is_httponly_strict_and_scoped_to_the_console(app, client, operator):
    cookie = _session_cookie(sign_in(client, operator))
    flags = [part.strip() for part in cookie.split(";")]
    assert "HttpOnly" in flags
    assert "SameSite=Strict" in flags
    assert "Path=/console" in flags
    assert "Secure" not in flags  # plain HTTP: a Secure cookie would never come back
    # The session names its sign-in by a random id, never the token or its digest
    # (tests/test_console_sessions.py has the rest).
    data = session_data(app, client)
    with app.app_context():
        token = db.session.scalars(select(ApiToken).where(ApiToken.name == "ops")).one()
    assert len(data["sid"]) == 43
    assert operator not in repr(data) and token.token_digest not in repr(data)


def test_the_session_cookie_is_secure_when_the_request_came_over_https(client, operator):
    token = csrf_token(client.get("/console/sign-in", base_url="https://localhost").text)
    answer = client.post(
        "/console/sign-in", base_url="https://localhost",
        data={"token": operator, "csrf_token": token},
        headers={"Referer": "https://localhost/console/sign-in"},
    )
    assert answer.status_code == 303
    assert "Secure" in [part.strip() for part in _session_cookie(answer).split(";")]


def test_the_cookie_is_secure_when_a_trusted_proxy_says_https(app, client, operator, monkeypatch):
    # As gunicorn does for the addresses in forwarded_allow_ips: the proxy's
    # X-Forwarded-Proto sets the request's scheme.
    monkeypatch.setattr(app, "wsgi_app", ProxyFix(app.wsgi_app, x_proto=1, x_host=0))
    https = {"X-Forwarded-Proto": "https"}
    token = csrf_token(client.get("/console/sign-in", headers=https).text)
    answer = client.post(
        "/console/sign-in", data={"token": operator, "csrf_token": token},
        headers={**https, "Referer": "https://localhost/console/sign-in"},
    )
    assert answer.status_code == 303
    assert "Secure" in [part.strip() for part in _session_cookie(answer).split(";")]
    plain = app.test_client()
    http = {"X-Forwarded-Proto": "http"}
    token = csrf_token(plain.get("/console/sign-in", headers=http).text)
    answer = plain.post("/console/sign-in", data={"token": operator, "csrf_token": token}, headers=http)
    assert answer.status_code == 303
    assert "Secure" not in [part.strip() for part in _session_cookie(answer).split(";")]


def test_the_api_neither_sets_nor_reads_the_session(client, operator):
    answer = client.post("/api/jobs", json={"task": "align", "user": "alice"}, headers={"Authorization": f"Bearer {operator}"})
    assert answer.status_code == 201
    assert not answer.headers.getlist("Set-Cookie")
    assert "Cookie" not in answer.headers.get("Vary", "")


# CSRF


def test_every_console_form_refuses_a_post_without_its_token(app, console, job, stored_job):
    for path, data in [
        (f"/console/jobs/{job.id}/cancel", {}),
        (f"/console/jobs/{job.id}/remove", {"force": "1"}),
        ("/console/jobs/new", {"task": "align", "user": "alice"}),
        ("/console/sign-out", {}),
        ("/console/sign-in", {"token": "x"}),
    ]:
        for token in (None, "forged-token", form_token(console) + "x"):
            body = dict(data) if token is None else {**data, "csrf_token": token}
            answer = console.post(path, data=body)
            assert answer.status_code == 400, (path, token)
            assert answer.mimetype == "text/html"
            assert "Form refused" in answer.text
    assert stored_job(job.id).state == "waiting"
    with app.app_context():
        assert db.session.scalars(select(Job.id)).all() == [job.id]
    assert console.get("/console/").status_code == 200  # still signed in


def test_a_token_from_another_session_is_refused(app, client, operator, job, stored_job):
    other = app.test_client()
    sign_in(other, operator)
    stolen = form_token(other)
    sign_in(client, operator)
    answer = client.post(f"/console/jobs/{job.id}/cancel", data={"csrf_token": stolen})
    assert answer.status_code == 400
    assert stored_job(job.id).state == "waiting"


def test_the_api_takes_posts_without_csrf_tokens(client, console, operator, job):
    # Even from a client that holds a console session: the API's callers send
    # bearer tokens or job keys, which a browser never adds by itself.
    bearer = {"Authorization": f"Bearer {operator}"}
    assert console.post("/api/jobs", json={"task": "align", "user": "alice"}, headers=bearer).status_code == 201
    assert console.post(f"/api/jobs/{job.id}/status", headers=job.auth, json={"state": "running", "stage": "a", "progress": 1}).status_code == 200
    assert console.post(f"/api/jobs/{job.id}/cancel", headers=bearer).status_code == 200


# The jobs page


def test_the_jobs_page_lists_jobs_newest_first_with_counts_for_every_state(console, make_job):
    first = make_job(task="align", user="alice")
    second = make_job(task="index", user="bob")
    third = make_job(task="align", user="carol")
    push(console, second, "running", "bowtie_build", 40)
    push(console, third, "running", "x", 10)
    push(console, third, "complete", "x", 100)
    page = console.get("/console/")
    assert row_ids(page.text) == [third.id, second.id, first.id]
    counts = dict(re.findall(r'data-count="([a-z]+)">(\d+)<', page.text))
    assert set(counts) == set(STATES)
    assert counts["waiting"] == "1" and counts["running"] == "1" and counts["complete"] == "1"
    assert all(counts[state] == "0" for state in STATES if state not in ("waiting", "running", "complete"))
    row = re.search(rf'<tr id="job-{second.id}".*?</tr>', page.text, re.S).group(0)
    assert 'data-state="running"' in row and '<progress class="state-running" max="100" value="40">' in row
    assert ">bowtie_build<" in row and ">index<" in row and ">bob<" in row
    # Without scripts, the page can be refreshed by hand.
    assert '<a class="refresh" href="/console/">Refresh</a>' in page.text


def test_the_live_fragment_is_the_table_alone(console, make_job):
    job = make_job()
    fragment = console.get("/console/jobs/_rows?task=create_subtraction")
    assert fragment.status_code == 200
    assert fragment.text.lstrip().startswith('<section id="jobs-live"')
    assert "<html" not in fragment.text and "<form" not in fragment.text
    assert row_ids(fragment.text) == [job.id]
    page = console.get("/console/?task=create_subtraction")
    assert 'data-live-url="/console/jobs/_rows?task=create_subtraction"' in page.text


def test_filters_by_state_task_and_user(console, make_job):
    a = make_job(task="align", user="alice")
    b = make_job(task="align", user="bob")
    c = make_job(task="index", user="alice")
    push(console, b, "running", "s", 5)
    assert row_ids(console.get("/console/?state=running").text) == [b.id]
    assert row_ids(console.get("/console/?task=align").text) == [b.id, a.id]
    assert row_ids(console.get("/console/?user=alice").text) == [c.id, a.id]
    assert row_ids(console.get("/console/?task=align&user=alice").text) == [a.id]
    # Counts follow the task and user filters, not the state one.
    counts = dict(re.findall(r'data-count="([a-z]+)">(\d+)<', console.get("/console/?task=align&state=running").text))
    assert counts["running"] == "1" and counts["waiting"] == "1"
    ignored = console.get("/console/?state=sleeping&task=Bad-Task")
    assert "There is no state 'sleeping': showing every state." in text(ignored)
    assert "showing every task" in text(ignored)
    assert set(row_ids(ignored.text)) == {a.id, b.id, c.id}


def test_keyset_pages_older_and_newer_without_offset(app, console, make_job, monkeypatch, is_postgresql):
    monkeypatch.setitem(app.config, "CONSOLE_PAGE_SIZE", 2)
    ids = [make_job(task="align").id for _ in range(5)][::-1]  # newest first
    statements = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if "FROM jobs" in statement:
            statements.append((statement, parameters))

    with app.app_context():
        event.listen(db.engine, "before_cursor_execute", record)
    try:
        first = console.get("/console/")
        assert row_ids(first.text) == ids[0:2]
        assert "Newer" not in first.text and "Newest" not in first.text
        older = html.unescape(re.search(r'<a rel="next" class="older" href="([^"]+)"', first.text).group(1))
        second = console.get(older)
        assert row_ids(second.text) == ids[2:4]
        older = html.unescape(re.search(r'<a rel="next" class="older" href="([^"]+)"', second.text).group(1))
        third = console.get(older)
        assert row_ids(third.text) == ids[4:5]
        assert 'class="older"' not in third.text
        newer = html.unescape(re.search(r'<a rel="prev" class="newer" href="([^"]+)"', third.text).group(1))
        back = console.get(newer)
        assert row_ids(back.text) == ids[2:4]
        newer = html.unescape(re.search(r'<a rel="prev" class="newer" href="([^"]+)"', back.text).group(1))
        # Nothing newer than a full page is left: that is the first page.
        assert row_ids(console.get(newer).text) == ids[0:2]
        # Jobs made meanwhile do not shift a page reached by its cursor.
        make_job(task="align")
        assert row_ids(console.get(older).text) == ids[4:5]
    finally:
        with app.app_context():
            event.remove(db.engine, "before_cursor_execute", record)
    pages = [(s, p) for s, p in statements if "LIMIT" in s]
    assert pages
    for statement, parameters in pages:
        if is_postgresql:
            assert "OFFSET" not in statement
        elif "OFFSET" in statement:
            # SQLite writes LIMIT n OFFSET 0 for every LIMIT.
            assert list(parameters)[-1] == 0, statement
    bad = console.get("/console/?cursor=not-a-cursor")
    assert bad.status_code == 400 and "That page link is not valid" in text(bad)
    assert console.get("/console/?before=not-a-cursor").status_code == 400


# The job page


def test_the_job_page_shows_the_document_timeline_heartbeat_and_claim(app, console, make_job):
    job = make_job(task="align", user="alice", args={"genome": "hg38", "n": 1}, proc=4, mem=16)
    with app.app_context():
        claimed = jobs_service.claim_job(write_connection(db.session), runner="runner-7", tasks=["align"], proc=8, mem=64)
        db.session.commit()
    assert claimed.job.id == job.id
    worker = SimpleNamespace(id=job.id, auth={"Authorization": _basic(job.id, claimed.key)})
    push(console, worker, "running", "trim", 20)
    push(console, worker, "running", "align", 60)
    assert console.put(f"/api/jobs/{job.id}/ping", headers=worker.auth).status_code == 200
    page = console.get(f"/console/jobs/{job.id}")
    assert page.status_code == 200
    body = text(page)
    for expected in ("align", "alice", "4 cores, 16 GiB", "runner-7 at", "a ping", '"genome": "hg38"'):
        assert expected in body, expected
    records = re.findall(r'<tr class="record" data-state="([a-z]+)">', page.text)
    assert records == ["waiting", "running", "running"]
    assert page.text.count('<rect class="state-') == 3  # waiting, trim, align
    assert 'data-live-url="/console/jobs/%s/_live"' % job.id in page.text
    assert "data-live-stop" not in page.text
    assert '<button type="submit" class="danger" id="cancel">' in page.text
    fragment = console.get(f"/console/jobs/{job.id}/_live")
    assert fragment.text.lstrip().startswith('<div id="job-live"')


def _basic(job_id: str, key: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"job-{job_id}:{key}".encode()).decode()


def test_a_finished_job_page_stops_refreshing_and_shows_its_error(console, job):
    push(console, job, "running", "map", 10)
    push(console, job, "error", "map", 10, error="Traceback (most recent call last):\n  <boom>\nRuntimeError: x")
    page = console.get(f"/console/jobs/{job.id}")
    assert 'data-live-stop="finished"' in page.text
    assert '<pre class="error-message">Traceback (most recent call last):\n  &lt;boom&gt;\nRuntimeError: x</pre>' in page.text
    assert 'id="remove"' in page.text and 'id="cancel"' not in page.text


def test_object_errors_and_step_fields_are_rendered_readably(console, make_job):
    # The forms Virtool's workers send: type, traceback lines and details; or a message.
    job = make_job()
    push(console, job, "running", "bowtie_build", 40,
         step_name="Build index", step_description="Build a Bowtie2 index of the reference")
    push(console, job, "error", "bowtie_build", 40, error={
        "type": "CalledProcessError",
        "traceback": ["Traceback (most recent call last):\n", '  File "w.py", line 3, in run\n'],
        "details": ["bowtie2-build exited with 1", "<disk full>"],
    })
    page = console.get(f"/console/jobs/{job.id}")
    assert page.status_code == 200
    assert "Error: <b>CalledProcessError</b>" in page.text
    assert '<pre class="traceback">Traceback (most recent call last):\n  File &#34;w.py&#34;, line 3, in run</pre>' in page.text
    assert "<li>&lt;disk full&gt;</li>" in page.text
    assert "<b>Build index</b> <span>Build a Bowtie2 index of the reference</span>" in page.text

    other = make_job()
    push(console, other, "running", "x", 5)
    push(console, other, "error", "x", 5, error={"message": "Workflow failed"})
    assert '<pre class="error-message">Workflow failed</pre>' in console.get(f"/console/jobs/{other.id}").text


def test_timeline_times_and_stage_bar():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = [
        SimpleNamespace(state="waiting", stage=None, error=None, progress=0, timestamp=start),
        SimpleNamespace(state="running", stage="trim", error=None, progress=20, timestamp=start + timedelta(seconds=10)),
        SimpleNamespace(state="running", stage="trim", error=None, progress=50, timestamp=start + timedelta(seconds=20)),
        SimpleNamespace(state="running", stage="align", error=None, progress=60, timestamp=start + timedelta(seconds=40)),
        SimpleNamespace(state="error", stage="timeout", error="silent", progress=60, timestamp=start + timedelta(seconds=70)),
    ]
    timeline = entries(records)
    assert [format_duration(e.since_previous) for e in timeline] == ["", "10 s", "10 s", "20 s", "30 s"]
    assert timeline[-1].error.message == "silent" and timeline[0].error is None
    bar = segments(timeline, finished=True, now=start + timedelta(hours=1))
    # The final record is an instant; the stages before it split the 70 s.
    assert [(s.label, s.state, s.duration.total_seconds()) for s in bar] == [
        ("waiting", "waiting", 10.0), ("trim", "running", 30.0), ("align", "running", 30.0),
    ]
    assert [s.offset for s in bar] == [0.0, round(100 / 7, 3), round(400 / 7, 3)]
    assert abs(sum(s.width for s in bar) - 100) < 0.01
    # While the job runs, its last stage lasts until now.
    live = segments(timeline[:4], finished=False, now=start + timedelta(seconds=100))
    assert live[-1].label == "align" and live[-1].duration == timedelta(seconds=60)
    assert [format_duration(timedelta(seconds=n)) for n in (0.42, 75, 7322, 200000)] == [
        "0.4 s", "1 min 15 s", "2 h 2 min", "2 d 7 h",
    ]


def test_an_unknown_job_is_an_html_404(console):
    for path in ("/console/jobs/zzzzzzzz", "/console/jobs/not-an-id", "/console/jobs/zzzzzzzz/_live", "/console/jobs/zzzzzzzz/remove"):
        answer = console.get(path)
        assert answer.status_code == 404, path
        assert answer.mimetype == "text/html"
        assert "No job" in text(answer)
    other = console.get("/console/no/such/page")
    assert other.status_code == 404 and other.mimetype == "text/html"


# Actions


def test_make_a_job_shows_its_key_once_and_the_key_works(app, console):
    token = form_token(console, "/console/jobs/new")
    answer = console.post("/console/jobs/new", data={
        "csrf_token": token, "task": "align", "user": "alice", "args": '{"genome": "hg38"}', "proc": "2", "mem": "8",
    })
    assert answer.status_code == 201
    assert answer.headers["Cache-Control"] == "no-store"
    job_id = re.search(r'<code id="new-job-id">([a-z0-9]{8})</code>', answer.text).group(1)
    key = re.search(r'<input id="job-key" class="key" value="([0-9a-f]{64})"', answer.text).group(1)
    with app.app_context():
        stored = db.session.get(Job, job_id)
        assert (stored.task, stored.user_id, stored.args, stored.proc, stored.mem) == ("align", "alice", {"genome": "hg38"}, 2, 8)
    assert console.get(f"/api/jobs/{job_id}", headers={"Authorization": _basic(job_id, key)}).status_code == 200
    assert key not in console.get(f"/console/jobs/{job_id}").text
    assert key not in console.get("/console/").text


@pytest.mark.parametrize(
    "fields, field, message",
    [
        ({"args": "{not json"}, "args", "Not valid JSON."),
        ({"args": "[1, 2]"}, "args", "Must be a JSON object"),
        ({"task": "Bad Task"}, "task", "Must be 1 to 64 characters of a-z, 0-9 and _."),
        ({"user": ""}, "user", "Length must be between 1 and 64."),
        ({"proc": "0"}, "proc", "Must be greater than or equal to 1"),
        ({"mem": "two"}, "mem", "Not a valid integer."),
    ],
)
def test_make_a_job_refuses_what_the_api_refuses(app, console, fields, field, message):
    data = {"task": "align", "user": "alice", "args": "{}", "proc": "1", "mem": "1", **fields}
    answer = console.post("/console/jobs/new", data={"csrf_token": form_token(console, "/console/jobs/new"), **data})
    assert answer.status_code == 422
    shown = re.search(rf'<p class="field-error" id="{field}-error">([^<]*)</p>', answer.text)
    assert shown, answer.text
    assert message in html.unescape(shown.group(1))
    with app.app_context():
        assert db.session.scalars(select(Job.id)).all() == []


def test_cancel_follows_the_service_rules(console, make_job, stored_job):
    running = make_job()
    push(console, running, "running", "align", 30)
    token = form_token(console)
    answer = console.post(f"/console/jobs/{running.id}/cancel", data={"csrf_token": token})
    assert answer.status_code == 303 and answer.headers["Location"] == f"/console/jobs/{running.id}"
    job = stored_job(running.id)
    assert (job.state, job.stage, job.progress) == ("cancelled", "align", 30)
    assert f"Job {running.id} is cancelled" in text(console.get(answer.headers["Location"]))
    again = console.post(f"/console/jobs/{running.id}/cancel", data={"csrf_token": token})
    assert f"Job {running.id} was already cancelled." in text(console.get(again.headers["Location"]))
    # The worker's next push is refused.
    refused = console.post(f"/api/jobs/{running.id}/status", headers=running.auth, json={"state": "running", "stage": "a", "progress": 40})
    assert refused.status_code == 409

    done = make_job()
    push(console, done, "running", "a", 1)
    push(console, done, "complete", "a", 100)
    answer = console.post(f"/console/jobs/{done.id}/cancel", data={"csrf_token": token})
    assert "Not cancelled: Job is complete." in text(console.get(answer.headers["Location"]))
    assert stored_job(done.id).state == "complete"

    missing = console.post("/console/jobs/zzzzzzzz/cancel", data={"csrf_token": token})
    assert "Not cancelled: Not found." in text(console.get("/console/"))
    assert missing.status_code == 303


def test_remove_asks_first_then_follows_the_service_rules(console, make_job, stored_job):
    done = make_job()
    push(console, done, "running", "a", 1)
    push(console, done, "complete", "a", 100)
    confirm = console.get(f"/console/jobs/{done.id}/remove")
    assert confirm.status_code == 200
    assert f"Remove job {done.id}" in text(confirm) and 'name="force"' not in confirm.text
    assert stored_job(done.id) is not None
    token = csrf_token(confirm.text)
    answer = console.post(f"/console/jobs/{done.id}/remove", data={"csrf_token": token})
    assert answer.status_code == 303 and answer.headers["Location"] == "/console/"
    assert stored_job(done.id) is None
    assert f"Job {done.id} is removed." in text(console.get("/console/"))

    active = make_job()
    push(console, active, "running", "a", 5)
    confirm = console.get(f"/console/jobs/{active.id}/remove")
    assert "This job is not finished" in text(confirm) and '<input type="hidden" name="force" value="1">' in confirm.text
    refused = console.post(f"/console/jobs/{active.id}/remove", data={"csrf_token": token})
    assert "Not removed: Job is running: only a finished job is removed without force." in text(console.get(refused.headers["Location"]))
    assert stored_job(active.id) is not None
    forced = console.post(f"/console/jobs/{active.id}/remove", data={"csrf_token": token, "force": "1"})
    assert forced.status_code == 303
    assert stored_job(active.id) is None
    assert f"Job {active.id} is removed (forced)." in text(console.get("/console/"))


# Errors and headers


def test_a_bug_is_an_html_500_without_its_details(app, console, monkeypatch):
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)

    def broken(filters):
        raise RuntimeError("secret detail of the bug")

    monkeypatch.setattr(actions, "count_by_state", broken)
    answer = console.get("/console/")
    assert answer.status_code == 500 and answer.mimetype == "text/html"
    assert "Something went wrong" in answer.text
    assert "secret detail" not in answer.text and "Traceback" not in answer.text


def test_an_unavailable_database_is_an_html_503(app, console, monkeypatch):
    def unavailable(filters):
        raise sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(actions, "count_by_state", unavailable)
    answer = console.get("/console/")
    assert answer.status_code == 503 and answer.mimetype == "text/html"
    assert answer.headers["Retry-After"] == str(app.config["RETRY_AFTER_SECONDS"])
    assert "Database unavailable" in answer.text and "connection refused" not in answer.text


def test_console_pages_are_not_cached_framed_or_open_to_foreign_scripts(client, console):
    for answer in (client.get("/console/sign-in"), console.get("/console/"), console.get("/console/jobs/zzzzzzzz")):
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in answer.headers["Content-Security-Policy"]
    page = console.get("/console/")
    # Every script and stylesheet is this server's.
    assert re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', page.text) == [
        "data:,", "/static/console.css", "/static/console.js",
    ]
    with console.get("/static/console.js") as script, console.get("/static/console.css") as style:
        assert script.status_code == 200 and style.mimetype == "text/css"
