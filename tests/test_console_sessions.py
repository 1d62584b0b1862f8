"""Console sessions that die (SPEC 8, sessions and headers): a session names its sign-in by a random
id kept on the server, and ends at sign-out, when its token is revoked or deleted, and when it
expires; a cookie copied before any of these opens nothing after it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
import requests
from sqlalchemy import select, text, update

from jobapi import tokens
from jobapi.extensions import db
from jobapi.models import ApiToken, ConsoleSession, utcnow
from test_console import COOKIE, csrf_token, session_data, sign_in


def signed_in_as(client) -> str | None:
    """The operator the console's jobs page names, or None when it sends the client to sign in."""
    page = client.get("/console/")
    if page.status_code == 302:
        assert page.headers["Location"].startswith("/console/sign-in")
        return None
    assert page.status_code == 200, page.status_code
    return re.search(r'<b id="operator-name">([^<]+)</b>', page.text).group(1)


def copy_of_cookie(app, client):
    """A second client holding a copy of ``client``'s session cookie, as a thief would."""
    cookie = client.get_cookie(COOKIE, path="/console")
    assert cookie is not None
    return replaying(app, cookie.value)


def replaying(app, cookie: str):
    """A client that sends ``cookie`` as its session (a server's answer may replace it in this
    client; a thief keeps the copy, so each replay takes a new client)."""
    thief = app.test_client()
    thief.set_cookie(COOKIE, cookie, path="/console")
    return thief


def test_a_deleted_tokens_session_never_opens_the_console_as_the_next_token(app, client, runner, make_token):
    make_token("operator", "older")
    alice = make_token("operator", "alice")  # the newest token: on SQLite, the id a new one would reuse
    assert sign_in(client, alice).status_code == 303
    assert signed_in_as(client) == "alice"
    kept = copy_of_cookie(app, client)

    assert runner.invoke(args=["tokens", "delete", "alice"]).exit_code == 0
    made = runner.invoke(args=["tokens", "create", "--name", "bob", "--role", "operator"])
    assert made.exit_code == 0, made.output

    assert signed_in_as(kept) is None
    assert signed_in_as(client) is None
    with app.app_context():
        ids = db.session.scalars(select(ApiToken.id).order_by(ApiToken.id)).all()
        assert db.session.scalars(select(ConsoleSession)).all() == []
    assert len(ids) == len(set(ids)) == 2


def test_token_ids_are_never_reused(app, make_token):
    make_token("operator", "first")
    make_token("operator", "second")
    with app.app_context():
        second = db.session.scalars(select(ApiToken.id).where(ApiToken.name == "second")).one()
        db.session.rollback()
        tokens.delete_token(db.session, "second")
        db.session.commit()
    made = make_token("operator", "third")
    with app.app_context():
        third = tokens.find_token(db.session, made)
        assert third.id > second


def test_a_cookie_copied_before_sign_out_opens_nothing_after_it(app, client, make_token, job, stored_job):
    sign_in(client, make_token("operator", "ops"))
    form = csrf_token(client.get(f"/console/jobs/{job.id}").text)
    copied = client.get_cookie(COOKIE, path="/console").value
    assert signed_in_as(replaying(app, copied)) == "ops"  # the copy worked until then

    signed_out = client.post("/console/sign-out", data={"csrf_token": form})
    assert signed_out.status_code == 303

    assert signed_in_as(replaying(app, copied)) is None
    assert replaying(app, copied).get(f"/console/jobs/{job.id}").status_code == 302
    # The copy still carries the form token of its pages, which passes the CSRF check:
    # the sign-in it named is what is gone.
    cancel = replaying(app, copied).post(f"/console/jobs/{job.id}/cancel", data={"csrf_token": form})
    assert cancel.status_code == 302 and cancel.headers["Location"].startswith("/console/sign-in")
    made = replaying(app, copied).post(
        "/console/jobs/new", data={"csrf_token": form, "task": "align", "user": "mallory"}
    )
    assert made.status_code == 302 and "key" not in made.text
    removed = replaying(app, copied).post(f"/console/jobs/{job.id}/remove", data={"csrf_token": form, "force": "1"})
    assert removed.status_code == 302
    assert stored_job(job.id).state == "waiting"
    with app.app_context():
        assert db.session.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 1
        assert db.session.scalars(select(ConsoleSession)).all() == []


def test_signing_out_ends_that_sign_in_only(app, client, make_token):
    secret = make_token("operator", "ops")
    other = app.test_client()
    sign_in(client, secret)
    sign_in(other, secret)
    client.post("/console/sign-out", data={"csrf_token": csrf_token(client.get("/console/").text)})
    assert signed_in_as(client) is None
    assert signed_in_as(other) == "ops"


def test_revoking_a_token_ends_all_its_sessions(app, client, make_token):
    secret = make_token("operator", "ops")
    sign_in(client, secret)
    kept = copy_of_cookie(app, client)
    with app.app_context():
        tokens.revoke_token(db.session, "ops")
        db.session.commit()
        assert db.session.scalars(select(ConsoleSession)).all() == []
    assert signed_in_as(kept) is None


