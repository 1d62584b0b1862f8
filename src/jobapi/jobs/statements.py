"""The SQL of a job's own requests: read its document, lock it, append a record, find a
retried push's record, record a heartbeat, keep its steps.

These are the requests workers make all the time, so they skip the ORM: one
text per database, run prepared on a connection of SQLAlchemy's pool (the
request's own, ``jobapi.transaction.request_connection``, or a session's),
answering plain rows. Errors go through SQLAlchemy's handling all the same
(its error classes, its pool renewal, the engine's error events), so a
failing database looks the same here as anywhere else.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from collections.abc import Sequence
from typing import Any

from psycopg.types.json import Json
from sqlalchemy import Connection

from ..models import JobFacts
from ..storage import HeldConnection, is_postgresql, run_on_driver

# A job's columns that authenticate it and say where it stands.
_JOB = ("id", "state", "stage", "progress", "updated_at", "status_count", "pinged_at",
        "key_digest", "replaced_key_digest", "claimed_at")
# And those only its document shows.
_DOCUMENT = ("task", "args", "proc", "mem", "user_id", "created_at", "number", "claim")
# A record's columns, in the order documents show them.
_RECORD = ("state", "stage", "error", "progress", "timestamp", "step_name", "step_description")
_INSERT = ("job_id", "seq", "state", "stage", "error", "progress", "timestamp",
           "step_name", "step_description", "idempotency_key", "request_digest")
_CURRENT = ("state", "stage", "progress", "updated_at", "status_count")


def _columns(prefix: str, names: tuple[str, ...]) -> str:
    return ", ".join(f"{prefix}.{name}" for name in names)


# The record as JSON text from PostgreSQL: its time already written as documents show it.
_PG_RECORD_ARRAY = (
    "json_build_array(s.state, s.stage, s.error, s.progress, "
    """to_char(s.timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), """
    "s.step_name, s.step_description)"
)

POSTGRESQL = {
    # The job and its whole history in one statement.
    "read": (
        f"SELECT {_columns('j', _JOB + _DOCUMENT)}, "
        f"(SELECT json_agg({_PG_RECORD_ARRAY} ORDER BY s.seq) FROM job_status s WHERE s.job_id = j.id) "
        "FROM jobs j WHERE j.id = %s"
    ),
    "history": (
        f"SELECT json_agg({_PG_RECORD_ARRAY} ORDER BY s.seq) FROM job_status s WHERE s.job_id = %s"
    ),
    "lock": f"SELECT {_columns('j', _JOB)} FROM jobs j WHERE j.id = %s FOR UPDATE",
    # The row lock, and the record an Idempotency-Key made, in one statement.
    "lock_with_replay": (
        f"SELECT {_columns('j', _JOB)}, {_columns('s', _RECORD)}, s.request_digest "
        "FROM jobs j LEFT JOIN job_status s ON s.job_id = j.id AND s.idempotency_key = %s "
        "WHERE j.id = %s FOR UPDATE OF j"
    ),
    "replay": (
        f"SELECT {', '.join(_RECORD)}, request_digest FROM job_status "
        "WHERE job_id = %s AND idempotency_key = %s"
    ),
    # The record and the job's current state in one statement. A keyed push
    # that lost a race to its own retry inserts nothing and updates nothing.
    "append": (
        f"WITH record AS (INSERT INTO job_status ({', '.join(_INSERT)}) "
        f"VALUES ({', '.join(['%s'] * len(_INSERT))}) "
        "ON CONFLICT (job_id, idempotency_key) DO NOTHING RETURNING seq) "
        f"UPDATE jobs SET {', '.join(f'{name} = %s' for name in _CURRENT)} "
        "FROM record WHERE jobs.id = %s RETURNING record.seq"
    ),
    "ping": "UPDATE jobs SET pinged_at = %s WHERE id = %s",
    "steps": "UPDATE jobs SET steps = %s WHERE id = %s",
}

# SQLite: its write lock is the transaction's (BEGIN IMMEDIATE), and its
# statements are cached by the driver.
SQLITE = {
    "read": f"SELECT {', '.join(_JOB + _DOCUMENT)} FROM jobs WHERE id = ?",
    "history": f"SELECT {', '.join(_RECORD)} FROM job_status WHERE job_id = ? ORDER BY seq",
    "lock": f"SELECT {', '.join(_JOB)} FROM jobs WHERE id = ?",
    "replay": (
        f"SELECT {', '.join(_RECORD)}, request_digest FROM job_status "
        "WHERE job_id = ? AND idempotency_key = ?"
    ),
    "insert": (
        f"INSERT INTO job_status ({', '.join(_INSERT)}) VALUES ({', '.join(['?'] * len(_INSERT))}) "
        "ON CONFLICT (job_id, idempotency_key) DO NOTHING RETURNING seq"
    ),
    "update": f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in _CURRENT)} WHERE id = ?",
    "ping": "UPDATE jobs SET pinged_at = ? WHERE id = ?",
    "steps": "UPDATE jobs SET steps = ? WHERE id = ?",
}


@dataclass(slots=True)
class Record:
    """A status record as its job's requests read it; ``timestamp`` is a datetime, or the
    text documents show (``2018-02-06T22:16:15.637000Z``) when read for a document."""

    state: str
    stage: str | None
    error: Any
    progress: int
    timestamp: Any
    step_name: str | None = None
    step_description: str | None = None
    request_digest: str | None = None


@dataclass(slots=True)
class JobRow(JobFacts):
    """A job as its own requests read it: plain values, no ORM instance."""

    id: str
    state: str
    stage: str | None
    progress: int
    updated_at: datetime
    status_count: int
    pinged_at: datetime | None
    key_digest: str
    replaced_key_digest: str | None
    claimed_at: datetime | None
    # Read for a document only.
    task: str | None = None
    args: dict[str, Any] | None = None
    proc: int | None = None
    mem: int | None = None
    user_id: str | None = None
    created_at: datetime | None = None
    number: int | None = None
    claim: dict[str, Any] | None = None
    # Read for a document only: each record's columns, in ``_RECORD`` order.
    records: list[Sequence[Any]] | None = None
    # The steps a 42.x worker declared (jobapi.virtool42 reads them).
    steps: list[dict[str, Any]] | None = None


# SQLite keeps times as naive UTC text, the way SQLAlchemy's DateTime writes them.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def _sqlite_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.strptime(value, _SQLITE_TIME).replace(tzinfo=UTC)


def _sqlite_document_time(value: str) -> str:
    # "2018-02-06 22:16:15.637000" -> "2018-02-06T22:16:15.637000Z"
    return value.replace(" ", "T") + "Z"


def _job(row: tuple, sqlite: bool) -> JobRow:
    job = JobRow(*row)
    if sqlite:
        job.updated_at = _sqlite_time(job.updated_at)  # type: ignore[arg-type,assignment]
        job.pinged_at = _sqlite_time(job.pinged_at)  # type: ignore[arg-type]
        job.claimed_at = _sqlite_time(job.claimed_at)  # type: ignore[arg-type]
        if job.created_at is not None:
            job.created_at = _sqlite_time(job.created_at)  # type: ignore[arg-type]
        if isinstance(job.args, str):
            job.args = json.loads(job.args)
        if isinstance(job.claim, str):
            job.claim = json.loads(job.claim)
    return job


def _sqlite_record(row: tuple) -> Record:
    record = Record(*row)
    if record.error is not None:
        record.error = json.loads(record.error)
    record.timestamp = _sqlite_time(record.timestamp)
    return record


def _sqlite_document_record(row: tuple) -> tuple:
    state, stage, error, progress, timestamp, step_name, step_description = row
    return (state, stage, None if error is None else json.loads(error), progress,
            _sqlite_document_time(timestamp), step_name, step_description)


def read_job(connection: Connection | HeldConnection, job_id: str) -> JobRow | None:
    """A job and its records, oldest first, for its document; None if there is no such job."""
    if is_postgresql(connection):
        row = run_on_driver(connection, POSTGRESQL["read"], (job_id,)).fetchone()
        if row is None:
            return None
        job = _job(row[:-1], sqlite=False)
        job.records = row[-1] or []
        return job
    row = run_on_driver(connection, SQLITE["read"], (job_id,)).fetchone()
    if row is None:
        return None
    job = _job(row, sqlite=True)
    job.records = history(connection, job_id)
    return job


def history(connection: Connection | HeldConnection, job_id: str) -> list[Sequence[Any]]:
    """A job's records, oldest first, each its columns in ``_RECORD`` order, with its time
    written as documents show it."""
    if is_postgresql(connection):
        (values,) = run_on_driver(connection, POSTGRESQL["history"], (job_id,)).fetchone()
        return values or []
    rows = run_on_driver(connection, SQLITE["history"], (job_id,)).fetchall()
    return [_sqlite_document_record(row) for row in rows]


def lock(connection: Connection | HeldConnection, job_id: str, idempotency_key: str | None) -> tuple[JobRow | None, Record | None]:
    """The job, its row locked until the transaction ends, and the record its
    Idempotency-Key made, if any (the transaction is already a writing one)."""
    if is_postgresql(connection):
        if idempotency_key is None:
            row = run_on_driver(connection, POSTGRESQL["lock"], (job_id,)).fetchone()
            return (None if row is None else _job(row, sqlite=False)), None
        row = run_on_driver(connection, POSTGRESQL["lock_with_replay"], (idempotency_key, job_id)).fetchone()
        if row is None:
            return None, None
        width = len(_JOB)
        replay = Record(*row[width:]) if row[width] is not None else None
        return _job(row[:width], sqlite=False), replay
    row = run_on_driver(connection, SQLITE["lock"], (job_id,)).fetchone()
    if row is None:
        return None, None
    replay = find_replay(connection, job_id, idempotency_key) if idempotency_key is not None else None
    return _job(row, sqlite=True), replay


def find_replay(connection: Connection | HeldConnection, job_id: str, idempotency_key: str) -> Record | None:
    """The record an Idempotency-Key stored for this job, read anew."""
    sqlite = not is_postgresql(connection)
    row = run_on_driver(connection, (SQLITE if sqlite else POSTGRESQL)["replay"], (job_id, idempotency_key)).fetchone()
    if row is None:
        return None
    return _sqlite_record(row) if sqlite else Record(*row)


def append(connection: Connection | HeldConnection, record: tuple, current: tuple) -> bool:
    """Insert a record (its columns in ``_INSERT`` order) and make it the job's current state
    (``_CURRENT`` order); False, writing nothing, when its Idempotency-Key already stored one."""
    job_id = record[0]
    error = record[4]
    if is_postgresql(connection):
        if error is not None:
            record = record[:4] + (Json(error),) + record[5:]
        return run_on_driver(connection, POSTGRESQL["append"], record + current + (job_id,)).fetchone() is not None
    # SQLite: the error as JSON text, the times as SQLAlchemy writes them.
    record = (record[:4] + (None if error is None else json.dumps(error), record[5], _sqlite_text(record[6]))
              + record[7:])
    if run_on_driver(connection, SQLITE["insert"], record).fetchone() is None:
        return False
    current = current[:3] + (_sqlite_text(current[3]),) + current[4:]
    run_on_driver(connection, SQLITE["update"], current + (job_id,))
    return True


def ping(connection: Connection | HeldConnection, job_id: str, at: datetime) -> None:
    """Record a heartbeat of a locked job."""
    if is_postgresql(connection):
        run_on_driver(connection, POSTGRESQL["ping"], (at, job_id))
    else:
        run_on_driver(connection, SQLITE["ping"], (_sqlite_text(at), job_id))


def _sqlite_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_SQLITE_TIME)


def write_steps(connection: Connection | HeldConnection, job_id: str, steps: list[dict[str, Any]]) -> None:
    """Keep a locked job's steps (as a 42.x worker declared them, with their start times)."""
    if is_postgresql(connection):
        run_on_driver(connection, POSTGRESQL["steps"], (Json(steps), job_id))
    else:
        run_on_driver(connection, SQLITE["steps"], (json.dumps(steps), job_id))
