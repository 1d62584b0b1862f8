"""The SQL of jobs, each statement named, with named parameters: read a job's document, lock
it, append a record, find a retried push's record, record a heartbeat, keep a job's steps, make, take, claim
and remove a job.

A job's own requests are the ones workers make all the time, so these skip
the ORM: one text per database (``%(job_id)s`` for psycopg, ``:job_id`` for
sqlite3), run prepared on a connection of SQLAlchemy's pool (the request's
own, ``jobapi.transaction.request_connection``, or a session's), read into
the rows of ``jobs.rows`` by column name. The columns come from those rows,
so from the models. Errors go through SQLAlchemy's handling all the same
(its error classes, its pool renewal, the engine's error events), so a
failing database looks the same here as anywhere else.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NamedTuple

from psycopg.types.json import Json
from sqlalchemy import JSON, Connection

from ..models import Job, JobStatus, UTCDateTime
from ..storage.connections import HeldConnection, is_postgresql, run_on_driver
from .rows import JobRow, StatusRow, column_list, names_of, row_maker
from .rules import DOCUMENT_KEYS, SEED_RECORD_KEYS, SHOWN_WHEN_GIVEN

AnyConnection = Connection | HeldConnection

# The job's columns that follow its newest record: column -> the record's field.
CURRENT = {"state": "state", "stage": "stage", "progress": "progress", "updated_at": "timestamp", "status_count": "seq"}


def _assignments(columns: dict[str, str], param: Callable[[str], str]) -> str:
    return ", ".join(f"{column} = {param(field)}" for column, field in columns.items())


def _values(row_type: type, param: Callable[[str], str]) -> str:
    return ", ".join(param(name) for name in row_type._fields)


def _common(param: Callable[[str], str]) -> dict[str, str]:
    """The statements both databases say alike, with their placeholders."""
    jobs, records = column_list(JobRow), column_list(StatusRow)
    return {
        "replay": (
            f"SELECT {records} FROM job_status "
            f"WHERE job_id = {param('job_id')} AND idempotency_key = {param('idempotency_key')}"
        ),
        "record": f"SELECT {records} FROM job_status WHERE job_id = {param('job_id')} AND seq = {param('seq')}",
        "ping": f"UPDATE jobs SET pinged_at = {param('pinged_at')} WHERE id = {param('id')}",
        # Acquire, claim, rotate-key: a new key, who took the job, and what a 42.x worker
        # declared as it claimed it.
        "take": (
            f"UPDATE jobs SET key_digest = {param('key_digest')}, "
            f"replaced_key_digest = {param('replaced_key_digest')}, "
            f"claimed_by = {param('claimed_by')}, claimed_at = {param('claimed_at')}, "
            f"claim = {param('claim')}, steps = {param('steps')} WHERE id = {param('id')}"
        ),
        "insert_job": f"INSERT INTO jobs ({jobs}) VALUES ({_values(JobRow, param)})",
        "insert_first_record": f"INSERT INTO job_status ({records}) VALUES ({_values(StatusRow, param)})",
        "delete": f"DELETE FROM jobs WHERE id = {param('job_id')}",
        "steps": f"UPDATE jobs SET steps = {param('steps')} WHERE id = {param('id')}",
    }


def _postgresql(name: str) -> str:
    return f"%({name})s"


def _sqlite(name: str) -> str:
    return f":{name}"


# A record's values in DOCUMENT_KEYS order, built by PostgreSQL as a JSON array (half the
# text of an object), its time already written as documents show it; ``_shown`` names them.
_PG_RECORD_VALUES = "json_build_array({})".format(", ".join(
    """to_char(s.timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
    if key == "timestamp" else f"s.{key}"
    for key in DOCUMENT_KEYS
))
_PG_CLAIMABLE = (
    "SELECT {columns} FROM jobs WHERE state = 'waiting' AND claimed_at IS NULL AND {task_in} "
    "AND proc <= {proc} AND mem <= {mem} ORDER BY created_at, id LIMIT 1"
)

