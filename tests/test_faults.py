"""Database faults: a private PostgreSQL stopped and started under load, frozen (SIGSTOP) or cut
off by a black-holed network, a SQLite write lock held too long, and gunicorn workers killed
mid-push. Nothing stored is lost or duplicated."""

from __future__ import annotations

import os
import select
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests
from conftest import basic_auth, start_gunicorn, stop_gunicorn
from private_postgresql import children, clusters, private_cluster  # noqa: F401 - fixtures
from flask_migrate import upgrade
from sqlalchemy import event
from sqlalchemy import select as sql_select
from sqlalchemy.engine import make_url

from jobapi import MIGRATIONS_DIRECTORY, create_app
from jobapi.deadline import QUIET_SECONDS
from jobapi.extensions import db
from jobapi.storage.engines import write_connection
from jobapi.jobs import service
from jobapi.models import Job, JobStatus
from jobapi.fields import format_timestamp

TIMEOUT = 15


@dataclass
class Pusher:
    """A worker that pushes numbered records, retrying each with its Idempotency-Key until stored."""

    url: str
    job_id: str
    key: str
    name: str
    count: int
    pause: float = 0.02
    deadline: float = 120.0
    accepted: list[str] = field(default_factory=list)
    unavailable: list[requests.Response] = field(default_factory=list)
    other: list[str] = field(default_factory=list)

    def run(self) -> None:
        http = requests.Session()
        auth = (f"job-{self.job_id}", self.key)
        stop_at = time.monotonic() + self.deadline
        for i in range(self.count):
            stage = f"{self.name}-{i}"
            while time.monotonic() < stop_at:
                try:
                    response = http.post(
                        f"{self.url}/api/jobs/{self.job_id}/status",
                        json={"state": "running", "stage": stage, "progress": i % 101},
                        headers={"Idempotency-Key": stage},
                        auth=auth,
                        timeout=TIMEOUT,
                    )
                except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as error:
                    # A killed worker drops its connection (maybe mid-answer);
                    # the push is retried with its key.
                    self.other.append(f"connection: {error.__class__.__name__}")
                    http = requests.Session()
                    time.sleep(0.05)
                    continue
                if response.status_code == 200:
                    self.accepted.append(stage)
                    break
                if response.status_code == 503:
                    self.unavailable.append(response)
                else:
                    self.other.append(f"{response.status_code}: {response.text}")
                time.sleep(0.1)
            time.sleep(self.pause)


def _records(app, job_id: str) -> list[JobStatus]:
    with app.app_context():
        records = db.session.scalars(
            sql_select(JobStatus).where(JobStatus.job_id == job_id).order_by(JobStatus.seq)
        ).all()
        db.session.expunge_all()
        return list(records)


def _assert_consistent(app, job_id: str, pushers: list[Pusher]) -> None:
    """Every push stored exactly once, numbered without gaps, the job row in step."""
    records = _records(app, job_id)
    stages = [r.stage for r in records[1:]]
    expected = {f"{p.name}-{i}" for p in pushers for i in range(p.count)}
    assert len(stages) == len(set(stages)), "a record was stored twice"
    assert set(stages) == expected, "a record was lost"
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    with app.app_context():
        job = db.session.get(Job, job_id)
        assert job.status_count == len(records)
        assert (job.state, job.stage, job.progress) == (records[-1].state, records[-1].stage, records[-1].progress)


