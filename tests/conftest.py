"""Fixtures: the app on a migrated test database (SQLite, or PostgreSQL via TEST_DATABASE_URL),
its client and CLI runner, job factories, and a live gunicorn for end-to-end tests."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest
import requests
from flask import Flask
from flask_migrate import upgrade
from sqlalchemy import create_engine, delete, select
from sqlalchemy.engine import make_url

from jobapi import MIGRATIONS_DIRECTORY, create_app
from jobapi.config import normalize_database_url
from jobapi.extensions import db
from jobapi.storage.engines import write_connection
from jobapi.jobs import service
from jobapi.models import Job, JobStatus
from jobapi.storage.connections import begin_on_driver, end_on_driver, held_connection
from jobapi.tokens import create_token

ROOT = Path(__file__).resolve().parents[1]
TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "").strip()


def pytest_report_header(config) -> str:
    target = make_url(normalize_database_url(TEST_DATABASE_URL)).render_as_string() if TEST_DATABASE_URL else "SQLite"
    return f"jobapi test database: {target}"


# Programs the suite needs beyond Python's packages. A test that finds one missing skips
# with a reason made by skip_without (below), and the run ends with one line naming every
# area left untested and the Debian packages that bring them; under CI=true it fails instead.
MISSING_TOOL = "missing tool: "
_MISSING_TOOL_REASON = re.compile(r"missing tool: (?P<tool>.+?) \((?P<area>.+); apt-get install (?P<package>\S+)\)$")


def skip_without(tool: str, area: str, package: str | None = None) -> NoReturn:
    """Skip the calling test (or module) because ``tool`` is not installed; under CI=true,
    where the suite must run whole (``.ci/run`` installs what it needs), fail it.

    ``area`` says what goes untested, ``package`` names the Debian package that brings
    the tool (default: the tool's name).
    """
    __tracebackhide__ = True  # the skip is reported at the caller's line
    install = f"apt-get install {package or tool}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{tool} is not installed ({install}), and CI must test {area}", pytrace=False)
    pytest.skip(f"{MISSING_TOOL}{tool} ({area}; {install})", allow_module_level=True)


def require_program(name: str, area: str, package: str | None = None, paths: tuple[str, ...] = ()) -> str:
    """The path of the program ``name``, found on PATH or at one of ``paths``; else skip_without."""
    __tracebackhide__ = True
    found = shutil.which(name) or next((path for path in paths if os.access(path, os.X_OK)), None)
    if found is None:
        skip_without(name, area, package)
    return found


def pytest_terminal_summary(terminalreporter) -> None:
    """One line naming every area skipped for a missing tool, and how to install them all.

    With MISSING_TOOLS_FILE set (``make test`` sets it for its two halves), the areas are
    also kept in that file, and the line names those of earlier runs that kept them there too.
    """
    found: list[dict[str, str]] = []
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        match = _MISSING_TOOL_REASON.match(reason.removeprefix("Skipped: "))
        if match:
            found.append(match.groupdict())
    record = os.environ.get("MISSING_TOOLS_FILE")
    if record:
        path = Path(record)
        earlier = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        with path.open("a") as file:
            file.writelines(json.dumps(entry) + "\n" for entry in found)
        found = earlier + found
    areas: dict[str, list[str]] = {}
    packages: dict[str, None] = {}
    for entry in found:
        listed = areas.setdefault(entry["tool"], [])
        if entry["area"] not in listed:
            listed.append(entry["area"])
        packages[entry["package"]] = None
    changes = terminalreporter.config.stash.get(_TREE_CHANGES, [])
    if changes:
        terminalreporter.write_line(
            "The run changed the checkout (tests must write to temporary folders or build/): "
            + ", ".join(line.strip() for line in changes),
            red=True, bold=True,
        )
    if areas:
        named = "; ".join(f"{tool}: {', '.join(listed)}" for tool, listed in areas.items())
        terminalreporter.write_line(
            f"Not tested for want of a tool ({named}); apt-get install -y {' '.join(packages)}",
            yellow=True, bold=True,
        )


# The run leaves the checkout as it found it: what tests write goes to temporary
# folders or to build/ (ignored by git). Under CI=true a run that changed it fails.
_TREE_BEFORE = pytest.StashKey[str | None]()
_TREE_CHANGES = pytest.StashKey[list[str]]()


def _tree_status() -> str | None:
    """``git status`` of the checkout (changed and untracked files), or None outside one."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return status.stdout if status.returncode == 0 else None


def pytest_sessionstart(session) -> None:
    session.config.stash[_TREE_BEFORE] = _tree_status()


def pytest_sessionfinish(session, exitstatus) -> None:
    before, after = session.config.stash.get(_TREE_BEFORE, None), _tree_status()
    if before is None or after is None or after == before:
        return
    changes = sorted(set(after.splitlines()) - set(before.splitlines()))
    # ``make screenshots`` asks for its pictures in the checkout.
    asked = os.environ.get("SCREENSHOTS_DIR", "").strip("/")
    changes = [line for line in changes if not asked or not line[3:].startswith(asked + "/")]
    session.config.stash[_TREE_CHANGES] = changes
    if changes and os.environ.get("CI", "").lower() == "true":
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def build_package(into: Path) -> Path:
    """jobapi's files as a wheel or an install lays them out (setuptools' own build of the
    package, into ``into``/lib); that folder."""
    pytest.importorskip("setuptools", reason="setuptools is not installed: the package is not built")
    built = subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(into),
         "build_py", "--build-lib", str(into / "lib")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert built.returncode == 0, built.stderr
    return into / "lib"


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
            locked = service.lock_job(connection, job_id)
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
            new = service.create_job(write_connection(db.session), **fields)
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