POSTGRESQL = {
    **_common(_postgresql),
    # The job and its whole history in one statement.
    "read": (
        f"SELECT {column_list(JobRow, 'j')}, "
        f"(SELECT json_agg({_PG_RECORD_VALUES} ORDER BY s.seq) FROM job_status s WHERE s.job_id = j.id) AS history "
        "FROM jobs j WHERE j.id = %(job_id)s"
    ),
    "history": (
        f"SELECT json_agg({_PG_RECORD_VALUES} ORDER BY s.seq) AS history FROM job_status s "
        "WHERE s.job_id = %(job_id)s"
    ),
    "lock": f"SELECT {column_list(JobRow)} FROM jobs WHERE id = %(job_id)s FOR UPDATE",
    # For the reaper, which never waits on a request that holds the job.
    "lock_nowait": f"SELECT {column_list(JobRow)} FROM jobs WHERE id = %(job_id)s FOR UPDATE NOWAIT",
    # The row lock, and the record an Idempotency-Key made, in one statement.
    "lock_with_replay": (
        f"SELECT {column_list(JobRow, 'j')}, {column_list(StatusRow, 's', prefix='replay.')} "
        "FROM jobs j LEFT JOIN job_status s ON s.job_id = j.id AND s.idempotency_key = %(idempotency_key)s "
        "WHERE j.id = %(job_id)s FOR UPDATE OF j"
    ),
    # The record and the job's current state in one statement. A keyed push
    # that lost a race to its own retry inserts nothing and updates nothing.
    "append": (
        f"WITH record AS (INSERT INTO job_status ({column_list(StatusRow)}) "
        f"VALUES ({_values(StatusRow, _postgresql)}) "
        "ON CONFLICT (job_id, idempotency_key) DO NOTHING RETURNING seq) "
        f"UPDATE jobs SET {_assignments(CURRENT, _postgresql)} "
        "FROM record WHERE jobs.id = %(job_id)s RETURNING record.seq"
    ),
    # Runners claiming at once never get the same job, nor wait on each other.
    "claim": _PG_CLAIMABLE.format(
        columns=column_list(JobRow), task_in="task = ANY(%(tasks)s)", proc="%(proc)s", mem="%(mem)s",
    ) + " FOR UPDATE SKIP LOCKED",
    "claim_task": _PG_CLAIMABLE.format(
        columns=column_list(JobRow), task_in="task = %(task)s", proc="proc", mem="mem",
    ) + " FOR UPDATE SKIP LOCKED",
}

# SQLite: its write lock is the transaction's (BEGIN IMMEDIATE), and its
# statements are cached by the driver.
SQLITE = {
    **_common(_sqlite),
    "read": f"SELECT {column_list(JobRow)} FROM jobs WHERE id = :job_id",
    "history": f"SELECT {', '.join(DOCUMENT_KEYS)} FROM job_status WHERE job_id = :job_id ORDER BY seq",
    "lock": f"SELECT {column_list(JobRow)} FROM jobs WHERE id = :job_id",
    "lock_nowait": f"SELECT {column_list(JobRow)} FROM jobs WHERE id = :job_id",
    "insert": (
        f"INSERT INTO job_status ({column_list(StatusRow)}) VALUES ({_values(StatusRow, _sqlite)}) "
        "ON CONFLICT (job_id, idempotency_key) DO NOTHING RETURNING seq"
    ),
    "update_current": f"UPDATE jobs SET {_assignments(CURRENT, _sqlite)} WHERE id = :job_id",
    "claim": _PG_CLAIMABLE.format(
        columns=column_list(JobRow), task_in="task IN (SELECT value FROM json_each(:tasks))",
        proc=":proc", mem=":mem",
    ),
    "claim_task": _PG_CLAIMABLE.format(columns=column_list(JobRow), task_in="task = :task", proc="proc", mem="mem"),
}


# How values of each kind of column go to each driver and come back. PostgreSQL
# reads and writes times as they are (its sessions speak UTC) and reads JSON;
# SQLite keeps times as naive UTC text, the way SQLAlchemy's DateTime writes them,
# and JSON as text.
_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def _sqlite_time(value: str) -> datetime:
    return datetime.strptime(value, _SQLITE_TIME).replace(tzinfo=UTC)


def _sqlite_text(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_SQLITE_TIME)


def _sqlite_document_time(value: str) -> str:
    # "2018-02-06 22:16:15.637000" -> "2018-02-06T22:16:15.637000Z"
    return value.replace(" ", "T") + "Z"


def _columns_of_type(kind: type) -> frozenset[str]:
    return frozenset(
        column.key for table in (Job.__table__, JobStatus.__table__) for column in table.columns
        if isinstance(column.type, kind)
    )


_TIMES = _columns_of_type(UTCDateTime)
_JSON = _columns_of_type(JSON)
# column name -> how its value is written (None is always written as NULL).
_PG_ENCODERS = tuple((name, Json) for name in sorted(_JSON))
_SQLITE_ENCODERS = tuple(
    [(name, _sqlite_text) for name in sorted(_TIMES)] + [(name, json.dumps) for name in sorted(_JSON)]
)
# column name -> how SQLite's text is read back.
_SQLITE_DECODERS = tuple(
    [(name, _sqlite_time) for name in sorted(_TIMES)] + [(name, json.loads) for name in sorted(_JSON)]
)


