"""The API's contract: an OpenAPI 3.1 document, served at ``GET /api/openapi.json``.

The document is generated once, when the app is made, with apispec and its
marshmallow plugin from the very schemas the views load and dump
(``jobapi.schemas``), from the routes in the app's URL map, from each view's
docstring, and from each view's ``@allow`` declaration (its security). What a
marshmallow schema cannot say by itself (the custom fields, the rule that an
``error`` comes with the ``error`` state and only with it, which errors a
route can answer) is stated here, next to the mapping that uses it.

``tests/test_openapi.py`` fails when a route is not described;
``tests/test_fuzz.py`` runs schemathesis against a live server with it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app
from marshmallow import Schema, fields, validate
from werkzeug.routing import Rule

from . import __version__
from .auth import IDEMPOTENCY_HEADER, Access
from .errors import BASIC_CHALLENGE, BEARER_CHALLENGE, HTTP_ERRORS
from .jobs.states import ERROR_ALLOWED, ERROR_REQUIRED, STATES
from .models import JOB_ID_PATTERN
from .schemas import (
    MAX_ARGS_BYTES,
    MAX_ERROR_BYTES,
    MAX_ERROR_CHARACTERS,
    AcquireSchema,
    ClaimSchema,
    ErrorField,
    ErrorMessages,
    ErrorOut,
    ErrorSchema,
    JobCreateSchema,
    JobListQuerySchema,
    JobOutSchema,
    JobPageSchema,
    JobSummarySchema,
    NewJobSchema,
    PingRef,
    PingSchema,
    Progress,
    RemoveQuerySchema,
    StatusInSchema,
    StatusOutSchema,
    Timestamp,
    UserId,
    UserRef,
    _no_nul,
    _validate_args,
)

OPENAPI_VERSION = "3.1.0"
DOCUMENT_PATH = "/openapi.json"
# app.extensions key: the document, serialized once.
EXTENSION = "jobapi.openapi"

bp = Blueprint("openapi", __name__)

# Security schemes: a job's key (HTTP Basic) and operators' and runners' tokens
# (HTTP Bearer; the requirement names the token's role, as OpenAPI 3.1 allows).
JOB_KEY = "jobKey"
BEARER_TOKEN = "bearerToken"

NO_NUL_PATTERN = "^[^\\u0000]*$"
# The digit strings Progress accepts (at most 10 digits) whose value is 0-100.
PERCENT_DIGITS_PATTERN = "^0*(?:100|[1-9]?[0-9])$"


# The schemas of the probes' answers: the probes build them by hand, so they
# are stated here to document them.


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


# (component name, schema); a nested schema comes before the schemas that hold it.
SCHEMAS: tuple[tuple[str, type[Schema]], ...] = (
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
    ("Error", ErrorSchema),
    ("Health", HealthSchema),
    ("Ready", ReadySchema),
    ("NotReady", NotReadySchema),
)

# What StatusInSchema._error_matches_state checks, in JSON Schema: an error
# message with the error state, and none (absent or null) with any other.
STATUS_IN_RULES = {
    "oneOf": [
        {
            "properties": {
                "state": {"enum": sorted(ERROR_REQUIRED)},
                "error": {"$ref": "#/components/schemas/JobError"},
            },
            "required": ["error"],
        },
        {
            "properties": {
                "state": {"enum": sorted(ERROR_ALLOWED - ERROR_REQUIRED)},
                "error": {"anyOf": [{"$ref": "#/components/schemas/JobError"}, {"type": "null"}]},
            },
        },
        {
            "properties": {
                "state": {"enum": [state for state in STATES if state not in ERROR_ALLOWED]},
                "error": {"type": "null"},
            },
        },
    ]
}

# A record's error: a string, Virtool's error object, or virtool-workflow 1.x's.
_NO_NUL_STRING = {"type": "string", "pattern": NO_NUL_PATTERN}
JOB_ERROR = {
    "description": (
        f"What went wrong: a string of 1 to {MAX_ERROR_CHARACTERS} characters, or an object "
        f"as Virtool's workers send it, at most {MAX_ERROR_BYTES} bytes as JSON; "
        "kept exactly as given. No NUL characters."
    ),
    "anyOf": [
        {**_NO_NUL_STRING, "minLength": 1, "maxLength": MAX_ERROR_CHARACTERS},
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


# Responses


# Status -> what it means on these routes; the ids come from the error handlers.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body is not valid JSON, or not a JSON object.",
    401: "Missing or malformed credentials, a wrong key, an unknown or revoked token.",
    403: "Another job's credentials, or a token of a role this route does not take.",
    404: "No such job.",
    405: "The path exists, the method does not; `Allow` lists the methods.",
    409: "The job's state refuses it; `state` names the job's state.",
    413: "The body is larger than the service takes (64 KiB by default).",
    415: "The body is not `application/json` by its Content-Type.",
    422: "A field (or header, or query parameter) breaks a rule; `errors` names each.",
    500: "A bug: logged with the request id, nothing leaked.",
    503: "The database cannot be reached; try again after `Retry-After` seconds.",
}
ERRORS: dict[int, tuple[str, str]] = {
    code: (HTTP_ERRORS[code][0], text) for code, text in ERROR_DESCRIPTIONS.items()
}

# Response headers: component name -> (header name, header object). Each is
# listed only on the answers that always carry it, hence `required`.
HEADERS: dict[str, tuple[str, dict[str, Any]]] = {
    "JobState": (
        "Job-State",
        {
            "description": "The job's current state, on every answer to a request that reached a job.",
            "schema": {"type": "string", "enum": list(STATES)},
        },
    ),
    "RetryAfter": (
        "Retry-After",
        {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
    ),
    "BasicChallenge": (
        "WWW-Authenticate",
        {
            "description": "The challenge of a job's own routes: its key, with HTTP Basic.",
            "schema": {"type": "string", "enum": [BASIC_CHALLENGE]},
        },
    ),
    "BearerChallenge": (
        "WWW-Authenticate",
        {
            "description": "The challenge of the operators' and runners' routes: a bearer token.",
            "schema": {"type": "string", "enum": [BEARER_CHALLENGE]},
        },
    ),
    "Location": ("Location", {"description": "The new job's URL.", "schema": {"type": "string"}}),
    "Allow": ("Allow", {"description": "The methods the path takes.", "schema": {"type": "string"}}),
    "RequestId": (
        "X-Request-ID",
        {
            "description": "The request's id: the client's own `X-Request-ID`, or one made for it.",
            "schema": {"type": "string"},
        },
    ),
}


def _headers(names: Iterable[str]) -> dict[str, Any]:
    """The ``headers`` of a response: references to the header components."""
    return {HEADERS[name][0]: {"$ref": f"#/components/headers/{name}"} for name in names}


@dataclass(frozen=True)
class Answer:
    """A successful answer: its description, body schema (None: no body) and headers."""

    description: str
    schema: str | None = None
    headers: tuple[str, ...] = ()
    media_type: str = "application/json"


@dataclass(frozen=True)
class Operation:
    """What the document says of one method of one route, beyond what the code tells."""

    tag: str
    answers: dict[int, Answer]
    # Errors the route gives besides 401 and 403 (a route with @allow), 500 (any route) and
    # 503 (a route that needs the database).
    errors: tuple[int, ...] = ()
    # Component name of the JSON request body, if the route reads one.
    body: str | None = None
    query: type[Schema] | None = None
    # Extra parameters (headers), OpenAPI parameter objects.
    parameters: tuple[dict[str, Any], ...] = ()
    # Statuses whose answers always carry Job-State.
    job_state: tuple[int, ...] = ()
    database: bool = True
    # The error schema of 503, if not the plain envelope.
    unavailable_schema: str = "Error"


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

_JOB_BODY_ERRORS = (400, 404, 409, 413, 415, 422)

OPERATIONS: dict[str, dict[str, Operation]] = {
    "jobs.get_job": {
        "GET": Operation(
            tag="jobs",
            answers={200: Answer("The job's document.", "Job", ("JobState",))},
            errors=(404,),
        ),
    },
    "jobs.push_status": {
        "POST": Operation(
            tag="jobs",
            answers={200: Answer("The stored record.", "StatusOut", ("JobState",))},
            errors=_JOB_BODY_ERRORS,
            body="StatusIn",
            parameters=(IDEMPOTENCY_PARAMETER,),
            job_state=(200, 400, 409, 413, 415, 422),
        ),
    },
    "jobs.ping": {
        "PUT": Operation(
            tag="jobs",
            answers={200: Answer("The heartbeat is recorded.", "Ping", ("JobState",))},
            errors=(404, 409),
            job_state=(200, 409),
        ),
    },
    "jobs.acquire_job": {
        "PATCH": Operation(
            tag="workers",
            answers={
                200: Answer(
                    "The job's document and a fresh key; every key it had stops working.",
                    "NewJob",
                    ("JobState",),
                )
            },
            errors=(400, 404, 409, 413, 415, 422),
            body="Acquire",
            job_state=(200, 400, 409, 422),
        ),
    },
    "jobs.create_job": {
        "POST": Operation(
            tag="operators",
            answers={201: Answer("The job made, with its key (shown only this once).", "NewJob", ("Location",))},
            errors=(400, 413, 415, 422),
            body="JobCreate",
        ),
    },
    "jobs.list_jobs": {
        "GET": Operation(
            tag="operators",
            answers={200: Answer("A page of jobs, newest first.", "JobPage")},
            errors=(422,),
            query=JobListQuerySchema,
        ),
    },
    "jobs.cancel_job": {
        "POST": Operation(
            tag="operators",
            answers={200: Answer("The `cancelled` record (the existing one if already cancelled).", "StatusOut", ("JobState",))},
            errors=(404, 409),
        ),
    },
    "jobs.remove_job": {
        "DELETE": Operation(
            tag="operators",
            answers={204: Answer("The job and its records are deleted.")},
            errors=(404, 409, 422),
            query=RemoveQuerySchema,
        ),
    },
    "jobs.claim_job": {
        "POST": Operation(
            tag="runners",
            answers={
                200: Answer("The claimed job, with a fresh key; the key it had stops working.", "NewJob"),
                204: Answer("No waiting job fits."),
            },
            errors=(400, 413, 415, 422),
            body="Claim",
        ),
    },
    "probes.healthz": {
        "GET": Operation(
            tag="probes", answers={200: Answer("The process answers.", "Health")}, database=False
        ),
    },
    "probes.readyz": {
        "GET": Operation(
            tag="probes",
            answers={200: Answer("Ready to serve.", "Ready")},
            unavailable_schema="NotReady",
        ),
    },
    "metrics.metrics": {
        "GET": Operation(
            tag="probes",
            answers={
                200: Answer(
                    "Every metric, in Prometheus's text exposition format.",
                    "PrometheusText",
                    media_type="text/plain",
                )
            },
            # A scrape without the database leaves out the jobs gauge, and still answers.
            database=False,
        ),
    },
    "openapi.document": {
        "GET": Operation(
            tag="meta",
            answers={200: Answer("This document.", "OpenAPIDocument")},
            database=False,
        ),
    },
}

# Pages for people, not part of the API, which the document leaves out: the
# operator console (and ``/``, which leads there), the docs page that renders
# this document, and the static files they load.
NOT_API_BLUEPRINTS = frozenset({"console", "apidocs"})
NOT_API_ENDPOINTS = frozenset({"index", "static"})


def part_of_the_api(endpoint: str) -> bool:
    """Whether a route belongs to the API (and so to this document), or is a page for people."""
    return endpoint not in NOT_API_ENDPOINTS and endpoint.partition(".")[0] not in NOT_API_BLUEPRINTS


TAGS = [
    {"name": "jobs", "description": "A job's own routes, with its key (operators may read a job too)."},
    {"name": "workers", "description": "Acquire a job by its id (Virtool's workers): with a runner token, or open to anyone with `JOB_ACQUIRE=open`."},
    {"name": "operators", "description": "Make, list, cancel and remove jobs, with an operator token."},
    {"name": "runners", "description": "Claim queued work, with a runner token."},
    {"name": "probes", "description": "Health, readiness and metrics, without authentication."},
    {"name": "meta", "description": "This document."},
]

DESCRIPTION = """\
Workers read their own job and push its status; operators make, list, cancel and
remove jobs; runners claim queued work.

