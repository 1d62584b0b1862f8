"""The reaper: jobs at work that fell silent are timed out, each in a short transaction of its own."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import exc as sa_exc
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from ..models import Job, utcnow
from ..storage.engines import write_connection
from . import statements
from .rows import JobRow, StatusRow
from .ids import is_job_id
from .service import append_status
from .states import ACTIVE_STATES


class JobLocked(Exception):
    """A live request holds the job's lock; the reaper leaves the job for its next run."""


@dataclass(frozen=True)
class Reaped:
    """A job the reaper timed out, and when it was last heard from."""

    job: JobRow
    record: StatusRow
    last_heartbeat: datetime


def silent_jobs(session: Session, timeout_seconds: float, now: datetime | None = None) -> Sequence[str]:
    """The ids of jobs at work (preparing or running) silent for longer than the timeout.

    Waiting jobs are never reaped: nobody has started them.
    """
    cutoff = (now or utcnow()) - timedelta(seconds=timeout_seconds)
    query = (
        select(Job.id)
        .where(Job.state.in_(sorted(ACTIVE_STATES)), Job.updated_at < cutoff)
        .where(or_(Job.pinged_at.is_(None), Job.pinged_at < cutoff))
        .order_by(Job.id)
    )
    return session.scalars(query).all()


def reap_job(session: Session, job_id: str, timeout_seconds: float) -> Reaped | None:
    """Time out one silent job, checked again under its lock; None if it spoke up meanwhile.

    Raises ``JobLocked`` rather than wait for a request that holds the job.
    """
    if not is_job_id(job_id):
        return None
    try:
        # On SQLite the write lock is taken here, as the transaction begins.
        connection = write_connection(session)
        job, _ = statements.lock(connection, job_id, nowait=True)
    except sa_exc.OperationalError as error:
        if _is_lock_refusal(error):
            raise JobLocked(job_id) from None
        raise
    now = utcnow()
    cutoff = now - timedelta(seconds=timeout_seconds)
    if job is None or job.state not in ACTIVE_STATES or job.last_heartbeat >= cutoff:
        return None
    last_heartbeat = job.last_heartbeat
    silence = (now - last_heartbeat).total_seconds()
    appended = append_status(connection, job, {
        "state": "timeout", "stage": job.stage, "progress": job.progress,
        "error": (
            f"No heartbeat for {seconds(f'{silence:.0f}')} (last at "
            f"{last_heartbeat.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}); "
            f"the timeout is {seconds(f'{timeout_seconds:g}')}"
        ),
    })
    assert appended is not None
    job, record = appended
    return Reaped(job=job, record=record, last_heartbeat=last_heartbeat)


def seconds(number: str) -> str:
    """A number of seconds as written: ``1 second``, ``0.5 seconds``, ``300 seconds``."""
    return f"{number} second" if number == "1" else f"{number} seconds"


def _is_lock_refusal(error: sa_exc.OperationalError) -> bool:
    """PostgreSQL's NOWAIT refusal (55P03), or SQLite's busy write lock."""
    sqlstate = getattr(error.orig, "sqlstate", None)
    if sqlstate == "55P03":
        return True
    return "database is locked" in str(error.orig)
