"""Authentication: reading a job's credentials and the hook that lets a job act on itself only."""

from __future__ import annotations

from flask import current_app, g, request

from . import service
from .errors import InsufficientRights, NotFound, Unauthorized
from .extensions import db
from .keys import verify_job_key

JOB_USER_PREFIX = "job-"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENCY_HEADER = "Idempotency-Key"


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


def authenticate_job() -> None:
    """Before every jobs request: let a job act on itself only (SPEC 2).

    The checks run in the contract's order: credentials (401), the job they
    name against the path (403), the job's existence (404), the key (401),
    then the key's lifetime (401 once a finished job's grace has passed).
    A request that writes loads the job under its row lock, with the record
    its Idempotency-Key made if any, so the view's checks and writes see one
    state of the job.
    """
    job_id = (request.view_args or {}).get("job_id")
    if job_id is None:
        return
    credential_id, key = job_credentials()
    if credential_id != job_id:
        raise InsufficientRights()
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
    """After every jobs request that reached a job: tell the worker its current state."""
    job = g.get("job")
    if job is not None:
        response.headers["Job-State"] = job.state
    return response
