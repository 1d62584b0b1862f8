"""Authentication: reading a request's credentials and checking them, nothing else.

Two kinds of caller: a job, with HTTP Basic ``job-<id>:<key>`` (SPEC 2); and
an operator or a runner, with ``Authorization: Bearer <token>``. Who may
call which route, and in what order the checks answer, is
``jobapi.admission``'s.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from .errors import BASIC_CHALLENGE, BEARER_CHALLENGE, Unauthorized
from .keys import verify_job_key
from .models import ApiToken, JobFacts, utcnow
from .tokens import find_token

JOB_USER_PREFIX = "job-"


@dataclass(frozen=True)
class JobCredentials:
    """A job's Basic credentials: the id its user name gives, and its key."""

    job_id: str
    key: str


@dataclass(frozen=True)
class TokenCredentials:
    """An operator's or runner's bearer token."""

    secret: str


def parse_basic(header: str) -> tuple[str, str] | None:
    """The user name and password of a Basic Authorization header; None if it is none.

    Anything that is not valid base64 of UTF-8 text with a colon is none: the
    header is the client's text, and no byte of it may reach further.
    """
    scheme, _, parameter = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(parameter.strip().encode("ascii"), validate=True)
        text = decoded.decode("utf-8")
    except (ValueError, binascii.Error):  # UnicodeError is a ValueError
        return None
    username, colon, password = text.partition(":")
    if not colon:
        return None
    return username, password


def read_credentials(header: str | None, *, job_route: bool) -> JobCredentials | TokenCredentials:
    """A request's credentials from its Authorization header, checked for form only.

    Raises the 401 of missing or malformed credentials (SPEC 2, step 1),
    challenging for a job's key on a job's route (``job_route``), else for a
    bearer token.
    """
    challenge = BASIC_CHALLENGE if job_route else BEARER_CHALLENGE
    if not header:
        raise Unauthorized("Missing credentials", challenge=challenge)
    scheme, _, parameter = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        secret = parameter.strip()
        if not secret or not secret.isascii():
            raise Unauthorized("Malformed credentials", challenge=challenge)
        return TokenCredentials(secret=secret)
    if not job_route:
        raise Unauthorized("Bearer token required", challenge=BEARER_CHALLENGE)
    basic = parse_basic(header)
    if basic is None:
        raise Unauthorized("Malformed credentials")
    username, key = basic
    if not username.startswith(JOB_USER_PREFIX) or len(username) == len(JOB_USER_PREFIX):
        raise Unauthorized("Malformed credentials")
    return JobCredentials(job_id=username[len(JOB_USER_PREFIX):], key=key)


def key_expired(job: JobFacts, grace_seconds: float, now: datetime | None = None) -> bool:
    """Whether a finished job's key has outlived its grace period."""
    if not job.finished:
        return False
    return (now or utcnow()) - job.updated_at > timedelta(seconds=grace_seconds)


def authenticate_job(job, credentials: JobCredentials, *, grace_seconds: float) -> None:
    """Check a job's key (SPEC 2, step 4): 401 for a wrong key, a replaced one, or one past
    its grace after the job finished. ``job`` is a ``JobRow`` with its key digests."""
    if not verify_job_key(job.key_digest, credentials.key):
        if job.replaced_key_digest and verify_job_key(job.replaced_key_digest, credentials.key):
            raise Unauthorized("Key was replaced")
        raise Unauthorized("Wrong key")
    if key_expired(job, grace_seconds):
        raise Unauthorized("Job is no longer active")


def authenticate_token(session: Session, credentials: TokenCredentials, *, job_route: bool) -> ApiToken:
    """The active token of these credentials; 401 for an unknown or revoked one, challenging
    for a job's key on a job's route (SPEC 2)."""
    token = find_token(session, credentials.secret)
    if token is None:
        raise Unauthorized("Invalid or revoked token", challenge=BASIC_CHALLENGE if job_route else BEARER_CHALLENGE)
    return token
