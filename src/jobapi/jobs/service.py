"""The rules of jobs: making them, locking them, pushing status through the state machine,
heartbeats, acquiring and claiming, steps, finishing, cancelling, removing and new keys.

Views, console pages and CLI commands all call these functions. They take a
connection in the caller's transaction (a writing one for a change:
``storage.write_connection``), work on ``JobRow`` and ``StatusRow`` through
``jobs.statements``, and raise the domain's exceptions
(``jobapi.exceptions``); the caller (a request, a command) commits or rolls
back. The console and the terminal read mapped jobs (``get_job``,
``status_history``, ``last_status``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from ..exceptions import (
    AlreadyAcquired,
    IdempotencyKeyReused,
    JobFinished,
    JobNotFound,
    JobNotWaiting,
    JobStateError,
    JobStillActive,
    StepAlreadyStarted,
    StepNotFound,
    TooManyRecords,
)
from ..keys import hash_key, make_key
from ..models import Job, JobStatus, utcnow
from ..fields import format_timestamp
from . import statements
from .numbering import next_job_number, user_id
from .ids import is_job_id, new_job_id
from .rows import JobRow, StatusRow, new_record
from .statements import AnyConnection, JobDocumentRows
from .rules import request_digest
from .states import check_transition

@dataclass(frozen=True)
class NewJob:
    """A job just made, acquired or claimed, and its key, which is never shown again."""

    job: JobRow
    key: str


@dataclass(frozen=True)
class LockedJob:
    """A job whose row is locked (None: no such job), and the record an Idempotency-Key
    already made (if any)."""

    job: JobRow | None
    replay: StatusRow | None = None


@dataclass(frozen=True)
class Pushed:
    """The record a push answers with, whether this push stored it (False: a replay), and
    the job as it is now."""

    record: StatusRow
    stored: bool
    job: JobRow


_STATUS_TABLE = JobStatus.__table__
# A job's records for the console, every column by name.
_HISTORY = select(_STATUS_TABLE).where(_STATUS_TABLE.c.job_id == bindparam("job_id")).order_by(_STATUS_TABLE.c.seq)


def get_job(session: Session, job_id: str) -> Job | None:
    """The mapped job with this id, or None (for the console and the terminal)."""
    if not is_job_id(job_id):
        return None
    return session.get(Job, job_id)


def read_job(connection: AnyConnection, job_id: str) -> JobDocumentRows | None:
    """A job and its records, oldest first, for its document (one statement on PostgreSQL)."""
    if not is_job_id(job_id):
        return None
    return statements.read_job(connection, job_id)


def lock_job(connection: AnyConnection, job_id: str, *, idempotency_key: str | None = None) -> LockedJob:
    """The job, its row locked until the transaction ends, and the record its
    Idempotency-Key made, if any, in one statement on PostgreSQL. The connection's
    transaction is a writing one already (``storage.write_connection``)."""
    if not is_job_id(job_id):
        return LockedJob(job=None)
    job, replay = statements.lock(connection, job_id, idempotency_key)
    return LockedJob(job=job, replay=replay)


def require_job(connection: AnyConnection, job_id: str) -> JobRow:
    """The job, its row locked as by ``lock_job``; a missing job is ``JobNotFound``."""
    job = lock_job(connection, job_id).job
    if job is None:
        raise JobNotFound(job_id)
    return job


def create_job(
    connection: AnyConnection,
    *,
    task: str,
    user: str,
    args: dict[str, Any] | None = None,
    proc: int = 1,
    mem: int = 1,
) -> NewJob:
    """Make a job in the ``waiting`` state with its first record, its number and a new key;
    its user gets an id if no job named it before."""
    job_id = new_job_id()
    while lock_job(connection, job_id).job is not None:
        job_id = new_job_id()
    number = next_job_number(connection)
    user_id(connection, user)
    key = make_key()
    now = utcnow()
    job = JobRow(
        id=job_id, number=number, task=task, args=args or {}, proc=proc, mem=mem, user_id=user,
        key_digest=hash_key(key), created_at=now, state="waiting", stage=None,
        progress=0, updated_at=now, status_count=1,
    )
    statements.insert(
        connection, job, new_record(job_id, 1, now, {"state": "waiting", "stage": None, "progress": 0})
    )
    return NewJob(job=job, key=key)


def append_status(
    connection: AnyConnection,
    job: JobRow,
    fields: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
    digest: str | None = None,
) -> tuple[JobRow, StatusRow] | None:
    """Append a record of the pushed ``fields`` to a locked job and make it the job's current
    state: the job as it is now, and the record.

    Returns None, writing nothing, when the Idempotency-Key already stored a
    record (a concurrent retry got there first). The timestamp never goes
    back in time within a job, even if the clocks of the machines serving it
    disagree.
    """
    timestamp = max(utcnow(), job.updated_at)
    record = new_record(
        job.id, job.status_count + 1, timestamp, dict(fields),
        idempotency_key=idempotency_key, request_digest=digest if idempotency_key else None,
    )
    if not statements.append(connection, record):
        return None
    current = {column: getattr(record, field) for column, field in statements.CURRENT.items()}
    return job._replace(**current), record


def find_replay(connection: AnyConnection, job_id: str, idempotency_key: str) -> StatusRow | None:
    """The record an Idempotency-Key stored for this job, read anew (it may be a moment old)."""
    return statements.find_replay(connection, job_id, idempotency_key)


def _replayed(replay: StatusRow, push: Mapping[str, Any], job: JobRow) -> Pushed:
    if replay.request_digest != request_digest(push):
        raise IdempotencyKeyReused()
    return Pushed(record=replay, stored=False, job=job)


class PushBody(Protocol):
    """What a push sent: whether it was a JSON object, and its checked fields (or why not)."""

    @property
    def is_object(self) -> bool: ...

    def load(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class PushFields:
    """A push whose fields were checked elsewhere (a command, a console form, a test)."""

    fields: Mapping[str, Any]
    is_object: bool = True

    def load(self) -> Mapping[str, Any]:
        return self.fields


def push_status(
    connection: AnyConnection,
    locked: LockedJob,
    body: PushBody,
    *,
    idempotency_key: str | None = None,
    max_records: int | None = None,
) -> Pushed:
    """A job's own push: replay a retried one, or check it and append it.

    ``locked`` comes from ``lock_job`` in this transaction, with the same
    Idempotency-Key. The answers come in this order (SPEC 7.3): a retry
    (same key, same content) gets the record it made the first time,
    whatever has happened since, and the same key with other content is
    refused; then a finished job refuses any JSON object; then the fields
    are checked; then the move, then the job's history cap.
    """
    job = locked.job
    assert job is not None
    try:
        push: Mapping[str, Any] | None = body.load()
        refusal: Exception | None = None
    except Exception as error:  # the body's own refusal, raised below in its turn
        push, refusal = None, error

    if locked.replay is not None:
        if push is None:
            raise refusal  # type: ignore[misc]
        return _replayed(locked.replay, push, job)
    if not body.is_object:
        raise refusal  # type: ignore[misc]

    def refuse(error: JobStateError) -> Pushed:
        # On PostgreSQL the lock query read the records from a snapshot taken
        # before it waited for the lock: a retry of this very push that
        # committed meanwhile was not seen. Look once more before refusing.
        if idempotency_key is not None and push is not None:
            replay = find_replay(connection, job.id, idempotency_key)
            if replay is not None:
                return _replayed(replay, push, job)
        raise error

    if job.finished:
        return refuse(JobFinished(job.state))
    if push is None:
        raise refusal  # type: ignore[misc]
    try:
        check_transition(job.state, push["state"])
    except JobStateError as error:
        return refuse(error)
    if max_records is not None and job.status_count >= max_records:
        return refuse(TooManyRecords(job.state, max_records))
    appended = append_status(
        connection, job, push, idempotency_key=idempotency_key,
        digest=request_digest(push) if idempotency_key else None,
    )
    if appended is None:
        # The insert met this key: a concurrent retry stored the record first.
        assert idempotency_key is not None
        replay = find_replay(connection, job.id, idempotency_key)
        assert replay is not None
        return _replayed(replay, push, job)
    job, record = appended
    return Pushed(record=record, stored=True, job=job)


def ping_job(connection: AnyConnection, job: JobRow) -> JobRow:
    """Record a heartbeat of a job locked by ``lock_job`` that is not finished: the job as it is
    now, its ``pinged_at`` the heartbeat's time."""
    if job.finished:
        raise JobFinished(job.state)
    job = job._replace(pinged_at=max(utcnow(), job.updated_at))
    statements.ping(connection, job)
    return job


