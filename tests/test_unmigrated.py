"""A database never migrated, or migrated short of the code's head: every API route answers
503 "Database not migrated" with Retry-After, never 500; a database error that is a bug
still answers 500."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import text
from sqlalchemy.engine import make_url

from conftest import _drop_postgresql_database, _recreate_postgresql_database, basic_auth, start_gunicorn, stop_gunicorn
from jobapi import MIGRATIONS_DIRECTORY, create_app
from jobapi.extensions import db
from jobapi.keys import make_token

NOT_MIGRATED = {"id": "service_unavailable", "message": "Database not migrated"}
JOB_ID = "abcd1234"

# A request each API route accepts up to its first query; the job's own
# routes also with the job's credentials.
JOB_AUTH = basic_auth(f"job-{JOB_ID}", "0" * 64)
OPERATOR = {"Authorization": f"Bearer {make_token('operator')}"}
RUNNER = {"Authorization": f"Bearer {make_token('runner')}"}
RUNNING = {"state": "running", "stage": "x", "progress": 1}
REQUESTS: dict[str, list[tuple[dict[str, str], object]]] = {
    "jobs.get_job": [(JOB_AUTH, None), (OPERATOR, None)],
    "jobs.push_status": [(JOB_AUTH, RUNNING)],
    "jobs.ping": [(JOB_AUTH, None)],
    "jobs.create_job": [(OPERATOR, {"task": "t", "user": "u"})],
    "jobs.list_jobs": [(OPERATOR, None)],
    "jobs.cancel_job": [(OPERATOR, None)],
    "jobs.remove_job": [(OPERATOR, None)],
    "jobs.claim_job": [(RUNNER, {"tasks": ["t"], "proc": 1, "mem": 1})],
    "jobs.acquire_job": [(RUNNER, {"acquired": True})],
}
# Routes of /api that never touch the database.
WITHOUT_DATABASE = {"openapi.document", "apidocs.docs", "apidocs.swagger_ui_file"}


def api_requests(app: Flask) -> Iterator[tuple[str, str, dict[str, str], object]]:
    """(method, path, headers, JSON body) for every route under /api, each way it is called."""
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/") or rule.endpoint in WITHOUT_DATABASE:
            continue
        path = rule.rule.replace("<job_id:job_id>", JOB_ID)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for headers, body in REQUESTS.get(rule.endpoint, [(OPERATOR, {})]):
                yield method, path, headers, body


@pytest.fixture
def empty_database(database_url, tmp_path) -> Iterator[str]:
    """An empty database of the test's own kind: a new SQLite file, or a new PostgreSQL database."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.sqlite'}"
        return
    empty = url.set(database=f"{url.database}_unmigrated").render_as_string(hide_password=False)
    _recreate_postgresql_database(empty)
    yield empty
    _drop_postgresql_database(empty)


@pytest.fixture
def make_app() -> Iterator[Callable[[str], Flask]]:
    made: list[Flask] = []

    def make(url: str) -> Flask:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url})
        made.append(app)
        return app

    yield make
    for app in made:
        with app.app_context():
            db.engine.dispose()


def test_every_api_route_on_a_database_never_migrated_is_503(empty_database, make_app):
    app = make_app(empty_database)
    client = app.test_client()
    calls = list(api_requests(app))
    assert len(calls) >= len(REQUESTS)
    for method, path, headers, body in calls:
        response = client.open(path, method=method, headers=headers, json=body)
        assert response.status_code == 503, (method, path, response.json)
        assert response.json == NOT_MIGRATED, (method, path)
        assert response.headers["Retry-After"] == "5"


def test_api_routes_on_a_database_behind_the_code_are_503(empty_database, make_app):
    app = make_app(empty_database)
    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY), revision="0001")
    client = app.test_client()
    # 0001 has the jobs table, but neither its later columns nor the tokens table.
    for method, path, headers, body in [
        ("GET", f"/api/jobs/{JOB_ID}", JOB_AUTH, None),
        ("POST", f"/api/jobs/{JOB_ID}/status", JOB_AUTH, RUNNING),
        ("GET", "/api/jobs", OPERATOR, None),
    ]:
        response = client.open(path, method=method, headers=headers, json=body)
        assert response.status_code == 503, (method, path, response.json)
        assert response.json == NOT_MIGRATED


def test_a_missing_table_on_a_database_at_head_is_a_bug(empty_database, make_app):
    app = make_app(empty_database)
    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY))
        db.session.execute(text("DROP TABLE console_sessions"))  # its foreign key names api_tokens
        db.session.execute(text("DROP TABLE api_tokens"))
        db.session.commit()
    response = app.test_client().get("/api/jobs", headers=OPERATOR)
    assert response.status_code == 500
    assert response.json == {"id": "internal_error", "message": "Internal server error"}


@pytest.mark.e2e
def test_a_database_never_migrated_over_http(empty_database, tmp_path):
    server = start_gunicorn(empty_database, tmp_path / "gunicorn.log")
    try:
        http = requests.Session()
        for method, path, headers, body in api_requests(create_app({"SQLALCHEMY_DATABASE_URI": empty_database})):
            response = http.request(method, server.url + path, headers=headers, json=body, timeout=30)
            assert response.status_code == 503, (method, path, response.text)
            assert response.json() == NOT_MIGRATED
            assert response.headers["Retry-After"] == "5"
        ready = http.get(server.url + "/readyz", timeout=30)
        assert ready.status_code == 503
        assert ready.json()["migrations"] == "none"
        http.close()
        assert "Traceback" not in server.log()
    finally:
        stop_gunicorn(server.process)
