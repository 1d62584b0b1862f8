"""The rules of jobs: making them, locking them, pushing status through the state machine,
heartbeats, acquiring and claiming, steps, finishing, cancelling, removing and new keys.

Views, console pages and CLI commands all call these functions. They take
the session, raise the domain's exceptions (``jobapi.exceptions``), and
flush; the caller (a request, a command) commits or rolls back.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, inspect, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

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
from ..models import JOB_ID_PATTERN, Job, JobStatus, utcnow
from ..schemas import format_timestamp
from ..storage import begin_write
from . import statements
from .numbering import next_job_number, user_id
from .states import check_transition

ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 8
_JOB_ID = re.compile(JOB_ID_PATTERN)

# The columns of a status record, in the order documents show them.
STATUS_COLUMNS = ("state", "stage", "error", "progress", "timestamp", "step_name", "step_description")


@dataclass(frozen=True)
class NewJob:
    """A job just made, acquired or claimed, and its key, which is never shown again."""

    job: Job
    key: str


@dataclass(frozen=True)
class LockedJob:
    """A job whose row is locked, and the record an Idempotency-Key already made (if any)."""

    job: Job | None
    replay: JobStatus | None = None


@dataclass(frozen=True)
class Pushed:
    """The record a push answers with, and whether this push stored it (False: a replay)."""

    record: JobStatus
    stored: bool


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the shape of a job id (anything else names no job)."""
    return _JOB_ID.fullmatch(value) is not None


