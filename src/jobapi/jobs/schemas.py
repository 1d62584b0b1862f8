"""The jobs routes' marshmallow schemas: what they accept (load) and what they answer (dump).

The push's schema (``StatusInSchema``) is built from the table of field rules
(``jobs.rules``), and so is its direct check (``direct_check``), which its
``load`` tries first: one object documents the push (``jobapi.openapi``) and
checks it.
"""

from __future__ import annotations

import json
from typing import Any

from marshmallow import Schema, ValidationError, fields, post_dump, validate, validates_schema

from ..fields import (
    MAX_INT32,
    NO_NUL_MESSAGE,
    QueryInteger,
    StrictBoolean,
    StrictInteger,
    Timestamp,
    contains_nul,
    format_timestamp,
    json_integer,
    no_nul,
)
from ..models import JOB_ID_PATTERN, MAX_JOB_NUMBER
from .rules import CHOICE, ERROR, PERCENT, PUSH_RULES, SHOWN_WHEN_GIVEN, TEXT, FieldRule
from .states import STATES

MAX_ARGS_BYTES = 64 * 1024
TASK_PATTERN = r"[a-z0-9_]{1,64}\Z"
# A digit string Progress takes, at most this long.
MAX_DIGITS = 10


def validate_args(value: dict[str, Any]) -> None:
    """Validator: a job's args hold no NUL and are at most ``MAX_ARGS_BYTES`` as JSON."""
    if contains_nul(value):
        raise ValidationError(NO_NUL_MESSAGE)
    if len(json.dumps(value, separators=(",", ":")).encode()) > MAX_ARGS_BYTES:
        raise ValidationError(f"Longer than {MAX_ARGS_BYTES} bytes as JSON.")


class Progress(fields.Field):
    """An integer percentage; also a string of ASCII digits, never a fraction or boolean."""

    default_error_messages = {"invalid": "Not a valid integer."}

    def _deserialize(self, value: Any, attr, data, **kwargs) -> int:
        number = json_integer(value)
        if number is not None:
            return number
        if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= MAX_DIGITS:
            return int(value)
        raise self.make_error("invalid")


