"""Fixtures: the app on a migrated test database (SQLite, or PostgreSQL via TEST_DATABASE_URL),
its client and CLI runner, job factories, and a live gunicorn for end-to-end tests."""

from __future__ import annotations

import base64
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import create_engine, delete, select
from sqlalchemy.engine import make_url

from jobapi import MIGRATIONS_DIRECTORY, create_app
from jobapi.config import normalize_database_url
from jobapi.extensions import db
from jobapi.jobs import service
from jobapi.models import Job, JobStatus
from jobapi.storage import begin_on_driver, end_on_driver, held_connection
from jobapi.tokens import create_token

ROOT = Path(__file__).resolve().parents[1]
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "").strip()


def pytest_report_header(config) -> str:
    target = make_url(normalize_database_url(TEST_DATABASE_URL)).render_as_string() if TEST_DATABASE_URL else "SQLite"
    return f"jobapi test database: {target}"


def _recreate_postgresql_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
        connection.exec_driver_sql(f'CREATE DATABASE "{target.database}"')
    admin.dispose()


def _drop_postgresql_database(url: str) -> None:
    target = make_url(url)
    admin = create_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{target.database}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="session", autouse=True)
def _secret_key_file(tmp_path_factory) -> Iterator[None]:
    """Apps and servers made by tests keep their session key in a temporary folder,
    never in the source tree's instance folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SECRET_KEY", raising=False)
        patch.setenv("SECRET_KEY_FILE", str(tmp_path_factory.mktemp("instance") / "secret_key"))
        yield


@pytest.fixture(scope="session")
def database_url(tmp_path_factory) -> Iterator[str]:
    """A fresh, empty database for this test session.

    On PostgreSQL its name is TEST_DATABASE_URL's with this run's process id
    added (``jobapi_test_12345``), so two runs against one server never drop
    each other's database.
    """
    if TEST_DATABASE_URL:
        base = make_url(normalize_database_url(TEST_DATABASE_URL))
        url = base.set(database=f"{base.database}_{os.getpid()}").render_as_string(hide_password=False)
        _recreate_postgresql_database(url)
        yield url
        _drop_postgresql_database(url)
    else:
        yield "sqlite:///" + str(tmp_path_factory.mktemp("db") / "jobapi.sqlite")


@pytest.fixture(scope="session")
def is_postgresql(database_url) -> bool:
    return make_url(database_url).get_backend_name() == "postgresql"


@pytest.fixture(scope="session")
def app(database_url) -> Iterator[Flask]:
    """The app on the test database, its schema built by the real migrations."""
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url})
    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY))
    yield app
    with app.app_context():
        db.engine.dispose()


@pytest.fixture(autouse=True)
def _empty_tables(request) -> Iterator[None]:
    """Each test starts from empty tables (only for tests that use the database): every
    table of the models, children before parents."""
    yield
    if "app" not in request.fixturenames:
        return
    app = request.getfixturevalue("app")
    with app.app_context():
        for table in reversed(db.metadata.sorted_tables):
            db.session.execute(delete(table))
        db.session.commit()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@dataclass(frozen=True)
class JobCredentials:
    """A job's id and key, and the headers that authenticate as it."""

    id: str
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return basic_auth(f"job-{self.id}", self.key)

    @property
    def requests_auth(self) -> tuple[str, str]:
        return (f"job-{self.id}", self.key)


def basic_auth(username: str, password: str) -> dict[str, str]:
    """An Authorization header for HTTP Basic."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def bearer(secret: str) -> dict[str, str]:
    """An Authorization header for a bearer token."""
    return {"Authorization": f"Bearer {secret}"}


def push(client, job: JobCredentials, state: str = "running", stage: str | None = "work",
         progress: int | str = 50, *, headers: dict[str, str] | None = None, **fields):
    """Push a status as the job, through the test client; the response."""
    body = {"state": state, "stage": stage, "progress": progress, **fields}
    return push_body(client, job, body, headers=headers)


def push_body(client, job: JobCredentials, body, *, headers: dict[str, str] | None = None):
    """POST any JSON body to the job's status route, as the job; the response."""
    return client.post(f"/api/jobs/{job.id}/status", json=body, headers={**job.auth, **(headers or {})})


