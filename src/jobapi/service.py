"""The rules of jobs: making them, the state machine, cancelling and removing.

Views and CLI commands both call these functions. They take the session,
raise the API's errors, and flush; the caller commits or rolls back.
"""

from __future__ import annotations

import re
import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import Conflict, NotFound
from .keys import hash_key, make_key
from .models import FINAL_STATES, Job, JobStatus, utcnow
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


def lock_job(session: Session, job_id: str) -> Job | None:
    """The job with this id, its row locked until the transaction ends; or None.

    This begins the transaction as a writing one, so it comes first.
    """
    begin_write(session)
    if not is_job_id(job_id):
        return None
    return session.scalars(
        select(Job).where(Job.id == job_id).with_for_update()
    ).one_or_none()


def require_job(session: Session, job_id: str, *, lock: bool = False) -> Job:
    """Like ``get_job`` (or ``lock_job``), but a missing job is ``NotFound``."""
    job = lock_job(session, job_id) if lock else get_job(session, job_id)
    if job is None:
        raise NotFound(f"Job {job_id} not found")
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


def check_transition(current: str, new: str) -> None:
    """Refuse with 409 a move the state machine does not allow."""
    if current in FINAL_STATES:
        raise Conflict("Job is finished")
    if new not in TRANSITIONS[current]:
        raise Conflict(f"Cannot move a job from {current} to {new}")


def append_status(
    session: Session,
    job: Job,
    *,
    state: str,
    stage: str | None,
    progress: int,
    error: str | None = None,
) -> JobStatus:
    """Append a record to a locked job and make it the job's current state.

    The timestamp never goes back in time within a job, even if clocks of
    the machines serving it disagree.
    """
    timestamp = max(utcnow(), job.updated_at)
    job.status_count += 1
    record = JobStatus(
        job_id=job.id,
        seq=job.status_count,
        state=state,
        stage=stage,
        error=error,
        progress=progress,
        timestamp=timestamp,
    )
    job.state = state
    job.stage = stage
    job.progress = progress
    job.updated_at = timestamp
    session.add(record)
    session.flush()
    return record


def push_status(
    session: Session,
    job: Job,
    *,
    state: str,
    stage: str,
    progress: int,
    error: str | None = None,
) -> JobStatus:
    """A job's own push: check the move from its current state, then append.

    ``job`` must have been loaded with ``lock_job`` in this transaction.
    """
    check_transition(job.state, state)
    return append_status(
        session, job, state=state, stage=stage, progress=progress, error=error
    )


@dataclass(frozen=True)
class Cancellation:
    """The outcome of a cancel: the cancelled record, and whether it is new."""

    record: JobStatus
    changed: bool


def cancel_job(session: Session, job_id: str) -> Cancellation:
    """Cancel a job, keeping its last stage and progress.

    A job already cancelled is left as it is; one that completed or errored
    is refused.
    """
    job = require_job(session, job_id, lock=True)
    if job.state == "cancelled":
        return Cancellation(record=last_status(session, job), changed=False)
    if job.state in FINAL_STATES:
        raise Conflict(f"Job is {job.state}; only a waiting or running job can be cancelled")
    record = append_status(
        session, job, state="cancelled", stage=job.stage, progress=job.progress
    )
    return Cancellation(record=record, changed=True)


def remove_job(session: Session, job_id: str, *, force: bool = False) -> None:
    """Delete a job and all its records; a job still active only with ``force``."""
    job = require_job(session, job_id, lock=True)
    if not job.finished and not force:
        raise Conflict(f"Job is {job.state}; remove it with force, or cancel it first")
    session.delete(job)
    session.flush()


def last_status(session: Session, job: Job) -> JobStatus:
    """The job's newest status record."""
    return session.get_one(JobStatus, (job.id, job.status_count))


def list_jobs(
    session: Session,
    *,
    state: str | None = None,
    task: str | None = None,
    user: str | None = None,
    limit: int = 50,
) -> Sequence[Job]:
    """Jobs newest first, filtered, read from the jobs table alone."""
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)
    if state is not None:
        query = query.where(Job.state == state)
    if task is not None:
        query = query.where(Job.task == task)
    if user is not None:
        query = query.where(Job.user_id == user)
    return session.scalars(query).all()
