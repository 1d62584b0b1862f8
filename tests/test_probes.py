"""The probes: /healthz answers while the process does; /readyz only with the database up and at head."""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator

import pytest
import requests
from alembic.script import ScriptDirectory
from conftest import free_port
from flask import Flask
from flask_migrate import upgrade

import jobapi
from jobapi import MIGRATIONS_DIRECTORY, create_app
from jobapi.extensions import db

FIRST_REVISION = "0001"


@pytest.fixture
def make_app(tmp_path) -> Iterator[Callable[..., Flask]]:
    """Apps of their own, on databases other than the test database."""
    made: list[Flask] = []

    def make(database_url: str | None = None, **config) -> Flask:
        url = database_url or "sqlite:///" + str(tmp_path / f"probe{len(made)}.sqlite")
        app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": url, **config})
        made.append(app)
        return app

    yield make
    for app in made:
        with app.app_context():
            db.engine.dispose()


def unreachable_postgresql() -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"


def assert_not_ready(response, message_part: str, **details: str) -> dict:
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    body = response.get_json()
    assert body["id"] == "service_unavailable"
    assert message_part in body["message"]
    for name, value in details.items():
        assert body[name] == value
    return body


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "version": jobapi.__version__}


def test_healthz_needs_no_database(make_app):
    app = make_app(unreachable_postgresql(), DB_CONNECT_TIMEOUT=1)
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "version": jobapi.__version__}


def test_readyz_on_a_migrated_database(client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json() == {"status": "ready", "database": "ok", "migrations": "head"}


def test_probes_need_no_credentials_and_ignore_bad_ones(client):
    for path in ("/healthz", "/readyz"):
        response = client.get(path, headers={"Authorization": "Basic !!!"})
        assert response.status_code == 200, path
        assert "WWW-Authenticate" not in response.headers


def test_readyz_with_the_database_unreachable(make_app):
    app = make_app(unreachable_postgresql(), DB_CONNECT_TIMEOUT=1)
    response = app.test_client().get("/readyz")
    assert_not_ready(response, "Database unavailable", database="unavailable", migrations="unknown")


def test_readyz_on_a_database_never_migrated(make_app):
    app = make_app()
    response = app.test_client().get("/readyz")
    assert_not_ready(response, "no migrations", database="ok", migrations="none")


def test_readyz_on_a_database_behind_the_code(make_app):
    app = make_app()
    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY), revision=FIRST_REVISION)
    client = app.test_client()
    body = assert_not_ready(client.get("/readyz"), FIRST_REVISION, database="ok", migrations="not_at_head")
    head = ScriptDirectory(str(MIGRATIONS_DIRECTORY)).get_current_head()
    assert head in body["message"]

    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY))
    # The head was read at start-up; the database is read on every probe.
    assert client.get("/readyz").status_code == 200


def test_readyz_without_migration_scripts(make_app, tmp_path):
    app = make_app(MIGRATIONS_DIRECTORY=str(tmp_path / "no-migrations"))
    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY))
    assert_not_ready(app.test_client().get("/readyz"), "head is none", migrations="not_at_head")


def test_probes_over_http(live_server):
    health = requests.get(f"{live_server.url}/healthz", timeout=10)
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "version": jobapi.__version__}
    ready = requests.get(f"{live_server.url}/readyz", timeout=10)
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": "ok", "migrations": "head"}
    assert ready.headers["Content-Type"] == "application/json"


def test_the_version_is_the_package_metadata(client):
    assert jobapi.__version__ == importlib.metadata.version("jobapi")
    assert client.get("/healthz").get_json()["version"] == jobapi.__version__
    assert client.get("/api/openapi.json").get_json()["info"]["version"] == jobapi.__version__
