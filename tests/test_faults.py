"""Database faults: a private PostgreSQL stopped and started under load, a SQLite write lock
held too long, and gunicorn workers killed mid-push. Nothing stored is lost or duplicated."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from conftest import free_port, start_gunicorn, stop_gunicorn
from flask_migrate import upgrade
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from jobapi import MIGRATIONS_DIRECTORY, create_app
from jobapi.extensions import db
from jobapi.jobs import service
from jobapi.models import Job, JobStatus

TIMEOUT = 15


# A private PostgreSQL cluster


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@dataclass
class PrivateCluster:
    """A PostgreSQL cluster of this test's own, on a free port and its own socket directory."""

    bin: Path
    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/jobapi"

    def _run(self, *args: str) -> None:
        command = list(args)
        if os.geteuid() == 0:  # initdb and pg_ctl refuse to run as root
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root / 'sock'} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"), "-w", "-t", "60", "start")

    def create_database(self) -> None:
        admin = create_engine(make_url(self.url).set(database="postgres"), isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql("CREATE DATABASE jobapi")
        admin.dispose()

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")


@pytest.fixture
def private_cluster() -> Iterator[PrivateCluster]:
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries are not installed")
    root = Path(tempfile.mkdtemp(prefix="jobapi-pg-"))
    (root / "sock").mkdir()
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        for path in (root, root / "sock"):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
    cluster = PrivateCluster(bin=pg_bin, root=root, port=free_port())
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        try:
            cluster.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(root, ignore_errors=True)


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
            select(JobStatus).where(JobStatus.job_id == job_id).order_by(JobStatus.seq)
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
def test_postgresql_stopped_and_started_under_load(private_cluster, tmp_path, is_postgresql):
    if not is_postgresql:
        pytest.skip("runs in the PostgreSQL half of the suite")
    cluster = private_cluster
    cluster.create_database()
    app = create_app({"SQLALCHEMY_DATABASE_URI": cluster.url})
    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY))
        new = service.create_job(db.session, task="fault", user="ops")
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
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.append(int(Path(stat).parent.name))
    return pids


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
