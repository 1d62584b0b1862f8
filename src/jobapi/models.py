"""Database models: a job (``jobs``) and its status records (``job_status``), operators' and
runners' tokens (``api_tokens``) and the console's sign-ins (``console_sessions``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    TypeDecorator,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from .extensions import db
from .jobs.rules import PROGRESS, RULES, STAGE
from .jobs.states import FINAL_STATES, STATES, state_check_constraint

__all__ = [
    "FINAL_STATES", "STATES", "ROLES", "JOB_ID_PATTERN", "MAX_JOB_NUMBER", "Job", "JobStatus", "ApiToken",
    "ConsoleSession", "User", "Counter", "utcnow",
]

ROLES = ("operator", "runner")
# A job's id: 8 characters of a-z and 0-9, made by the server. The one definition of its
# shape, which the routes, the schemas and the OpenAPI document use.
JOB_ID_PATTERN = "[a-z0-9]{8}"
# A job's number (its id in Virtool's 42.x dialect) is a positive PostgreSQL integer.
MAX_JOB_NUMBER = 2**31 - 1

_STATE_CHECK = state_check_constraint()
_WAITING_UNCLAIMED = text("state = 'waiting' AND claimed_at IS NULL")


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware.

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so the value is
    stored as naive UTC and marked UTC again when read.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class JobFacts:
    """What follows from a job's current columns, for the mapped job and for a plain row alike."""

    __slots__ = ()

    state: str
    claimed_at: datetime | None
    pinged_at: datetime | None
    updated_at: datetime

    @property
    def finished(self) -> bool:
        """Whether the job has reached a final state."""
        return self.state in FINAL_STATES

    @property
    def acquired(self) -> bool:
        """Whether a worker or a runner has taken the job (and its key)."""
        return self.claimed_at is not None

    @property
    def last_heartbeat(self) -> datetime:
        """When the job last showed it was alive: its last push or ping."""
        if self.pinged_at is None:
            return self.updated_at
        return max(self.pinged_at, self.updated_at)


