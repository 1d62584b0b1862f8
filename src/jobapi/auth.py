"""Authentication: who may call each route, and the one hook that checks it.

Two kinds of caller: a job, with HTTP Basic ``job-<id>:<key>``, which may act
on itself only (SPEC 2); and an operator or a runner, with ``Authorization:
Bearer <token>``. Each route declares with ``allow`` which of them it takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from flask import current_app, g, request
from sqlalchemy import inspect

from . import service
from .errors import BASIC_CHALLENGE, BEARER_CHALLENGE, InsufficientRights, NotFound, Unauthorized
from .extensions import db
from .keys import verify_job_key
from .storage import begin_read, begin_write

JOB_USER_PREFIX = "job-"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENCY_HEADER = "Idempotency-Key"

View = TypeVar("View", bound=Callable)


@dataclass(frozen=True)
class Access:
    """Who may call a route: the job named in its path, and which token roles."""

    job: bool = False
    roles: frozenset[str] = frozenset()


def allow(*, job: bool = False, roles: Iterable[str] = ()) -> Callable[[View], View]:
    """Declare who may call a view; a route without a declaration admits nobody."""

    def declare(view: View) -> View:
        view.access = Access(job=job, roles=frozenset(roles))  # type: ignore[attr-defined]
        return view

    return declare


def job_credentials() -> tuple[str, str]:
    """The job id and key of the request's Basic credentials; 401 when there are none."""
    auth = request.authorization
    if auth is None or auth.type != "basic":
        raise Unauthorized()
    username = auth.username or ""
    if not username.startswith(JOB_USER_PREFIX) or len(username) == len(JOB_USER_PREFIX):
        raise Unauthorized()
    return username[len(JOB_USER_PREFIX):], auth.password or ""


def valid_idempotency_key() -> str | None:
    """The request's Idempotency-Key if it is well formed (1-128 printable ASCII), else None."""
    value = request.headers.get(IDEMPOTENCY_HEADER)
    if value is None or not 1 <= len(value) <= 128:
        return None
    if not all(" " <= ch <= "~" for ch in value):
        return None
    return value


def authenticate() -> None:
    """Before every request of the blueprint: admit only the callers the route declares."""
    view = current_app.view_functions.get(request.endpoint or "")
    access: Access = getattr(view, "access", Access())
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        _authenticate_token(access, credentials.strip())
    elif access.job:
        _authenticate_job()
    else:
        raise Unauthorized("Bearer token required", challenge=BEARER_CHALLENGE)


def _begin() -> None:
    """Start the request's database work, just before its first query.

    A request that writes does everything, authentication included, in its
    write transaction (on SQLite that takes the write lock now); a read
    needs no transaction on PostgreSQL.
    """
    if request.method in SAFE_METHODS:
        begin_read(db.session)
    else:
        begin_write(db.session)


def _authenticate_token(access: Access, secret: str) -> None:
    """An operator's or runner's token: known and active (401), of a role the route takes (403)."""
    _begin()
    token = service.find_token(db.session, secret)
    if token is None:
        # A job's route challenges for the job's own credentials (SPEC 2).
        challenge = BASIC_CHALLENGE if access.job else BEARER_CHALLENGE
        raise Unauthorized("Invalid or revoked token", challenge=challenge)
    if token.role not in access.roles:
        raise InsufficientRights()
    g.token = token
    job_id = (request.view_args or {}).get("job_id")
    if job_id is not None and request.method in SAFE_METHODS:
        job = service.get_job(db.session, job_id)
        if job is None:
            raise NotFound()
        g.job = job


def _authenticate_job() -> None:
    """A job acting on itself (SPEC 2).

    The checks run in the contract's order: credentials (401), the job they
    name against the path (403), the job's existence (404), the key (401),
    then the key's lifetime (401 once a finished job's grace has passed).
    A request that writes loads the job under its row lock, with the record
    its Idempotency-Key made if any, so the view's checks and writes see one
    state of the job.
    """
    job_id = (request.view_args or {}).get("job_id")
    credential_id, key = job_credentials()
    if job_id is None or credential_id != job_id:
        raise InsufficientRights()
    _begin()
    if request.method in SAFE_METHODS:
        locked = service.LockedJob(job=service.get_job(db.session, job_id))
    else:
        locked = service.lock_job(db.session, job_id, idempotency_key=valid_idempotency_key())
    job = locked.job
    if job is None:
        raise NotFound()
    if not verify_job_key(job.key_digest, key):
        raise Unauthorized()
    if service.key_expired(job, current_app.config["JOB_KEY_GRACE_SECONDS"]):
        raise Unauthorized("Job is no longer active")
    g.job = job
    g.locked_job = locked


def add_job_state(response):
    """After every request that reached a job: tell the caller the job's current state.

    The state is read from what is loaded, never with a query: after a
    rollback (a 503, say) the job is expired and the database may be gone.
    """
    job = g.get("job")
    state = inspect(job).dict.get("state") if job is not None else None
    if state is not None:
        response.headers["Job-State"] = state
    return response
