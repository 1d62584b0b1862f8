"""What the jobs routes add to the OpenAPI document (``jobapi.openapi``): their schemas as
components, the JSON Schema of the fields that take more than one JSON type, the rule tying
an ``error`` to its state, the job id in paths, and the Idempotency-Key header.

Every bound comes from the schemas, and so from the table of field rules (``jobs.rules``).
"""

from __future__ import annotations

from typing import Any

from marshmallow import fields, validate

from ..admission import IDEMPOTENCY_HEADER
from ..models import JOB_ID_PATTERN
from ..openapi import NO_NUL_PATTERN, Api, document_schemas
from .ids import JobIdConverter
from .rules import ERROR_RULE
from .schemas import (
    MAX_ARGS_BYTES,
    MAX_DIGITS,
    CLAIM_RECORD_KEYS,
    AcquireSchema,
    ClaimRecord,
    ClaimSchema,
    ErrorField,
    ErrorOut,
    JobCreateSchema,
    JobOutSchema,
    JobPageSchema,
    JobSummarySchema,
    NewJobSchema,
    PingRef,
    PingSchema,
    Progress,
    StatusInSchema,
    StatusOutSchema,
    UserId,
    UserRef,
    validate_args,
)
from .states import STATES

# (component name, schema); a nested schema comes before the schemas that hold it.
SCHEMAS = (
    ("StatusOut", StatusOutSchema),
    ("Job", JobOutSchema),
    ("NewJob", NewJobSchema),
    ("StatusIn", StatusInSchema),
    ("Ping", PingSchema),
    ("JobCreate", JobCreateSchema),
    ("JobSummary", JobSummarySchema),
    ("JobPage", JobPageSchema),
    ("Claim", ClaimSchema),
    ("Acquire", AcquireSchema),
)

_ERROR = {"$ref": "#/components/schemas/JobError"}
_REQUIRED_IN = ERROR_RULE.required_in or frozenset()
_ALLOWED_IN = ERROR_RULE.allowed_in or frozenset(STATES)
# What StatusInSchema checks of an error by the pushed state, in JSON Schema.
STATUS_IN_RULES = {
    "oneOf": [
        {"properties": {"state": {"enum": sorted(_REQUIRED_IN)}, ERROR_RULE.name: _ERROR}, "required": [ERROR_RULE.name]},
        {"properties": {
            "state": {"enum": sorted(_ALLOWED_IN - _REQUIRED_IN)},
            ERROR_RULE.name: {"anyOf": [_ERROR, {"type": "null"}]},
        }},
        {"properties": {
            "state": {"enum": [state for state in STATES if state not in _ALLOWED_IN]},
            ERROR_RULE.name: {"type": "null"},
        }},
    ]
}

_NO_NUL_STRING = {"type": "string", "pattern": NO_NUL_PATTERN}
# A record's error: a string, Virtool's error object, or virtool-workflow 1.x's.
JOB_ERROR = {
    "description": (
        f"What went wrong: a string of {ERROR_RULE.min_length} to {ERROR_RULE.max_length} characters, or an object "
        f"as Virtool's workers send it, at most {ERROR_RULE.max_bytes} bytes as JSON; "
        "kept exactly as given. No NUL characters."
    ),
    "anyOf": [
        {**_NO_NUL_STRING, "minLength": ERROR_RULE.min_length, "maxLength": ERROR_RULE.max_length},
        {
            "type": "object",
            "properties": {
                "type": _NO_NUL_STRING,
                "traceback": {"type": "array", "items": _NO_NUL_STRING},
                "details": {"type": "array", "items": _NO_NUL_STRING},
            },
            "required": ["type", "traceback", "details"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"message": _NO_NUL_STRING},
            "required": ["message"],
            "additionalProperties": False,
        },
    ],
}

# Any JSON value without NUL characters, which a job's args may hold (PostgreSQL cannot store NUL).
JSON_VALUE = {
    "description": "Any JSON value; no string or object key may contain a NUL character.",
    "anyOf": [
        {"type": ["null", "boolean", "number"]},
        {"type": "string", "pattern": NO_NUL_PATTERN},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL_PATTERN},
            "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        },
    ],
}