def push_through_service(app, job_id: str, state: str, stage: str | None, progress: int, error=None) -> None:
    """Push a status as the job's own request does, in a transaction of its own."""
    fields = {"state": state, "stage": stage, "progress": progress, "error": error}
    with app.app_context():
        connection = held_connection(db.engine)
        begin_on_driver(connection)
        try:
            locked = service.lock_own_job(connection, job_id)
            service.push_status(connection, locked, service.PushFields(fields))
        finally:
            end_on_driver(connection, commit=True)


@pytest.fixture
def make_token(app) -> Callable[..., str]:
    """Make an operator's or runner's token through the service; returns its secret."""
    numbers = itertools.count(1)

    def make(role: str, name: str | None = None) -> str:
        with app.app_context():
            new = create_token(db.session, name=name or f"{role}-{next(numbers)}", role=role)
            db.session.commit()
            return new.secret

    return make


@pytest.fixture
def operator(make_token) -> dict[str, str]:
    """The Authorization header of an operator."""
    return bearer(make_token("operator", "ops"))


@pytest.fixture
def runner_token(make_token) -> dict[str, str]:
    """The Authorization header of a runner."""
    return bearer(make_token("runner", "runner-1"))


@pytest.fixture
def make_job(app) -> Callable[..., JobCredentials]:
    """Make a job through the service, as the CLI does; returns its credentials."""

    def make(**fields) -> JobCredentials:
        fields.setdefault("task", "create_subtraction")
        fields.setdefault("user", "igboyes")
        with app.app_context():
            new = service.create_job(db.session, **fields)
            db.session.commit()
            return JobCredentials(id=new.job.id, key=new.key)

    return make


@pytest.fixture
def job(make_job) -> JobCredentials:
    return make_job(args={"subtraction_id": "Thale"}, proc=2, mem=4)


@pytest.fixture
def stored(app) -> Callable[[str], list[JobStatus]]:
    """The status records stored for a job, in order, read straight from the database."""

    def read(job_id: str) -> list[JobStatus]:
        with app.app_context():
            records = db.session.scalars(
                select(JobStatus).where(JobStatus.job_id == job_id).order_by(JobStatus.seq)
            ).all()
            db.session.expunge_all()
            return list(records)

    return read


@pytest.fixture
def stored_job(app) -> Callable[[str], Job | None]:
    """The jobs row of a job, read straight from the database."""

    def read(job_id: str) -> Job | None:
        with app.app_context():
            job = db.session.get(Job, job_id)
            db.session.expunge_all()
            return job

    return read


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    """A gunicorn serving the app over HTTP on a loopback port."""

    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_gunicorn(
    database_url: str,
    log_path: Path,
    workers: int = 2,
    threads: int = 4,
    extra_env: dict[str, str] | None = None,
    port: int | None = None,
    app_args: tuple[str, ...] = ("wsgi:app",),
) -> LiveServer:
    """Start ``gunicorn wsgi:app`` (or ``app_args``) with the repository's config; wait until it answers.

    ``port`` restarts a server on the port it had; by default a free one is taken.
    """
    port = port or free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": str(workers),
        "GUNICORN_THREADS": str(threads),
        **(extra_env or {}),
    }
    env.pop("DB_POOL_SIZE", None)
    # Each server logs in the default format and keeps metrics of its own,
    # whatever the developer's shell says.
    for variable in ("LOG_FORMAT", "PROMETHEUS_MULTIPROC_DIR"):
        if variable not in (extra_env or {}):
            env.pop(variable, None)
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", *app_args],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_answering(process, url, log_path)
    except BaseException:
        stop_gunicorn(process)  # never leave a server behind
        raise
    return LiveServer(url=url, process=process, log_path=log_path)


def _wait_until_answering(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("gunicorn exited:\n" + log_path.read_text(errors="replace"))
        try:
            requests.get(url + "/healthz", timeout=5)
            return
        except (requests.ConnectionError, requests.Timeout):
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not answer:\n" + log_path.read_text(errors="replace"))


def stop_gunicorn(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def live_server(app, database_url, tmp_path_factory) -> Iterator[LiveServer]:
    """A real gunicorn (2 workers) on the test database, for the whole session."""
    server = start_gunicorn(database_url, tmp_path_factory.mktemp("gunicorn") / "gunicorn.log")
    yield server
    stop_gunicorn(server.process)