class Job(JobFacts, db.Model):
    """A unit of work, its resources, its key digest and its current state."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(8), primary_key=True)
    # A positive integer given at creation, in creation order, never reused
    # (jobapi.jobs.numbering): the job's id to Virtool's 42.x workers.
    number: Mapped[int] = mapped_column(Integer, unique=True)
    task: Mapped[str] = mapped_column(String(64))
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    proc: Mapped[int] = mapped_column(Integer)
    mem: Mapped[int] = mapped_column(Integer)
    user_id: Mapped[str] = mapped_column(String(64))
    # SHA-256 hex digest of the job's key; the key itself is never stored.
    key_digest: Mapped[str] = mapped_column(String(64))
    # The digest of the key it replaced (acquire, claim, rotate-key), so that a
    # worker still holding that key is told why it no longer works.
    replaced_key_digest: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    # The job's last status record, kept in step with every push so that
    # listing jobs never reads their history.
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    stage: Mapped[str | None] = mapped_column(String(STAGE.max_length))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Number of status records, which is also the last record's ``seq``.
    status_count: Mapped[int] = mapped_column(Integer, default=1)
    # The last heartbeat that was not a push; a job's last sign of life is the
    # later of this and ``updated_at``.
    pinged_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When the job was acquired (or claimed: the same event), and by which
    # runner (its token's name, or a 42.x worker's runnerId; None for an
    # acquire without a token).
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claimed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # What a 42.x worker said of itself when it claimed the job, as Virtool
    # stores it ({"runner_id", "mem", "cpu", "image", "runtime_version",
    # "workflow_version"}), and the steps it declared, each {"id", "name",
    # "description", "started_at"}; None for a job not claimed that way.
    claim: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    steps: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True), nullable=True)

    statuses: Mapped[list[JobStatus]] = relationship(
        order_by="JobStatus.seq",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )

    __table_args__ = (
        CheckConstraint(_STATE_CHECK, name="state"),
        CheckConstraint("proc >= 1", name="proc"),
        CheckConstraint("mem >= 1", name="mem"),
        CheckConstraint(PROGRESS.check_constraint(), name="progress"),
        CheckConstraint("number >= 1", name="number"),
        # Newest first, with the id as a tie-breaker for stable pages.
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_state_created_at", "state", "created_at"),
        # A 42.x worker's claim looks only at waiting jobs not yet taken, by task.
        Index("ix_jobs_claimable", "task", "created_at",
              postgresql_where=_WAITING_UNCLAIMED, sqlite_where=_WAITING_UNCLAIMED),
    )

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.task} {self.state}>"


class JobStatus(db.Model):
    """One status record of a job; ``seq`` orders a job's records from 1."""

    __tablename__ = "job_status"

    job_id: Mapped[str] = mapped_column(
        String(8), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    # The primary key (job_id, seq) is the index that reads a job's records in order.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(16))
    # Null only in a job's first record (waiting); a push always gives one.
    stage: Mapped[str | None] = mapped_column(String(STAGE.max_length))
    # A string, or an object ({"type", "traceback", "details"} or {"message"}),
    # kept exactly as pushed.
    error: Mapped[Any] = mapped_column(JSON(none_as_null=True), nullable=True)
    progress: Mapped[int] = mapped_column(Integer)
    timestamp: Mapped[datetime] = mapped_column(UTCDateTime)
    # Virtool's step fields, kept only when a push gives them.
    step_name: Mapped[str | None] = mapped_column(String(RULES["step_name"].max_length))
    step_description: Mapped[str | None] = mapped_column(String(RULES["step_description"].max_length))
    # A retried push with the same Idempotency-Key finds the record it made;
    # the digest tells a retry of the same body from a reuse of the key.
    idempotency_key: Mapped[str | None] = mapped_column(String(128))
    request_digest: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        CheckConstraint(_STATE_CHECK, name="state"),
        CheckConstraint(PROGRESS.check_constraint(), name="progress"),
        # Two concurrent retries can never both store a record.
        Index("uq_job_status_idempotency_key", "job_id", "idempotency_key", unique=True),
    )

    def __repr__(self) -> str:
        return f"<JobStatus {self.job_id}#{self.seq} {self.state}>"


class ApiToken(db.Model):
    """A bearer token of an operator (manages jobs) or a runner (claims work)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    # SHA-256 hex digest of the token; the token itself is never stored.
    token_digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        CheckConstraint("role IN ('operator', 'runner')", name="role"),
        # An id is never given again, even after its token is deleted (SQLite's
        # AUTOINCREMENT; PostgreSQL's sequence never goes back): whatever names a
        # token by its id can never come to name another.
        {"sqlite_autoincrement": True},
    )

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def __repr__(self) -> str:
        return f"<ApiToken {self.name} {self.role}>"


class ConsoleSession(db.Model):
    """A console sign-in, named in its cookie by a random id of which only the digest is kept.

    It ends when its row goes: at sign-out, when its token is revoked or
    deleted (a deleted token takes its sessions with it), or when it expires.
    """

    __tablename__ = "console_sessions"

    # SHA-256 hex digest of the random id the session's cookie carries.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    token_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("api_tokens.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)

    def __repr__(self) -> str:
        return f"<ConsoleSession of token {self.token_id} until {self.expires_at}>"


class User(db.Model):
    """A user handle a job has named, and the integer id jobapi gave it the first time
    (Virtool's 42.x dialect shows users as ``{"id": int, "handle": str}``)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    handle: Mapped[str] = mapped_column(String(64), unique=True)

    # SQLite's AUTOINCREMENT: an id is never given twice, even after a delete.
    __table_args__ = ({"sqlite_autoincrement": True},)

    def __repr__(self) -> str:
        return f"<User {self.id} {self.handle}>"


class Counter(db.Model):
    """A named number that only grows: the last job number given (``job_number``)."""

    __tablename__ = "counters"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[int] = mapped_column(Integer)

    def __repr__(self) -> str:
        return f"<Counter {self.name} {self.value}>"
