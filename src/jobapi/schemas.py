"""Marshmallow schemas: what the API accepts (load) and what it answers (dump)."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from .models import STATES

MAX_ARGS_BYTES = 64 * 1024
MAX_INT32 = 2**31 - 1
TASK_PATTERN = r"[a-z0-9_]{1,64}\Z"

_DIGITS = re.compile(r"[0-9]+")


def format_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and ``Z``: ``2018-02-06T22:16:15.637000Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _no_nul(value: str) -> None:
    if "\x00" in value:
        raise ValidationError("Must not contain NUL characters.")


def _contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_contains_nul(k) or _contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_contains_nul(v) for v in value)
    return False


def _validate_args(value: dict[str, Any]) -> None:
    if _contains_nul(value):
        raise ValidationError("Must not contain NUL characters.")
    if len(json.dumps(value, separators=(",", ":")).encode()) > MAX_ARGS_BYTES:
        raise ValidationError(f"Longer than {MAX_ARGS_BYTES} bytes as JSON.")


class Progress(fields.Field):
    """An integer percentage; also a string of ASCII digits, never a fraction or boolean."""

    default_error_messages = {"invalid": "Not a valid integer."}

    def _deserialize(self, value: Any, attr, data, **kwargs) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        if isinstance(value, int):
            return value
        if isinstance(value, str) and _DIGITS.fullmatch(value) and len(value) <= 10:
            return int(value)
        raise self.make_error("invalid")


class StrictInteger(fields.Integer):
    """A JSON integer: no booleans, fractions or numeric strings."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        return super()._validated(value)


class StatusInSchema(Schema):
    """A status record a job pushes (SPEC 1.2)."""

    state = fields.String(required=True, validate=validate.OneOf(STATES))
    stage = fields.String(
        required=True, validate=[validate.Length(min=0, max=256), _no_nul]
    )
    progress = Progress(required=True, validate=validate.Range(min=0, max=100))
    error = fields.String(
        load_default=None,
        allow_none=True,
        validate=[validate.Length(min=1, max=16384), _no_nul],
    )

    @validates_schema(skip_on_field_errors=True)
    def _error_matches_state(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["state"] == "error" and not data.get("error"):
            raise ValidationError("Required when state is error.", "error")
        if data["state"] != "error" and data.get("error") is not None:
            raise ValidationError("Must be null unless state is error.", "error")


class UserId(fields.String):
    """Who a job runs for: ``"igboyes"``, or ``{"id": "igboyes"}`` as the job document shows it."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> str:
        if isinstance(value, dict) and set(value) == {"id"}:
            value = value["id"]
        return super()._deserialize(value, attr, data, **kwargs)


_task_name = validate.Regexp(TASK_PATTERN, error="Must be 1 to 64 characters of a-z, 0-9 and _.")


class JobCreateSchema(Schema):
    """A new job as an operator describes it (SPEC 1.1)."""

    task = fields.String(required=True, validate=_task_name)
    args = fields.Dict(keys=fields.String(), load_default=dict, validate=_validate_args)
    proc = StrictInteger(load_default=1, validate=validate.Range(min=1, max=MAX_INT32))
    mem = StrictInteger(load_default=1, validate=validate.Range(min=1, max=MAX_INT32))
    user = UserId(required=True, validate=[validate.Length(min=1, max=64), _no_nul])


class JobListQuerySchema(Schema):
    """The query string of ``GET /api/jobs``."""

    state = fields.String(validate=validate.OneOf(STATES))
    task = fields.String(validate=_task_name)
    user = fields.String(validate=[validate.Length(min=1, max=64), _no_nul])
    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=[validate.Length(min=1, max=200), _no_nul])


class RemoveQuerySchema(Schema):
    """The query string of ``DELETE /api/jobs/<id>``."""

    force = fields.Boolean(load_default=False)


class ClaimSchema(Schema):
    """What a runner can run: task names, and the cores and memory it has free."""

    tasks = fields.List(
        fields.String(validate=_task_name), required=True, validate=validate.Length(min=1, max=100)
    )
    proc = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_INT32))
    mem = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_INT32))


class StatusOutSchema(Schema):
    """A stored status record as the API shows it."""

    state = fields.String()
    stage = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    progress = fields.Integer()
    timestamp = fields.Function(lambda record: format_timestamp(record.timestamp))


class JobOutSchema(Schema):
    """The full job document (SPEC 1.1)."""

    id = fields.String()
    task = fields.String()
    args = fields.Raw()
    proc = fields.Integer()
    mem = fields.Integer()
    user = fields.Function(lambda job: {"id": job.user_id})
    status = fields.List(fields.Nested(StatusOutSchema), attribute="statuses")


class JobSummarySchema(Schema):
    """A job in a list: its current state, not its history."""

    id = fields.String()
    task = fields.String()
    user = fields.Function(lambda job: {"id": job.user_id})
    proc = fields.Integer()
    mem = fields.Integer()
    state = fields.String()
    stage = fields.String(allow_none=True)
    progress = fields.Integer()
    created_at = fields.Function(lambda job: format_timestamp(job.created_at))
    updated_at = fields.Function(lambda job: format_timestamp(job.updated_at))
    claimed_by = fields.String(allow_none=True)


class JobPageSchema(Schema):
    """A page of ``GET /api/jobs``."""

    jobs = fields.List(fields.Nested(JobSummarySchema))
    next_cursor = fields.String(allow_none=True)


status_in_schema = StatusInSchema()
job_create_schema = JobCreateSchema()
status_out_schema = StatusOutSchema()
job_out_schema = JobOutSchema()
job_summary_schema = JobSummarySchema()
job_page_schema = JobPageSchema()
job_list_query_schema = JobListQuerySchema()
remove_query_schema = RemoveQuerySchema()
claim_schema = ClaimSchema()
