"""The dialect's routes, and the hook that admits a worker to its job's routes.

A job's routes (GET, ping, step start, finish) authenticate with HTTP Basic
``job-<number>:<key>``, in Virtool's order: the credentials and the job they
name (401: Virtool's runtime hears any 401 as "stop"), a final job's key
refused with its state (401 ``Job is cancelled.``), then the path's number
(404 if it names no job as jobapi writes numbers, 403 if another job's). Their
bodies are ignored, with or without a Content-Type: Virtool's runtime sends
ping and finish bare. The claim and the counts take no key. Every refusal is
``{"message": ...}``.

Views call the same service functions as the 31.x routes, the console and the
command line (``jobapi.jobs.service``); the request's transaction is ended
when it ends (``jobapi.transaction``), as for every route.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from flask import Blueprint, Response, current_app, g, jsonify, request
from marshmallow import ValidationError
from werkzeug.routing import BaseConverter

from .. import exceptions as domain
from ..auth import parse_basic
from ..errors import handle_domain_error
from ..extensions import db
from ..jobs import numbering, service
from ..keys import verify_job_key
from ..payload import TooDeep, loads_strict
from ..probes import healthz, readyz
from ..fields import format_timestamp
from ..jobs.schemas import TASK_PATTERN
from ..storage.engines import write_connection
from ..tokens import find_token
from ..transaction import request_connection
from . import statements
from .schemas import (
    DIALECT_STATES,
    FINAL_REFUSALS,
    claim_request_schema,
    claimed_document,
    counts_document,
    job_document,
    job_number,
    started_document,
    stored_claim,
)

class JobNumberConverter(BaseConverter):
    """A job number in a path: any segment but the fixed routes beside it (``/jobs/claim``,
    ``/jobs/counts``), so that ``HEAD /virtool42/jobs/claim`` is 405, not a read of a job
    numbered "claim" (a malformed number is the admission's 404, after the credentials)."""

    regex = r"(?!(?:claim|counts)(?:/|$))[^/]+"


bp = Blueprint("virtool42", __name__)
bp.record_once(lambda state: state.app.url_map.converters.setdefault("job_number", JobNumberConverter))

View = TypeVar("View", bound=Callable)
_WORKFLOW = re.compile(TASK_PATTERN)
JOB_LOGIN = "job-"


class Refusal(Exception):
    """A refusal the dialect answers ``{"message": ...}`` (and ``errors``, for a claim body)."""

    def __init__(self, status: int, message: str, errors: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


@bp.errorhandler(Refusal)
def _refused(refusal: Refusal) -> Response:
    body: dict[str, Any] = {"message": refusal.message}
    if refusal.errors is not None:
        body["errors"] = refusal.errors
    response = jsonify(body)
    response.status_code = refusal.status
    return response


# The rules' refusals, in the dialect's words: (status, message).
_DOMAIN_REFUSALS: dict[type[domain.DomainError], tuple[int, str]] = {
    domain.StepNotFound: (404, "Step not found"),
    domain.StepAlreadyStarted: (409, "Step already started"),
    domain.JobStateError: (409, "Job is not running"),
}


@bp.errorhandler(domain.DomainError)
def _domain_refused(error: domain.DomainError) -> Response:
    if isinstance(error, domain.JobFinished):
        # Reached only through a race the row lock rules out; said as the hook says it.
        return _refused(Refusal(401, FINAL_REFUSALS[DIALECT_STATES[error.state]]))
    for cls in type(error).__mro__:
        if cls in _DOMAIN_REFUSALS:
            return _refused(Refusal(*_DOMAIN_REFUSALS[cls]))
    return handle_domain_error(error)


# The probes answer as /healthz and /readyz do, word for word.
_AS_THE_API = frozenset({"virtool42.live", "virtool42.ready"})


@bp.after_request
def _message_only(response: Response) -> Response:
    """Errors raised outside the dialect's own checks (a body too large, a database that does
    not answer) come in the API's envelope; the dialect says them without its ``id``."""
    if response.status_code >= 400 and response.is_json and request.endpoint not in _AS_THE_API:
        body = response.get_json(silent=True)
        if isinstance(body, dict) and "id" in body:
            del body["id"]
            response.set_data(current_app.json.dumps(body))
    return response


def job_route(*, writes: bool) -> Callable[[View], View]:
    """Declare a route of a job's own, which its key opens (``writes``: under its row lock)."""

    def declare(view: View) -> View:
        view.job_route = "write" if writes else "read"  # type: ignore[attr-defined]
        return view

    return declare


@bp.before_request
def admit_job() -> None:
    """Before a job's own route: the worker's credentials open the job the path names."""
    view = current_app.view_functions.get(request.endpoint or "")
    mode = getattr(view, "job_route", None)
    if mode is None:
        return
    number, key = _credentials()
    connection = request_connection(write=mode == "write")
    found = statements.find(connection, number, lock=mode == "write")
    if found is None:
        raise Refusal(401, "Invalid credentials")
    job = found.job
    if not verify_job_key(job.key_digest, key):
        if job.replaced_key_digest and verify_job_key(job.replaced_key_digest, key):
            raise Refusal(401, "Key was replaced")
        raise Refusal(401, "Invalid credentials")
    if job.finished:
        raise Refusal(401, FINAL_REFUSALS[DIALECT_STATES[job.state]])
    path_number = job_number((request.view_args or {}).get("number", ""))
    if path_number is None:
        raise Refusal(404, "Job not found")
    if path_number != number:
        raise Refusal(403, "Job key does not match the requested job")
    g.job = job
    g.job_user_id = found.user_id


def _credentials() -> tuple[int, str]:
    """The job number and key of the request's Basic credentials; 401 unless the login is
    ``job-`` and a number as jobapi writes it."""
    header = request.environ.get("HTTP_AUTHORIZATION")
    basic = parse_basic(header) if header else None
    if basic is None:
        raise Refusal(401, "Invalid credentials")
    login, key = basic
    number = job_number(login[len(JOB_LOGIN):]) if login.startswith(JOB_LOGIN) else None
    if number is None:
        raise Refusal(401, "Invalid credentials")
    return number, key


def _user_id(handle: str, known: int | None) -> int:
    # Every job made by jobapi names a user with an id; a row loaded in bulk may not.
    return known if known is not None else numbering.user_id(db.session.connection(), handle)


# The routes


@bp.post("/jobs/claim")
def claim_job():
    """Hand a worker the oldest waiting job of its workflow, with the job's key; 404 if none."""
    workflow = request.args.get("workflow")
    if workflow is None or not _WORKFLOW.match(workflow):
        raise Refusal(422, "Missing or malformed workflow: 1 to 64 characters of a-z, 0-9 and _")
    body = _claim_body()
    _admit_claimer()
    if isinstance(body, Refusal):
        raise body
    # An idle fleet polls every 2 s: finding nothing writes nothing and locks nothing.
    if not statements.has_waiting(request_connection(), workflow):
        raise Refusal(404, "No job available")
    new = service.claim_workflow(
        write_connection(db.session),
        workflow=workflow,
        runner=body["runnerId"],
        claim=stored_claim(body),
        steps=[service.StepDeclaration(**step) for step in body["steps"]],
    )
    if new is None:
        raise Refusal(404, "No job available")
    job = new.job
    return claimed_document(
        number=job.number, claim=job.claim, claimed_at=job.claimed_at, created_at=job.created_at,
        key=new.key, steps=job.steps, handle=job.user_id,
        user_id=numbering.user_id(db.session.connection(), job.user_id), workflow=job.task,
    )


def _claim_body() -> dict[str, Any] | Refusal:
    """The claim's body, checked (whatever its Content-Type: Virtool's handler reads it so),
    or the refusal to answer once the caller is admitted."""
    try:
        raw = loads_strict(g.body_bytes)
    except TooDeep:
        return Refusal(400, "Invalid body", errors={"_schema": ["Nested too deeply."]})
    except ValueError:
        return Refusal(400, "Malformed body")
    if not isinstance(raw, dict):
        return Refusal(400, "Invalid body", errors={"_schema": ["Must be a JSON object."]})
    try:
        return claim_request_schema.load(raw)
    except ValidationError as error:
        return Refusal(400, "Invalid body", errors=error.messages)


def _admit_claimer() -> None:
    """``JOB_ACQUIRE`` (SPEC 7.1): ``open`` admits anyone, as Virtool's runtime sends no
    credentials; ``runner`` asks for a runner token, and a worker without one is told loudly
    (a 401 stops it, where a 404 would keep it polling)."""
    if current_app.config["JOB_ACQUIRE"] == "open":
        return
    refusal = Refusal(
        401,
        "A runner token is required to claim (JOB_ACQUIRE=runner); Virtool's workers send none, "
        "so serve them with JOB_ACQUIRE=open",
    )
    header = request.environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, secret = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not secret.strip().isascii():
        raise refusal
    token = find_token(db.session, secret.strip())
    role = None if token is None else token.role
    # The claim begins its writing transaction itself.
    db.session.rollback()
    if role != "runner":
        raise refusal


@bp.get("/jobs/<job_number:number>")
@job_route(writes=False)
def get_job(number: str):
    """The job (Job): its arguments as strings, its claim, its steps, its state."""
    return job_document(g.job, _user_id(g.job.user_id, g.job_user_id))


@bp.put("/jobs/<job_number:number>/ping")
@job_route(writes=True)
def ping(number: str):
    """A heartbeat; a final job's key is refused first (the hook), which is how its worker
    learns to stop."""
    g.job = service.ping_job(request_connection(), g.job)
    return {"pingedAt": format_timestamp(g.job.pinged_at)}


@bp.post("/jobs/<job_number:number>/steps/<step_id>/start")
@job_route(writes=True)
def start_step(number: str, step_id: str):
    """Start a declared step (JobStepStarted); the step started last, again, is answered as it
    was."""
    started = service.start_step(request_connection(), g.job, step_id)
    g.job = started.job
    return started_document(started.step)


@bp.post("/jobs/<job_number:number>/finish")
@job_route(writes=True)
def finish_job(number: str):
    """The work is done: the job succeeds (Job). There is no failing route: a worker that
    fails stops pinging, and the reaper times the job out."""
    g.job = service.finish_job(request_connection(), g.job)
    return job_document(g.job, _user_id(g.job.user_id, g.job_user_id))


@bp.get("/jobs/counts")
def counts():
    """Active jobs by state and workflow, for KEDA's metrics-api trigger; no credentials."""
    return counts_document(statements.active_counts(request_connection()))


@bp.get("/health/live")
def live():
    """As ``/healthz``."""
    return healthz()


@bp.get("/health/ready")
def ready():
    """As ``/readyz``."""
    return readyz()
