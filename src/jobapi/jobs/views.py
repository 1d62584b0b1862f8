"""Routes of the jobs blueprint. The ``authenticate`` hook has already admitted the caller
(and put the job on ``g`` for a job's own requests); views load input, call the service,
commit, and dump output."""

from __future__ import annotations

from flask import g, request, url_for

from .. import service
from ..auth import IDEMPOTENCY_HEADER, allow, valid_idempotency_key
from ..errors import InvalidInput, NotFound
from ..extensions import db
from ..payload import json_object
from ..schemas import (
    claim_schema,
    job_create_schema,
    job_list_query_schema,
    job_document,
    job_page_schema,
    new_job_schema,
    ping_schema,
    remove_query_schema,
    status_in_schema,
    status_document,
    status_out_schema,
)
from . import bp

# A job's own routes (HTTP Basic job key), which operators may read too.


@bp.get("/jobs/<job_id:job_id>")
@allow(job=True, roles=["operator"])
def get_job(job_id: str):
    """The job's full document with every status record, oldest first."""
    return job_document(g.job, service.status_history(db.session, g.job.id))


@bp.post("/jobs/<job_id:job_id>/status")
@allow(job=True)
def push_status(job_id: str):
    """Append a status record to the job, if its state allows the move.

    A push with an Idempotency-Key that was already used with the same
    content answers the record it stored then, and writes nothing.
    """
    idempotency_key = valid_idempotency_key()
    if idempotency_key is None and IDEMPOTENCY_HEADER in request.headers:
        raise InvalidInput(
            errors={IDEMPOTENCY_HEADER: ["Must be 1 to 128 printable ASCII characters."]}
        )
    data = status_in_schema.load(json_object())
    try:
        record = service.push_status(
            db.session, g.locked_job, idempotency_key=idempotency_key, **data
        )
    except service.ConcurrentRetry:
        db.session.rollback()
        g.locked_job = service.lock_job(db.session, job_id, idempotency_key=idempotency_key)
        g.job = g.locked_job.job
        if g.job is None:
            raise NotFound() from None
        record = service.push_status(
            db.session, g.locked_job, idempotency_key=idempotency_key, **data
        )
    db.session.commit()
    return status_document(record)


@bp.put("/jobs/<job_id:job_id>/ping")
@allow(job=True)
def ping(job_id: str):
    """Record a heartbeat: the job is still alive. Any body is ignored."""
    pinged_at = service.ping_job(db.session, g.job)
    db.session.commit()
    return ping_schema.dump({"state": g.job.state, "pinged_at": pinged_at})


# Operators (bearer token, role operator)


def _query(schema):
    return schema.load(request.args.to_dict(flat=True))


def _new_job_document(new: service.NewJob) -> dict:
    document = new_job_schema.dump(new.job)
    # The key is no attribute of the job (only its digest is stored): it is shown this once.
    document["key"] = new.key
    return document


@bp.post("/jobs")
@allow(roles=["operator"])
def create_job():
    """Make a job; the answer carries its key, shown only this once."""
    data = job_create_schema.load(json_object())
    new = service.create_job(db.session, **data)
    db.session.commit()
    return _new_job_document(new), 201, {"Location": url_for("jobs.get_job", job_id=new.job.id)}


@bp.get("/jobs")
@allow(roles=["operator"])
def list_jobs():
    """Jobs newest first with their current state, a page at a time."""
    query = _query(job_list_query_schema)
    try:
        page = service.list_jobs(db.session, **query)
    except service.InvalidCursor:
        raise InvalidInput(errors={"cursor": ["Not a cursor this service made."]}) from None
    return job_page_schema.dump(page)


@bp.post("/jobs/<job_id:job_id>/cancel")
@allow(roles=["operator"])
def cancel_job(job_id: str):
    """Cancel a waiting or running job; cancelling a cancelled job answers its record again."""
    outcome = service.cancel_job(db.session, job_id)
    db.session.commit()
    g.job = outcome.job
    return status_out_schema.dump(outcome.record)


@bp.delete("/jobs/<job_id:job_id>")
@allow(roles=["operator"])
def remove_job(job_id: str):
    """Delete a finished job and its records (any job with ``?force=true``)."""
    query = _query(remove_query_schema)
    service.remove_job(db.session, job_id, force=query["force"])
    db.session.commit()
    return "", 204


# Runners (bearer token, role runner)


@bp.post("/jobs/claim")
@allow(roles=["runner"])
def claim_job():
    """Hand the runner the oldest waiting job it can run, with a fresh key; 204 if none."""
    data = claim_schema.load(json_object())
    new = service.claim_job(db.session, runner=g.token.name, **data)
    if new is None:
        db.session.rollback()
        return "", 204
    db.session.commit()
    return _new_job_document(new)