@pytest.mark.e2e
def test_postgresql_stopped_and_started_under_load(private_cluster, tmp_path):
    cluster = private_cluster
    cluster.create_database()
    app = create_app({"SQLALCHEMY_DATABASE_URI": cluster.url})
    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY))
        new = service.create_job(write_connection(db.session), task="fault", user="ops")
        db.session.commit()
        job_id, key = new.job.id, new.key

    server = start_gunicorn(cluster.url, tmp_path / "gunicorn.log")
    try:
        pushers = [Pusher(server.url, job_id, key, f"w{n}", count=40, pause=0.05) for n in range(4)]
        threads = [threading.Thread(target=p.run) for p in pushers]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        cluster.stop()

        # While the database is down, requests answer 503 with Retry-After, promptly.
        started = time.monotonic()
        down = requests.get(f"{server.url}/api/jobs/{job_id}", auth=(f"job-{job_id}", key), timeout=TIMEOUT)
        elapsed = time.monotonic() - started
        assert down.status_code == 503
        assert down.json() == {"id": "service_unavailable", "message": "Database unavailable"}
        assert int(down.headers["Retry-After"]) > 0
        assert elapsed < TIMEOUT
        time.sleep(2.0)

        cluster.start()
        for thread in threads:
            thread.join(timeout=180)
        assert not any(thread.is_alive() for thread in threads)

        # Full service after, without restarting gunicorn.
        after = requests.get(f"{server.url}/api/jobs/{job_id}", auth=(f"job-{job_id}", key), timeout=TIMEOUT)
        assert after.status_code == 200
        assert server.process.poll() is None

        assert sum(len(p.unavailable) for p in pushers) > 0, "the outage was not seen"
        assert all("Retry-After" in r.headers for p in pushers for r in p.unavailable)
        assert [o for p in pushers for o in p.other if not o.startswith("connection")] == []
        assert all(len(p.accepted) == p.count for p in pushers)
        with app.app_context():
            db.engine.dispose()  # this test's own connections died with the server
        _assert_consistent(app, job_id, pushers)
    finally:
        stop_gunicorn(server.process)
        with app.app_context():
            db.engine.dispose()


# PostgreSQL that stops answering: a frozen server, a black-holed network

# SPEC 8: a database that stops answering gives 503 with Retry-After within this.
ANSWER_WITHIN = 10.0


class BlackHole:
    """A TCP proxy to a database that can stop passing bytes either way, keeping every
    connection open: what a network that silently drops everything looks like to both ends."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.passing = threading.Event()
        self.passing.set()
        self.closed = threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def swallow(self) -> None:
        """Stop passing bytes (and hold those read): the black hole opens."""
        self.passing.clear()

    def release(self) -> None:
        """Pass bytes again, those held first."""
        self.passing.set()

    def close(self) -> None:
        self.closed.set()
        self.passing.set()
        for thread in self.threads:
            thread.join(timeout=5)
        for sock in [self.listener, *self.sockets]:
            sock.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self.sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=self._pass, args=(source, target), daemon=True)
                self.threads.append(thread)
                thread.start()

    def _pass(self, source: socket.socket, target: socket.socket) -> None:
        while not self.closed.is_set():
            if not self.passing.wait(0.1):
                continue  # unread bytes wait in the kernel, acknowledged, as at a frozen peer
            if not select.select([source], [], [], 0.1)[0]:
                continue
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            while not self.passing.is_set() and not self.closed.is_set():
                self.passing.wait(0.1)
            try:
                if not data:
                    target.shutdown(socket.SHUT_WR)
                    return
                target.sendall(data)
            except OSError:
                return


def _migrated_app(url: str, **config) -> tuple:
    """An app on the (empty) database at ``url``, migrated, with one job: (app, job id, key)."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, **config})
    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY))
        new = service.create_job(write_connection(db.session), task="fault", user="ops")
        db.session.commit()
        return app, new.job.id, new.key


