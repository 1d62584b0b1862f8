"""Marshmallow schemas: what the API accepts (load) and what it answers (dump)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from marshmallow import (
    Schema,
    ValidationError,
    fields,
    post_dump,
    validate,
    validates_schema,
)

from .jobs.states import ERROR_ALLOWED, ERROR_REQUIRED, PUSHABLE_STATES, STATES
from .models import JOB_ID_PATTERN, MAX_JOB_NUMBER

MAX_ARGS_BYTES = 64 * 1024
MAX_ERROR_CHARACTERS = 16384
MAX_ERROR_BYTES = 16 * 1024
MAX_INT32 = 2**31 - 1
TASK_PATTERN = r"[a-z0-9_]{1,64}\Z"

_DIGITS = re.compile(r"[0-9]+")


def format_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and ``Z``: ``2018-02-06T22:16:15.637000Z``."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat is several times cheaper than strftime, and a long history
    # formats one timestamp per record.
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


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


def _json_integer(value: Any) -> int | None:
    """A JSON number that is an integer, as an int: ``40`` and ``40.0`` alike (JSON and JSON
    Schema do not tell them apart); None for a fraction, a boolean or anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


class Progress(fields.Field):
    """An integer percentage; also a string of ASCII digits, never a fraction or boolean."""

    default_error_messages = {"invalid": "Not a valid integer."}

    def _deserialize(self, value: Any, attr, data, **kwargs) -> int:
        number = _json_integer(value)
        if number is not None:
            return number
        if isinstance(value, str) and _DIGITS.fullmatch(value) and len(value) <= 10:
            return int(value)
        raise self.make_error("invalid")


class StrictInteger(fields.Integer):
    """A JSON integer (``4`` or ``4.0``): no booleans, fractions or numeric strings."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _validated(self, value: Any) -> int:
        if isinstance(value, bool):
            raise self.make_error("invalid")
        number = _json_integer(value)
        return super()._validated(value if number is None else number)


class ErrorField(fields.Field):
    """A record's error: a string, or an object as Virtool's workers send it.

    Virtool's ``{"type": str, "traceback": [str], "details": [str]}`` and
    virtool-workflow 1.x's ``{"message": str}`` are kept exactly as given.
    """

    default_error_messages = {
        "invalid": (
            "Must be a string, an object of type, traceback and details, or an object of message."
        ),
        "too_long": f"Longer than {MAX_ERROR_BYTES} bytes as JSON.",
    }

    def _deserialize(self, value: Any, attr, data, **kwargs) -> Any:
        if isinstance(value, str):
            if not 1 <= len(value) <= MAX_ERROR_CHARACTERS:
                raise ValidationError(f"Length must be between 1 and {MAX_ERROR_CHARACTERS}.")
            _no_nul(value)
            return value
        if not (_is_virtool_error(value) or _is_message_error(value)):
            raise self.make_error("invalid")
        if _contains_nul(value):
            raise ValidationError("Must not contain NUL characters.")
        if len(json.dumps(value, separators=(",", ":")).encode()) > MAX_ERROR_BYTES:
            raise self.make_error("too_long")
        return value


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_virtool_error(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and set(value) == {"type", "traceback", "details"}
        and isinstance(value["type"], str)
        and _is_strings(value["traceback"])
        and _is_strings(value["details"])
    )


def _is_message_error(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"message"} and isinstance(value["message"], str)


def _text(max_length: int) -> list[Any]:
    return [validate.Length(min=0, max=max_length), _no_nul]


class StatusInSchema(Schema):
    """A status record a job pushes (SPEC 1.2 and 7.3)."""

    state = fields.String(required=True, validate=validate.OneOf(PUSHABLE_STATES))
    stage = fields.String(required=True, validate=_text(256))
    progress = Progress(required=True, validate=validate.Range(min=0, max=100))
    error = ErrorField(load_default=None, allow_none=True)
    step_name = fields.String(load_default=None, allow_none=True, validate=_text(256))
    step_description = fields.String(load_default=None, allow_none=True, validate=_text(1024))

    @validates_schema(skip_on_field_errors=True)
    def _error_matches_state(self, data: dict[str, Any], **kwargs: Any) -> None:
        if data["state"] in ERROR_REQUIRED and data.get("error") is None:
            raise ValidationError("Required when state is error.", "error")
        if data["state"] not in ERROR_ALLOWED and data.get("error") is not None:
            raise ValidationError("Must be null unless state is error or terminated.", "error")


class StrictBoolean(fields.Boolean):
    """A JSON ``true`` or ``false``, nothing that merely equals one (``1``, ``"true"``)."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


# The fields a push may carry.
_PUSH_FIELDS = frozenset({"state", "stage", "progress", "error", "step_name", "step_description"})
_PUSHABLE = frozenset(PUSHABLE_STATES)


def _plain_text(value: Any, longest: int) -> bool:
    return type(value) is str and len(value) <= longest and "\x00" not in value