Every error, on every route, is JSON: `{{"id": ..., "message": ...}}`, with `errors`
on 422 and `state` on 409 (the `Error` schema). A path that exists answers a
method it does not list with 405 `method_not_allowed` and an `Allow` header; a
path that does not exist answers 404 `not_found`. Bodies are at most
{body_limit} bytes. Every answer carries `X-Request-ID`.

The operator console (`/console/`) and this document's rendering (`/api/docs`)
are pages for people, not part of the API, and are not described here.
"""


# The marshmallow plugin's mapping of the custom fields and validators.


def _ecma_pattern(pattern: str) -> str:
    """A Python pattern, matched with ``re.match`` (anchored at the start), as an ECMA one."""
    if pattern.endswith("\\Z"):
        return "^" + pattern[: -len("\\Z")] + "$"
    return "^" + pattern


def _has_validator(obj: fields.Field, validator: Any) -> bool:
    return any(v is validator for v in obj.validators)


def _constraints(converter, obj: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """Attribute function: what jobapi's own fields and validators mean in JSON Schema."""
    out: dict[str, Any] = {}
    regexps = [v for v in obj.validators if isinstance(v, validate.Regexp)]
    if regexps:
        out["pattern"] = _ecma_pattern(regexps[0].regex.pattern)
    elif _has_validator(obj, _no_nul):
        # A pattern constrains strings only: a nullable field's null stays valid.
        out["pattern"] = NO_NUL_PATTERN
    if _has_validator(obj, _validate_args):
        out["propertyNames"] = {"pattern": NO_NUL_PATTERN}
        out["additionalProperties"] = {"$ref": "#/components/schemas/JsonValue"}
        out["description"] = f"At most {MAX_ARGS_BYTES // 1024} KiB as JSON."
    return out


