"""jobapi behind PgBouncer in transaction mode (deploy/pgbouncer.ini, Debian's PgBouncer 1.18): every
route and command under a mixed load without an error, nothing kept in a session, the statement
timeout cancelling a waiting statement on the server (reads included), a wait for a server
connection answered 503 in time, UTC answers whatever the server's zone, and migrations through
DATABASE_DIRECT_URL.

Each test starts a private PostgreSQL and a private PgBouncer from deploy/pgbouncer.ini in front of
it (tests/private_postgresql.py); gunicorn, where a test starts one, is the real thing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
import requests
from conftest import ROOT, basic_auth, bearer, start_gunicorn, stop_gunicorn
from flask_migrate import upgrade
from private_postgresql import (  # noqa: F401 - fixtures
    PrivateBouncer,
    PrivateCluster,
    make_bouncer,
    clusters,
)

from jobapi import MIGRATIONS_DIRECTORY, create_app
from jobapi.config import DEFAULTS, from_environment
from jobapi.extensions import db
from jobapi.storage.engines import write_connection
from jobapi.jobs import service
from jobapi.storage.connections import held_connection
from jobapi.tokens import create_token

pytestmark = pytest.mark.e2e

# SPEC 8: every request answers within this, a 503 included.
ANSWER_WITHIN = 10.0
TIMEOUT = ANSWER_WITHIN + 5


# See Deployment.make_job.
_MAKING_JOBS = threading.Lock()


@dataclass
class Deployment:
    """A private PostgreSQL, a PgBouncer from deploy/pgbouncer.ini in front of it, the schema
    migrated, an operator's and a runner's token."""

    cluster: PrivateCluster
    bouncer: PrivateBouncer
    operator: str
    runner: str

    def app(self, **config):
        """An app whose DATABASE_URL is PgBouncer (as gunicorn's would be)."""
        return create_app({"SQLALCHEMY_DATABASE_URI": self.bouncer.url,
                           "DATABASE_DIRECT_URL": self.cluster.url, **config})

    def make_job(self, **fields) -> tuple[str, str]:
        """A job made through the service (directly on the database): (id, key).

        One at a time: building apps in several threads at once trips CPython 3.11's
        compiler ("AST constructor recursion depth mismatch") in werkzeug's routing.
        """
        with _MAKING_JOBS:
            app = create_app({"SQLALCHEMY_DATABASE_URI": self.cluster.url})
        with app.app_context():
            new = service.create_job(write_connection(db.session), task=fields.pop("task", "align"), user="ops", **fields)
            db.session.commit()
            db.engine.dispose()
        return new.job.id, new.key


@pytest.fixture
def deployment(clusters, make_bouncer, request) -> Deployment:
    settings = getattr(request, "param", {})
    cluster = clusters.make(**settings)
    cluster.create_database()
    bouncer = make_bouncer(cluster)
    app = create_app({"SQLALCHEMY_DATABASE_URI": cluster.url})
    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY))
        operator = create_token(db.session, name="ops", role="operator").secret
        runner = create_token(db.session, name="node-1", role="runner").secret
        db.session.commit()
        db.engine.dispose()
    return Deployment(cluster=cluster, bouncer=bouncer, operator=operator, runner=runner)


def job_auth(job_id: str, key: str) -> tuple[str, str]:
    return (f"job-{job_id}", key)


# The settings


def test_db_pooler_and_database_direct_url_from_the_environment():
    assert from_environment({"DB_POOLER": " Transaction "})["DB_POOLER"] == "transaction"
    with pytest.raises(ValueError, match="DB_POOLER='pgbouncer'"):
        from_environment({"DB_POOLER": "pgbouncer"})
    url = "postgresql://jobapi@127.0.0.1:6432/jobapi"
    app = create_app({"SQLALCHEMY_DATABASE_URI": url})
    assert app.config["DATABASE_DIRECT_URL"] == "postgresql+psycopg://jobapi@127.0.0.1:6432/jobapi"
    assert app.config["DB_POOLER"] == "auto"
    direct = create_app({"SQLALCHEMY_DATABASE_URI": url, "DATABASE_DIRECT_URL": "postgres://jobapi@db/jobapi"})
    assert direct.config["DATABASE_DIRECT_URL"] == "postgresql+psycopg://jobapi@db/jobapi"


