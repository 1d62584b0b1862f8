"""Virtool's 42.x wire contract in marshmallow, and the documents the dialect answers with.

Written from Virtool's zod schemas (packages/contracts/src/jobsApi.ts and jobs.ts): every
field camelCase, job and user ids integers, times ISO 8601 with a zone. The claim's body is
loaded with ``ClaimRequestSchema``; the answers are built by the functions at the end, and
the tests load each answer with the schema of its shape (unknown fields refused), as the
worker's runtime parses it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..jobs.service import steps_progress
from ..jobs.rows import JobRow
from ..models import MAX_JOB_NUMBER
from ..fields import StrictBoolean, format_timestamp

# A job's state as the dialect names it: jobapi's eight, folded into Virtool's five.
DIALECT_STATES = {
    "waiting": "pending",
    "preparing": "running",
    "running": "running",
    "complete": "succeeded",
    "error": "failed",
    "terminated": "failed",
    "timeout": "failed",
    "cancelled": "cancelled",
}
JOB_STATES = ("cancelled", "failed", "pending", "running", "succeeded")
# Virtool's workflows (JobWorkflow): the jobs its runtime may read.
JOB_WORKFLOWS = ("build_index", "create_sample", "create_subtraction", "nuvs", "pathoscope")

# What a final job's key hears from every route of the dialect, by its dialect state.
FINAL_REFUSALS = {
    "cancelled": "Job is cancelled.",
    "failed": "Job has failed.",
    "succeeded": "Job has succeeded.",
}

# A claim's bounds (the contract leaves them open; the database does not).
MAX_RUNNER_ID = 255
MAX_TEXT = 256
MAX_IMAGE = 1024
MAX_STEP_DESCRIPTION = 1024
STEP_ID_PATTERN = r"[a-z][a-z0-9_]*\Z"


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be blank.")
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")


def _text(longest: int) -> list[Any]:
    return [validate.Length(min=1, max=longest), _not_blank]


class StrictString(fields.String):
    """A JSON string and nothing else (marshmallow's String also takes bytes)."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class JsonNumber(fields.Field):
    """A JSON number (zod's ``z.number()``): an integer or a finite fraction, never a boolean."""

    default_error_messages = {"invalid": "Not a valid number."}

    def _deserialize(self, value: Any, attr, data, **kwargs) -> int | float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        return value


class JsonInteger(JsonNumber):
    """A JSON integer (zod's ``z.number().int()``)."""

    default_error_messages = {"invalid": "Not a valid integer."}

    def _deserialize(self, value: Any, attr, data, **kwargs) -> int:
        number = super()._deserialize(value, attr, data, **kwargs)
        if isinstance(number, float):
            if not number.is_integer():
                raise self.make_error("invalid")
            return int(number)
        return number


class Timestamp(fields.Field):
    """A time as the wire carries it: ISO 8601 with a zone (zod's coerced date)."""

    default_error_messages = {"invalid": "Not an ISO 8601 time with a zone."}

    def _deserialize(self, value: Any, attr, data, **kwargs) -> datetime:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise self.make_error("invalid") from None
        if moment.tzinfo is None:
            raise self.make_error("invalid")
        return moment


class Contract(Schema):
    """A shape of the contract: every field required, nothing else taken."""

    class Meta:
        unknown = RAISE


# Loads: what the dialect accepts.


class StepDefinitionSchema(Contract):
    """A step a worker will run, as it declares it when it claims (JobStepDefinition)."""

    id = StrictString(required=True, validate=[validate.Length(min=1, max=MAX_TEXT), validate.Regexp(
        STEP_ID_PATTERN, error="Must be a-z, then a-z, 0-9 and _.")])
    name = StrictString(required=True, validate=_text(MAX_TEXT))
    description = StrictString(required=True, validate=_text(MAX_STEP_DESCRIPTION))


class ClaimRequestSchema(Contract):
    """The body of a claim (CreateJobClaimRequest): the worker's metadata and its steps."""

    runnerId = StrictString(required=True, validate=_text(MAX_RUNNER_ID))
    mem = JsonNumber(required=True)
    cpu = JsonNumber(required=True)
    image = StrictString(required=True, validate=_text(MAX_IMAGE))
    runtimeVersion = StrictString(required=True, validate=_text(MAX_TEXT))
    workflowVersion = StrictString(required=True, validate=_text(MAX_TEXT))
    steps = fields.List(fields.Nested(StepDefinitionSchema), required=True)

    @validates_schema(skip_on_field_errors=True)
    def _steps_are_distinct(self, data: dict[str, Any], **kwargs: Any) -> None:
        ids = [step["id"] for step in data["steps"]]
        if len(ids) != len(set(ids)):
            raise ValidationError("Step ids must be distinct.", "steps")


claim_request_schema = ClaimRequestSchema()


# The answers' shapes, for the tests (and anyone) to load an answer with.


class UserNestedSchema(Contract):
    id = JsonInteger(required=True)
    handle = StrictString(required=True)


class JobClaimSchema(Contract):
    """What a worker said of itself when it claimed (JobClaim)."""

    runnerId = StrictString(required=True)
    mem = JsonNumber(required=True)
    cpu = JsonNumber(required=True)
    image = StrictString(required=True)
    runtimeVersion = StrictString(required=True)
    workflowVersion = StrictString(required=True)


class JobStepSchema(Contract):
    id = StrictString(required=True)
    name = StrictString(required=True)
    description = StrictString(required=True)
    startedAt = Timestamp(required=True, allow_none=True)


class JobStepStartedSchema(Contract):
    id = StrictString(required=True)
    name = StrictString(required=True)
    description = StrictString(required=True)
    startedAt = Timestamp(required=True)


class JobClaimedSchema(Contract):
    id = JsonInteger(required=True)
    acquired = StrictBoolean(required=True)
    claim = fields.Nested(JobClaimSchema, required=True)
    claimedAt = Timestamp(required=True)
    createdAt = Timestamp(required=True)
    key = StrictString(required=True)
    state = StrictString(required=True, validate=validate.OneOf(JOB_STATES))
    steps = fields.List(fields.Nested(JobStepSchema), required=True)
    user = fields.Nested(UserNestedSchema, required=True)
    workflow = StrictString(required=True, validate=validate.OneOf(JOB_WORKFLOWS))


class JobSchema(Contract):
    args = fields.Dict(keys=StrictString(), values=StrictString(), required=True)
    claim = fields.Nested(JobClaimSchema, required=True, allow_none=True)
    claimedAt = Timestamp(required=True, allow_none=True)
    createdAt = Timestamp(required=True)
    finishedAt = Timestamp(required=True, allow_none=True)
    id = JsonInteger(required=True)
    progress = JsonInteger(required=True)
    state = StrictString(required=True, validate=validate.OneOf(JOB_STATES))
    steps = fields.List(fields.Nested(JobStepSchema), required=True, allow_none=True)
    user = fields.Nested(UserNestedSchema, required=True)
    workflow = StrictString(required=True, validate=validate.OneOf(JOB_WORKFLOWS))
    # Not in the zod Job: some of Virtool's releases read the last heartbeat
    # here, and a parser strips what it does not name.
    pingedAt = Timestamp(required=True, allow_none=True)


class JobPingSchema(Contract):
    pingedAt = Timestamp(required=True)


class MessageSchema(Schema):
    """Every refusal: ``{"message"}``; an invalid claim body adds ``errors``."""

    class Meta:
        unknown = RAISE

    message = StrictString(required=True)
    errors = fields.Raw()


class CountsSchema(Schema):
    """``{state: {workflow: n}}``, every dialect state present."""

    class Meta:
        unknown = RAISE

    cancelled = fields.Dict(keys=StrictString(), values=JsonInteger(), required=True)
    failed = fields.Dict(keys=StrictString(), values=JsonInteger(), required=True)
    pending = fields.Dict(keys=StrictString(), values=JsonInteger(), required=True)
    running = fields.Dict(keys=StrictString(), values=JsonInteger(), required=True)
    succeeded = fields.Dict(keys=StrictString(), values=JsonInteger(), required=True)


# The answers, built directly from a job's columns.


def _time(value: datetime | None) -> str | None:
    return None if value is None else format_timestamp(value)


def wire_claim(stored: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A claim as jobs keep it (snake_case), as the wire carries it (camelCase)."""
    if stored is None:
        return None
    return {
        "runnerId": stored["runner_id"],
        "mem": stored["mem"],
        "cpu": stored["cpu"],
        "image": stored["image"],
        "runtimeVersion": stored["runtime_version"],
        "workflowVersion": stored["workflow_version"],
    }


def stored_claim(wire: Mapping[str, Any]) -> dict[str, Any]:
    """A claim's metadata as the wire carries it, as jobs keep it."""
    return {
        "runner_id": wire["runnerId"],
        "mem": wire["mem"],
        "cpu": wire["cpu"],
        "image": wire["image"],
        "runtime_version": wire["runtimeVersion"],
        "workflow_version": wire["workflowVersion"],
    }


def wire_step(step: Mapping[str, Any]) -> dict[str, Any]:
    """A declared step as the wire carries it (``startedAt``: null until started)."""
    return {
        "id": step["id"],
        "name": step["name"],
        "description": step["description"],
        "startedAt": step["started_at"],
    }


def wire_args(args: Mapping[str, Any]) -> dict[str, str]:
    """A job's arguments as Virtool's runtime reads them: an object of strings. A string is
    kept, a number or boolean is its JSON text, an object or list its compact JSON; null is
    left out."""
    strings: dict[str, str] = {}
    for name, value in args.items():
        if value is None:
            continue
        strings[name] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return strings


def dialect_progress(job: JobRow) -> int:
    """100 once final, 0 while pending; while running, the share of declared steps started
    (the newest record's progress for a job that declared none)."""
    state = DIALECT_STATES[job.state]
    if state == "pending":
        return 0
    if state != "running":
        return 100
    return steps_progress(job.steps) if job.steps else job.progress


def user_document(handle: str, user_id: int) -> dict[str, Any]:
    return {"id": user_id, "handle": handle}


def job_document(job: JobRow, user_id: int) -> dict[str, Any]:
    """The job as ``GET /virtool42/jobs/<number>`` and finish answer it (Job)."""
    return {
        "args": wire_args(job.args or {}),
        "claim": wire_claim(job.claim),
        "claimedAt": _time(job.claimed_at),
        "createdAt": _time(job.created_at),
        "finishedAt": _time(job.updated_at) if job.finished else None,
        "id": job.number,
        "pingedAt": _time(job.pinged_at),
        "progress": dialect_progress(job),
        "state": DIALECT_STATES[job.state],
        "steps": None if job.steps is None else [wire_step(step) for step in job.steps],
        "user": user_document(job.user_id or "", user_id),
        "workflow": job.task,
    }


def claimed_document(
    *, number: int, claim: Mapping[str, Any], claimed_at: datetime, created_at: datetime, key: str,
    steps: Sequence[Mapping[str, Any]], handle: str, user_id: int, workflow: str,
) -> dict[str, Any]:
    """A claimed job and its key, shown this once (JobClaimed)."""
    return {
        "id": number,
        "acquired": True,
        "claim": wire_claim(claim),
        "claimedAt": format_timestamp(claimed_at),
        "createdAt": format_timestamp(created_at),
        "key": key,
        "state": "running",
        "steps": [wire_step(step) for step in steps],
        "user": user_document(handle, user_id),
        "workflow": workflow,
    }


def started_document(step: Mapping[str, Any]) -> dict[str, Any]:
    """A step just started (JobStepStarted)."""
    return wire_step(step)


def counts_document(rows: Sequence[tuple[str, str, int]]) -> dict[str, dict[str, int]]:
    """Active jobs by dialect state and workflow, from ``(state, task, count)`` rows: every
    state, and every workflow of Virtool's or with an active job, zeros filled in."""
    workflows = sorted(set(JOB_WORKFLOWS) | {task for _, task, _ in rows})
    counts = {state: dict.fromkeys(workflows, 0) for state in JOB_STATES}
    for state, task, count in rows:
        counts[DIALECT_STATES[state]][task] += count
    return counts


def job_number(text: str) -> int | None:
    """The number a path segment or a login names, if it is written as jobapi writes one:
    digits without a leading zero, at most ``MAX_JOB_NUMBER``; else None."""
    if not (text.isascii() and text.isdigit()) or text.startswith("0") or len(text) > 10:
        return None
    number = int(text)
    return number if number <= MAX_JOB_NUMBER else None
