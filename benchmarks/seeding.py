"""Seeding the benchmark database with bulk SQL: the one place that builds ``jobs`` and ``job_status`` rows.

``job_rows`` fills every column of the models. When a column is added to
``src/jobapi/models.py`` (and its migration), add it to ``job_rows`` too:
``Seeder`` compares the rows against the models and the migrated database
before inserting anything and stops with a message naming the column.

PostgreSQL is filled with ``COPY`` (psycopg), SQLite with SQLAlchemy Core
``executemany`` inserts through the models' tables; neither goes through the API.
"""

from __future__ import annotations

import base64
import json
import random
import string
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import JSON, create_engine, insert, inspect
from sqlalchemy.engine import make_url

from jobapi.keys import hash_key, make_key
from jobapi.models import Job, JobStatus

ID_ALPHABET = string.ascii_lowercase + string.digits

# The document of a seeded job looks like the SPEC's example.
TASK = "create_subtraction"
ARGS = {"subtraction_id": "Thale", "file_id": "vlekszor-ATgenomeTAIR9.171"}
USER = "igboyes"
PROC = 2
MEM = 4
STAGE = "bowtie_build"


class SeedingError(RuntimeError):
    """The benchmark's rows no longer match the models or the database."""


@dataclass(frozen=True)
class SeededJob:
    """A seeded job and the key that authenticates as it."""

    id: str
    key: str

    @property
    def token(self) -> str:
        """base64 of ``job-<id>:<key>``, the HTTP Basic credentials."""
        return base64.b64encode(f"job-{self.id}:{self.key}".encode()).decode()


