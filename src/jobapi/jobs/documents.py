"""The documents of the hot paths, built directly as dicts: a status record's and a job's.

The schemas (``jobs.schemas``) stay the contract and the OpenAPI source;
``tests/test_documents.py`` checks these give what they dump.
"""

from __future__ import annotations

from typing import Any

from ..fields import format_timestamp
from .rules import SEED_RECORD_KEYS, SHOWN_WHEN_GIVEN


def status_document(record: Any) -> dict[str, Any]:
    """A status record (a ``StatusRow``, or a mapped record) as ``StatusOutSchema`` dumps it:
    the seed's five keys, then the fields shown only when given."""
    document = {key: getattr(record, key) for key in SEED_RECORD_KEYS}
    document["timestamp"] = format_timestamp(record.timestamp)
    for key in SHOWN_WHEN_GIVEN:
        value = getattr(record, key)
        if value is not None:
            document[key] = value
    return document


def job_document(job: Any, history: list[dict[str, Any]]) -> dict[str, Any]:
    """The job document as ``JobOutSchema`` dumps it, from the job (a ``JobRow``, or a mapped
    job) and its records as their documents, oldest first (``jobs.statements.history``)."""
    return {
        "id": job.id,
        "number": job.number,
        "task": job.task,
        "args": job.args,
        "proc": job.proc,
        "mem": job.mem,
        "user": {"id": job.user_id, "handle": job.user_id},
        "status": history,
        "workflow": job.task,
        "state": job.state,
        "stage": job.stage,
        "progress": job.progress,
        "created_at": format_timestamp(job.created_at),
        "acquired": job.claimed_at is not None,
        "archived": False,
        "rights": {},
        "ping": None if job.pinged_at is None else {"pinged_at": format_timestamp(job.pinged_at)},
        "claim": job.claim,
    }
