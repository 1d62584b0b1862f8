"""Authentication: reading a job's credentials and the hook that lets a job act on itself only."""

from __future__ import annotations

from flask import g, request

from .errors import InsufficientRights, NotFound, Unauthorized
from .extensions import db
from . import service
from .keys import verify_job_key

JOB_USER_PREFIX = "job-"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def job_credentials() -> tuple[str, str]:
    """The job id and key of the request's Basic credentials; 401 when there are none."""
    auth = request.authorization
    if auth is None or auth.type != "basic":
        raise Unauthorized()
    username = auth.username or ""
    if not username.startswith(JOB_USER_PREFIX) or len(username) == len(JOB_USER_PREFIX):
        raise Unauthorized()
    return username[len(JOB_USER_PREFIX):], auth.password or ""


def authenticate_job() -> None:
    """Before every jobs request: let a job act on itself only (SPEC 2).

    The checks run in the contract's order: credentials (401), the job they
    name against the path (403), the job's existence (404), the key (401).
    A request that writes loads the job under its row lock, so the view's
    checks and its writes see one state of the job.
    """
    job_id = (request.view_args or {}).get("job_id")
    if job_id is None:
        return
    credential_id, key = job_credentials()
    if credential_id != job_id:
        raise InsufficientRights()
    if request.method in SAFE_METHODS:
        job = service.get_job(db.session, job_id)
    else:
        job = service.lock_job(db.session, job_id)
    if job is None:
        raise NotFound()
    if not verify_job_key(job.key_digest, key):
        raise Unauthorized()
    g.job = job