def job_rows(
    job_id: str,
    key_digest: str,
    *,
    number: int,
    records: int,
    created_at: datetime,
    last_state: str = "running",
    step: timedelta = timedelta(seconds=1),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``jobs`` row of one job and its ``records`` ``job_status`` rows, every column filled.

    The first record is the ``waiting`` one every job starts with; the others
    are ``running`` at increasing progress, the last one in ``last_state``.
    Timestamps go forward by ``step`` from ``created_at``, and the job's
    current state (state, stage, progress, updated_at, status_count) is its
    last record's, as the service keeps it.
    """
    if records < 1:
        raise ValueError("a job has at least one status record")
    statuses = []
    for seq in range(1, records + 1):
        if seq == 1:
            state, stage, progress = "waiting", None, 0
        else:
            state = last_state if seq == records else "running"
            stage = STAGE
            progress = 100 if state == "complete" else min(99, (seq - 1) * 100 // records)
        statuses.append({
            "job_id": job_id,
            "seq": seq,
            "state": state,
            "stage": stage,
            "error": "Exited with status 1" if state == "error" else None,
            "progress": progress,
            "timestamp": created_at + step * (seq - 1),
            "step_name": None,
            "step_description": None,
            "idempotency_key": None,
            "request_digest": None,
        })
    last = statuses[-1]
    # A job that left "waiting" was claimed by a runner at its second record.
    claimed = records > 1
    job = {
        "id": job_id,
        "number": number,
        "task": TASK,
        "args": ARGS,
        "proc": PROC,
        "mem": MEM,
        "user_id": USER,
        "key_digest": key_digest,
        "replaced_key_digest": None,
        "created_at": created_at,
        "state": last["state"],
        "stage": last["stage"],
        "progress": last["progress"],
        "updated_at": last["timestamp"],
        "status_count": records,
        "pinged_at": None,
        "claimed_by": "bench-runner" if claimed else None,
        "claimed_at": statuses[1]["timestamp"] if claimed else None,
        # Claimed by a runner of the 31.x dialect, not a 42.x worker.
        "claim": None,
        "steps": None,
    }
    return job, statuses


class Seeder:
    """Inserts rows made by ``job_rows`` into one database, in large batches."""

    def __init__(self, database_url: str) -> None:
        self.url = make_url(database_url)
        self.postgresql = self.url.get_backend_name() == "postgresql"
        self._used_ids: set[str] = set()
        self._rng = random.Random(20260)
        self._columns: dict[str, list[str]] | None = None
        self._engine = None if self.postgresql else create_engine(self.url)
        self._last_number: int | None = None

    def next_number(self) -> int:
        """A job number not used yet in this database (numbers follow the largest held)."""
        if self._last_number is None:
            self._last_number = self._query_scalar("SELECT COALESCE(MAX(number), 0) FROM jobs")
        self._last_number += 1
        return self._last_number

    def _query_scalar(self, statement: str):
        if self.postgresql:
            import psycopg

            conninfo = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
            with psycopg.connect(conninfo) as connection:
                return connection.execute(statement).fetchone()[0]
        with self._engine.connect() as connection:
            return connection.exec_driver_sql(statement).scalar_one()

    # -- ids and jobs -------------------------------------------------------

    def new_id(self) -> str:
        """A job id (8 characters of a-z, 0-9) not used yet in this database."""
        while True:
            job_id = "".join(self._rng.choices(ID_ALPHABET, k=8))
            if job_id not in self._used_ids:
                self._used_ids.add(job_id)
                return job_id

    def make_jobs(
        self, count: int, records: int, *, last_state: str = "running"
    ) -> list[SeededJob]:
        """Insert ``count`` jobs with ``records`` status records each; return their credentials."""
        jobs: list[SeededJob] = []

        def rows() -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
            # In the past, so a push's timestamp (now) never goes back in time.
            created_at = datetime.now(UTC) - timedelta(seconds=records + 3600)
            for _ in range(count):
                seeded = SeededJob(id=self.new_id(), key=make_key())
                jobs.append(seeded)
                yield job_rows(
                    seeded.id, hash_key(seeded.key), number=self.next_number(), records=records,
                    created_at=created_at, last_state=last_state,
                )

        self.insert(rows())
        return jobs

    def make_history(self, jobs: int, records_per_job: int) -> None:
        """Insert many finished and running jobs made over half a year (months of history)."""
        now = datetime.now(UTC)
        states = ["complete"] * 90 + ["error"] * 5 + ["cancelled"] * 3 + ["running"] * 2
        rng = self._rng

        def rows() -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
            for _ in range(jobs):
                created_at = now - timedelta(days=1 + rng.random() * 180)
                yield job_rows(
                    self.new_id(), hash_key(make_key()), number=self.next_number(), records=records_per_job,
                    created_at=created_at, last_state=rng.choice(states),
                    step=timedelta(seconds=60),
                )

        self.insert(rows())

    # -- inserting ----------------------------------------------------------

    def insert(self, jobs: Iterable[tuple[dict[str, Any], list[dict[str, Any]]]], chunk_jobs: int = 5000) -> None:
        """Insert (job row, status rows) pairs in one transaction, ``chunk_jobs`` jobs per batch; the
        seeded jobs' user gets its id, as jobapi gives one to every user a job names."""
        self._add_user()
        if self.postgresql:
            self._insert_postgresql(jobs, chunk_jobs)
        else:
            self._insert_core(jobs, chunk_jobs)

    def _add_user(self) -> None:
        statement = f"INSERT INTO users (handle) VALUES ('{USER}') ON CONFLICT (handle) DO NOTHING"
        if self.postgresql:
            import psycopg

            conninfo = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
            with psycopg.connect(conninfo) as connection:
                connection.execute(statement)
            return
        with self._engine.begin() as connection:
            connection.exec_driver_sql(statement)

    def _chunks(self, jobs, chunk_jobs) -> Iterator[tuple[list[dict], list[dict]]]:
        job_batch: list[dict] = []
        status_batch: list[dict] = []
        for job, statuses in jobs:
            if self._columns is None:
                self._columns = self._check_columns(job, statuses[0])
            job_batch.append(job)
            status_batch.extend(statuses)
            if len(job_batch) >= chunk_jobs:
                yield job_batch, status_batch
                job_batch, status_batch = [], []
        if job_batch:
            yield job_batch, status_batch

    def _insert_postgresql(self, jobs, chunk_jobs) -> None:
        import psycopg

        conninfo = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        json_columns = {
            table.name: {c.name for c in table.columns if isinstance(c.type, JSON)}
            for table in (Job.__table__, JobStatus.__table__)
        }
        with psycopg.connect(conninfo) as connection:
            with connection.cursor() as cursor:
                for job_batch, status_batch in self._chunks(jobs, chunk_jobs):
                    for table, batch in (("jobs", job_batch), ("job_status", status_batch)):
                        columns = self._columns[table]
                        as_json = [name in json_columns[table] for name in columns]
                        names = ", ".join(f'"{name}"' for name in columns)
                        with cursor.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                            for row in batch:
                                copy.write_row([_copy_value(row[name], is_json)
                                                for name, is_json in zip(columns, as_json)])
            connection.commit()

    def _insert_core(self, jobs, chunk_jobs) -> None:
        with self._engine.begin() as connection:
            for job_batch, status_batch in self._chunks(jobs, chunk_jobs):
                connection.execute(insert(Job.__table__), job_batch)
                connection.execute(insert(JobStatus.__table__), status_batch)

    def _check_columns(self, job: dict, status: dict) -> dict[str, list[str]]:
        """The columns to insert, after checking the rows against the models and the database."""
        if self.postgresql:
            engine = create_engine(self.url)
            try:
                inspector = inspect(engine)
                database = {t: [c["name"] for c in inspector.get_columns(t)] for t in ("jobs", "job_status")}
            finally:
                engine.dispose()
        else:
            inspector = inspect(self._engine)
            database = {t: [c["name"] for c in inspector.get_columns(t)] for t in ("jobs", "job_status")}
        models = {
            "jobs": [c.name for c in Job.__table__.columns],
            "job_status": [c.name for c in JobStatus.__table__.columns],
        }
        built = {"jobs": list(job), "job_status": list(status)}
        problems = []
        for table in ("jobs", "job_status"):
            for where, names in (("the models", models[table]), ("the migrated database", database[table])):
                missing = sorted(set(names) - set(built[table]))
                extra = sorted(set(built[table]) - set(names))
                if missing:
                    problems.append(f"{table}: {where} have column(s) {', '.join(missing)} that job_rows() does not fill")
                if extra:
                    problems.append(f"{table}: job_rows() fills column(s) {', '.join(extra)} that {where} do not have")
        if problems:
            raise SeedingError(
                "benchmarks/seeding.py job_rows() is out of step with the schema; update it:\n  "
                + "\n  ".join(problems)
            )
        return built


def _copy_value(value: Any, is_json: bool) -> Any:
    # COPY's text format takes a JSON column's value as its JSON text (a string error too).
    if is_json and value is not None:
        return json.dumps(value, separators=(",", ":"))
    return value


def auth_args(jobs: Sequence[SeededJob]) -> list[str]:
    """The wrk script arguments naming these jobs: ``<id>:<base64 credentials>``."""
    return [f"{job.id}:{job.token}" for job in jobs]