def load_push(raw: dict[str, Any]) -> dict[str, Any]:
    """A push's fields, checked by ``StatusInSchema``'s rules.

    The common push (no error; a state, a stage, an integer progress, maybe
    step fields, all plainly valid) is checked here directly, and gives just
    what the schema would; anything else goes to the schema, which also says
    what is wrong. A push is the most frequent write, and the schema costs
    more than the rest of the checks. ``tests/test_schemas.py`` holds the two
    to the same answers.
    """
    state = raw.get("state")
    progress = raw.get("progress")
    step_name = raw.get("step_name")
    step_description = raw.get("step_description")
    if (
        raw.keys() <= _PUSH_FIELDS
        and raw.get("error") is None
        and type(state) is str
        and state in _PUSHABLE
        and state not in ERROR_REQUIRED
        and "stage" in raw
        and _plain_text(raw["stage"], 256)
        and type(progress) is int
        and 0 <= progress <= 100
        and (step_name is None or _plain_text(step_name, 256))
        and (step_description is None or _plain_text(step_description, 1024))
    ):
        return {
            "state": state,
            "stage": raw["stage"],
            "progress": progress,
            "error": None,
            "step_name": step_name,
            "step_description": step_description,
        }
    return status_in_schema.load(raw)


class AcquireSchema(Schema):
    """The body of an acquire: exactly ``{"acquired": true}`` (SPEC 7.1)."""

    acquired = StrictBoolean(required=True, validate=validate.Equal(True, error="Must be true."))


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


class QueryInteger(fields.Integer):
    """An integer in a query string: ASCII digits, maybe after a minus sign, and nothing else
    (``int()`` would also take `` 5 ``, ``1_0`` and other scripts' digits)."""

    def _validated(self, value: Any) -> int:
        if isinstance(value, str) and not re.fullmatch(r"-?[0-9]+", value):
            raise self.make_error("invalid")
        return super()._validated(value)


class JobListQuerySchema(Schema):
    """The query string of ``GET /api/jobs``."""

    state = fields.String(validate=validate.OneOf(STATES))
    task = fields.String(validate=_task_name)
    user = fields.String(validate=[validate.Length(min=1, max=64), _no_nul])
    limit = QueryInteger(load_default=50, validate=validate.Range(min=1, max=100))
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


# Output schemas. Their validators never run on dump; they state what the
# answers hold, for the OpenAPI document (jobapi.openapi).

_job_id = validate.Regexp(JOB_ID_PATTERN + r"\Z")
_job_number = validate.Range(min=1, max=MAX_JOB_NUMBER)
_state = validate.OneOf(STATES)
_percent = validate.Range(min=0, max=100)


class Timestamp(fields.Field):
    """A server-made time, written as ``2018-02-06T22:16:15.637000Z`` (SPEC 1.3)."""

    def _serialize(self, value: datetime | None, attr, obj, **kwargs) -> str | None:
        return None if value is None else format_timestamp(value)


class UserRef(fields.Field):
    """Who a job runs for, as the documents show it: ``{"id": "igboyes", "handle": "igboyes"}``."""

    def _serialize(self, value: str | None, attr, obj, **kwargs) -> dict[str, str] | None:
        return None if value is None else {"id": value, "handle": value}


class PingRef(fields.Field):
    """A job's last heartbeat, as Virtool shows it: null, or ``{"pinged_at": <time>}``."""

    def _serialize(self, value: datetime | None, attr, obj, **kwargs) -> dict[str, str] | None:
        return None if value is None else {"pinged_at": format_timestamp(value)}


class ClaimRecord(fields.Field):
    """What a Virtool 42.x worker said of itself when it claimed the job, as Virtool stores it:
    ``{"runner_id", "mem", "cpu", "image", "runtime_version", "workflow_version"}``; null for
    a job not claimed that way."""


# The claim's keys as jobs keep them.
CLAIM_RECORD_KEYS = ("runner_id", "mem", "cpu", "image", "runtime_version", "workflow_version")


class ErrorOut(fields.Field):
    """A record's error as it was pushed: null, a string, or an object."""


class Workflow(fields.String):
    """The job's task, again, under the name Virtool's documents give it."""

    def serialize(self, attr: str, obj: Any, accessor=None, **kwargs: Any) -> str:
        return obj.task


# The keys a record shows only when its push gave them.
STEP_FIELDS = ("step_name", "step_description")


