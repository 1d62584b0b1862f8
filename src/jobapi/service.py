"""The rules of jobs: making them, the state machine, cancelling and removing.

Views and CLI commands both call these functions. They take the session,
raise the API's errors, and flush; the caller commits or rolls back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value

from .errors import Conflict, InvalidInput, NotFound
from .keys import hash_key, looks_like_token, make_key, make_token
from .models import FINAL_STATES, ApiToken, Job, JobStatus, utcnow
from .storage import begin_write

ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 8
_ID_PATTERN = re.compile(r"[a-z0-9]{8}")

# state -> states a push may move it to; final states have no way out.
TRANSITIONS: dict[str, frozenset[str]] = {
    "waiting": frozenset({"waiting", "running", "error", "cancelled"}),
    "running": frozenset({"running", "complete", "error", "cancelled"}),
}


@dataclass(frozen=True)
class NewJob:
    """A job just made, and its key, which is never shown again."""

    job: Job
    key: str


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the shape of a job id (anything else names no job)."""
    return _ID_PATTERN.fullmatch(value) is not None


def new_job_id() -> str:
    """A random job id: 8 characters of a-z and 0-9."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


def get_job(session: Session, job_id: str) -> Job | None:
    """The job with this id, or None."""
    if not is_job_id(job_id):
        return None
    return session.get(Job, job_id)


@dataclass(frozen=True)
class LockedJob:
    """A job whose row is locked, and the record an Idempotency-Key already made."""

    job: Job | None
    replay: JobStatus | None = None


# The statements of the hot paths, built once: only their parameters change.
_LOCK_JOB = (
    select(Job)
    .options(defer(Job.args))  # a write never needs the arguments
    .where(Job.id == bindparam("job_id"))
    .with_for_update()
    .execution_options(populate_existing=True)
)
_LOCK_JOB_WITH_REPLAY = (
    select(Job, JobStatus)
    .options(defer(Job.args))
    .outerjoin(
        JobStatus,
        and_(JobStatus.job_id == Job.id, JobStatus.idempotency_key == bindparam("key")),
    )
    .where(Job.id == bindparam("job_id"))
    .with_for_update(of=Job)
    .execution_options(populate_existing=True)
)
_STATUS_COLUMNS = ("state", "stage", "error", "progress", "timestamp")
_HISTORY = (
    select(*(JobStatus.__table__.c[name] for name in _STATUS_COLUMNS))
    .where(JobStatus.__table__.c.job_id == bindparam("job_id"))
    .order_by(JobStatus.__table__.c.seq)
)
_INSERT_STATUS = JobStatus.__table__.insert()
_UPDATE_CURRENT = (
    Job.__table__.update()
    .where(Job.__table__.c.id == bindparam("job_id"))
    .values(
        state=bindparam("new_state"),
        stage=bindparam("new_stage"),
        progress=bindparam("new_progress"),
        updated_at=bindparam("new_updated_at"),
        status_count=bindparam("new_status_count"),
    )
)


def lock_job(session: Session, job_id: str, *, idempotency_key: str | None = None) -> LockedJob:
    """The job with this id, its row locked until the transaction ends.

    With an Idempotency-Key, the record that key made (if any) comes in the
    same statement. This begins the transaction as a writing one, so it
    comes first.
    """
    begin_write(session)
    if not is_job_id(job_id):
        return LockedJob(job=None)
    if idempotency_key is None:
        job = session.scalars(_LOCK_JOB, {"job_id": job_id}).one_or_none()
        return LockedJob(job=job)
    row = session.execute(
        _LOCK_JOB_WITH_REPLAY, {"job_id": job_id, "key": idempotency_key}
    ).one_or_none()
    if row is None:
        return LockedJob(job=None)
    return LockedJob(job=row[0], replay=row[1])


def require_job(session: Session, job_id: str, *, lock: bool = False) -> Job:
    """Like ``get_job`` (or ``lock_job``), but a missing job is ``NotFound``."""
    job = lock_job(session, job_id).job if lock else get_job(session, job_id)
    if job is None:
        raise NotFound()
    return job


def create_job(
    session: Session,
    *,
    task: str,
    user: str,
    args: dict[str, Any] | None = None,
    proc: int = 1,
    mem: int = 1,
) -> NewJob:
    """Make a job in the ``waiting`` state with its first record and a new key."""
    begin_write(session)
    job_id = new_job_id()
    while session.get(Job, job_id) is not None:
        job_id = new_job_id()
    key = make_key()
    now = utcnow()
    job = Job(
        id=job_id,
        task=task,
        args=args or {},
        proc=proc,
        mem=mem,
        user_id=user,
        key_digest=hash_key(key),
        created_at=now,
        state="waiting",
        stage=None,
        progress=0,
        updated_at=now,
        status_count=1,
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


FINISHED_MESSAGES = {
    "complete": "Job is complete",
    "cancelled": "Job is cancelled",
    "error": "Job has errored",
}


def finished_conflict(state: str) -> Conflict:
    """The 409 for any change to a finished job; it tells the worker the state."""
    return Conflict(FINISHED_MESSAGES[state], state=state)


def check_transition(current: str, new: str) -> None:
    """Refuse with 409 a move the state machine does not allow."""
    if current in FINAL_STATES:
        raise finished_conflict(current)
    if new not in TRANSITIONS[current]:
        raise Conflict(f"Cannot move a job from {current} to {new}", state=current)


def request_digest(state: str, stage: str | None, progress: int, error: str | None) -> str:
    """A digest of a push's content, to tell a retry from a reuse of its key."""
    canonical = json.dumps([state, stage, progress, error], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def append_status(
    session: Session,
    job: Job,
    *,
    state: str,
    stage: str | None,
    progress: int,
    error: str | None = None,
    idempotency_key: str | None = None,
) -> JobStatus:
    """Append a record to a locked job and make it the job's current state.

    The timestamp never goes back in time within a job, even if clocks of
    the machines serving it disagree.
    """
    timestamp = max(utcnow(), job.updated_at)
    values = {
        "job_id": job.id,
        "seq": job.status_count + 1,
        "state": state,
        "stage": stage,
        "error": error,
        "progress": progress,
        "timestamp": timestamp,
        "idempotency_key": idempotency_key,
        "request_digest": (
            request_digest(state, stage, progress, error) if idempotency_key else None
        ),
    }
    current = {
        "state": state,
        "stage": stage,
        "progress": progress,
        "updated_at": timestamp,
        "status_count": values["seq"],
    }
    # Two plain statements rather than a unit-of-work flush: a push is the
    # most frequent write, and its row lock is held until commit.
    session.execute(_INSERT_STATUS, values)
    session.execute(
        _UPDATE_CURRENT, {"job_id": job.id, **{f"new_{k}": v for k, v in current.items()}}
    )
    for name, value in current.items():
        set_committed_value(job, name, value)
    return JobStatus(**values)


class ConcurrentRetry(Exception):
    """Another push with the same Idempotency-Key stored its record first.

    The lock query's snapshot predates that record, so it was not seen; the
    caller rolls back and pushes again in a new transaction, which replays it.
    """


def push_status(
    session: Session,
    locked: LockedJob,
    *,
    state: str,
    stage: str,
    progress: int,
    error: str | None = None,
    idempotency_key: str | None = None,
) -> JobStatus:
    """A job's own push: replay a retried one, or check the move and append.

    ``locked`` comes from ``lock_job`` in this transaction, with the same
    Idempotency-Key. A retry (same key, same content) gets the record it
    made the first time, whatever has happened since; the same key with
    other content is refused.
    """
    job = locked.job
    assert job is not None
    if idempotency_key is not None and locked.replay is not None:
        if locked.replay.request_digest != request_digest(state, stage, progress, error):
            raise InvalidInput(
                errors={"Idempotency-Key": ["Already used for a different status of this job."]}
            )
        return locked.replay
    check_transition(job.state, state)
    try:
        record = append_status(
            session, job, state=state, stage=stage, progress=progress, error=error,
            idempotency_key=idempotency_key,
        )
    except IntegrityError:
        if idempotency_key is None:
            raise
        raise ConcurrentRetry() from None
    return record


def ping_job(session: Session, job: Job) -> datetime:
    """Record a heartbeat of a locked job that is still active; return its time."""
    if job.finished:
        raise finished_conflict(job.state)
    job.pinged_at = max(utcnow(), job.updated_at)
    session.flush()
    return job.pinged_at


def key_expired(job: Job, grace_seconds: float, now: datetime | None = None) -> bool:
    """Whether a finished job's key has outlived its grace period."""
    if not job.finished:
        return False
    return (now or utcnow()) - job.updated_at > timedelta(seconds=grace_seconds)


def rotate_key(session: Session, job_id: str) -> str:
    """Give a job a new key; the old one stops working when this commits."""
    job = require_job(session, job_id, lock=True)
    key = make_key()
    job.key_digest = hash_key(key)
    session.flush()
    return key


@dataclass(frozen=True)
class Reaped:
    """A job the reaper failed, and when it was last heard from."""

    job: Job
    record: JobStatus
    last_heartbeat: datetime


def reap_jobs(session: Session, timeout_seconds: float) -> list[Reaped]:
    """Fail every running job silent for longer than the timeout; return them.

    Each job is locked and checked again before it is failed, so a push or
    ping that lands meanwhile saves it. Waiting jobs are never reaped.
    """
    begin_write(session)
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_seconds)
    silent = (
        select(Job.id)
        .where(Job.state == "running", Job.updated_at < cutoff)
        .where(or_(Job.pinged_at.is_(None), Job.pinged_at < cutoff))
        .order_by(Job.id)
    )
    reaped = []
    for job_id in session.scalars(silent).all():
        job = lock_job(session, job_id).job
        if job is None or job.state != "running" or job.last_heartbeat >= cutoff:
            continue
        last_heartbeat = job.last_heartbeat
        silence = (now - last_heartbeat).total_seconds()
        record = append_status(
            session, job, state="error", stage="timeout", progress=job.progress,
            error=(
                f"No heartbeat for {silence:.0f} seconds (last at "
                f"{last_heartbeat.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}); "
                f"the timeout is {timeout_seconds:g} seconds"
            ),
        )
        reaped.append(Reaped(job=job, record=record, last_heartbeat=last_heartbeat))
    return reaped