def _timed(call: Callable[[], requests.Response]) -> tuple[requests.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def _assert_unavailable(response: requests.Response, elapsed: float) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["id"] == "service_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert elapsed < ANSWER_WITHIN, f"answered after {elapsed:.1f} s"


def _outage_then_recovery(server_url: str, app, job_id: str, key: str, cut: Callable[[], None], mend: Callable[[], None]) -> None:
    """Cut the database off mid-service: every request answers 503 in time; once mended,
    full service at once, and each push that got 503 is stored once its retry says so."""
    auth = (f"job-{job_id}", key)
    timeout = ANSWER_WITHIN + 5

    # One connection per request (no keep-alive): requests run in threads,
    # and the server stops without waiting on idle connections.
    def push(stage: str) -> requests.Response:
        return requests.post(
            f"{server_url}/api/jobs/{job_id}/status",
            json={"state": "running", "stage": stage, "progress": 1},
            headers={"Idempotency-Key": stage},
            auth=auth,
            timeout=timeout,
        )

    def read() -> requests.Response:
        return requests.get(f"{server_url}/api/jobs/{job_id}", auth=auth, timeout=timeout)

    def ready() -> requests.Response:
        return requests.get(f"{server_url}/readyz", timeout=timeout)

    # In service: every worker thread has pooled connections to the database.
    with ThreadPoolExecutor(8) as pool:
        assert [r.status_code for r in pool.map(lambda i: push(f"before-{i}"), range(8))] == [200] * 8

    cut()
    try:
        stages = [f"during-{i}" for i in range(5)]
        calls = [lambda stage=stage: push(stage) for stage in stages] + [read, read, ready]
        with ThreadPoolExecutor(len(calls)) as pool:
            answers = list(pool.map(_timed, calls))
        for response, elapsed in answers:
            _assert_unavailable(response, elapsed)
        # Connections are made afresh now, and connecting is bounded too.
        for call in (lambda: push("during-0"), read):
            _assert_unavailable(*_timed(call))
        assert requests.get(f"{server_url}/healthz", timeout=5).status_code == 200
    finally:
        mend()
        mended_at = time.monotonic()

    # Service again at once, without a restart...
    while (response := push("after")).status_code == 503 and time.monotonic() < mended_at + 5:
        time.sleep(0.1)
    assert response.status_code == 200, response.text
    # ...and in full once a worker that saw a connection attempt fail just
    # before has let its quiet second pass.
    time.sleep(max(0.0, mended_at + QUIET_SECONDS + 0.5 - time.monotonic()))
    with ThreadPoolExecutor(8) as pool:
        assert [r.status_code for r in pool.map(lambda _: read(), range(8))] == [200] * 8
    assert ready().status_code == 200

    # The database never answered those pushes: none of them is stored, and
    # each retry with its Idempotency-Key stores it exactly once.
    before_retry = [r.stage for r in _records(app, job_id)]
    assert not set(stages) & set(before_retry)
    with ThreadPoolExecutor(len(stages)) as pool:
        assert [r.status_code for r in pool.map(push, stages)] == [200] * len(stages)
    assert [r.status_code for r in map(push, stages)] == [200] * len(stages)  # replays
    stored = [r.stage for r in _records(app, job_id)]
    assert sorted(stored[1:]) == sorted([f"before-{i}" for i in range(8)] + ["after", *stages])


@pytest.mark.e2e
def test_frozen_postgresql_answers_503_in_time_then_serves_again(private_cluster, tmp_path):
    cluster = private_cluster
    cluster.create_database()
    app, job_id, key = _migrated_app(cluster.url)
    server = start_gunicorn(cluster.url, tmp_path / "gunicorn.log")
    try:
        _outage_then_recovery(server.url, app, job_id, key, cluster.freeze, cluster.thaw)
        assert server.process.poll() is None
        assert "WORKER TIMEOUT" not in server.log()
    finally:
        cluster.thaw()
        stop_gunicorn(server.process)
        with app.app_context():
            db.engine.dispose()


@pytest.mark.e2e
def test_black_holed_postgresql_answers_503_in_time_then_serves_again(private_cluster, tmp_path):
    cluster = private_cluster
    cluster.create_database()
    app, job_id, key = _migrated_app(cluster.url)
    hole = BlackHole(cluster.port)
    through_hole = make_url(cluster.url).set(port=hole.port).render_as_string(hide_password=False)
    server = start_gunicorn(through_hole, tmp_path / "gunicorn.log")
    try:
        _outage_then_recovery(server.url, app, job_id, key, hole.swallow, hole.release)
        assert server.process.poll() is None
    finally:
        hole.release()
        stop_gunicorn(server.process)
        hole.close()
        with app.app_context():
            db.engine.dispose()


def test_commit_without_answer_is_503_and_its_retry_stores_one_record(private_cluster):
    """The server freezes after the push's statements, as its COMMIT goes out: the request
    answers 503, the server commits when it wakes, and the retry replays that one record."""
    cluster = private_cluster
    cluster.create_database()
    app, job_id, key = _migrated_app(cluster.url, DB_RESPONSE_TIMEOUT=2)
    client = app.test_client()
    auth = basic_auth(f"job-{job_id}", key)
    push = dict(json={"state": "running", "stage": "s", "progress": 5}, headers={**auth, "Idempotency-Key": "k"})
    with app.app_context():
        engine = db.engine

    def freeze_before_commit(_connection) -> None:
        cluster.freeze()

    event.listen(engine, "commit", freeze_before_commit)
    try:
        started = time.monotonic()
        response = client.post(f"/api/jobs/{job_id}/status", **push)
        elapsed = time.monotonic() - started
    finally:
        event.remove(engine, "commit", freeze_before_commit)
        cluster.thaw()
    time.sleep(QUIET_SECONDS)  # no new connection is tried for this long after a failure
    assert response.status_code == 503
    assert response.json["id"] == "service_unavailable"
    assert response.headers["Retry-After"] == "5"
    assert 2 <= elapsed < ANSWER_WITHIN

    # The COMMIT had reached the server, which ran it on waking: the client
    # cannot tell, so it retries with its key and gets that record back.
    deadline = time.monotonic() + 5
    while len(_records(app, job_id)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    records = _records(app, job_id)
    assert [r.stage for r in records] == [None, "s"]
    retry = client.post(f"/api/jobs/{job_id}/status", **push)
    assert retry.status_code == 200, retry.json
    assert retry.json["timestamp"] == format_timestamp(records[1].timestamp)  # that record, replayed
    assert [r.stage for r in _records(app, job_id)] == [None, "s"]
    with app.app_context():
        db.engine.dispose()


# SQLite: a write lock held past the busy timeout


def test_sqlite_lock_held_too_long_is_503_then_recovers(database_url, app, job, stored):
    if make_url(database_url).get_backend_name() != "sqlite":
        pytest.skip("runs in the SQLite half of the suite")
    impatient = create_app({"SQLALCHEMY_DATABASE_URI": database_url, "SQLITE_BUSY_TIMEOUT": 0.5})
    client = impatient.test_client()
    holder = sqlite3.connect(make_url(database_url).database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        response = client.post(
            f"/api/jobs/{job.id}/status",
            json={"state": "running", "stage": "a", "progress": 1},
            headers=job.auth,
        )
        assert response.status_code == 503
        assert response.json == {"id": "service_unavailable", "message": "Database unavailable"}
        assert response.headers["Retry-After"] == "5"
        # Readers are not blocked by a writer (WAL).
        assert client.get(f"/api/jobs/{job.id}", headers=job.auth).status_code == 200
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    again = client.post(
        f"/api/jobs/{job.id}/status",
        json={"state": "running", "stage": "a", "progress": 1},
        headers=job.auth,
    )
    assert again.status_code == 200
    assert [r.stage for r in stored(job.id)] == [None, "a"]
    with impatient.app_context():
        db.engine.dispose()


# gunicorn workers killed mid-push


def _worker_pids(master: int) -> list[int]:
    return children(master)


@pytest.mark.e2e
def test_killed_workers_leave_whole_records_or_none(app, database_url, job, tmp_path):
    server = start_gunicorn(database_url, tmp_path / "gunicorn.log", workers=2, threads=2)
    try:
        pushers = [Pusher(server.url, job.id, job.key, f"k{n}", count=60, pause=0.005) for n in range(4)]
        threads = [threading.Thread(target=p.run) for p in pushers]
        for thread in threads:
            thread.start()
        killed = 0
        for _ in range(3):
            time.sleep(0.4)
            for pid in _worker_pids(server.process.pid)[:1]:
                os.kill(pid, signal.SIGKILL)
                killed += 1
        for thread in threads:
            thread.join(timeout=180)
        assert killed >= 1
        assert not any(thread.is_alive() for thread in threads)
        assert all(len(p.accepted) == p.count for p in pushers)
        assert [o for p in pushers for o in p.other if not o.startswith(("connection", "502"))] == []
        _assert_consistent(app, job.id, pushers)
    finally:
        stop_gunicorn(server.process)
