"""The dialect's SQL: a job by its number (read, or locked), whether a workflow has a job
waiting, and the counts of active jobs.

Like ``jobapi.jobs.statements``, one text per database, run on the request's own
connection without the ORM: a worker's requests are the frequent ones, and an idle
fleet's claims most of all.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..jobs.rows import JobRow
from ..storage.connections import HeldConnection, is_postgresql, run_on_driver

# The job's columns, as JobRow names them, then its user's id.
_COLUMNS = ("id", "state", "stage", "progress", "updated_at", "status_count", "pinged_at",
            "key_digest", "replaced_key_digest", "claimed_at", "task", "args", "user_id",
            "created_at", "number", "claim", "steps")
_TIMES = ("updated_at", "pinged_at", "claimed_at", "created_at")
_JSON = ("args", "claim", "steps")

_SELECT = (
    f"SELECT {', '.join('j.' + name for name in _COLUMNS)}, u.id "
    "FROM jobs j LEFT JOIN users u ON u.handle = j.user_id WHERE j.number = {parameter}"
)
_ACTIVE = "('waiting', 'preparing', 'running')"

POSTGRESQL = {
    "read": _SELECT.format(parameter="%s"),
    "lock": _SELECT.format(parameter="%s") + " FOR UPDATE OF j",
    # The claim's partial index (ix_jobs_claimable) answers this alone.
    "waiting": "SELECT 1 FROM jobs WHERE task = %s AND state = 'waiting' AND claimed_at IS NULL LIMIT 1",
    "counts": f"SELECT state, task, COUNT(*) FROM jobs WHERE state IN {_ACTIVE} GROUP BY state, task",
}
# SQLite: the write transaction (BEGIN IMMEDIATE) is the lock.
SQLITE = {
    "read": _SELECT.format(parameter="?"),
    "lock": _SELECT.format(parameter="?"),
    "waiting": "SELECT 1 FROM jobs WHERE task = ? AND state = 'waiting' AND claimed_at IS NULL LIMIT 1",
    "counts": f"SELECT state, task, COUNT(*) FROM jobs WHERE state IN {_ACTIVE} GROUP BY state, task",
}

# SQLite keeps times as naive UTC text, the way SQLAlchemy's DateTime writes them.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


@dataclass(slots=True)
class NumberedJob:
    """A job read by its number, and its user's id (None if no users row names its handle)."""

    job: JobRow
    user_id: int | None


def _numbered(row: tuple, sqlite: bool) -> NumberedJob:
    values: dict[str, Any] = dict(zip(_COLUMNS, row[:-1]))
    if sqlite:
        for name in _TIMES:
            if values[name] is not None:
                values[name] = datetime.strptime(values[name], _SQLITE_TIME).replace(tzinfo=UTC)
        for name in _JSON:
            if isinstance(values[name], str):
                values[name] = json.loads(values[name])
    return NumberedJob(job=JobRow(**values), user_id=row[-1])


def find(connection: HeldConnection, number: int, *, lock: bool) -> NumberedJob | None:
    """The job with this number, its row locked until the transaction ends if ``lock`` (the
    transaction is a writing one already); None if no job has it."""
    sqlite = not is_postgresql(connection)
    statement = (SQLITE if sqlite else POSTGRESQL)["lock" if lock else "read"]
    row = run_on_driver(connection, statement, (number,)).fetchone()
    return None if row is None else _numbered(row, sqlite)


def has_waiting(connection: HeldConnection, workflow: str) -> bool:
    """Whether a job of this workflow waits, not yet taken (a read: it locks nothing)."""
    statement = (POSTGRESQL if is_postgresql(connection) else SQLITE)["waiting"]
    return run_on_driver(connection, statement, (workflow,)).fetchone() is not None


def active_counts(connection: HeldConnection) -> list[tuple[str, str, int]]:
    """``(state, task, count)`` of the jobs waiting, preparing or running."""
    statement = (POSTGRESQL if is_postgresql(connection) else SQLITE)["counts"]
    return [tuple(row) for row in run_on_driver(connection, statement).fetchall()]
