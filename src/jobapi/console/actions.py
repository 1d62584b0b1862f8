"""The console's one contact with the service layer: every read and action its pages make.

Pages call these functions, never the service modules directly, so the
console follows the same rules as the API and the CLI. The domain's
refusals become a ``Refused`` with the message the page shows and the
status ``errors.py`` gives them, in one place (``refusals``). Counts by
state within the task and user filters, which the service modules have no
function for, are here too; sign-ins are ``signins``'.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from marshmallow import ValidationError
from sqlalchemy import func, select

from .. import tokens
from ..errors import domain_error_status
from ..exceptions import DomainError, InvalidCursor
from ..extensions import db
from ..jobs import pages, service
from ..models import STATES, ApiToken, Job
from ..payload import loads_strict
from ..jobs.schemas import job_create_schema
from ..storage.engines import write_connection
from . import signins

OPERATOR = signins.OPERATOR


class Refused(Exception):
    """An action or read the rules refuse, with the message the page shows and its HTTP status."""

    def __init__(self, message: str, status: int = 409) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class FormInvalid(Exception):
    """A form whose fields break the rules: field name -> messages."""

    def __init__(self, errors: Mapping[str, list[str]]) -> None:
        super().__init__("Invalid input")
        self.errors = dict(errors)


@contextmanager
def refusals() -> Iterator[None]:
    """Turn the domain's refusals into ``Refused``: the one place that reads them."""
    try:
        yield
    except DomainError as error:
        raise Refused(error.message, domain_error_status(error)[0]) from None


# Who is signed in


@dataclass(frozen=True)
class SignIn:
    """An operator signed in, and the random id that names the sign-in in the cookie."""

    token: ApiToken
    session_id: str


def sign_in(secret: str, lifetime: timedelta) -> SignIn:
    """Sign a person in with an operator token for ``lifetime``; runner tokens and job keys are refused."""
    token = tokens.find_token(db.session, secret.strip())
    if token is None:
        raise Refused("Invalid or revoked token", 401)
    if token.role != OPERATOR:
        raise Refused(f"That is a {token.role}'s token: the console takes an operator's token", 403)
    return SignIn(token=token, session_id=signins.begin(db.session, token, lifetime))


def signed_in_operator(session_id: Any) -> ApiToken | None:
    """The operator token a cookie's sign-in names, while both last; None once signed out,
    expired, revoked or deleted."""
    return signins.operator_of(db.session, session_id)


def sign_out(session_id: Any) -> None:
    """End the sign-in a cookie names, for every copy of the cookie."""
    signins.end(db.session, session_id)


# Jobs


@dataclass(frozen=True)
class Filters:
    """What the jobs page shows: jobs in one state, of one task, for one user (None: any)."""

    state: str | None = None
    task: str | None = None
    user: str | None = None

    def where(self, query, *, state: bool = True):
        """``query`` narrowed to these filters (without the state one if ``state`` is False)."""
        if state and self.state is not None:
            query = query.where(Job.state == self.state)
        if self.task is not None:
            query = query.where(Job.task == self.task)
        if self.user is not None:
            query = query.where(Job.user_id == self.user)
        return query


@dataclass(frozen=True)
class JobsPage:
    """One page of jobs, newest first, and the cursors of the pages beside it (None: no page)."""

    jobs: Sequence[Job]
    older: str | None
    newer: str | None
    first: bool


_BAD_CURSOR = "That page link is not valid: start from the newest jobs"


def list_jobs(filters: Filters, limit: int, *, cursor: str | None = None, before: str | None = None) -> JobsPage:
    """A page of jobs: the newest, the one after ``cursor`` (older), or the one before ``before`` (newer).

    Keyset pages on (created_at, id), as the API's. A "newer" page with
    nothing newer beyond it is the first page, shown whole.
    """
    found = None
    try:
        if before is not None:
            found = pages.list_jobs(
                db.session, state=filters.state, task=filters.task, user=filters.user,
                limit=limit, before=before,
            )
            if found.previous_cursor is None:
                found = None
        if found is None:
            cursor = None if before is not None else cursor
            found = pages.list_jobs(
                db.session, state=filters.state, task=filters.task, user=filters.user,
                limit=limit, cursor=cursor,
            )
            return JobsPage(
                jobs=found.jobs, older=found.next_cursor, newer=found.previous_cursor,
                first=cursor is None,
            )
    except InvalidCursor:
        raise Refused(_BAD_CURSOR, 400) from None
    return JobsPage(jobs=found.jobs, older=found.next_cursor, newer=found.previous_cursor, first=False)


def count_by_state(filters: Filters) -> dict[str, int]:
    """How many jobs are in each state (every state, zero included), within the task and user filters."""
    query = filters.where(select(Job.state, func.count()).group_by(Job.state), state=False)
    counts = dict.fromkeys(STATES, 0)
    counts.update({state: number for state, number in db.session.execute(query).all()})
    return counts


def get_job(job_id: str) -> Job:
    """The job with this id; ``Refused`` (404) if there is none."""
    job = service.get_job(db.session, job_id)
    if job is None:
        raise Refused(f"No job {job_id!r}: it was never made, or it was removed", 404)
    return job


def status_history(job: Job) -> Sequence[Any]:
    """The job's status records, oldest first."""
    return service.status_history(db.session, job.id)


_DIGITS = re.compile(r"[0-9]{1,10}")


def _form_integer(text: str) -> Any:
    """A form's number as an int, or the text itself for the schema to refuse."""
    text = text.strip()
    return int(text) if _DIGITS.fullmatch(text) else text


def make_job(form: Mapping[str, str]) -> service.NewJob:
    """Make a job from the console's form, checked by the schema the API loads with."""
    errors: dict[str, list[str]] = {}
    args_text = form.get("args", "").strip() or "{}"
    try:
        args = loads_strict(args_text)
    except ValueError:
        errors["args"] = ["Not valid JSON."]
        args = {}
    if not isinstance(args, dict):
        errors["args"] = ["Must be a JSON object, such as {\"genome\": \"hg38\"}."]
        args = {}
    document = {
        "task": form.get("task", "").strip(),
        "user": form.get("user", "").strip(),
        "args": args,
        "proc": _form_integer(form.get("proc", "1")),
        "mem": _form_integer(form.get("mem", "1")),
    }
    try:
        data = job_create_schema.load(document)
    except ValidationError as error:
        for field, messages in error.normalized_messages().items():
            errors.setdefault(field, []).extend(_flatten(messages))
    if errors:
        raise FormInvalid(errors)
    with refusals():
        return service.create_job(write_connection(db.session), **data)


def _flatten(messages: Any) -> list[str]:
    if isinstance(messages, str):
        return [messages]
    if isinstance(messages, dict):
        return [text for value in messages.values() for text in _flatten(value)]
    return [text for value in messages for text in _flatten(value)]


def cancel_job(job_id: str) -> service.Cancellation:
    """Cancel a job as ``jobs cancel`` does; a finished one is refused."""
    with refusals():
        return service.cancel_job(write_connection(db.session), job_id)


def remove_job(job_id: str, *, force: bool) -> None:
    """Remove a job as ``jobs remove`` does; an active one only with ``force``."""
    with refusals():
        service.remove_job(write_connection(db.session), job_id, force=force)