# The file itself


def test_deploy_pgbouncer_ini_runs_in_transaction_mode_with_its_settings(clusters, make_bouncer):
    bouncer = make_bouncer(clusters.make())
    config = bouncer.config()
    assert config["pool_mode"] == "transaction"
    # A wait for a backend is refused before jobapi's own deadline on an answer, well within 10 s.
    assert 0 < float(config["query_wait_timeout"]) < DEFAULTS["DB_RESPONSE_TIMEOUT"]
    assert int(config["default_pool_size"]) >= 1
    # jobapi needs no startup parameter ignored.
    assert config["ignore_startup_parameters"] == ""
    assert "WARNING" not in bouncer.log() and "ERROR" not in bouncer.log()


# Telling a pooler from the server


def test_each_connection_knows_whether_a_pooler_stands_between(deployment):
    """Through PgBouncer a connection prepares nothing and keeps nothing in its session; a direct
    one has its session's statement timeout and zone, and prepares; DB_POOLER says so outright."""
    through = deployment.app()
    direct = create_app({"SQLALCHEMY_DATABASE_URI": deployment.cluster.url})
    forced = create_app({"SQLALCHEMY_DATABASE_URI": deployment.cluster.url, "DB_POOLER": "transaction"})
    try:
        for app, pooled in ((through, True), (direct, False), (forced, True)):
            with app.app_context():
                driver = held_connection(db.engine).driver
                assert (driver.prepare_threshold is None) is pooled
                session_timeout = driver.execute("SHOW statement_timeout").fetchone()[0]
                assert session_timeout == ("0" if pooled else "2500ms")
                db.session.rollback()
    finally:
        for app in (through, direct, forced):
            with app.app_context():
                db.engine.dispose()

    # DB_POOLER=none sends the settings as libpq's startup options, which PgBouncer refuses.
    refused = deployment.app(DB_POOLER="none")
    job_id, key = deployment.make_job()
    response = refused.test_client().get(f"/api/jobs/{job_id}", headers=basic_auth(*job_auth(job_id, key)))
    assert response.status_code == 503
    assert response.json == {"id": "service_unavailable", "message": "Database unavailable"}
    assert "unsupported startup parameter: options" in deployment.bouncer.log()
    with refused.app_context():
        db.engine.dispose()


# A mixed load of every route


@dataclass
class Tally:
    """Every answer the clients got: (what, status) counts, and the ones not expected."""

    counts: Counter = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    slowest: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, what: str, expected: tuple[int, ...], send: Callable[[], requests.Response]) -> dict | None:
        """Send, count the answer; its JSON body ({} if none) if expected, else None."""
        started = time.monotonic()
        response = send()
        elapsed = time.monotonic() - started
        with self.lock:
            self.counts[(what, response.status_code)] += 1
            self.slowest = max(self.slowest, elapsed)
            if response.status_code not in expected:
                self.unexpected.append(f"{what}: {response.status_code} {response.text[:300]}")
                return None
        return response.json() if response.headers.get("Content-Type") == "application/json" else {}


def _csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