def _run(connection: AnyConnection, name: str, parameters: dict[str, Any]) -> tuple[Any, str, bool]:
    """Run the named statement with its parameters encoded for the connection's database:
    the cursor, the statement's text, and whether the database is PostgreSQL."""
    postgresql = is_postgresql(connection)
    for column, encode in _PG_ENCODERS if postgresql else _SQLITE_ENCODERS:
        value = parameters.get(column)
        if value is not None:
            parameters[column] = encode(value)
    statement = (POSTGRESQL if postgresql else SQLITE)[name]
    return run_on_driver(connection, statement, parameters), statement, postgresql


# A statement's column names, read from its first result (they never change): psycopg
# builds its description anew on each call.
_NAMES: dict[str, tuple[str, ...]] = {}


def _names(cursor: Any, statement: str) -> tuple[str, ...]:
    names = _NAMES.get(statement)
    if names is None:
        names = _NAMES[statement] = names_of(cursor.description)
    return names


# (statement, row type, prefix) -> how its rows are made, found once.
_MAKERS: dict[tuple[str, type, str], Callable[[Sequence[Any]], Any]] = {}


def _maker(
    cursor: Any, statement: str, postgresql: bool, row_type: type, prefix: str = ""
) -> Callable[[Sequence[Any]], Any]:
    key = (statement, row_type, prefix)
    maker = _MAKERS.get(key)
    if maker is None:
        maker = _MAKERS[key] = row_maker(
            row_type, _names(cursor, statement), prefix, () if postgresql else _SQLITE_DECODERS
        )
    return maker


class Result(NamedTuple):
    """A statement's cursor, whose rows are read by column name."""

    cursor: Any
    statement: str
    postgresql: bool

    def row(self, row_type: type, values: Sequence[Any], prefix: str = "") -> Any:
        """One of its rows as a ``row_type``, each field from the column of its name."""
        return _maker(self.cursor, self.statement, self.postgresql, row_type, prefix)(values)

    def value(self, values: Sequence[Any], column: str) -> Any:
        """One column of one of its rows, by the column's name."""
        return _value(self.cursor, self.statement, values, column)


def execute(connection: AnyConnection, postgresql: str, sqlite: str, parameters: dict[str, Any]) -> Result:
    """Run a statement of another module (its text for each database, named parameters),
    its parameters encoded as this module's are; its rows are read by column name."""
    is_pg = is_postgresql(connection)
    for column, encode in _PG_ENCODERS if is_pg else _SQLITE_ENCODERS:
        value = parameters.get(column)
        if value is not None:
            parameters[column] = encode(value)
    statement = postgresql if is_pg else sqlite
    return Result(run_on_driver(connection, statement, parameters), statement, is_pg)


def _one(connection: AnyConnection, name: str, parameters: dict[str, Any], row_type: type) -> Any:
    """The statement's one row as a ``row_type``, or None."""
    cursor, statement, postgresql = _run(connection, name, parameters)
    values = cursor.fetchone()
    return None if values is None else _maker(cursor, statement, postgresql, row_type)(values)


def _value(cursor: Any, statement: str, values: Sequence[Any], column: str) -> Any:
    """One column of a row, by its name."""
    return values[_names(cursor, statement).index(column)]


class JobDocumentRows(NamedTuple):
    """A job, and its records as its document shows them, oldest first."""

    job: JobRow
    history: list[dict[str, Any]]


_SEED = len(SEED_RECORD_KEYS)


def _shown(history: list[Sequence[Any]]) -> list[dict[str, Any]]:
    """Records' values, in DOCUMENT_KEYS order, as their documents: the seed's five keys, then
    those shown only when the push gave them."""
    documents = []
    for values in history:
        document = dict(zip(SEED_RECORD_KEYS, values))
        for key, value in zip(SHOWN_WHEN_GIVEN, values[_SEED:]):
            if value is not None:
                document[key] = value
        documents.append(document)
    return documents


def read_job(connection: AnyConnection, job_id: str) -> JobDocumentRows | None:
    """A job and its records, oldest first, for its document; None if there is no such job."""
    cursor, statement, postgresql = _run(connection, "read", {"job_id": job_id})
    values = cursor.fetchone()
    if values is None:
        return None
    job = _maker(cursor, statement, postgresql, JobRow)(values)
    if postgresql:
        return JobDocumentRows(job, _shown(_value(cursor, statement, values, "history") or []))
    return JobDocumentRows(job, history(connection, job_id))