def _with_new_key(job: JobRow, **taken: Any) -> tuple[JobRow, str]:
    key = make_key()
    return job._replace(key_digest=hash_key(key), replaced_key_digest=job.key_digest, **taken), key


def rotate_key(connection: AnyConnection, job_id: str) -> str:
    """Give a job that is not finished a new key; the old one stops working when this commits."""
    job = require_job(connection, job_id)
    if job.finished:
        raise JobFinished(job.state)
    job, key = _with_new_key(job)
    statements.take(connection, job)
    return key


def acquire_job(connection: AnyConnection, job: JobRow, *, runner: str | None = None) -> NewJob:
    """A worker takes a waiting job, locked by ``lock_job``, and gets a fresh key (SPEC 7.1).

    Acquiring and claiming are one event: a job is taken once. Every key the
    job had stops working.
    """
    if job.acquired:
        raise AlreadyAcquired()
    if job.state != "waiting":
        raise JobNotWaiting(job.state)
    job, key = _with_new_key(job, claimed_by=runner, claimed_at=utcnow())
    statements.take(connection, job)
    return NewJob(job=job, key=key)


def claim_job(
    connection: AnyConnection, *, runner: str, tasks: Sequence[str], proc: int, mem: int
) -> NewJob | None:
    """Hand a runner the oldest waiting job not yet taken that it can run, with a fresh key.

    On PostgreSQL the candidate row is locked with SKIP LOCKED, so runners
    claiming at once never get the same job and never wait on each other;
    on SQLite the write transaction makes claims serial. The job's previous
    key stops working.
    """
    job = statements.claimable(connection, tasks=tasks, proc=proc, mem=mem)
    if job is None:
        return None
    job, key = _with_new_key(job, claimed_by=runner, claimed_at=utcnow())
    statements.take(connection, job)
    return NewJob(job=job, key=key)


