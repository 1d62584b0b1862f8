"""A database that answers but cannot take writes: a SQLite file made read-only or its disk
full, a PostgreSQL database made read-only. Writes answer 503 while it lasts, /readyz says
so, and service resumes by itself once writes can succeed again."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from flask_migrate import upgrade
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from conftest import (
    _drop_postgresql_database,
    _recreate_postgresql_database,
    basic_auth,
    skip_without,
    start_gunicorn,
    stop_gunicorn,
)
from jobapi import MIGRATIONS_DIRECTORY, create_app
from jobapi.jobs import service
from jobapi.extensions import db
from jobapi.storage.engines import write_connection


def _cannot_test(reason: str) -> None:
    """Skip on a developer's machine; in CI, where the suite must run whole, fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _migrated_app(url: str):
    """An app on the empty database at ``url``, migrated, with one job: (app, Basic auth)."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY))
        new = service.create_job(write_connection(db.session), task="fault", user="ops")
        db.session.commit()
        job_id, key = new.job.id, new.key
        db.engine.dispose()  # only the server under test holds connections
    return app, job_id, (f"job-{job_id}", key)


class Caller:
    """Pushes and reads one job over HTTP, each push with its own Idempotency-Key."""

    def __init__(self, base_url: str, job_id: str, auth: tuple[str, str]) -> None:
        self.base_url, self.job_id, self.auth = base_url, job_id, auth
        self.http = requests.Session()

    def push(self, stage: str) -> requests.Response:
        return self.http.post(
            f"{self.base_url}/api/jobs/{self.job_id}/status",
            json={"state": "running", "stage": stage, "progress": 1},
            headers={"Idempotency-Key": stage},
            auth=self.auth,
            timeout=30,
        )

    def read(self) -> requests.Response:
        return self.http.get(f"{self.base_url}/api/jobs/{self.job_id}", auth=self.auth, timeout=30)

    def ready(self) -> requests.Response:
        return self.http.get(f"{self.base_url}/readyz", timeout=30)

    def close(self) -> None:
        """Hang up, so that the server stops without waiting on an idle keep-alive connection."""
        self.http.close()


def _assert_refused(caller: Caller, stages: list[str]) -> None:
    for stage in stages:
        response = caller.push(stage)
        assert response.status_code == 503, response.text
        assert response.json() == {"id": "service_unavailable", "message": "Database unavailable"}
        assert int(response.headers["Retry-After"]) > 0
    ready = caller.ready()
    assert ready.status_code == 503
    assert ready.json()["database"] == "refuses_writes"
    assert int(ready.headers["Retry-After"]) > 0


def _assert_serving(caller: Caller, stages: list[str]) -> list[str]:
    """Ready, and every write succeeds at its first try; returns the job's stages."""
    assert caller.ready().status_code == 200
    for stage in stages:
        response = caller.push(stage)
        assert response.status_code == 200, response.text
    read = caller.read()
    assert read.status_code == 200
    return [record["stage"] for record in read.json()["status"][1:]]


# A SQLite file made read-only


@pytest.fixture
def immutable() -> Iterator[Callable[[Path, bool], None]]:
    """Make files immutable (chattr +i), which refuses writes to root as well; undone after."""
    if shutil.which("chattr") is None:
        skip_without("chattr", "read-only SQLite files", "e2fsprogs")
    changed: set[Path] = set()

    def set_immutable(path: Path, on: bool) -> None:
        result = subprocess.run(["chattr", "+i" if on else "-i", str(path)], capture_output=True, text=True)
        if result.returncode != 0:
            _cannot_test(f"chattr cannot make {path} immutable here ({result.stderr.strip()}): read-only SQLite files are not tested")
        (changed.add if on else changed.discard)(path)

    yield set_immutable
    for path in changed:
        subprocess.run(["chattr", "-i", str(path)], check=False)


@pytest.mark.e2e
def test_sqlite_file_made_read_only_is_503_then_recovers_over_http(database_url, tmp_path, immutable):
    if make_url(database_url).get_backend_name() != "sqlite":
        pytest.skip("runs in the SQLite half of the suite")
    path = tmp_path / "jobapi.sqlite"
    url = f"sqlite:///{path}"
    app, job_id, auth = _migrated_app(url)
    server = start_gunicorn(url, tmp_path / "gunicorn.log")
    caller = Caller(server.url, job_id, auth)
    try:
        immutable(path, True)
        # Every worker opens its connections on the read-only file now.
        _assert_refused(caller, [f"ro-{i}" for i in range(6)])
        assert caller.read().status_code == 200  # reads go on
        immutable(path, False)
        stages = _assert_serving(caller, [f"rw-{i}" for i in range(6)])
        assert stages == [f"rw-{i}" for i in range(6)]
    finally:
        caller.close()
        stop_gunicorn(server.process)


