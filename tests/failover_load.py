"""A failover under load, for tests and measurements: a primary with a synchronous streaming standby
(private clusters), workers pushing through gunicorn instances with retries, the fault, the promotion,
and what every request got."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests
from flask_migrate import upgrade
from private_postgresql import Clusters, PrivateCluster, wait_until_synchronous

from jobapi import MIGRATIONS_DIRECTORY, create_app
from jobapi.extensions import db
from jobapi.storage.engines import write_connection
from jobapi.jobs import service

# SPEC 8: every request answers within this.
ANSWER_WITHIN = 10.0
# Load before the fault, the outage before the promotion, load after it.
BEFORE, OUTAGE, AFTER = 2.0, 3.0, 12.0
# Workers, each pushing to a job of its own.
WORKERS = 6


@dataclass
class Pair:
    """A primary and its synchronous streaming standby, with the schema and a job per worker."""

    primary: PrivateCluster
    standby: PrivateCluster
    jobs: list[tuple[str, str]]

    @property
    def multi_host_url(self) -> str:
        """Both servers, over their sockets, the writable one wanted (libpq tries them in order)."""
        hosts = f"{self.primary.socket_directory},{self.standby.socket_directory}"
        ports = f"{self.primary.port},{self.standby.port}"
        return f"postgresql+psycopg://postgres@/jobapi?host={hosts}&port={ports}&target_session_attrs=read-write"


def make_pair(clusters: Clusters) -> Pair:
    """A primary, migrated, with a job per worker, and its synchronous streaming standby."""
    primary = clusters.make()
    primary.create_database()
    app = create_app({"SQLALCHEMY_DATABASE_URI": primary.url})
    with app.app_context():
        upgrade(directory=str(MIGRATIONS_DIRECTORY))
        jobs = []
        for _ in range(WORKERS):
            new = service.create_job(write_connection(db.session), task="failover", user="ops")
            jobs.append((new.job.id, new.key))
        db.session.commit()
        db.engine.dispose()
    standby = clusters.standby_of(primary)
    # Synchronous replication, named on the primary only: a commit is answered once the
    # standby has it, so an acknowledged push survives the primary.
    primary.execute("ALTER SYSTEM SET synchronous_standby_names = '*'", database="postgres")
    primary.execute("SELECT pg_reload_conf()", database="postgres")
    wait_until_synchronous(primary)
    return Pair(primary=primary, standby=standby, jobs=jobs)


@dataclass
class Attempt:
    """One request: what it pushed, to which instance, its status, when it started and ended."""

    stage: str
    instance: int
    status: int | str
    started: float
    ended: float
    retry_after: str | None = None


@dataclass
class Worker:
    """A job's worker: pushes numbered stages, retrying each with its Idempotency-Key until 200."""

    url: str
    instance: int
    job_id: str
    key: str
    stop: threading.Event
    attempts: list[Attempt] = field(default_factory=list)
    acknowledged: list[str] = field(default_factory=list)

    def run(self) -> None:
        http = requests.Session()
        i = 0
        give_up = time.monotonic() + BEFORE + OUTAGE + AFTER + 60
        while not self.stop.is_set():
            i += 1
            stage = f"{self.job_id}-{i}"
            while time.monotonic() < give_up:
                started = time.monotonic()
                try:
                    response = http.post(f"{self.url}/api/jobs/{self.job_id}/status",
                                         json={"state": "running", "stage": stage, "progress": i % 100},
                                         headers={"Idempotency-Key": stage}, auth=(f"job-{self.job_id}", self.key),
                                         timeout=ANSWER_WITHIN + 5)
                    status, retry_after = response.status_code, response.headers.get("Retry-After")
                except requests.RequestException as error:
                    status, retry_after = type(error).__name__, None
                    http = requests.Session()
                self.attempts.append(Attempt(stage, self.instance, status, started, time.monotonic(), retry_after))
                if status == 200:
                    self.acknowledged.append(stage)
                    break
                time.sleep(0.1)
            time.sleep(0.02)


@dataclass
class Run:
    """What a failover under load showed."""

    workers: list[Worker]
    promoted_at: float
    fault_at: float
    ready_during_outage: list[int]

    @property
    def attempts(self) -> list[Attempt]:
        return [attempt for worker in self.workers for attempt in worker.attempts]

    def back_after(self, instance: int) -> float:
        """Seconds from the promotion to the instance's first write answered 200 after it."""
        return min(a.ended for a in self.attempts
                   if a.instance == instance and a.status == 200 and a.ended > self.promoted_at) - self.promoted_at


def failover_under_load(urls: list[str], pair: Pair, fault: Callable[[], None],
                        after_promotion: Callable[[], None] = lambda: None) -> Run:
    """Workers on every instance; the fault after BEFORE s, the promotion OUTAGE s later, then
    AFTER s more of load; every worker ends with its last push answered."""
    stop = threading.Event()
    workers = [Worker(urls[n % len(urls)], n % len(urls), job_id, key, stop)
               for n, (job_id, key) in enumerate(pair.jobs)]
    threads = [threading.Thread(target=worker.run) for worker in workers]
    for thread in threads:
        thread.start()
    ready = []
    try:
        time.sleep(BEFORE)
        fault_at = time.monotonic()
        fault()
        while time.monotonic() < fault_at + OUTAGE:
            # Only the read-only standby answers: not ready, whatever an instance is asked.
            ready.append(requests.get(f"{urls[0]}/readyz", timeout=ANSWER_WITHIN + 5).status_code)
            time.sleep(0.5)
        pair.standby.promote()
        promoted_at = time.monotonic()
        after_promotion()
        time.sleep(AFTER)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    return Run(workers=workers, promoted_at=promoted_at, fault_at=fault_at, ready_during_outage=ready)