@pytest.mark.parametrize("deployment", [{"log_statement": "all", "log_line_prefix": "%r|"}], indirect=True)
def test_every_route_under_a_mixed_load_through_pgbouncer(deployment, tmp_path):
    """Job workers, runners, operators and the console at once, through two gunicorn processes of
    4 threads on PgBouncer: not one answer other than the route's own, and PostgreSQL's log shows
    no prepared statement and no session setting."""
    server = start_gunicorn(deployment.bouncer.url, tmp_path / "gunicorn.log", workers=2, threads=4,
                            extra_env={"DATABASE_DIRECT_URL": deployment.cluster.url})
    tally = Tally()
    stop_at = time.monotonic() + 8
    base = server.url + "/api"
    operator = bearer(deployment.operator)
    runner = bearer(deployment.runner)

    def worker(number: int) -> None:
        job_id, key = deployment.make_job()
        http = requests.Session()
        http.auth = job_auth(job_id, key)
        i = 0
        while time.monotonic() < stop_at:
            i += 1
            tally.call("GET job", (200,), lambda: http.get(f"{base}/jobs/{job_id}", timeout=TIMEOUT))
            push = {"state": "running", "stage": f"w{number}-{i}", "progress": i % 100}
            tally.call("POST status", (200,), lambda: http.post(
                f"{base}/jobs/{job_id}/status", json=push, headers={"Idempotency-Key": f"w{number}-{i}"},
                timeout=TIMEOUT))
            tally.call("PUT ping", (200,), lambda: http.put(f"{base}/jobs/{job_id}/ping", timeout=TIMEOUT))

    def operator_and_runner(number: int) -> None:
        http = requests.Session()
        body = {"task": f"task_{number}", "user": "ops", "args": {"n": number}}
        claim = {"tasks": [f"task_{number}"], "proc": 1, "mem": 1}
        while time.monotonic() < stop_at:
            made = tally.call("POST jobs", (201,), lambda: http.post(f"{base}/jobs", json=body, headers=operator,
                                                                   timeout=TIMEOUT))
            if made is None:
                continue
            tally.call("GET job (operator)", (200,), lambda: http.get(f"{base}/jobs/{made['id']}", headers=operator,
                                                                     timeout=TIMEOUT))
            tally.call("GET jobs", (200,), lambda: http.get(f"{base}/jobs?limit=20&task=task_{number}",
                                                           headers=operator, timeout=TIMEOUT))
            claimed = tally.call("POST claim", (200,), lambda: http.post(f"{base}/jobs/claim", json=claim,
                                                                        headers=runner, timeout=TIMEOUT))
            if claimed is None:
                continue
            auth = job_auth(claimed["id"], claimed["key"])
            for state in ("running", "complete"):
                push = {"state": state, "stage": "done", "progress": 100}
                tally.call(f"POST status ({state})", (200,), lambda: http.post(
                    f"{base}/jobs/{claimed['id']}/status", json=push, auth=auth, timeout=TIMEOUT))
            tally.call("DELETE job", (204,), lambda: http.delete(f"{base}/jobs/{claimed['id']}",
                                                               headers=operator, timeout=TIMEOUT))
            other = tally.call("POST jobs", (201,), lambda: http.post(f"{base}/jobs", json=body, headers=operator,
                                                                    timeout=TIMEOUT))
            if other is None:
                continue
            tally.call("PATCH acquire", (200,), lambda: http.patch(f"{base}/jobs/{other['id']}",
                                                                  json={"acquired": True}, headers=runner,
                                                                  timeout=TIMEOUT))
            tally.call("POST cancel", (200,), lambda: http.post(f"{base}/jobs/{other['id']}/cancel",
                                                               headers=operator, timeout=TIMEOUT))
            tally.call("POST claim (none left)", (204,), lambda: http.post(f"{base}/jobs/claim", json=claim,
                                                                          headers=runner, timeout=TIMEOUT))

    def console() -> None:
        http = requests.Session()
        page = http.get(f"{server.url}/console/sign-in", timeout=TIMEOUT).text
        tally.call("POST sign-in", (200,), lambda: http.post(
            f"{server.url}/console/sign-in", data={"token": deployment.operator, "csrf_token": _csrf(page)},
            timeout=TIMEOUT))
        job_id, _key = deployment.make_job()
        while time.monotonic() < stop_at:
            tally.call("GET console jobs", (200,), lambda: http.get(f"{server.url}/console/", timeout=TIMEOUT))
            tally.call("GET console job", (200,), lambda: http.get(f"{server.url}/console/jobs/{job_id}",
                                                                  timeout=TIMEOUT))
            tally.call("GET readyz", (200,), lambda: http.get(f"{server.url}/readyz", timeout=TIMEOUT))
            tally.call("GET metrics", (200,), lambda: http.get(f"{server.url}/metrics", timeout=TIMEOUT))

    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(worker, n) for n in range(4)]
            futures += [pool.submit(operator_and_runner, n) for n in range(3)]
            futures.append(pool.submit(console))
            for future in futures:
                future.result()
    finally:
        stop_gunicorn(server.process)

    assert tally.unexpected == [], (len(tally.unexpected), Counter(line[:60] for line in tally.unexpected))
    routes = {what for what, _status in tally.counts}
    assert len(routes) == 18, routes
    assert sum(tally.counts.values()) > 200, tally.counts
    assert tally.slowest < ANSWER_WITHIN
    assert "Traceback" not in server.log()

    # Nothing prepared on a server connection (psycopg names its statements _pg3_N), and no
    # setting of a session: statement by statement, as PostgreSQL logged them.
    logged = (deployment.cluster.root / "log").read_text(errors="replace").splitlines()
    log = "\n".join(line for line in logged if line.startswith("[local]"))  # PgBouncer's connections
    assert "execute <unnamed>" in log and "SET LOCAL statement_timeout" in log
    assert re.findall(r"execute _pg3_\d+|PREPARE", log) == []
    assert re.findall(r"statement: SET (?:SESSION )?(?:statement_timeout|TimeZone)", log, re.IGNORECASE) == []
    assert [line for line in logged if "ERROR:" in line] == []