def test_sqlite_file_made_read_only_is_503_then_recovers(database_url, tmp_path, immutable):
    if make_url(database_url).get_backend_name() != "sqlite":
        pytest.skip("runs in the SQLite half of the suite")
    path = tmp_path / "jobapi.sqlite"
    app, job_id, auth = _migrated_app(f"sqlite:///{path}")
    client = app.test_client()
    headers = basic_auth(*auth)

    def push(stage: str):
        return client.post(
            f"/api/jobs/{job_id}/status",
            json={"state": "running", "stage": stage, "progress": 1},
            headers=headers,
        )

    immutable(path, True)
    refused = push("a")
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert client.get(f"/api/jobs/{job_id}", headers=headers).status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json["database"] == "refuses_writes"
    assert "read-only" in ready.json["message"]

    immutable(path, False)
    assert client.get("/readyz").status_code == 200
    # The connections opened on the read-only file are replaced, not reused.
    assert push("b").status_code == 200
    assert push("c").status_code == 200
    stages = [r["stage"] for r in client.get(f"/api/jobs/{job_id}", headers=headers).json["status"]]
    assert stages == [None, "b", "c"]
    with app.app_context():
        db.engine.dispose()


# A SQLite file whose disk is full


@pytest.fixture
def small_disk(tmp_path) -> Iterator[Path]:
    """A folder on a file system of its own, 8 MiB large (a tmpfs), unmounted after."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    if shutil.which("mount") is None:
        skip_without("mount", "a full disk")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        _cannot_test(f"cannot mount a small tmpfs here ({result.stderr.strip()}): a full disk is not tested")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(folder: Path) -> Path:
    """Write a file until the disk has no room left; removing it frees the room."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 65536)
        except OSError:
            pass
        try:
            while True:
                out.write(b"\0" * 512)
        except OSError:
            pass
    return filler


@pytest.mark.e2e
def test_sqlite_disk_full_is_503_then_recovers_over_http(database_url, tmp_path, small_disk):
    if make_url(database_url).get_backend_name() != "sqlite":
        pytest.skip("runs in the SQLite half of the suite")
    url = f"sqlite:///{small_disk / 'jobapi.sqlite'}"
    app, job_id, auth = _migrated_app(url)
    server = start_gunicorn(url, tmp_path / "gunicorn.log")
    caller = Caller(server.url, job_id, auth)
    try:
        assert caller.push("before").status_code == 200
        filler = _fill(small_disk)
        _assert_refused(caller, [f"full-{i}" for i in range(6)])
        assert "bytes free" in caller.ready().json()["message"]
        assert caller.read().status_code == 200
        filler.unlink()
        stages = _assert_serving(caller, [f"room-{i}" for i in range(6)])
        assert stages == ["before", *[f"room-{i}" for i in range(6)]]
    finally:
        caller.close()
        stop_gunicorn(server.process)


# A PostgreSQL database made read-only


@pytest.fixture
def private_database(database_url) -> Iterator[str]:
    """A PostgreSQL database of this test's own, beside the test database, dropped after."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("runs in the PostgreSQL half of the suite")
    private = url.set(database=f"{url.database}_unwritable").render_as_string(hide_password=False)
    _recreate_postgresql_database(private)
    yield private
    _drop_postgresql_database(private)


def _set_read_only(url: str, on: bool) -> None:
    """ALTER DATABASE: sessions that begin after it are read-only (or not); those open keep theirs."""
    name = make_url(url).database
    admin = create_engine(make_url(url).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        if on:
            connection.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        else:
            connection.exec_driver_sql(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
    admin.dispose()


@pytest.mark.e2e
def test_postgresql_made_read_only_is_503_then_recovers_over_http(private_database, tmp_path):
    app, job_id, auth = _migrated_app(private_database)
    _set_read_only(private_database, True)
    server = start_gunicorn(private_database, tmp_path / "gunicorn.log")
    caller = Caller(server.url, job_id, auth)
    try:
        _assert_refused(caller, [f"ro-{i}" for i in range(6)])
        assert "read-only" in caller.ready().json()["message"]
        assert caller.read().status_code == 200
        _set_read_only(private_database, False)
        # Sessions begun read-only (by the reads above) are replaced, not reused.
        stages = _assert_serving(caller, [f"rw-{i}" for i in range(6)])
        assert stages == [f"rw-{i}" for i in range(6)]
    finally:
        caller.close()
        stop_gunicorn(server.process)


def test_postgresql_made_read_only_is_503_not_500(private_database):
    app, job_id, auth = _migrated_app(private_database)
    client = app.test_client()
    headers = basic_auth(*auth)

    def push(stage: str):
        return client.post(
            f"/api/jobs/{job_id}/status",
            json={"state": "running", "stage": stage, "progress": 1},
            headers=headers,
        )

    assert push("a").status_code == 200  # a session begun writable...
    _set_read_only(private_database, True)
    ready = client.get("/readyz")  # ...on which /readyz still sees that new ones are not
    assert ready.status_code == 503
    assert ready.json["database"] == "refuses_writes"
    with app.app_context():
        db.engine.dispose()  # sessions begun from now on are read-only
    refused = push("b")
    assert refused.status_code == 503
    assert refused.json == {"id": "service_unavailable", "message": "Database unavailable"}
    assert refused.headers["Retry-After"] == "5"
    assert client.get(f"/api/jobs/{job_id}", headers=headers).status_code == 200

    _set_read_only(private_database, False)
    assert client.get("/readyz").status_code == 200
    assert push("c").status_code == 200
    stages = [r["stage"] for r in client.get(f"/api/jobs/{job_id}", headers=headers).json["status"]]
    assert stages == [None, "a", "c"]
    with app.app_context():
        db.engine.dispose()