IDEMPOTENCY_PARAMETER = {
    "in": "header",
    "name": IDEMPOTENCY_HEADER,
    "required": False,
    "description": (
        "Makes the push safe to retry: the same key with the same content answers the record "
        "stored the first time and writes nothing; with other content it is 422. 1-128 printable "
        "ASCII characters."
    ),
    # HTTP drops a header value's leading white space, so a key never starts with one.
    "schema": {"type": "string", "pattern": "^[!-~][ -~]{0,127}$"},
}

# The digit strings Progress takes (at most MAX_DIGITS digits) whose value is 0-100.
PERCENT_DIGITS_PATTERN = "^0*(?:100|[1-9]?[0-9])$"


def _percent_digits(minimum: int, maximum: int) -> str:
    if (minimum, maximum) != (0, 100):
        raise ValueError("Progress is documented as 0-100: update PERCENT_DIGITS_PATTERN")
    return PERCENT_DIGITS_PATTERN


def _has_validator(obj: fields.Field, validator: Any) -> bool:
    return any(v is validator for v in obj.validators)


def _args(converter, obj: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """Attribute function: a job's args, any JSON without NUL, at most 64 KiB."""
    if not _has_validator(obj, validate_args):
        return {}
    return {
        "propertyNames": {"pattern": NO_NUL_PATTERN},
        "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
        "description": f"At most {MAX_ARGS_BYTES // 1024} KiB as JSON.",
    }


def _job_fields(converter, obj: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """Attribute function: the jobs' fields that take more than one JSON type."""
    ret: dict[str, Any] = kwargs["ret"]
    if isinstance(obj, Progress):
        ranges = [v for v in obj.validators if isinstance(v, validate.Range)]
        [(minimum, maximum)] = [(r.min, r.max) for r in ranges]
        for key in ("minimum", "maximum", "x-minimum", "x-maximum", "type"):
            ret.pop(key, None)
        return {
            "description": f"An integer percentage; a string of at most {MAX_DIGITS} digits is accepted too.",
            "anyOf": [
                {"type": "integer", "minimum": minimum, "maximum": maximum},
                {"type": "string", "pattern": _percent_digits(minimum, maximum), "maxLength": MAX_DIGITS},
            ],
        }
    if isinstance(obj, UserId):
        name = {key: ret.pop(key) for key in ("type", "minLength", "maxLength", "pattern") if key in ret}
        return {
            "description": 'Who the job runs for: a string, or `{"id": string}` as documents show it.',
            "anyOf": [
                name,
                {"type": "object", "properties": {"id": name}, "required": ["id"], "additionalProperties": False},
            ],
        }
    if isinstance(obj, UserRef):
        return {
            "type": "object",
            "properties": {"id": {"type": "string"}, "handle": {"type": "string"}},
            "required": ["id", "handle"],
            "additionalProperties": False,
        }
    if isinstance(obj, PingRef):
        return {
            "type": ["object", "null"],
            "properties": {"pinged_at": {"type": "string", "format": "date-time"}},
            "required": ["pinged_at"],
            "additionalProperties": False,
        }
    if isinstance(obj, ErrorField):
        return {"anyOf": [_ERROR, {"type": "null"}]}
    if isinstance(obj, ClaimRecord):
        text = {"type": "string"}
        return {
            "type": ["object", "null"],
            "properties": {
                key: ({"type": "number"} if key in ("mem", "cpu") else text) for key in CLAIM_RECORD_KEYS
            },
            "required": list(CLAIM_RECORD_KEYS),
            "additionalProperties": False,
        }
    if isinstance(obj, ErrorOut):
        return {"anyOf": [{"type": "string"}, {"type": "object"}, {"type": "null"}]}
    return {}


def document_jobs(api: Api) -> None:
    """Add the jobs routes' components to the document, before their blueprint is registered."""
    converter = api.ma_plugin.converter
    converter.add_attribute_function(_args)
    converter.add_attribute_function(_job_fields)
    api.register_converter(JobIdConverter, lambda _: {
        "type": "string",
        "pattern": f"^{JOB_ID_PATTERN}$",
        "description": "A job's id: 8 characters of a-z and 0-9 (any other names no job: 404).",
    })
    api.spec.components.schema("JsonValue", JSON_VALUE)
    api.spec.components.schema("JobError", JOB_ERROR)
    document_schemas(api, SCHEMAS, extra={StatusInSchema: STATUS_IN_RULES})