def new_job_id() -> str:
    """A random job id: 8 characters of a-z and 0-9."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


# The operators' lock: the whole mapped job, which they may change or delete.
_LOCK_JOB = (
    select(Job)
    .where(Job.id == bindparam("job_id"))
    .with_for_update()
    .execution_options(populate_existing=True)
)
_STATUS_TABLE = JobStatus.__table__
_HISTORY = (
    select(*(_STATUS_TABLE.c[name] for name in STATUS_COLUMNS))
    .where(_STATUS_TABLE.c.job_id == bindparam("job_id"))
    .order_by(_STATUS_TABLE.c.seq)
)


def get_job(session: Session, job_id: str) -> Job | None:
    """The job with this id, or None."""
    if not is_job_id(job_id):
        return None
    return session.get(Job, job_id)


def require_job(session: Session, job_id: str, *, lock: bool = False) -> Job:
    """Like ``get_job`` (or ``lock_job``), but a missing job is ``JobNotFound``."""
    job = lock_job(session, job_id).job if lock else get_job(session, job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def lock_job(session: Session, job_id: str) -> LockedJob:
    """The mapped job with this id, its row locked until the transaction ends (for the
    operators' and commands' changes). This begins the transaction as a writing one
    (on SQLite it takes the write lock), so it comes first."""
    begin_write(session)
    if not is_job_id(job_id):
        return LockedJob(job=None)
    return LockedJob(job=session.scalars(_LOCK_JOB, {"job_id": job_id}).one_or_none())


def lock_own_job(
    connection: Connection, job_id: str, *, idempotency_key: str | None = None
) -> LockedJob:
    """For a job's own write (a push, a ping): the job, its row locked until the
    transaction ends, and the record its Idempotency-Key made, if any, in one statement.

    A plain row, not a mapped job: this is the most frequent write. The
    connection's transaction is a writing one already.
    """
    if not is_job_id(job_id):
        return LockedJob(job=None)
    job, replay = statements.lock(connection, job_id, idempotency_key)
    return LockedJob(job=job, replay=replay)


def loaded_state(job: Job | statements.JobRow) -> str | None:
    """The state of a job in hand, read without a query: after a rollback a mapped job is
    expired (and the database may be gone); a deleted one has none."""
    if not isinstance(job, Job):
        return job.state
    loaded = inspect(job)
    if loaded.deleted or loaded.was_deleted:
        return None
    return loaded.dict.get("state")


def loaded_id(job: Job | statements.JobRow) -> str | None:
    """The id of a job in hand, read without a query (see ``loaded_state``)."""
    if not isinstance(job, Job):
        return job.id
    identity = inspect(job).identity
    return identity[0] if identity else None


def read_job(connection: Connection, job_id: str) -> statements.JobRow | None:
    """A job and its records, oldest first, for its document (one statement on PostgreSQL)."""
    if not is_job_id(job_id):
        return None
    return statements.read_job(connection, job_id)


def create_job(
    session: Session,
    *,
    task: str,
    user: str,
    args: dict[str, Any] | None = None,
    proc: int = 1,
    mem: int = 1,
) -> NewJob:
    """Make a job in the ``waiting`` state with its first record, its number and a new key;
    its user gets an id if no job named it before."""
    begin_write(session)
    job_id = new_job_id()
    while session.get(Job, job_id) is not None:
        job_id = new_job_id()
    connection = session.connection()
    number = next_job_number(connection)
    user_id(connection, user)
    key = make_key()
    now = utcnow()
    job = Job(
        id=job_id, number=number, task=task, args=args or {}, proc=proc, mem=mem, user_id=user,
        key_digest=hash_key(key), created_at=now, state="waiting", stage=None,
        progress=0, updated_at=now, status_count=1,
    )
    session.add(job)
    session.add(
        JobStatus(
            job_id=job_id, seq=1, state="waiting", stage=None, error=None,
            progress=0, timestamp=now,
        )
    )
    session.flush()
    return NewJob(job=job, key=key)


def request_digest(push: Mapping[str, Any]) -> str:
    """A digest of a push's content, to tell a retry from a reuse of its key.

    A push without step fields digests as records stored before they existed did.
    """
    values = [push["state"], push["stage"], push["progress"], push.get("error")]
    if push.get("step_name") is not None or push.get("step_description") is not None:
        values += [push.get("step_name"), push.get("step_description")]
    canonical = json.dumps(values, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def append_status(
    connection: Connection,
    job: Job | statements.JobRow,
    *,
    state: str,
    stage: str | None,
    progress: int,
    error: Any = None,
    step_name: str | None = None,
    step_description: str | None = None,
    idempotency_key: str | None = None,
    digest: str | None = None,
) -> statements.Record | None:
    """Append a record to a locked job and make it the job's current state.

    Returns None, writing nothing, when the Idempotency-Key already stored a
    record (a concurrent retry got there first). The timestamp never goes
    back in time within a job, even if the clocks of the machines serving it
    disagree.
    """
    timestamp = max(utcnow(), job.updated_at)
    seq = job.status_count + 1
    # The columns in statements' order: the record's (_INSERT), then the job's current ones (_CURRENT).
    record = (
        job.id, seq, state, stage, error, progress, timestamp, step_name, step_description,
        idempotency_key, digest if idempotency_key else None,
    )
    if not statements.append(connection, record, (state, stage, progress, timestamp, seq)):
        return None
    # The row is written: the job in hand says so too, without a flush that
    # would write it again.
    current = {"state": state, "stage": stage, "progress": progress, "updated_at": timestamp, "status_count": seq}
    if isinstance(job, Job):
        for name, value in current.items():
            set_committed_value(job, name, value)
    else:
        job.state, job.stage, job.progress, job.updated_at, job.status_count = state, stage, progress, timestamp, seq
    return statements.Record(
        state=state, stage=stage, error=error, progress=progress, timestamp=timestamp,
        step_name=step_name, step_description=step_description,
    )


def find_replay(connection: Connection, job_id: str, idempotency_key: str) -> statements.Record | None:
    """The record an Idempotency-Key stored for this job, read anew (it may be a moment old)."""
    return statements.find_replay(connection, job_id, idempotency_key)


def _replayed(replay: statements.Record, push: Mapping[str, Any]) -> Pushed:
    if replay.request_digest != request_digest(push):
        raise IdempotencyKeyReused()
    return Pushed(record=replay, stored=False)


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
    connection: Connection,
    locked: LockedJob,
    body: PushBody,
    *,
    idempotency_key: str | None = None,
    max_records: int | None = None,
) -> Pushed:
    """A job's own push: replay a retried one, or check it and append it.

    ``locked`` comes from ``lock_own_job`` in this transaction, with the same
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
        return _replayed(locked.replay, push)
    if not body.is_object:
        raise refusal  # type: ignore[misc]

    def refuse(error: JobStateError) -> Pushed:
        # On PostgreSQL the lock query read the records from a snapshot taken
        # before it waited for the lock: a retry of this very push that
        # committed meanwhile was not seen. Look once more before refusing.
        if idempotency_key is not None and push is not None:
            replay = find_replay(connection, job.id, idempotency_key)
            if replay is not None:
                return _replayed(replay, push)
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
    record = append_status(
        connection, job, state=push["state"], stage=push["stage"], progress=push["progress"],
        error=push.get("error"), step_name=push.get("step_name"),
        step_description=push.get("step_description"),
        idempotency_key=idempotency_key,
        digest=request_digest(push) if idempotency_key else None,
    )
    if record is None:
        # The insert met this key: a concurrent retry stored the record first.
        assert idempotency_key is not None
        replay = find_replay(connection, job.id, idempotency_key)
        assert replay is not None
        return _replayed(replay, push)
    return Pushed(record=record, stored=True)


