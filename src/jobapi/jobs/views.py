"""The jobs blueprint's routes.

The ``admit_request`` hook (``jobapi.admission``) has already admitted the
caller, read and checked the body, and put the job on ``g`` (locked, for a
request that writes); views call one service function and dump its answer. The
request's transaction is committed or rolled back when the request ends
(``jobapi.transaction``), not here.
"""

from __future__ import annotations

from flask import current_app, g, request, url_for

from ..admission import (
    IDEMPOTENCY_ENVIRON,
    IDEMPOTENCY_HEADER,
    admit_request,
    allow,
    takes_json,
    valid_idempotency_key,
)
from ..errors import InvalidInput
from ..extensions import db
from ..openapi import Blueprint
from ..transaction import request_connection
from . import pages, service
from .documents import job_document, status_document
from .ids import JobIdConverter
from .openapi import IDEMPOTENCY_PARAMETER
from .schemas import (
    JobListQuerySchema,
    JobOutSchema,
    JobPageSchema,
    NewJobSchema,
    PingSchema,
    RemoveQuerySchema,
    StatusOutSchema,
    acquire_schema,
    claim_schema,
    job_create_schema,
    job_list_query_schema,
    job_page_schema,
    ping_schema,
    remove_query_schema,
    status_in_schema,
)


bp = Blueprint("jobs", __name__)
bp.record_once(lambda state: state.app.url_map.converters.setdefault("job_id", JobIdConverter))
bp.before_request(admit_request)


@bp.after_request
def add_job_state(response):
    """Tell the caller the state of the job the request reached, on every answer but a 5xx.

    ``g.job`` is the job as the request left it: a view that changed it put
    the changed row there (a removed job is None).
    """
    job = g.get("job")
    if job is None or response.status_code >= 500:
        return response
    response.headers["Job-State"] = job.state
    return response


def _new_job_document(new: service.NewJob) -> dict:
    document = job_document(new.job, service.document_history(db.session.connection(), new.job.id))
    # The key is no attribute of the job (only its digest is stored): it is shown this once.
    document["key"] = new.key
    return document


def _no_content():
    # A 204 has no body, so it names no media type either.
    response = current_app.response_class(status=204)
    response.headers.remove("Content-Type")
    return response


def _query(schema) -> dict:
    return schema.load(request.args.to_dict(flat=True))


# A job's own routes (HTTP Basic job key), which operators may read too.


@bp.get("/jobs/<job_id:job_id>", tags=["jobs"])
@bp.answers(200, JobOutSchema, "The job's document.", headers=["JobState"])
@bp.refuses(404)
@allow(job=True, roles=["operator"])
def get_job(job_id: str):
    """The job's full document with every status record, oldest first."""
    return job_document(g.job, g.history)


@bp.post("/jobs/<job_id:job_id>/status", tags=["jobs"])
@bp.answers(200, StatusOutSchema, "The stored record.", headers=["JobState"])
@bp.refuses(400, 404, 409, 415, 422, job_state=(400, 409, 415, 422))
@bp.doc(parameters=[IDEMPOTENCY_PARAMETER])
@allow(job=True)
@takes_json(status_in_schema)
def push_status(job_id: str):
    """Append a status record to the job, if its state allows the move.

    A push with an Idempotency-Key that was already used with the same
    content answers the record it stored then, and writes nothing.
    """
    # The object behind Flask's proxy, looked up once (_get_current_object is its documented way).
    incoming = request._get_current_object()
    context = g._get_current_object()
    idempotency_key = valid_idempotency_key(incoming)
    if idempotency_key is None and IDEMPOTENCY_ENVIRON in incoming.environ:
        raise InvalidInput(
            errors={IDEMPOTENCY_HEADER: ["Must be 1 to 128 printable ASCII characters."]}
        )
    pushed = service.push_status(
        request_connection(),
        context.locked_job,
        context.body,
        idempotency_key=idempotency_key,
        max_records=current_app.config["JOB_MAX_STATUS_RECORDS"],
    )
    context.job = pushed.job
    if pushed.stored:
        context.stored_push_state = pushed.record.state  # counted once the request commits
    return status_document(pushed.record)


