"""Who may call each route, and the one hook that admits a request to the jobs blueprint.

Two kinds of caller: a job, with HTTP Basic ``job-<id>:<key>``, which may act
on itself only (SPEC 2); and an operator or a runner, with ``Authorization:
Bearer <token>``. Each route declares with ``allow`` which of them it takes,
and with ``takes_json`` the schema of its body.

The hook works in the order SPEC 8 asks: first what needs no database (the
credentials' form, the body read whole and checked), then, in the request's
transaction, the token or the job, locked if the request writes. It writes
what it found on ``g``: ``g.caller`` (the job or the token), ``g.job`` (the
job the path names), ``g.locked_job`` (a job's own write: the job under its
lock and the record its Idempotency-Key made) and ``g.body``; views only
read them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Request, current_app, g, request
from marshmallow import Schema

from .errors import BASIC_CHALLENGE, BEARER_CHALLENGE, InsufficientRights, Unauthorized
from .exceptions import JobNotFound
from .extensions import db
from .jobs import service
from .keys import verify_job_key
from .payload import check_body
from .storage import begin_write
from .tokens import find_token
from .transaction import request_connection

JOB_USER_PREFIX = "job-"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
IDEMPOTENCY_HEADER = "Idempotency-Key"
# Where the WSGI environ keeps it (headers are read there: werkzeug's header
# lookup raises and catches a KeyError for each header a request lacks).
IDEMPOTENCY_ENVIRON = "HTTP_IDEMPOTENCY_KEY"

View = TypeVar("View", bound=Callable)


@dataclass(frozen=True)
class Access:
    """Who may call a route: the job named in its path, which token roles, and whether a
    setting opens it to anyone (``("JOB_ACQUIRE", "open")``: the setting and its value)."""

    job: bool = False
    roles: frozenset[str] = frozenset()
    open_when: tuple[str, str] | None = None

    def is_open(self) -> bool:
        """Whether the app's configuration admits anyone to the route."""
        if self.open_when is None:
            return False
        setting, value = self.open_when
        return current_app.config.get(setting) == value


NOBODY = Access()


def allow(
    *, job: bool = False, roles: Iterable[str] = (), open_when: tuple[str, str] | None = None
) -> Callable[[View], View]:
    """Declare who may call a view; a route without a declaration admits nobody."""

    def declare(view: View) -> View:
        view.access = Access(job=job, roles=frozenset(roles), open_when=open_when)  # type: ignore[attr-defined]
        return view

    return declare


def takes_json(
    schema: Schema, load: Callable[[dict[str, Any]], dict[str, Any]] | None = None
) -> Callable[[View], View]:
    """Declare the JSON object a view's body must be (``schema``, which documents it too); the
    hook reads and checks it (``g.body``) with ``load``, the schema's own by default."""

    def declare(view: View) -> View:
        view.body_schema = schema  # type: ignore[attr-defined]
        view.body_load = load or schema.load  # type: ignore[attr-defined]
        return view

    return declare


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


def read_credentials(access: Access, incoming: Request) -> JobCredentials | TokenCredentials | None:
    """The request's credentials, checked for form only; None on a route open to anyone.

    Raises the 401 of missing or malformed credentials, and the 403 of a
    job's credentials on another job's path (SPEC 2, steps 1 and 2).
    """
    if access.is_open():
        return None
    header = incoming.environ.get("HTTP_AUTHORIZATION")
    challenge = BASIC_CHALLENGE if access.job else BEARER_CHALLENGE
    if not header:
        raise Unauthorized("Missing credentials", challenge=challenge)
    scheme, _, parameter = header.strip().partition(" ")
    if scheme.lower() == "bearer":
        secret = parameter.strip()
        if not secret or not secret.isascii():
            raise Unauthorized("Malformed credentials", challenge=challenge)
        return TokenCredentials(secret=secret)
    if not access.job:
        raise Unauthorized("Bearer token required", challenge=BEARER_CHALLENGE)
    basic = parse_basic(header)
    if basic is None:
        raise Unauthorized("Malformed credentials")
    username, key = basic
    if not username.startswith(JOB_USER_PREFIX) or len(username) == len(JOB_USER_PREFIX):
        raise Unauthorized("Malformed credentials")
    credentials = JobCredentials(job_id=username[len(JOB_USER_PREFIX):], key=key)
    if credentials.job_id != (incoming.view_args or {}).get("job_id"):
        raise InsufficientRights()
    return credentials


