"""The secret key that signs console sessions: from SECRET_KEY, else made once in a file that
every worker and every restart shares, made safely when workers start at once."""

from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import sys

import pytest

from jobapi import create_app
from jobapi.config import from_environment


_made = []


def _app(database_url: str, **config):
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, **config})
    _made.append(app)
    return app


@pytest.fixture(autouse=True)
def _close_connections():
    """Apps made here close their pooled connections when the test ends."""
    yield
    while _made:
        app = _made.pop()
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


def test_a_key_is_made_once_in_its_file_readable_by_its_owner_alone(tmp_path, database_url):
    path = tmp_path / "instance" / "secret_key"  # its folder does not exist yet
    first = _app(database_url, SECRET_KEY_FILE=str(path))
    key = first.config["SECRET_KEY"]
    assert re.fullmatch(r"[0-9a-f]{64}", key)
    assert path.read_text().strip() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    modified = path.stat().st_mtime_ns
    # A restart (or another worker) reads the same key and writes nothing.
    second = _app(database_url, SECRET_KEY_FILE=str(path))
    assert second.config["SECRET_KEY"] == key
    assert path.stat().st_mtime_ns == modified
    assert sorted(p.name for p in path.parent.iterdir()) == ["secret_key"]


def test_the_default_file_is_in_the_instance_folder(tmp_path, database_url, monkeypatch):
    from flask import Flask

    monkeypatch.delenv("SECRET_KEY_FILE")
    # The instance folder of an app made now is tmp_path.
    monkeypatch.setattr(Flask, "auto_find_instance_path", lambda self: str(tmp_path))
    app = _app(database_url)
    assert app.instance_path == str(tmp_path)
    assert (tmp_path / "secret_key").read_text().strip() == app.config["SECRET_KEY"]


def test_secret_key_from_the_environment_wins_and_no_file_is_made(tmp_path, database_url, monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "k" * 40)
    monkeypatch.setenv("SECRET_KEY_FILE", str(tmp_path / "secret_key"))
    assert from_environment()["SECRET_KEY"] == "k" * 40
    app = _app(database_url)
    assert app.config["SECRET_KEY"] == "k" * 40
    assert not (tmp_path / "secret_key").exists()


# A process that waits for the start signal (a file appearing), then reads or makes the key.
_MAKE_KEY = """
import os, sys, time
from jobapi.sessions import instance_secret_key
go, path = sys.argv[1], sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
    time.sleep(0.002)
print(instance_secret_key(path))
"""


def test_workers_starting_at_once_all_get_the_one_key(tmp_path):
    folder = tmp_path / "instance"
    path = folder / "secret_key"
    go = tmp_path / "go"
    workers = [
        subprocess.Popen([sys.executable, "-c", _MAKE_KEY, str(go), str(path)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    try:
        for worker in workers:
            assert worker.stdout.readline().strip() == "ready"
        go.touch()
        keys = [worker.communicate(timeout=30)[0].strip() for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert all(worker.returncode == 0 for worker in workers)
    assert len(set(keys)) == 1 and re.fullmatch(r"[0-9a-f]{64}", keys[0])
    assert path.read_text().strip() == keys[0]
    assert [p.name for p in folder.iterdir()] == ["secret_key"]  # no temporary file left


def test_sessions_survive_a_restart(app, database_url, tmp_path):
    from jobapi import tokens
    from jobapi.extensions import db
    from jobapi.models import ApiToken

    path = tmp_path / "secret_key"
    before = _app(database_url, SECRET_KEY_FILE=str(path))
    with before.app_context():
        secret = tokens.create_token(db.session, name="restart-ops", role="operator").secret
        db.session.commit()
    try:
        client = before.test_client()
        page = client.get("/console/sign-in").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        assert client.post("/console/sign-in", data={"token": secret, "csrf_token": token}).status_code == 303
        cookie = client.get_cookie("jobapi_session", path="/console").value

        after = _app(database_url, SECRET_KEY_FILE=str(path))  # the server restarted
        restarted = after.test_client()
        restarted.set_cookie("jobapi_session", cookie, path="/console")
        assert restarted.get("/console/").status_code == 200
        # A server with another key does not take the cookie.
        other = _app(database_url, SECRET_KEY_FILE=str(tmp_path / "other"))
        stranger = other.test_client()
        stranger.set_cookie("jobapi_session", cookie, path="/console")
        assert stranger.get("/console/").status_code == 302
    finally:
        with app.app_context():
            db.session.execute(ApiToken.__table__.delete().where(ApiToken.name == "restart-ops"))
            db.session.commit()


@pytest.mark.parametrize("problem", ["unwritable", "empty"])
def test_without_a_key_the_api_serves_and_the_console_says_why(tmp_path, database_url, caplog, problem):
    if problem == "unwritable":
        blocker = tmp_path / "not-a-folder"
        blocker.write_text("")
        path = blocker / "secret_key"  # its folder is a file: it can never be made
    else:
        path = tmp_path / "secret_key"
        path.write_text("\n")
        os.chmod(path, 0o600)
    with caplog.at_level(logging.WARNING, logger="jobapi.sessions"):
        app = _app(database_url, SECRET_KEY_FILE=str(path))
    assert app.config["SECRET_KEY"] is None
    assert "no secret key, so the console cannot sign anyone in" in caplog.text
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    console = client.get("/console/sign-in")
    assert console.status_code == 503 and console.mimetype == "text/html"
    assert "set SECRET_KEY" in console.text