def ping_job(connection: Connection, job: statements.JobRow) -> datetime:
    """Record a heartbeat of a job locked by ``lock_own_job`` that is not finished; return its time."""
    if job.finished:
        raise JobFinished(job.state)
    job.pinged_at = max(utcnow(), job.updated_at)
    statements.ping(connection, job.id, job.pinged_at)
    return job.pinged_at


def key_expired(job: Job, grace_seconds: float, now: datetime | None = None) -> bool:
    """Whether a finished job's key has outlived its grace period."""
    if not job.finished:
        return False
    return (now or utcnow()) - job.updated_at > timedelta(seconds=grace_seconds)


def _replace_key(job: Job) -> str:
    key = make_key()
    job.replaced_key_digest = job.key_digest
    job.key_digest = hash_key(key)
    return key


def rotate_key(session: Session, job_id: str) -> str:
    """Give a job that is not finished a new key; the old one stops working when this commits."""
    job = require_job(session, job_id, lock=True)
    if job.finished:
        raise JobFinished(job.state)
    key = _replace_key(job)
    session.flush()
    return key


def _take(job: Job, runner: str | None) -> str:
    """A worker or a runner takes the job: it is acquired now, by ``runner``; its new key."""
    key = _replace_key(job)
    job.claimed_by = runner
    job.claimed_at = utcnow()
    return key


def acquire_job(session: Session, job: Job, *, runner: str | None = None) -> NewJob:
    """A worker takes a waiting job, locked by ``lock_job``, and gets a fresh key (SPEC 7.1).

    Acquiring and claiming are one event: a job is taken once. Every key the
    job had stops working.
    """
    if job.acquired:
        raise AlreadyAcquired()
    if job.state != "waiting":
        raise JobNotWaiting(job.state)
    key = _take(job, runner)
    session.flush()
    return NewJob(job=job, key=key)


def _lock_claimable(session: Session, *conditions: Any) -> Job | None:
    """The oldest waiting job not yet taken that meets ``conditions``, its row locked.

    On PostgreSQL the candidate row is locked with SKIP LOCKED, so claims made
    at once never get the same job and never wait on each other (nor on an
    acquire holding a job); on SQLite the write transaction makes them serial.
    """
    begin_write(session)
    return session.scalars(
        select(Job)
        .where(Job.state == "waiting", Job.claimed_at.is_(None), *conditions)
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).first()


def claim_job(
    session: Session, *, runner: str, tasks: Sequence[str], proc: int, mem: int
) -> NewJob | None:
    """Hand a runner the oldest waiting job not yet taken that it can run, with a fresh key.

    The job's previous key stops working; it stays ``waiting`` until its worker
    pushes.
    """
    job = _lock_claimable(session, Job.task.in_(list(tasks)), Job.proc <= proc, Job.mem <= mem)
    if job is None:
        return None
    key = _take(job, runner)
    session.flush()
    return NewJob(job=job, key=key)