def valid_idempotency_key(incoming: Request | None = None) -> str | None:
    """The request's Idempotency-Key if it is well formed (1-128 printable ASCII), else None."""
    value = (incoming or request).environ.get(IDEMPOTENCY_ENVIRON)
    if value is None or not 1 <= len(value) <= 128:
        return None
    if not all(" " <= ch <= "~" for ch in value):
        return None
    return value


def admit_request() -> None:
    """Before every request of the jobs blueprint: admit only the callers the route declares."""
    # The request and its context, looked up once (each use of Flask's proxies looks again).
    incoming: Request = request._get_current_object()  # type: ignore[attr-defined]
    context = g._get_current_object()
    view = current_app.view_functions.get(incoming.endpoint or "")
    access: Access = getattr(view, "access", NOBODY)
    credentials = read_credentials(access, incoming)
    load = getattr(view, "body_load", None)
    context.body = check_body(load) if load is not None else None
    if isinstance(credentials, TokenCredentials):
        _admit_token(access, credentials, incoming, context)
    elif isinstance(credentials, JobCredentials):
        _admit_job(credentials, incoming, context)
    else:
        context.caller = None
        _load_path_job(incoming, context)


def _admit_token(access: Access, credentials: TokenCredentials, incoming: Request, context) -> None:
    """An operator's or runner's token: known and active (401), of a role the route takes (403)."""
    if incoming.method not in SAFE_METHODS:
        # A request that writes does so in the transaction its first statement begins;
        # one that reads runs without a transaction.
        begin_write(db.session)
    token = find_token(db.session, credentials.secret)
    if token is None:
        # A job's route challenges for the job's own credentials (SPEC 2).
        challenge = BASIC_CHALLENGE if access.job else BEARER_CHALLENGE
        raise Unauthorized("Invalid or revoked token", challenge=challenge)
    if token.role not in access.roles:
        raise InsufficientRights()
    context.caller = token
    _load_path_job(incoming, context)


def _load_path_job(incoming: Request, context) -> None:
    """The job the path names, if it names one: read, or locked for a request that writes."""
    job_id = (incoming.view_args or {}).get("job_id")
    if job_id is None:
        context.job = None
        return
    if incoming.method in SAFE_METHODS:
        job = service.read_job(db.session.connection(), job_id)
    else:
        job = service.lock_job(db.session, job_id).job
    if job is None:
        raise JobNotFound(job_id)
    context.job = job


def _admit_job(credentials: JobCredentials, incoming: Request, context) -> None:
    """A job acting on itself: it exists (404), its key is right (401), its key still works (401).

    A request that writes loads the job under its row lock, with the record
    its Idempotency-Key made if any, so the view's checks and writes see one
    state of the job.
    """
    # A job's own requests skip the ORM session: the most frequent ones (see
    # jobapi.transaction.request_connection).
    if incoming.method in SAFE_METHODS:
        connection = request_connection()
        locked = service.LockedJob(job=service.read_job(connection, credentials.job_id))
    else:
        connection = request_connection(write=True)
        locked = service.lock_own_job(
            connection, credentials.job_id, idempotency_key=valid_idempotency_key(incoming)
        )
    job = locked.job
    if job is None:
        raise JobNotFound(credentials.job_id)
    if not verify_job_key(job.key_digest, credentials.key):
        if job.replaced_key_digest and verify_job_key(job.replaced_key_digest, credentials.key):
            raise Unauthorized("Key was replaced")
        raise Unauthorized("Wrong key")
    if service.key_expired(job, current_app.config["JOB_KEY_GRACE_SECONDS"]):
        raise Unauthorized("Job is no longer active")
    context.caller = job
    context.job = job
    context.locked_job = locked