class StatusOutSchema(Schema):
    """A stored status record as the API shows it; the step fields only when given."""

    state = fields.String(validate=_state)
    stage = fields.String(allow_none=True)
    error = ErrorOut(allow_none=True)
    progress = fields.Integer(validate=_percent)
    timestamp = Timestamp()
    step_name = fields.String()
    step_description = fields.String()

    @post_dump
    def _drop_absent_steps(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        for name in STEP_FIELDS:
            if data.get(name) is None:
                data.pop(name, None)
        return data


class JobOutSchema(Schema):
    """The full job document (SPEC 1.1), with Virtool's fields (SPEC 7.2)."""

    id = fields.String(validate=_job_id)
    number = fields.Integer(validate=_job_number)
    task = fields.String()
    args = fields.Dict(keys=fields.String())
    proc = fields.Integer()
    mem = fields.Integer()
    user = UserRef(attribute="user_id")
    status = fields.List(fields.Nested(StatusOutSchema), attribute="statuses")
    workflow = Workflow()
    state = fields.String(validate=_state)
    stage = fields.String(allow_none=True)
    progress = fields.Integer(validate=_percent)
    created_at = Timestamp()
    acquired = fields.Boolean()
    archived = fields.Constant(False)
    rights = fields.Constant({})
    ping = PingRef(attribute="pinged_at", allow_none=True)
    claim = ClaimRecord(allow_none=True)


class NewJobSchema(JobOutSchema):
    """A job just made or claimed: its document and its key, shown this once."""

    key = fields.String(validate=validate.Regexp(r"[0-9a-f]{64}\Z"))


class JobSummarySchema(Schema):
    """A job in a list: its current state, not its history."""

    id = fields.String(validate=_job_id)
    number = fields.Integer(validate=_job_number)
    task = fields.String()
    user = UserRef(attribute="user_id")
    proc = fields.Integer()
    mem = fields.Integer()
    state = fields.String(validate=_state)
    stage = fields.String(allow_none=True)
    progress = fields.Integer(validate=_percent)
    created_at = Timestamp()
    updated_at = Timestamp()
    claimed_by = fields.String(allow_none=True)


class JobPageSchema(Schema):
    """A page of ``GET /api/jobs``."""

    jobs = fields.List(fields.Nested(JobSummarySchema))
    next_cursor = fields.String(allow_none=True)


class PingSchema(Schema):
    """The answer to a heartbeat: the job's state and when the ping was recorded."""

    state = fields.String(validate=_state)
    pinged_at = Timestamp()


class ErrorMessages(fields.Dict):
    """Validation messages by field (or header): a list of messages, or nested by key or index."""


class ErrorSchema(Schema):
    """The error envelope of every error (SPEC 3)."""

    id = fields.String(required=True)
    message = fields.String(required=True)
    errors = ErrorMessages(keys=fields.String())
    state = fields.String(validate=_state)


# The probes' answers (they build them by hand; these document them).


class HealthSchema(Schema):
    """The process is up."""

    status = fields.String(required=True, validate=validate.OneOf(["ok"]))
    version = fields.String(required=True, metadata={"description": "The release the process runs."})


class ReadySchema(Schema):
    """The database answers and its migrations are at head."""

    status = fields.String(required=True, validate=validate.OneOf(["ready"]))
    database = fields.String(required=True, validate=validate.OneOf(["ok"]))
    migrations = fields.String(required=True, validate=validate.OneOf(["head"]))


class NotReadySchema(ErrorSchema):
    """Not ready (503): the error envelope, with what is not ready."""

    database = fields.String(required=True, validate=validate.OneOf(["ok", "unavailable"]))
    migrations = fields.String(
        required=True, validate=validate.OneOf(["unknown", "none", "not_at_head"])
    )


status_in_schema = StatusInSchema()
job_create_schema = JobCreateSchema()
status_out_schema = StatusOutSchema()
job_out_schema = JobOutSchema()
new_job_schema = NewJobSchema()
job_summary_schema = JobSummarySchema()
job_page_schema = JobPageSchema()
job_list_query_schema = JobListQuerySchema()
remove_query_schema = RemoveQuerySchema()
claim_schema = ClaimSchema()
acquire_schema = AcquireSchema()
ping_schema = PingSchema()


# The documents of the hot paths, built directly. The schemas above stay the
# contract (and the OpenAPI source); tests check these give what they dump.


def record_document(
    state: str, stage: str | None, error: Any, progress: int, timestamp: Any,
    step_name: str | None = None, step_description: str | None = None,
) -> dict[str, Any]:
    """A status record's columns as ``StatusOutSchema`` dumps the record; ``timestamp`` a
    datetime, or the text documents show when the database wrote it already."""
    document = {
        "state": state,
        "stage": stage,
        "error": error,
        "progress": progress,
        "timestamp": timestamp if isinstance(timestamp, str) else format_timestamp(timestamp),
    }
    if step_name is not None:
        document["step_name"] = step_name
    if step_description is not None:
        document["step_description"] = step_description
    return document


def status_document(record: Any) -> dict[str, Any]:
    """A status record (mapped object or plain record) as ``StatusOutSchema`` dumps it."""
    return record_document(
        record.state, record.stage, record.error, record.progress, record.timestamp,
        record.step_name, record.step_description,
    )


def job_document(job: Any, records: Iterable[Sequence[Any]]) -> dict[str, Any]:
    """The job document as ``JobOutSchema`` dumps it, from the job and its records in order,
    each the sequence of its columns in ``STATUS_COLUMNS`` order (a row)."""
    return {
        "id": job.id,
        "number": job.number,
        "task": job.task,
        "args": job.args,
        "proc": job.proc,
        "mem": job.mem,
        "user": {"id": job.user_id, "handle": job.user_id},
        "status": [record_document(*values) for values in records],
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