@dataclass(frozen=True)
class StepDeclaration:
    """A step a worker will run, as it declares it when it claims a job."""

    id: str
    name: str
    description: str


def claim_workflow(
    session: Session,
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
    job = _lock_claimable(session, Job.task == workflow)
    if job is None:
        return None
    key = _take(job, runner)
    job.claim = dict(claim)
    job.steps = [
        {"id": step.id, "name": step.name, "description": step.description, "started_at": None}
        for step in steps
    ]
    session.flush()
    record = append_status(session.connection(), job, state="running", stage=None, progress=0)
    assert record is not None
    return NewJob(job=job, key=key)


@dataclass(frozen=True)
class StepStart:
    """A step of a job, started, and whether this request started it (False: a repeat)."""

    step: Mapping[str, Any]
    stored: bool


def steps_progress(steps: Sequence[Mapping[str, Any]]) -> int:
    """How far a job is through its declared steps: the share started, floored to a percent."""
    started = sum(1 for step in steps if step["started_at"] is not None)
    return started * 100 // len(steps)


def start_step(connection: Connection, job: statements.JobRow, step_id: str) -> StepStart:
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
        return StepStart(step=step, stored=False)
    check_transition(job.state, "running")
    step["started_at"] = ""  # counted as started for the progress below
    record = append_status(
        connection, job, state="running", stage=step_id, progress=steps_progress(steps),
        step_name=step["name"], step_description=step["description"],
    )
    assert record is not None
    step["started_at"] = format_timestamp(record.timestamp)
    statements.write_steps(connection, job.id, steps)
    job.steps = steps
    return StepStart(step=step, stored=True)


def finish_job(connection: Connection, job: statements.JobRow) -> statements.Record:
    """A locked ``running`` job's work is done: a ``complete`` record at 100 %, keeping its stage.

    A job in any other state is refused by the state machine (``JobFinished``,
    ``TransitionRefused``): a second finish is no silent success.
    """
    check_transition(job.state, "complete")
    record = append_status(connection, job, state="complete", stage=job.stage, progress=100)
    assert record is not None
    return record


@dataclass(frozen=True)
class Cancellation:
    """The outcome of a cancel: the job, its cancelled record, and whether it is new."""

    job: Job
    record: JobStatus
    changed: bool


def cancel_job(session: Session, job_id: str) -> Cancellation:
    """Cancel a job, keeping its last stage and progress.

    A job already cancelled is left as it is; one that finished otherwise
    is refused.
    """
    job = require_job(session, job_id, lock=True)
    if job.state == "cancelled":
        return Cancellation(job=job, record=last_status(session, job), changed=False)
    if job.finished:
        raise JobFinished(job.state)
    record = append_status(
        session.connection(), job, state="cancelled", stage=job.stage, progress=job.progress
    )
    assert record is not None
    return Cancellation(job=job, record=record, changed=True)


def remove_job(session: Session, job_id: str, *, force: bool = False) -> None:
    """Delete a job and all its records; a job not finished only with ``force``."""
    job = require_job(session, job_id, lock=True)
    if not job.finished and not force:
        raise JobStillActive(job.state)
    session.delete(job)
    session.flush()


def status_history(session: Session, job_id: str) -> Sequence[Any]:
    """A job's status records, oldest first, as rows with their times as datetimes."""
    return session.execute(_HISTORY, {"job_id": job_id}).all()


def document_history(connection: Connection, job_id: str) -> list[Sequence[Any]]:
    """A job's status records, oldest first, with their times written as documents show them."""
    return statements.history(connection, job_id)


def last_status(session: Session, job: Job) -> JobStatus:
    """The job's newest status record."""
    return session.get_one(JobStatus, (job.id, job.status_count))