# Waiting on a lock: cancelled on the server


def _waiting_on_locks(cluster: PrivateCluster) -> list[tuple]:
    return cluster.execute(
        "SELECT pid, state, left(query, 60) FROM pg_stat_activity "
        "WHERE wait_event_type = 'Lock' AND datname = 'jobapi'")


def _answers_503_and_leaves_no_waiter(deployment: Deployment, send: Callable[[], requests.Response]) -> None:
    started = time.monotonic()
    response = send()
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.json() == {"id": "service_unavailable", "message": "Database unavailable"}
    assert int(response.headers["Retry-After"]) > 0
    assert elapsed < ANSWER_WITHIN
    # The server itself cancelled the statement at DB_STATEMENT_TIMEOUT_MS: nothing of it still
    # waits there for the lock (a statement only abandoned by the client would).
    assert _waiting_on_locks(deployment.cluster) == []


def test_statements_waiting_on_a_lock_are_cancelled_on_the_server(deployment, tmp_path):
    job_id, key = deployment.make_job()
    server = start_gunicorn(deployment.bouncer.url, tmp_path / "gunicorn.log", workers=1, threads=4,
                            extra_env={"DATABASE_DIRECT_URL": deployment.cluster.url})
    auth = job_auth(job_id, key)
    holder = psycopg.connect(host="127.0.0.1", port=deployment.cluster.port, user="postgres", dbname="jobapi")
    try:
        # A push waits on the job's row lock, held elsewhere.
        holder.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
        _answers_503_and_leaves_no_waiter(deployment, lambda: requests.post(
            f"{server.url}/api/jobs/{job_id}/status", json={"state": "running", "stage": "a", "progress": 1},
            auth=auth, timeout=TIMEOUT))
        holder.rollback()

        # Reads too: the job's own (outside a transaction) and an operator's (through the ORM)
        # wait on a table lock (as a migration takes one).
        holder.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        _answers_503_and_leaves_no_waiter(deployment, lambda: requests.get(
            f"{server.url}/api/jobs/{job_id}", auth=auth, timeout=TIMEOUT))
        _answers_503_and_leaves_no_waiter(deployment, lambda: requests.get(
            f"{server.url}/api/jobs", headers=bearer(deployment.operator), timeout=TIMEOUT))
        assert requests.get(f"{server.url}/healthz", timeout=1).status_code == 200
        holder.rollback()

        # Served again once the lock is gone, without a restart.
        assert requests.get(f"{server.url}/api/jobs/{job_id}", auth=auth, timeout=TIMEOUT).status_code == 200
        assert requests.post(f"{server.url}/api/jobs/{job_id}/status",
                             json={"state": "running", "stage": "a", "progress": 1},
                             auth=auth, timeout=TIMEOUT).status_code == 200
    finally:
        holder.close()
        stop_gunicorn(server.process)


# Waiting for a server connection in PgBouncer's pool