def test_a_session_past_its_lifetime_opens_nothing(app, client, make_token):
    sign_in(client, make_token("operator", "ops"))
    kept = copy_of_cookie(app, client)
    with app.app_context():
        session = db.session.scalars(select(ConsoleSession)).one()
        assert timedelta(hours=11.9) < session.expires_at - utcnow() <= timedelta(hours=12)
        # The cookie's own signature is still young: the server's record decides.
        db.session.execute(update(ConsoleSession).values(expires_at=utcnow() - timedelta(seconds=1)))
        db.session.commit()
    assert signed_in_as(kept) is None


def test_the_cookie_names_the_sign_in_by_a_random_id_the_server_keeps_only_digested(app, client, make_token):
    secret = make_token("operator", "ops")
    sign_in(client, secret)
    data = session_data(app, client)
    assert set(data) - {"_flashes", "_permanent", "csrf_token"} == {"sid"}
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", data["sid"])
    with app.app_context():
        token = db.session.scalars(select(ApiToken).where(ApiToken.name == "ops")).one()
        stored = db.session.scalars(select(ConsoleSession)).one()
        assert stored.token_id == token.id
    # Neither the token nor its id is in the cookie; the session's id is not in the database as it is.
    assert secret not in repr(data) and token.token_digest not in repr(data)
    assert "operator" not in data and str(token.id) != data["sid"]
    assert stored.id != data["sid"] and re.fullmatch(r"[0-9a-f]{64}", stored.id)
    # Signing in again makes a new sign-in and ends the one before, on the server too.
    form = csrf_token(client.get("/console/").text)
    assert client.post("/console/sign-in", data={"token": secret, "csrf_token": form}).status_code == 303
    assert session_data(app, client)["sid"] != data["sid"]
    with app.app_context():
        remaining = db.session.scalars(select(ConsoleSession.id)).all()
    assert len(remaining) == 1 and remaining != [stored.id]


def test_a_signed_cookie_naming_a_session_that_never_was_opens_nothing(app, client, make_token):
    make_token("operator", "ops")
    forged = app.session_interface.get_signing_serializer(app).dumps({"sid": "A" * 43})
    client.set_cookie(COOKIE, forged, path="/console")
    assert signed_in_as(client) is None
    # The old cookie's shape (a token's id) names nobody either.
    with app.app_context():
        token_id = db.session.scalars(select(ApiToken.id)).one()
    client.set_cookie(COOKIE, app.session_interface.get_signing_serializer(app).dumps({"operator": token_id}), path="/console")
    assert signed_in_as(client) is None


# Over HTTP, against a real gunicorn


@pytest.fixture
def operator_secret(make_token) -> Iterator[str]:
    yield make_token("operator", "ops")


def _sign_in_over_http(url: str, secret: str) -> requests.Session:
    browser = requests.Session()
    form = browser.get(f"{url}/console/sign-in", timeout=10)
    answer = browser.post(
        f"{url}/console/sign-in", data={"token": secret, "csrf_token": csrf_token(form.text)},
        allow_redirects=False, timeout=10,
    )
    assert answer.status_code == 303, answer.text
    return browser


@pytest.mark.e2e
def test_over_http_a_copied_cookie_dies_at_sign_out(live_server, operator_secret, job, stored_job):
    url = live_server.url
    browser = _sign_in_over_http(url, operator_secret)
    page = browser.get(f"{url}/console/jobs/{job.id}", allow_redirects=False, timeout=10)
    assert page.status_code == 200
    form = csrf_token(page.text)
    copied = browser.cookies.get(COOKIE, path="/console")
    assert copied

    out = browser.post(f"{url}/console/sign-out", data={"csrf_token": form}, allow_redirects=False, timeout=10)
    assert out.status_code == 303

    cookies = {COOKIE: copied}
    replay = requests.get(f"{url}/console/", cookies=cookies, allow_redirects=False, timeout=10)
    assert replay.status_code == 302 and "/console/sign-in" in replay.headers["Location"]
    cancel = requests.post(
        f"{url}/console/jobs/{job.id}/cancel", data={"csrf_token": form}, cookies=cookies,
        allow_redirects=False, timeout=10,
    )
    assert cancel.status_code == 302 and "/console/sign-in" in cancel.headers["Location"]
    assert stored_job(job.id).state == "waiting"


@pytest.mark.e2e
def test_over_http_a_deleted_tokens_cookie_does_not_open_the_next_tokens_console(
    app, live_server, make_token, runner
):
    make_token("operator", "older")
    alice = make_token("operator", "alice")
    browser = _sign_in_over_http(live_server.url, alice)
    assert browser.get(f"{live_server.url}/console/", allow_redirects=False, timeout=10).status_code == 200
    assert runner.invoke(args=["tokens", "delete", "alice"]).exit_code == 0
    assert runner.invoke(args=["tokens", "create", "--name", "bob", "--role", "operator"]).exit_code == 0
    page = browser.get(f"{live_server.url}/console/", allow_redirects=False, timeout=10)
    assert page.status_code == 302 and "/console/sign-in" in page.headers["Location"]