def history(connection: AnyConnection, job_id: str) -> list[dict[str, Any]]:
    """A job's records, oldest first, as its document shows them (times written as text)."""
    cursor, statement, postgresql = _run(connection, "history", {"job_id": job_id})
    if postgresql:
        return _shown(_value(cursor, statement, cursor.fetchone(), "history") or [])
    names = _names(cursor, statement)
    assert names == DOCUMENT_KEYS, names
    error_at, time_at = names.index("error"), names.index("timestamp")
    records = []
    for values in cursor.fetchall():
        values = list(values)
        if values[error_at] is not None:
            values[error_at] = json.loads(values[error_at])
        values[time_at] = _sqlite_document_time(values[time_at])
        records.append(values)
    return _shown(records)


def lock(
    connection: AnyConnection, job_id: str, idempotency_key: str | None = None, *, nowait: bool = False
) -> tuple[JobRow | None, StatusRow | None]:
    """The job, its row locked until the transaction ends, and the record its
    Idempotency-Key made, if any (the transaction is already a writing one). With
    ``nowait``, a row another transaction holds is an error at once (PostgreSQL)."""
    if idempotency_key is not None and is_postgresql(connection):
        cursor, statement, _ = _run(
            connection, "lock_with_replay", {"job_id": job_id, "idempotency_key": idempotency_key}
        )
        values = cursor.fetchone()
        if values is None:
            return None, None
        replay = _maker(cursor, statement, True, StatusRow, prefix="replay.")(values)
        return _maker(cursor, statement, True, JobRow)(values), (replay if replay.job_id is not None else None)
    job = _one(connection, "lock_nowait" if nowait else "lock", {"job_id": job_id}, JobRow)
    if job is None or idempotency_key is None:
        return job, None
    return job, find_replay(connection, job_id, idempotency_key)


def find_replay(connection: AnyConnection, job_id: str, idempotency_key: str) -> StatusRow | None:
    """The record an Idempotency-Key stored for this job, read anew."""
    return _one(connection, "replay", {"job_id": job_id, "idempotency_key": idempotency_key}, StatusRow)


def record(connection: AnyConnection, job_id: str, seq: int) -> StatusRow:
    """A job's record by its place in the history (from 1)."""
    return _one(connection, "record", {"job_id": job_id, "seq": seq}, StatusRow)


def append(connection: AnyConnection, record: StatusRow) -> bool:
    """Insert a record and make it the job's current state (``CURRENT``); False, writing
    nothing, when its Idempotency-Key already stored one."""
    cursor, _, postgresql = _run(connection, "append" if is_postgresql(connection) else "insert", record._asdict())
    if cursor.fetchone() is None:
        return False
    if not postgresql:
        _run(connection, "update_current", record._asdict())
    return True


def ping(connection: AnyConnection, job: JobRow) -> None:
    """Record a locked job's heartbeat (its ``pinged_at``)."""
    _run(connection, "ping", {"id": job.id, "pinged_at": job.pinged_at})


def take(connection: AnyConnection, job: JobRow) -> None:
    """Write a locked job's keys and who took it (``key_digest``, ``replaced_key_digest``,
    ``claimed_by``, ``claimed_at``, ``claim``, ``steps``)."""
    _run(connection, "take", {
        "id": job.id, "key_digest": job.key_digest, "replaced_key_digest": job.replaced_key_digest,
        "claimed_by": job.claimed_by, "claimed_at": job.claimed_at, "claim": job.claim, "steps": job.steps,
    })


def insert(connection: AnyConnection, job: JobRow, first: StatusRow) -> None:
    """Store a new job and its first record."""
    _run(connection, "insert_job", job._asdict())
    _run(connection, "insert_first_record", first._asdict())


def claimable_of(connection: AnyConnection, task: str) -> JobRow | None:
    """The oldest waiting job of this task not yet taken, whatever its size, locked as by
    ``claimable`` (a 42.x worker's size is its deployment's)."""
    return _one(connection, "claim_task", {"task": task}, JobRow)


def claimable(connection: AnyConnection, *, tasks: Sequence[str], proc: int, mem: int) -> JobRow | None:
    """The oldest waiting job not yet taken whose task is listed and whose needs fit, locked
    (on PostgreSQL skipping rows other claims hold; SQLite's write lock makes claims serial)."""
    tasks = list(tasks)
    return _one(connection, "claim", {
        "tasks": tasks if is_postgresql(connection) else json.dumps(tasks), "proc": proc, "mem": mem,
    }, JobRow)


def write_steps(connection: AnyConnection, job: JobRow) -> None:
    """Keep a locked job's steps (as a 42.x worker declared them, with their start times)."""
    _run(connection, "steps", {"id": job.id, "steps": job.steps})


def delete(connection: AnyConnection, job_id: str) -> None:
    """Delete a job; its records go with it (ON DELETE CASCADE)."""
    _run(connection, "delete", {"job_id": job_id})