@bp.put("/jobs/<job_id:job_id>/ping", tags=["jobs"])
@bp.answers(200, PingSchema, "The heartbeat is recorded.", headers=["JobState"])
@bp.refuses(404, 409, job_state=(409,))
@allow(job=True)
def ping(job_id: str):
    """Record a heartbeat: the job is still alive. Any body is ignored."""
    g.job = service.ping_job(request_connection(), g.job)
    return ping_schema.dump({"state": g.job.state, "pinged_at": g.job.pinged_at})


@bp.patch("/jobs/<job_id:job_id>", tags=["workers"])
@bp.answers(200, NewJobSchema, "The job's document and a fresh key; every key it had stops working.",
            headers=["JobState"])
@bp.refuses(400, 404, 409, 415, 422, job_state=(400, 409, 415, 422))
@allow(roles=["runner"], open_when=("JOB_ACQUIRE", "open"))
@takes_json(acquire_schema)
def acquire_job(job_id: str):
    """Acquire a waiting job by its id: its document and a fresh key; every older key stops working.

    Virtool's workers take their job this way. With ``JOB_ACQUIRE=runner``
    (the default) it needs a runner token; with ``JOB_ACQUIRE=open`` anyone
    who reaches the API may acquire a job whose id they know.
    """
    g.body.load()
    runner = g.caller.name if g.caller is not None else None
    new = service.acquire_job(db.session.connection(), g.job, runner=runner)
    g.job = new.job
    return _new_job_document(new)


# Operators (bearer token, role operator)


@bp.post("/jobs", tags=["operators"])
@bp.answers(201, NewJobSchema, "The job made, with its key (shown only this once).", headers=["Location"])
@bp.refuses(400, 415, 422)
@allow(roles=["operator"])
@takes_json(job_create_schema)
def create_job():
    """Make a job; the answer carries its key, shown only this once."""
    new = service.create_job(db.session.connection(), **g.body.load())
    return _new_job_document(new), 201, {"Location": url_for("jobs.get_job", job_id=new.job.id)}


@bp.get("/jobs", tags=["operators"])
@bp.answers(200, JobPageSchema, "A page of jobs, newest first.")
@bp.refuses(422)
@bp.query(JobListQuerySchema)
@allow(roles=["operator"])
def list_jobs():
    """Jobs newest first with their current state, a page at a time."""
    return job_page_schema.dump(pages.list_jobs(db.session, **_query(job_list_query_schema)))


@bp.post("/jobs/<job_id:job_id>/cancel", tags=["operators"])
@bp.answers(200, StatusOutSchema, "The `cancelled` record (the existing one if already cancelled).",
            headers=["JobState"])
@bp.refuses(404, 409, job_state=(409,))
@allow(roles=["operator"])
def cancel_job(job_id: str):
    """Cancel a job that is not finished; cancelling a cancelled job answers its record again."""
    outcome = service.cancel_job(db.session.connection(), job_id)
    g.job = outcome.job
    return status_document(outcome.record)


@bp.delete("/jobs/<job_id:job_id>", tags=["operators"])
@bp.answers(204, None, "The job and its records are deleted.")
@bp.refuses(404, 409, 422)
@bp.query(RemoveQuerySchema)
@allow(roles=["operator"])
def remove_job(job_id: str):
    """Delete a finished job and its records (any job with ``?force=true``)."""
    service.remove_job(db.session.connection(), job_id, force=_query(remove_query_schema)["force"])
    g.job = None
    return _no_content()


# Runners (bearer token, role runner)


@bp.post("/jobs/claim", tags=["runners"])
@bp.answers(200, NewJobSchema, "The claimed job, with a fresh key; the key it had stops working.")
@bp.answers(204, None, "No waiting job fits.")
@bp.refuses(400, 415, 422)
@allow(roles=["runner"])
@takes_json(claim_schema)
def claim_job():
    """Hand the runner the oldest waiting job it can run, with a fresh key; 204 if none."""
    new = service.claim_job(db.session.connection(), runner=g.caller.name, **g.body.load())
    if new is None:
        return _no_content()
    return _new_job_document(new)