@dataclass(frozen=True)
class Cancellation:
    """The outcome of a cancel: the job, its cancelled record, and whether it is new."""

    job: Job
    record: JobStatus
    changed: bool


def cancel_job(session: Session, job_id: str) -> Cancellation:
    """Cancel a job, keeping its last stage and progress.

    A job already cancelled is left as it is; one that completed or errored
    is refused.
    """
    job = require_job(session, job_id, lock=True)
    if job.state == "cancelled":
        return Cancellation(job=job, record=last_status(session, job), changed=False)
    if job.state in FINAL_STATES:
        raise finished_conflict(job.state)
    record = append_status(
        session, job, state="cancelled", stage=job.stage, progress=job.progress
    )
    return Cancellation(job=job, record=record, changed=True)


def remove_job(session: Session, job_id: str, *, force: bool = False) -> None:
    """Delete a job and all its records; a job still active only with ``force``."""
    job = require_job(session, job_id, lock=True)
    if not job.finished and not force:
        raise Conflict(
            f"Job is {job.state}: only a finished job is removed without force",
            state=job.state,
        )
    session.delete(job)
    session.flush()


def status_history(session: Session, job_id: str) -> Sequence[Any]:
    """A job's status records, oldest first, as plain rows (one statement, no ORM objects).

    Reading a job is the most frequent request; rows cost a fraction of
    mapped objects, which matters for jobs with long histories.
    """
    return session.execute(_HISTORY, {"job_id": job_id}).all()


