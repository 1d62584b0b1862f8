"""A SQLite file deleted (or replaced) while the server runs (SPEC 8, database faults): connections
still hold the deleted file open, so a write into it would answer 200 and be lost with the last
of them. Requests answer 503 instead, /readyz says so, no empty file is made in its place, and
service resumes by itself once a file is back (a restored backup)."""

from __future__ import annotations

import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy.engine import make_url

from conftest import basic_auth, start_gunicorn, stop_gunicorn
from jobapi import create_app
from test_unwritable import Caller, _migrated_app

pytestmark = pytest.mark.usefixtures("sqlite_half")


@pytest.fixture
def sqlite_half(database_url) -> None:
    if make_url(database_url).get_backend_name() != "sqlite":
        pytest.skip("runs in the SQLite half of the suite")


def backup(path: Path, to: Path) -> None:
    """A consistent copy of the database, as an operator's backup would be."""
    with sqlite3.connect(path) as source, sqlite3.connect(to) as target:
        source.backup(target)
    source.close()
    target.close()


def delete_database(path: Path) -> None:
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        name.unlink(missing_ok=True)


def stored_stages(path: Path, job_id: str) -> list[str]:
    """The job's stages as a fresh connection to the file at ``path`` reads them."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
        rows = connection.execute("SELECT stage FROM job_status WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()
    connection.close()
    return [stage for (stage,) in rows][1:]


@pytest.fixture
def served(tmp_path) -> Iterator[SimpleNamespace]:
    """An app on a SQLite file of its own holding one job: its path, test client, job and push."""
    path = tmp_path / "jobapi.sqlite"
    _, job_id, (user, key) = _migrated_app(f"sqlite:///{path}")
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}"})
    client = app.test_client()
    auth = basic_auth(user, key)

    def push(stage: str):
        return client.post(f"/api/jobs/{job_id}/status", headers={**auth, "Idempotency-Key": stage},
                           json={"state": "running", "stage": stage, "progress": 1})

    yield SimpleNamespace(path=path, client=client, job_id=job_id, auth=auth, push=push)
    with app.app_context():
        app.extensions["sqlalchemy"].engine.dispose()


def test_a_deleted_file_is_503_until_a_file_is_back(served, tmp_path):
    path, client = served.path, served.client
    assert served.push("before").status_code == 200  # this thread now holds a connection to the file
    assert client.get("/readyz").status_code == 200
    backup(path, tmp_path / "backup.sqlite")
    delete_database(path)

    for stage in ("gone-1", "gone-2"):
        answer = served.push(stage)
        assert answer.status_code == 503, answer.get_json()
        assert answer.get_json() == {"id": "service_unavailable", "message": "Database unavailable"}
        assert int(answer.headers["Retry-After"]) > 0
    assert client.get(f"/api/jobs/{served.job_id}", headers=served.auth).status_code == 503
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.get_json()["database"] == "unavailable"
    assert not path.exists()  # no empty database made in its place

    os.replace(tmp_path / "backup.sqlite", path)
    assert client.get("/readyz").status_code == 200
    assert served.push("restored").status_code == 200
    document = client.get(f"/api/jobs/{served.job_id}", headers=served.auth).get_json()
    assert [record["stage"] for record in document["status"][1:]] == ["before", "restored"]
    assert stored_stages(path, served.job_id) == ["before", "restored"]


def test_a_replaced_file_is_served_at_once(served, tmp_path):
    assert served.push("old").status_code == 200
    backup(served.path, tmp_path / "restore.sqlite")
    # A backup restored in its place: another file (and no WAL of the old one) at the database's path.
    delete_database(served.path)
    os.replace(tmp_path / "restore.sqlite", served.path)
    assert served.push("new").status_code == 200
    assert stored_stages(served.path, served.job_id) == ["old", "new"]


@pytest.mark.e2e
def test_over_http_no_push_is_acknowledged_into_a_deleted_file(tmp_path):
    path = tmp_path / "jobapi.sqlite"
    url = f"sqlite:///{path}"
    _, job_id, auth = _migrated_app(url)
    server = start_gunicorn(url, tmp_path / "gunicorn.log")
    caller = Caller(server.url, job_id, auth)
    acknowledged: list[str] = []
    try:
        # Every thread of both workers takes its connection to the file.
        for number in range(24):
            assert caller.push(f"before-{number}").status_code == 200
            acknowledged.append(f"before-{number}")
        backup(path, tmp_path / "backup.sqlite")
        delete_database(path)
        for number in range(24):
            answer = caller.push(f"gone-{number}")
            assert answer.status_code == 503, (number, answer.status_code, answer.text)
            assert int(answer.headers["Retry-After"]) > 0
        ready = caller.ready()
        assert ready.status_code == 503 and ready.json()["database"] == "unavailable"
        assert not path.exists()

        os.replace(tmp_path / "backup.sqlite", path)
        for number in range(8):
            answer = caller.push(f"after-{number}")
            assert answer.status_code == 200, answer.text
            acknowledged.append(f"after-{number}")
        assert caller.ready().status_code == 200
    finally:
        caller.close()
        kill_server(server.process.pid)  # no clean stop: nothing acknowledged may rest on one
        server.process.wait()
    assert stored_stages(path, job_id) == acknowledged


def kill_server(pid: int) -> None:
    """SIGKILL a gunicorn master and its workers."""
    workers = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for process in [pid, *map(int, workers)]:
        try:
            os.kill(process, signal.SIGKILL)
        except ProcessLookupError:
            pass
