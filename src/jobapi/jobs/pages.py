"""Jobs a page at a time, newest first, with opaque keyset cursors (never OFFSET)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from ..exceptions import InvalidCursor
from ..models import Job
from .ids import is_job_id


def encode_cursor(job: Job) -> str:
    """An opaque cursor naming ``job``'s place in the list."""
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
        raise InvalidCursor() from None
    if not isinstance(job_id, str) or not is_job_id(job_id):
        raise InvalidCursor()
    return position, job_id


@dataclass(frozen=True)
class JobPage:
    """One page of jobs, newest first; the cursors of the pages after and before it (None at the ends)."""

    jobs: Sequence[Job]
    next_cursor: str | None
    previous_cursor: str | None = None


def list_jobs(
    session: Session,
    *,
    state: str | None = None,
    task: str | None = None,
    user: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    before: str | None = None,
) -> JobPage:
    """Jobs newest first, filtered, read from the jobs table alone.

    ``cursor`` gives the page of older jobs after a position, ``before`` the
    page of newer jobs before one. Pages are keyset-paginated on
    (created_at, id): a page costs the same however deep it is, and jobs
    made meanwhile never shift older pages.
    """
    query = select(Job)
    if state is not None:
        query = query.where(Job.state == state)
    if task is not None:
        query = query.where(Job.task == task)
    if user is not None:
        query = query.where(Job.user_id == user)
    if before is not None:
        created_at, job_id = decode_cursor(before)
        query = query.where(
            or_(Job.created_at > created_at, and_(Job.created_at == created_at, Job.id > job_id))
        )
        newer = session.scalars(
            query.order_by(Job.created_at, Job.id).limit(limit + 1)
        ).all()
        jobs = list(reversed(newer[:limit]))
        more_newer = len(newer) > limit
        return JobPage(
            jobs=jobs,
            next_cursor=encode_cursor(jobs[-1]) if jobs else before,
            previous_cursor=encode_cursor(jobs[0]) if jobs and more_newer else None,
        )
    if cursor is not None:
        created_at, job_id = decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created_at, and_(Job.created_at == created_at, Job.id < job_id))
        )
    jobs = session.scalars(
        query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    ).all()
    page = jobs[:limit]
    return JobPage(
        jobs=page,
        next_cursor=encode_cursor(page[-1]) if len(jobs) > limit else None,
        previous_cursor=encode_cursor(page[0]) if cursor is not None and page else None,
    )


def count_by_state(session: Session) -> dict[str, int]:
    """How many jobs are in each state (one GROUP BY on the jobs table)."""
    return dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