@dataclass(frozen=True)
class StepDeclaration:
    """A step a worker will run, as it declares it when it claims a job."""

    id: str
    name: str
    description: str


def claim_workflow(
    connection: AnyConnection,
    *,
    workflow: str,
    runner: str,
    claim: Mapping[str, Any],
    steps: Sequence[StepDeclaration],
) -> NewJob | None:
    """Hand a worker the oldest waiting job not yet taken whose task is ``workflow``, whatever
    its size (a worker's size is its deployment's), with a fresh key; None if none waits.

    The job is acquired by ``runner`` and ``running`` now (a record, which is
    also a heartbeat); ``claim`` (what the worker says of itself) and the steps
    it will run, none started yet, are kept with the job. Every older key stops
    working.
    """
    job = statements.claimable_of(connection, workflow)
    if job is None:
        return None
    job, key = _with_new_key(
        job, claimed_by=runner, claimed_at=utcnow(), claim=dict(claim),
        steps=[
            {"id": step.id, "name": step.name, "description": step.description, "started_at": None}
            for step in steps
        ],
    )
    statements.take(connection, job)
    appended = append_status(connection, job, {"state": "running", "stage": None, "progress": 0})
    assert appended is not None
    return NewJob(job=appended[0], key=key)


@dataclass(frozen=True)
class StepStart:
    """A step of a job, started, whether this request started it (False: a repeat), and the
    job as it is now."""

    step: Mapping[str, Any]
    stored: bool
    job: JobRow