def test_a_request_waiting_for_a_pgbouncer_server_answers_503_in_time(deployment, tmp_path):
    job_id, key = deployment.make_job()
    server = start_gunicorn(deployment.bouncer.url, tmp_path / "gunicorn.log", workers=1, threads=4,
                            extra_env={"DATABASE_DIRECT_URL": deployment.cluster.url})
    auth = job_auth(job_id, key)
    pool_size = int(deployment.bouncer.config()["default_pool_size"])
    holders = []
    try:
        # Every server connection of the pool taken by an open transaction of another client.
        for _ in range(pool_size):
            holder = psycopg.connect(host="127.0.0.1", port=deployment.bouncer.port, user="postgres",
                                     dbname="jobapi", prepare_threshold=None)
            holder.execute("SELECT 1")  # in a transaction, which keeps its server connection
            holders.append(holder)
        calls = [
            lambda: requests.get(f"{server.url}/api/jobs/{job_id}", auth=auth, timeout=TIMEOUT),
            lambda: requests.post(f"{server.url}/api/jobs/{job_id}/status",
                                  json={"state": "running", "stage": "a", "progress": 1}, auth=auth,
                                  timeout=TIMEOUT),
            lambda: requests.get(f"{server.url}/api/jobs", headers=bearer(deployment.operator), timeout=TIMEOUT),
        ]
        with ThreadPoolExecutor(len(calls)) as pool:
            answers = list(pool.map(_timed, calls))
        for response, elapsed in answers:
            assert response.status_code == 503, response.text
            assert response.json()["id"] == "service_unavailable"
            assert int(response.headers["Retry-After"]) > 0
            assert elapsed < ANSWER_WITHIN
        assert "query_wait_timeout" in deployment.bouncer.log()

        # A server connection free again: served at once, without a restart.
        for holder in holders:
            holder.close()
        assert requests.get(f"{server.url}/api/jobs/{job_id}", auth=auth, timeout=TIMEOUT).status_code == 200
        assert requests.post(f"{server.url}/api/jobs/{job_id}/status",
                             json={"state": "running", "stage": "a", "progress": 1},
                             auth=auth, timeout=TIMEOUT).status_code == 200
    finally:
        for holder in holders:
            holder.close()
        stop_gunicorn(server.process)


def _timed(call: Callable[[], requests.Response]) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


# Times in UTC whatever the server's zone