def _custom_fields(converter, obj: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """Attribute function: the fields that take more than one JSON type, and the envelope's errors."""
    ret: dict[str, Any] = kwargs["ret"]
    if isinstance(obj, Progress):
        ranges = [v for v in obj.validators if isinstance(v, validate.Range)]
        if [(r.min, r.max) for r in ranges] != [(0, 100)]:
            raise ValueError("Progress is documented as 0-100: update PERCENT_DIGITS_PATTERN")
        for key in ("minimum", "maximum", "x-minimum", "x-maximum", "type"):
            ret.pop(key, None)
        return {
            "description": "An integer percentage; a string of at most 10 digits is accepted too.",
            "anyOf": [
                {"type": "integer", "minimum": 0, "maximum": 100},
                {"type": "string", "pattern": PERCENT_DIGITS_PATTERN, "maxLength": 10},
            ],
        }
    if isinstance(obj, UserId):
        name = {key: ret.pop(key) for key in ("type", "minLength", "maxLength", "pattern") if key in ret}
        return {
            "description": 'Who the job runs for: a string, or `{"id": string}` as documents show it.',
            "anyOf": [
                name,
                {
                    "type": "object",
                    "properties": {"id": name},
                    "required": ["id"],
                    "additionalProperties": False,
                },
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
        return {"anyOf": [{"$ref": "#/components/schemas/JobError"}, {"type": "null"}]}
    if isinstance(obj, ErrorOut):
        return {"anyOf": [{"type": "string"}, {"type": "object"}, {"type": "null"}]}
    if isinstance(obj, ErrorMessages):
        return {
            "additionalProperties": {
                "anyOf": [
                    {"type": "array", "items": {"type": "string"}},
                    {"type": "object"},
                ]
            }
        }
    return {}


def _query_boolean(converter, obj: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """Parameter attribute function: a Boolean in a query string is one of the words it takes."""
    ret: dict[str, Any] = kwargs["ret"]
    if not isinstance(obj, fields.Boolean) or ret.get("in") != "query":
        return {}
    words = {value for value in obj.truthy | obj.falsy if isinstance(value, str)}
    first = [word for word in ("true", "false") if word in words]
    schema = {
        "type": "string",
        "description": "`true` or `false`; the other words marshmallow takes for them too.",
        "enum": first + sorted(words - set(first)),
    }
    if "default" in ret["schema"]:
        schema["default"] = "true" if ret["schema"]["default"] else "false"
    return {"schema": schema}


def _make_plugin() -> MarshmallowPlugin:
    return MarshmallowPlugin(schema_name_resolver=_schema_name)


def _schema_name(schema: Any) -> str:
    cls = schema if isinstance(schema, type) else type(schema)
    for name, known in SCHEMAS:
        if known is cls:
            return name
    return cls.__name__.removesuffix("Schema")


def _customize(plugin: MarshmallowPlugin) -> None:
    converter = plugin.converter
    assert converter is not None
    converter.map_to_openapi_type(Timestamp, "string", "date-time")
    converter.add_attribute_function(_constraints)
    converter.add_attribute_function(_custom_fields)
    converter.add_parameter_attribute_function(_query_boolean)


# The document


def _openapi_path(rule: Rule) -> str:
    """``/api/jobs/<job_id>`` as OpenAPI writes it: ``/api/jobs/{job_id}``."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule.rule)


def _path_parameter(name: str) -> dict[str, Any] | str:
    if name == "job_id":
        return "JobId"  # apispec's reference to the component
    return {"in": "path", "name": name, "required": True, "schema": {"type": "string"}}


def _error_response(status: int, *, schema: str = "Error", headers: Iterable[str] = ()) -> dict[str, Any]:
    error_id, description = ERRORS[status]
    response_headers = _headers(["RequestId", *headers])
    return {
        "description": f"`{error_id}`: {description}",
        "headers": response_headers,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def _answer(answer: Answer) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": answer.description,
        "headers": _headers(["RequestId", *answer.headers]),
    }
    if answer.schema is not None:
        response["content"] = {
            answer.media_type: {"schema": {"$ref": f"#/components/schemas/{answer.schema}"}}
        }
    return response


def _security(app: Flask, access: Access | None) -> list[dict[str, list[str]]] | None:
    if access is None:
        return None
    requirements: list[dict[str, list[str]]] = []
    if access.open_when is not None and app.config.get(access.open_when[0]) == access.open_when[1]:
        requirements.append({})  # open to anyone, by the app's configuration
    if access.job:
        requirements.append({JOB_KEY: []})
    if access.roles:
        requirements.append({BEARER_TOKEN: sorted(access.roles)})
    return requirements


def _operation(app: Flask, rule: Rule, method: str, described: Operation) -> dict[str, Any]:
    view = app.view_functions[rule.endpoint]
    access: Access | None = getattr(view, "access", None)
    doc = (view.__doc__ or "").strip()
    summary, _, details = doc.partition("\n")
    operation: dict[str, Any] = {
        "operationId": rule.endpoint.rpartition(".")[2],
        "tags": [described.tag],
        "summary": summary.strip(),
    }
    if details.strip():
        operation["description"] = " ".join(details.split())
    security = _security(app, access)
    if security is not None:
        operation["security"] = security

    parameters: list[Any] = list(described.parameters)
    if described.query is not None:
        parameters.append({"in": "query", "schema": described.query})
    if parameters:
        operation["parameters"] = parameters
    if described.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": f"#/components/schemas/{described.body}"}}
            },
        }

    responses: dict[str, Any] = {
        str(status): _answer(answer) for status, answer in described.answers.items()
    }
    errors = set(described.errors)
    if access is not None:
        errors |= {401, 403}
    errors.add(500)
    if described.database:
        errors.add(503)
    for status in sorted(errors):
        headers = ["JobState"] if status in described.job_state else []
        if status == 401:
            headers.append("BasicChallenge" if access and access.job else "BearerChallenge")
        if status == 503:
            headers.append("RetryAfter")
        schema = described.unavailable_schema if status == 503 else "Error"
        responses[str(status)] = _error_response(status, schema=schema, headers=headers)
    operation["responses"] = responses
    return operation


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route of ``app`` this module describes."""
    plugin = _make_plugin()
    spec = APISpec(
        title="jobapi",
        version=__version__,
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={"description": DESCRIPTION.format(body_limit=app.config["MAX_CONTENT_LENGTH"])},
        tags=TAGS,
    )
    _customize(plugin)

    spec.components.security_scheme(
        JOB_KEY,
        {
            "type": "http",
            "scheme": "basic",
            "description": "A job's own key: user name `job-<id>`, password the key.",
        },
    )
    spec.components.security_scheme(
        BEARER_TOKEN,
        {
            "type": "http",
            "scheme": "bearer",
            "description": (
                "An operator's (`jobapi_op_…`) or a runner's (`jobapi_rn_…`) token; each "
                "route's requirement names the role it takes."
            ),
        },
    )
    spec.components.schema("JsonValue", JSON_VALUE)
    spec.components.schema("JobError", JOB_ERROR)
    for name, schema in SCHEMAS:
        extra: dict[str, Any] = {"description": (schema.__doc__ or "").strip()}
        if schema is StatusInSchema:
            extra.update(STATUS_IN_RULES)
        spec.components.schema(name, extra, schema=schema)
    spec.components.schema(
        "PrometheusText",
        {"type": "string", "description": "Prometheus text exposition format."},
    )
    spec.components.schema(
        "OpenAPIDocument", {"type": "object", "description": "An OpenAPI 3.1 document."}
    )
    for name, (_, header) in HEADERS.items():
        spec.components.header(name, {**header, "required": True})
    spec.components.parameter(
        "JobId",
        "path",
        {
            "name": "job_id",
            "description": "A job's id: 8 characters of a-z and 0-9 (any other names no job: 404).",
            "required": True,
            "schema": {"type": "string", "pattern": f"^{JOB_ID_PATTERN}$"},
        },
    )
    spec.components.response("NotFound", _error_response(404))
    spec.components.response(
        "MethodNotAllowed", _error_response(405, headers=["Allow"])
    )

    for rule in sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule):
        if not part_of_the_api(rule.endpoint):
            continue
        described = OPERATIONS.get(rule.endpoint)
        if described is None:
            continue
        operations = {
            method.lower(): _operation(app, rule, method, described[method])
            for method in sorted(rule.methods or ())
            if method in described
        }
        if operations:
            spec.path(
                path=_openapi_path(rule),
                operations=operations,
                parameters=[_path_parameter(name) for name in sorted(rule.arguments)],
            )
    return spec.to_dict()


@bp.get(DOCUMENT_PATH)
def document() -> Response:
    """The API's OpenAPI 3.1 document; no authentication."""
    return Response(current_app.extensions[EXTENSION], mimetype="application/json")


def init_openapi(app: Flask) -> None:
    """Serve the document at ``/api/openapi.json``, built now from every route already registered.

    Call it after every other blueprint is registered.
    """
    app.register_blueprint(bp, url_prefix="/api")
    app.extensions[EXTENSION] = json.dumps(build_document(app)).encode()
