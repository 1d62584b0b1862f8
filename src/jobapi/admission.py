"""Admission to the jobs routes: who may call each route, and the one hook that admits a
request, in the order SPEC 2, 7.3 and 8 require.

Each route declares who may call it (``@allow``) and the JSON object its body
must be (``@takes_json``, whose schema also documents it). ``admit_request``
runs before every view of the jobs blueprint, in three steps, as indico's
request handlers do:

1. ``process_args``, what needs no database (nothing locks before the body is
   read and checked, SPEC 8): the credentials' form (401 missing or
   malformed), a job's credentials on another job's path (403), the body
   read whole and checked (its refusal kept for its turn: after
   authentication, and for a push after the job's own refusals, SPEC 7.3),
   and the Idempotency-Key;
2. ``check_access``, in the request's transaction: a token known and active
   (401) of a role the route takes (403), then the job the path names (404);
   or the job acting on itself (404), its key (401 wrong, replaced, past its
   grace). A request that writes locks the job's row, with the record its
   Idempotency-Key made;
3. the view (indico's ``_process``), which calls one service function with
   what admission put on ``g``: ``g.caller`` (the job or the token, None on a
   route open to anyone), ``g.job`` (the path's job, a ``JobRow``),
   ``g.history`` (a read's: the job's records as its document shows them),
   ``g.locked_job`` (a job's own write: the job under its lock and the
   record its Idempotency-Key made) and ``g.body``.

``jobapi.auth`` only authenticates: it reads credentials and checks keys and
tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from flask import Request, current_app, g, request
from marshmallow import Schema

from .auth import JobCredentials, TokenCredentials, authenticate_job, authenticate_token, read_credentials
from .errors import InsufficientRights
from .exceptions import JobNotFound
from .extensions import db
from .jobs import service
from .payload import Body, check_body
from .storage.engines import write_connection
from .transaction import request_connection

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

    def is_open(self, config: Any) -> bool:
        """Whether the app's configuration admits anyone to the route."""
        if self.open_when is None:
            return False
        setting, value = self.open_when
        return config.get(setting) == value


NOBODY = Access()


def allow(
    *, job: bool = False, roles: Iterable[str] = (), open_when: tuple[str, str] | None = None
) -> Callable[[View], View]:
    """Declare who may call a view; a route without a declaration admits nobody."""

    def declare(view: View) -> View:
        view.access = Access(job=job, roles=frozenset(roles), open_when=open_when)  # type: ignore[attr-defined]
        return view

    return declare


def takes_json(schema: Schema) -> Callable[[View], View]:
    """Declare the JSON object a view's body must be: ``schema`` checks it (``g.body``) and
    documents it."""

    def declare(view: View) -> View:
        view.body_schema = schema  # type: ignore[attr-defined]
        return view

    return declare


def valid_idempotency_key(incoming: Request | None = None) -> str | None:
    """The request's Idempotency-Key if it is well formed (1-128 printable ASCII), else None."""
    value = (incoming or request).environ.get(IDEMPOTENCY_ENVIRON)
    if value is None or not 1 <= len(value) <= 128:
        return None
    if not all(" " <= ch <= "~" for ch in value):
        return None
    return value


@dataclass(frozen=True)
class Arguments:
    """What ``process_args`` found: the route's callers, the credentials (None on a route
    open to anyone), the path's job id, and the body read and checked (None without one)."""

    access: Access
    credentials: JobCredentials | TokenCredentials | None
    job_id: str | None
    body: Body | None


def admit_request() -> None:
    """Before every request of the jobs blueprint: admit only the callers the route declares."""
    # The request and its context, looked up once (each use of Flask's proxies looks again);
    # _get_current_object is the proxies' documented way to do that.
    incoming: Request = request._get_current_object()  # type: ignore[attr-defined]
    context = g._get_current_object()
    arguments = process_args(incoming)
    context.body = arguments.body
    check_access(arguments, incoming, context)


def process_args(incoming: Request) -> Arguments:
    """Step 1, without the database: the credentials' form (401), the path's job against a
    job's credentials (403), the body read and checked (its refusal kept)."""
    view = current_app.view_functions.get(incoming.endpoint or "")
    access: Access = getattr(view, "access", NOBODY)
    job_id = (incoming.view_args or {}).get("job_id")
    credentials = None
    if not access.is_open(current_app.config):
        credentials = read_credentials(incoming.environ.get("HTTP_AUTHORIZATION"), job_route=access.job)
        if isinstance(credentials, JobCredentials) and credentials.job_id != job_id:
            raise InsufficientRights()
    schema = getattr(view, "body_schema", None)
    body = check_body(schema.load) if schema is not None else None
    return Arguments(access=access, credentials=credentials, job_id=job_id, body=body)


def check_access(arguments: Arguments, incoming: Request, context: Any) -> None:
    """Step 2, in the request's transaction: the token or the job, and the path's job (404),
    read, or locked for a request that writes."""
    credentials = arguments.credentials
    if isinstance(credentials, JobCredentials):
        _admit_job(credentials, incoming, context)
        return
    if isinstance(credentials, TokenCredentials):
        if incoming.method not in SAFE_METHODS:
            # A request that writes does so in the transaction its first statement begins;
            # one that reads runs without a transaction.
            write_connection(db.session)
        token = authenticate_token(db.session, credentials, job_route=arguments.access.job)
        if token.role not in arguments.access.roles:
            raise InsufficientRights()
        context.caller = token
    else:
        context.caller = None
    _load_path_job(arguments.job_id, incoming, context)


def _load_path_job(job_id: str | None, incoming: Request, context: Any) -> None:
    """The job the path names, if it names one: read, or locked for a request that writes."""
    if job_id is None:
        context.job = None
        return
    if incoming.method in SAFE_METHODS:
        found = service.read_job(db.session.connection(), job_id)
        if found is None:
            raise JobNotFound(job_id)
        context.job, context.history = found
        return
    job = service.lock_job(write_connection(db.session), job_id).job
    if job is None:
        raise JobNotFound(job_id)
    context.job = job


def _admit_job(credentials: JobCredentials, incoming: Request, context: Any) -> None:
    """A job acting on itself: it exists (404), its key is right and still works (401).

    A request that writes loads the job under its row lock, with the record
    its Idempotency-Key made if any, so the view's checks and writes see one
    state of the job. A job's own requests skip the ORM session: they are the
    most frequent (see ``jobapi.transaction.request_connection``).
    """
    if incoming.method in SAFE_METHODS:
        found = service.read_job(request_connection(), credentials.job_id)
        locked = service.LockedJob(job=None if found is None else found.job)
        context.history = None if found is None else found.history
    else:
        locked = service.lock_job(
            request_connection(write=True), credentials.job_id,
            idempotency_key=valid_idempotency_key(incoming),
        )
    if locked.job is None:
        raise JobNotFound(credentials.job_id)
    authenticate_job(locked.job, credentials, grace_seconds=current_app.config["JOB_KEY_GRACE_SECONDS"])
    context.caller = context.job = locked.job
    context.locked_job = locked