class ErrorField(fields.Field):
    """A record's error: a string, or an object as Virtool's workers send it.

    Virtool's ``{"type": str, "traceback": [str], "details": [str]}`` and
    virtool-workflow 1.x's ``{"message": str}`` are kept exactly as given.
    """

    def __init__(self, rule: FieldRule, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rule = rule
        self.error_messages = {
            **self.error_messages,
            "invalid": "Must be a string, an object of type, traceback and details, or an object of message.",
            "too_long": f"Longer than {rule.max_bytes} bytes as JSON.",
            "length": f"Length must be between {rule.min_length} and {rule.max_length}.",
        }

    def _deserialize(self, value: Any, attr, data, **kwargs) -> Any:
        if isinstance(value, str):
            if not self.rule.min_length <= len(value) <= self.rule.max_length:
                raise self.make_error("length")
            no_nul(value)
            return value
        if not (is_virtool_error(value) or is_message_error(value)):
            raise self.make_error("invalid")
        if contains_nul(value):
            raise ValidationError(NO_NUL_MESSAGE)
        if len(json.dumps(value, separators=(",", ":")).encode()) > self.rule.max_bytes:
            raise self.make_error("too_long")
        return value


def _is_strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def is_virtool_error(value: Any) -> bool:
    """Virtool's error object: ``{"type": str, "traceback": [str], "details": [str]}``."""
    return (
        isinstance(value, dict)
        and set(value) == {"type", "traceback", "details"}
        and isinstance(value["type"], str)
        and _is_strings(value["traceback"])
        and _is_strings(value["details"])
    )


def is_message_error(value: Any) -> bool:
    """virtool-workflow 1.x's error object: ``{"message": str}``."""
    return isinstance(value, dict) and set(value) == {"message"} and isinstance(value["message"], str)


def push_field(rule: FieldRule) -> fields.Field:
    """The marshmallow field that checks one rule of the table."""
    options: dict[str, Any] = {"required": True} if rule.required else {"load_default": None, "allow_none": True}
    if rule.kind == CHOICE:
        return fields.String(validate=validate.OneOf(rule.choices), **options)
    if rule.kind == TEXT:
        return fields.String(validate=[validate.Length(min=rule.min_length, max=rule.max_length), no_nul], **options)
    if rule.kind == PERCENT:
        return Progress(validate=validate.Range(min=rule.minimum, max=rule.maximum), **options)
    if rule.kind == ERROR:
        return ErrorField(rule, **options)
    raise ValueError(f"{rule.name}: no field for the kind {rule.kind!r}")


def _states(states: frozenset[str]) -> str:
    return " or ".join(sorted(states))


# The rules that depend on the pushed state, and the states a push may take directly (those
# whose records need no field the direct check leaves to the schema).
_BY_STATE = tuple(rule for rule in PUSH_RULES if rule.required_in is not None or rule.allowed_in is not None)
_STATE = next(rule for rule in PUSH_RULES if rule.kind == CHOICE and rule.name == "state")
_DIRECT_STATES = frozenset(
    state for state in _STATE.choices if not any(state in (rule.required_in or ()) for rule in _BY_STATE)
)
_NAMES = frozenset(rule.name for rule in PUSH_RULES)
_TEXTS = tuple((rule.name, rule.required, rule.min_length, rule.max_length) for rule in PUSH_RULES if rule.kind == TEXT)
_PERCENTS = tuple((rule.name, rule.minimum, rule.maximum) for rule in PUSH_RULES if rule.kind == PERCENT)
_ERRORS = tuple(rule.name for rule in PUSH_RULES if rule.kind == ERROR)


def direct_check(raw: dict[str, Any]) -> dict[str, Any] | None:
    """A common push's fields, checked directly by the table's rules; None for any other
    (an error, a digit string, anything wrong), which the schema checks and words.

    A push is the most frequent write, and the schema costs more than the
    rest of the request's checks. ``tests/test_push_rules.py`` holds the two
    to the same answers.
    """
    if not raw.keys() <= _NAMES:
        return None
    state = raw.get("state")
    if type(state) is not str or state not in _DIRECT_STATES:
        return None
    for name, required, shortest, longest in _TEXTS:
        value = raw.get(name)
        if value is None:
            if required:
                return None
        elif type(value) is not str or not shortest <= len(value) <= longest or "\x00" in value:
            return None
    for name, lowest, highest in _PERCENTS:
        value = raw.get(name)
        if type(value) is not int or not lowest <= value <= highest:
            return None
    for name in _ERRORS:
        if raw.get(name) is not None:
            return None
    return {rule.name: raw.get(rule.name) for rule in PUSH_RULES}


class StatusInSchema(Schema.from_dict({rule.name: push_field(rule) for rule in PUSH_RULES}, name="StatusInFields")):
    """A status record a job pushes (SPEC 1.2 and 7.3)."""

    @validates_schema(skip_on_field_errors=True)
    def _null_by_state(self, data: dict[str, Any], **kwargs: Any) -> None:
        for rule in _BY_STATE:
            value = data.get(rule.name)
            if rule.required_in is not None and data["state"] in rule.required_in and value is None:
                raise ValidationError(f"Required when state is {_states(rule.required_in)}.", rule.name)
            if rule.allowed_in is not None and data["state"] not in rule.allowed_in and value is not None:
                raise ValidationError(f"Must be null unless state is {_states(rule.allowed_in)}.", rule.name)

    def load(self, data, *, many=None, partial=None, unknown=None):
        """The push's fields: a common push checked directly (``direct_check``), any other by
        the schema's rules, which also say what is wrong."""
        if many is None and partial is None and unknown is None and type(data) is dict:
            checked = direct_check(data)
            if checked is not None:
                return checked
        return self.load_by_schema(data, many=many, partial=partial, unknown=unknown)

    def load_by_schema(self, data, **kwargs):
        """The push's fields checked by the schema's rules alone."""
        return super().load(data, **kwargs)


class AcquireSchema(Schema):
    """The body of an acquire: exactly ``{"acquired": true}`` (SPEC 7.1)."""

    acquired = StrictBoolean(required=True, validate=validate.Equal(True, error="Must be true."))


class UserId(fields.String):
    """Who a job runs for: ``"igboyes"``, or ``{"id": "igboyes"}`` as the job document shows it."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> str:
        if isinstance(value, dict) and set(value) == {"id"}:
            value = value["id"]
        return super()._deserialize(value, attr, data, **kwargs)


task_name = validate.Regexp(TASK_PATTERN, error="Must be 1 to 64 characters of a-z, 0-9 and _.")


class JobCreateSchema(Schema):
    """A new job as an operator describes it (SPEC 1.1)."""

    task = fields.String(required=True, validate=task_name)
    args = fields.Dict(keys=fields.String(), load_default=dict, validate=validate_args)
    proc = StrictInteger(load_default=1, validate=validate.Range(min=1, max=MAX_INT32))
    mem = StrictInteger(load_default=1, validate=validate.Range(min=1, max=MAX_INT32))
    user = UserId(required=True, validate=[validate.Length(min=1, max=64), no_nul])


class JobListQuerySchema(Schema):
    """The query string of ``GET /api/jobs``."""

    state = fields.String(validate=validate.OneOf(STATES))
    task = fields.String(validate=task_name)
    user = fields.String(validate=[validate.Length(min=1, max=64), no_nul])
    limit = QueryInteger(load_default=50, validate=validate.Range(min=1, max=100))
    cursor = fields.String(validate=[validate.Length(min=1, max=200), no_nul])


class RemoveQuerySchema(Schema):
    """The query string of ``DELETE /api/jobs/<id>``."""

    force = fields.Boolean(load_default=False)


class ClaimSchema(Schema):
    """What a runner can run: task names, and the cores and memory it has free."""

    tasks = fields.List(
        fields.String(validate=task_name), required=True, validate=validate.Length(min=1, max=100)
    )
    proc = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_INT32))
    mem = StrictInteger(required=True, validate=validate.Range(min=1, max=MAX_INT32))


# Output schemas. Their validators never run on dump; they state what the
# answers hold, for the OpenAPI document (jobapi.openapi).

_job_id = validate.Regexp(JOB_ID_PATTERN + r"\Z")
_job_number = validate.Range(min=1, max=MAX_JOB_NUMBER)
_state = validate.OneOf(STATES)
_PROGRESS = next(rule for rule in PUSH_RULES if rule.kind == PERCENT)
_percent = validate.Range(min=_PROGRESS.minimum, max=_PROGRESS.maximum)


class UserRef(fields.Field):
    """Who a job runs for, as the documents show it: ``{"id": "igboyes", "handle": "igboyes"}``."""

    def _serialize(self, value: str | None, attr, obj, **kwargs) -> dict[str, str] | None:
        return None if value is None else {"id": value, "handle": value}


class PingRef(fields.Field):
    """A job's last heartbeat, as Virtool shows it: null, or ``{"pinged_at": <time>}``."""

    def _serialize(self, value: Any, attr, obj, **kwargs) -> dict[str, str] | None:
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
    def _drop_absent(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        for name in SHOWN_WHEN_GIVEN:
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
