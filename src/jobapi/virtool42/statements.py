"""The dialect's SQL: a job by its number (read, or locked), whether a workflow has a job
waiting, and the counts of active jobs.

Like ``jobapi.jobs.statements`` (whose machinery runs these), each statement is
named, with named parameters, and read by column name into a ``JobRow``: a
worker's requests are the frequent ones, and an idle fleet's claims most of all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..jobs import statements
from ..jobs.rows import JobRow, column_list
from ..storage.connections import HeldConnection

_SELECT = (
    f"SELECT {column_list(JobRow, 'j')}, u.id AS user_number "
    "FROM jobs j LEFT JOIN users u ON u.handle = j.user_id WHERE j.number = {number}"
)
_ACTIVE = "('waiting', 'preparing', 'running')"
_WAITING = "SELECT 1 AS waiting FROM jobs WHERE task = {workflow} AND state = 'waiting' AND claimed_at IS NULL LIMIT 1"
_COUNTS = f"SELECT state, task, COUNT(*) AS count FROM jobs WHERE state IN {_ACTIVE} GROUP BY state, task"

POSTGRESQL = {
    "read": _SELECT.format(number="%(number)s"),
    "lock": _SELECT.format(number="%(number)s") + " FOR UPDATE OF j",
    # The claim's partial index (ix_jobs_claimable) answers this alone.
    "waiting": _WAITING.format(workflow="%(workflow)s"),
    "counts": _COUNTS,
}
# SQLite: the write transaction (BEGIN IMMEDIATE) is the lock.
SQLITE = {
    "read": _SELECT.format(number=":number"),
    "lock": _SELECT.format(number=":number"),
    "waiting": _WAITING.format(workflow=":workflow"),
    "counts": _COUNTS,
}


@dataclass(slots=True)
class NumberedJob:
    """A job read by its number, and its user's id (None if no users row names its handle)."""

    job: JobRow
    user_id: int | None


class ActiveCount(NamedTuple):
    """How many jobs of a task are in an active state."""

    state: str
    task: str
    count: int


def find(connection: HeldConnection, number: int, *, lock: bool) -> NumberedJob | None:
    """The job with this number, its row locked until the transaction ends if ``lock`` (the
    transaction is a writing one already); None if no job has it."""
    name = "lock" if lock else "read"
    result = statements.execute(connection, POSTGRESQL[name], SQLITE[name], {"number": number})
    values = result.cursor.fetchone()
    if values is None:
        return None
    return NumberedJob(job=result.row(JobRow, values), user_id=result.value(values, "user_number"))


def has_waiting(connection: HeldConnection, workflow: str) -> bool:
    """Whether a job of this workflow waits, not yet taken (a read: it locks nothing)."""
    result = statements.execute(connection, POSTGRESQL["waiting"], SQLITE["waiting"], {"workflow": workflow})
    return result.cursor.fetchone() is not None


def active_counts(connection: HeldConnection) -> list[ActiveCount]:
    """The jobs waiting, preparing or running, by state and task."""
    result = statements.execute(connection, POSTGRESQL["counts"], SQLITE["counts"], {})
    return [result.row(ActiveCount, values) for values in result.cursor.fetchall()]
