"""Routes of the jobs blueprint; ``authenticate_job`` has already put the job on ``g``."""

from __future__ import annotations

from flask import g, request

from .. import service
from ..auth import IDEMPOTENCY_HEADER, valid_idempotency_key
from ..errors import InvalidInput, NotFound
from ..extensions import db
from ..payload import json_object
from ..schemas import format_timestamp, job_out_schema, status_in_schema, status_out_schema
from . import bp


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """The job's full document with every status record, oldest first."""
    return job_out_schema.dump(g.job)


@bp.post("/jobs/<job_id>/status")
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
        push = service.push_status(
            db.session, g.locked_job, idempotency_key=idempotency_key, **data
        )
    except service.ConcurrentRetry:
        db.session.rollback()
        g.locked_job = service.lock_job(db.session, job_id, idempotency_key=idempotency_key)
        g.job = g.locked_job.job
        if g.job is None:
            raise NotFound()
        push = service.push_status(
            db.session, g.locked_job, idempotency_key=idempotency_key, **data
        )
    db.session.commit()
    return status_out_schema.dump(push.record)


@bp.put("/jobs/<job_id>/ping")
def ping(job_id: str):
    """Record a heartbeat: the job is still alive. Any body is ignored."""
    pinged_at = service.ping_job(db.session, g.job)
    db.session.commit()
    return {"state": g.job.state, "pinged_at": format_timestamp(pinged_at)}
