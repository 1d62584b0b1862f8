"""Routes of the jobs blueprint; ``authenticate_job`` has already put the job on ``g``."""

from __future__ import annotations

from flask import g

from ..extensions import db
from ..payload import json_object
from ..schemas import job_out_schema, status_in_schema, status_out_schema
from .. import service
from . import bp


@bp.get("/jobs/<job_id>")
def get_job(job_id: str):
    """The job's full document with every status record, oldest first."""
    return job_out_schema.dump(g.job)


@bp.post("/jobs/<job_id>/status")
def push_status(job_id: str):
    """Append a status record to the job, if its state allows the move."""
    data = status_in_schema.load(json_object())
    record = service.push_status(db.session, g.job, **data)
    db.session.commit()
    return status_out_schema.dump(record)