def steps_progress(steps: Sequence[Mapping[str, Any]]) -> int:
    """How far a job is through its declared steps: the share started, floored to a percent."""
    started = sum(1 for step in steps if step["started_at"] is not None)
    return started * 100 // len(steps)


def start_step(connection: AnyConnection, job: JobRow, step_id: str) -> StepStart:
    """Start one of the steps a locked job's claim declared: a ``running`` record whose stage is
    the step's id (with its name and description), at the share of steps started.

    Starting again the step started last changes nothing and answers it as it
    was (a worker retries a start whose answer it lost); a step started before
    that is ``StepAlreadyStarted``; one never declared is ``StepNotFound``.
    """
    if job.finished:
        raise JobFinished(job.state)
    steps = [dict(step) for step in job.steps or ()]
    step = next((candidate for candidate in steps if candidate["id"] == step_id), None)
    if step is None:
        raise StepNotFound(step_id)
    if step["started_at"] is not None:
        latest = max(candidate["started_at"] for candidate in steps if candidate["started_at"] is not None)
        if step["started_at"] != latest:
            raise StepAlreadyStarted(step_id)
        return StepStart(step=step, stored=False, job=job)
    check_transition(job.state, "running")
    step["started_at"] = ""  # counted as started for the progress below
    appended = append_status(connection, job, {
        "state": "running", "stage": step_id, "progress": steps_progress(steps),
        "step_name": step["name"], "step_description": step["description"],
    })
    assert appended is not None
    job, record = appended
    step["started_at"] = format_timestamp(record.timestamp)
    job = job._replace(steps=steps)
    statements.write_steps(connection, job)
    return StepStart(step=step, stored=True, job=job)


def finish_job(connection: AnyConnection, job: JobRow) -> JobRow:
    """A locked ``running`` job's work is done: a ``complete`` record at 100 %, keeping its stage;
    the job as it is now.

    A job in any other state is refused by the state machine (``JobFinished``,
    ``TransitionRefused``): a second finish is no silent success.
    """
    check_transition(job.state, "complete")
    appended = append_status(connection, job, {"state": "complete", "stage": job.stage, "progress": 100})
    assert appended is not None
    return appended[0]


@dataclass(frozen=True)
class Cancellation:
    """The outcome of a cancel: the job, its cancelled record, and whether it is new."""

    job: JobRow
    record: StatusRow
    changed: bool


def cancel_job(connection: AnyConnection, job_id: str) -> Cancellation:
    """Cancel a job, keeping its last stage and progress.

    A job already cancelled is left as it is; one that finished otherwise
    is refused.
    """
    job = require_job(connection, job_id)
    if job.state == "cancelled":
        return Cancellation(job=job, record=statements.record(connection, job.id, job.status_count), changed=False)
    if job.finished:
        raise JobFinished(job.state)
    appended = append_status(
        connection, job, {"state": "cancelled", "stage": job.stage, "progress": job.progress}
    )
    assert appended is not None
    job, record = appended
    return Cancellation(job=job, record=record, changed=True)


def remove_job(connection: AnyConnection, job_id: str, *, force: bool = False) -> None:
    """Delete a job and all its records; a job not finished only with ``force``."""
    job = require_job(connection, job_id)
    if not job.finished and not force:
        raise JobStillActive(job.state)
    statements.delete(connection, job.id)


def status_history(session: Session, job_id: str) -> Sequence[Any]:
    """A job's status records, oldest first, as rows with their times as datetimes (for the console)."""
    return session.execute(_HISTORY, {"job_id": job_id}).all()


def document_history(connection: AnyConnection, job_id: str) -> list[dict[str, Any]]:
    """A job's status records, oldest first, as its document shows them."""
    return statements.history(connection, job_id)


def last_status(session: Session, job: Job) -> JobStatus:
    """The mapped job's newest status record (for the terminal)."""
    return session.get_one(JobStatus, (job.id, job.status_count))