_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def _utc(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


@pytest.mark.parametrize("deployment", [{"timezone": "Asia/Kathmandu"}], indirect=True)
def test_answers_are_in_utc_whatever_the_servers_zone(deployment, tmp_path):
    assert deployment.cluster.execute("SHOW TimeZone") == [("Asia/Kathmandu",)]
    server = start_gunicorn(deployment.bouncer.url, tmp_path / "gunicorn.log", workers=1, threads=2,
                            extra_env={"DATABASE_DIRECT_URL": deployment.cluster.url})
    operator = bearer(deployment.operator)
    try:
        made = requests.post(f"{server.url}/api/jobs", json={"task": "align", "user": "ops"}, headers=operator,
                             timeout=TIMEOUT).json()
        auth = job_auth(made["id"], made["key"])
        pushed = requests.post(f"{server.url}/api/jobs/{made['id']}/status", auth=auth,
                               json={"state": "running", "stage": "a", "progress": 1}, timeout=TIMEOUT).json()
        pinged = requests.put(f"{server.url}/api/jobs/{made['id']}/ping", auth=auth, timeout=TIMEOUT).json()
        document = requests.get(f"{server.url}/api/jobs/{made['id']}", auth=auth, timeout=TIMEOUT).json()
        listed = requests.get(f"{server.url}/api/jobs", headers=operator, timeout=TIMEOUT).json()
    finally:
        stop_gunicorn(server.process)

    stored = deployment.cluster.execute(
        "SELECT extract(epoch FROM created_at), extract(epoch FROM pinged_at) FROM jobs WHERE id = %s",
        (made["id"],))[0]
    records = [row[0] for row in deployment.cluster.execute(
        "SELECT extract(epoch FROM timestamp) FROM job_status WHERE job_id = %s ORDER BY seq", (made["id"],))]
    shown = {
        "created_at": document["created_at"],
        "pinged_at": document["ping"]["pinged_at"],
        "ping answer": pinged["pinged_at"],
        "push answer": pushed["timestamp"],
        "record 1": document["status"][0]["timestamp"],
        "record 2": document["status"][1]["timestamp"],
        "made answer": made["created_at"],
        "listed": next(job["created_at"] for job in listed["jobs"] if job["id"] == made["id"]),
    }
    for what, text in shown.items():
        assert _TIMESTAMP.fullmatch(text), f"{what}: {text}"
    expected = {
        "created_at": stored[0], "pinged_at": stored[1], "ping answer": stored[1], "push answer": records[1],
        "record 1": records[0], "record 2": records[1], "made answer": stored[0], "listed": stored[0],
    }
    for what, epoch in expected.items():
        assert _utc(shown[what]).timestamp() == pytest.approx(float(epoch), abs=1e-6), what


# Commands: through PgBouncer, migrations through DATABASE_DIRECT_URL


def test_every_command_works_through_pgbouncer(deployment):
    app = deployment.app()
    runner = app.test_cli_runner()

    def run(*args: str) -> str:
        result = runner.invoke(args=list(args))
        assert result.exit_code == 0, (args, result.output, result.exception)
        return result.output

    try:
        run("tokens", "create", "--name", "cli", "--role", "operator")
        assert "cli" in run("tokens", "list")
        made = run("jobs", "create", "--task", "align", "--user", "ops", "--args", '{"a": 1}')
        job_id = re.search(r'"id": ?"([a-z0-9]{8})"', made).group(1)
        assert job_id in run("jobs", "list")
        assert job_id in run("jobs", "show", job_id)
        run("jobs", "rotate-key", job_id)
        run("jobs", "reap", "--timeout", "3600")
        run("jobs", "cancel", job_id)
        run("jobs", "remove", job_id)

        # A watch looks every 0.2 s while the job runs, and ends with it.
        watched = re.search(r'"id": ?"([a-z0-9]{8})"', run("jobs", "create", "--task", "align", "--user", "ops"))
        job_id = watched.group(1)
        key = re.search(r'"key": ?"([^"]+)"', watched.string).group(1)
        with ThreadPoolExecutor(1) as pool:
            watching = pool.submit(run, "jobs", "watch", job_id, "--interval", "0.2")
            client = app.test_client()
            for state, progress in (("running", 50), ("complete", 100)):
                time.sleep(0.5)
                response = client.post(f"/api/jobs/{job_id}/status", headers=basic_auth(*job_auth(job_id, key)),
                                       json={"state": state, "stage": "s", "progress": progress})
                assert response.status_code == 200, response.json
            assert "complete" in watching.result(timeout=TIMEOUT)
        run("tokens", "revoke", "cli")
        run("tokens", "delete", "cli")
    finally:
        with app.app_context():
            db.engine.dispose()


def test_db_upgrade_goes_to_database_direct_url(deployment):
    """``jobapi db upgrade`` with DATABASE_URL on PgBouncer migrates through DATABASE_DIRECT_URL:
    here PgBouncer refuses every client meanwhile (DISABLE), so it could not go through it."""
    fresh = deployment.cluster
    fresh.create_database("fresh")
    direct = fresh.url.rsplit("/", 1)[0] + "/fresh"
    deployment.bouncer.admin("DISABLE jobapi")

    def upgrade_command(**variables: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "DATABASE_URL": deployment.bouncer.url, **variables}
        return subprocess.run([str(Path(sys.executable).with_name("jobapi")), "db", "upgrade"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)

    through_bouncer = upgrade_command()
    assert through_bouncer.returncode != 0  # PgBouncer refused it: the check below can fail
    migrated = upgrade_command(DATABASE_DIRECT_URL=direct)
    assert migrated.returncode == 0, migrated.stderr
    heads = fresh.execute("SELECT version_num FROM alembic_version", database="fresh")
    assert heads == deployment.cluster.execute("SELECT version_num FROM alembic_version")