def last_status(session: Session, job: Job) -> JobStatus:
    """The job's newest status record."""
    return session.get_one(JobStatus, (job.id, job.status_count))


class InvalidCursor(ValueError):
    """A page cursor that this service did not make."""


def encode_cursor(job: Job) -> str:
    """An opaque cursor for the page after ``job``."""
    raw = json.dumps([job.created_at.isoformat(), job.id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (created_at, id) position a cursor names; ``InvalidCursor`` if malformed."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = json.loads(raw)
        position = datetime.fromisoformat(created_at)
        if position.tzinfo is None:
            raise ValueError("naive")
        position = position.astimezone(UTC)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError, OverflowError):
        raise InvalidCursor(cursor) from None
    if not isinstance(job_id, str) or not is_job_id(job_id):
        raise InvalidCursor(cursor)
    return position, job_id


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, newest first, and the cursor of the next page (None at the end)."""

    jobs: Sequence[Job]
    next_cursor: str | None


def list_jobs(
    session: Session,
    *,
    state: str | None = None,
    task: str | None = None,
    user: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> JobPage:
    """Jobs newest first, filtered, read from the jobs table alone.

    Pages are keyset-paginated on (created_at, id): a page costs the same
    however deep it is, and jobs made meanwhile never shift later pages.
    """
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    if state is not None:
        query = query.where(Job.state == state)
    if task is not None:
        query = query.where(Job.task == task)
    if user is not None:
        query = query.where(Job.user_id == user)
    if cursor is not None:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    jobs = session.scalars(query).all()
    if len(jobs) > limit:
        return JobPage(jobs=jobs[:limit], next_cursor=encode_cursor(jobs[limit - 1]))
    return JobPage(jobs=jobs, next_cursor=None)


def claim_job(
    session: Session, *, runner: str, tasks: Sequence[str], proc: int, mem: int
) -> NewJob | None:
    """Hand a runner the oldest waiting, unclaimed job it can run, with a fresh key.

    On PostgreSQL the candidate row is locked with SKIP LOCKED, so runners
    claiming at once never get the same job and never wait on each other;
    on SQLite the write transaction makes claims serial. The job's previous
    key stops working.
    """
    begin_write(session)
    job = session.scalars(
        select(Job)
        .where(
            Job.state == "waiting",
            Job.claimed_by.is_(None),
            Job.task.in_(list(tasks)),
            Job.proc <= proc,
            Job.mem <= mem,
        )
        .order_by(Job.created_at, Job.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).first()
    if job is None:
        return None
    key = make_key()
    job.key_digest = hash_key(key)
    job.claimed_by = runner
    job.claimed_at = utcnow()
    session.flush()
    return NewJob(job=job, key=key)


# Operator and runner tokens


@dataclass(frozen=True)
class NewToken:
    """A token just made, and its secret, which is never shown again."""

    token: ApiToken
    secret: str


def create_token(session: Session, *, name: str, role: str) -> NewToken:
    """Make a bearer token for a role; names are unique, revoked ones included."""
    begin_write(session)
    if session.scalars(select(ApiToken.id).where(ApiToken.name == name)).first() is not None:
        raise Conflict(f"A token named {name!r} already exists")
    secret = make_token(role)
    token = ApiToken(name=name, role=role, token_digest=hash_key(secret), created_at=utcnow())
    session.add(token)
    session.flush()
    return NewToken(token=token, secret=secret)


def list_tokens(session: Session) -> Sequence[ApiToken]:
    """Every token, oldest first, revoked ones included."""
    return session.scalars(select(ApiToken).order_by(ApiToken.created_at, ApiToken.id)).all()


def revoke_token(session: Session, name: str) -> bool:
    """Revoke a token by name at once; False if it was already revoked."""
    begin_write(session)
    token = session.scalars(select(ApiToken).where(ApiToken.name == name)).first()
    if token is None:
        raise NotFound(f"No token named {name!r}")
    if token.revoked_at is not None:
        return False
    token.revoked_at = utcnow()
    session.flush()
    return True


def find_token(session: Session, secret: str) -> ApiToken | None:
    """The active token whose secret this is, or None. Job keys never match."""
    if not looks_like_token(secret):
        return None
    digest = hash_key(secret)
    token = session.scalars(select(ApiToken).where(ApiToken.token_digest == digest)).first()
    if token is None or token.revoked_at is not None:
        return None
    # The lookup was by digest; compare once more in constant time all the same.
    return token if hmac.compare_digest(token.token_digest, digest) else None
