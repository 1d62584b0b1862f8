"""The API's contract: an OpenAPI 3.1 document, served at ``GET /api/openapi.json``.

flask-smorest builds it from the decorators beside each view (``answers``,
``refuses``, ``query``), from what the view declares to ``jobapi.auth``
(``@allow``: its security and its 401/403; ``@takes_json``: its request
body), and from the view's docstring. This module holds what is the same
for every route (the error envelope, the headers, the security schemes) and
what the marshmallow schemas cannot say by themselves (the fields that take
more than one JSON type, the rule tying an ``error`` to its state).

``tests/test_openapi.py`` fails when a route is not described;
``tests/test_fuzz.py`` runs schemathesis against a live server with it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from copy import deepcopy
from typing import Any

import flask_smorest
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, Response, current_app
from marshmallow import Schema, fields, validate

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
    CLAIM_RECORD_KEYS,
    ClaimRecord,
    ClaimSchema,
    ErrorField,
    ErrorMessages,
    ErrorOut,
    ErrorSchema,
    HealthSchema,
    JobCreateSchema,
    JobOutSchema,
    JobPageSchema,
    JobSummarySchema,
    NewJobSchema,
    NotReadySchema,
    PingRef,
    PingSchema,
    Progress,
    ReadySchema,
    StatusInSchema,
    StatusOutSchema,
    Timestamp,
    UserId,
    UserRef,
    _no_nul,
    _validate_args,
)

# app.extensions key: the document, serialized once the app is made.
EXTENSION = "jobapi.openapi"

# Security schemes: a job's key (HTTP Basic) and operators' and runners' tokens
# (HTTP Bearer; the requirement names the token's role, as OpenAPI 3.1 allows).
JOB_KEY = "jobKey"
BEARER_TOKEN = "bearerToken"

NO_NUL_PATTERN = "^[^\\u0000]*$"
# The digit strings Progress accepts (at most 10 digits) whose value is 0-100.
PERCENT_DIGITS_PATTERN = "^0*(?:100|[1-9]?[0-9])$"


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

# What StatusInSchema._error_matches_state checks, in JSON Schema.
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

_NO_NUL_STRING = {"type": "string", "pattern": NO_NUL_PATTERN}
# A record's error: a string, Virtool's error object, or virtool-workflow 1.x's.
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

# Status -> what it means on these routes; the ids come from the error handlers.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body is not valid JSON, or not a JSON object; or the job was already acquired.",
    401: "Missing or malformed credentials, a wrong or replaced key, an unknown or revoked token.",
    403: "Another job's credentials, or a token of a role this route does not take.",
    404: "No such job.",
    409: "The job's state refuses it; `state` names the job's state.",
    413: "The body is larger than the service takes (64 KiB by default), however it is sent.",
    415: "The body is not `application/json` by its Content-Type.",
    422: "A field (or header, or query parameter) breaks a rule; `errors` names each.",
    500: "A bug: logged with the request id, nothing leaked.",
    503: "The database cannot serve now; try again after `Retry-After` seconds.",
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
        {"description": "Seconds to wait before trying again.", "schema": {"type": "string", "pattern": "^[0-9]+$"}},
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
    "RequestId": (
        "X-Request-ID",
        {
            "description": "The request's id: the client's own `X-Request-ID` if it is 1-128 characters "
            "of `[A-Za-z0-9._:-]`, or one made for it.",
            "schema": {"type": "string"},
        },
    ),
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

# Pages for people, not part of the API, which the document leaves out: the
# operator console (and ``/``, which leads there), the docs page that renders
# this document, and the static files they load. They are registered on the
# app, not through the Api, so the document never sees them. Nor does it see
# Virtool's 42.x dialect (``/virtool42``): its contract is Virtool's own
# (jobapi.virtool42), for Virtool's runtime, not jobapi's API.
NOT_API_BLUEPRINTS = frozenset({"console", "apidocs", "virtool42"})
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
remove jobs; runners claim queued work; Virtool's workers acquire a job by its id.

Every error, on every route, is JSON: `{{"id": ..., "message": ...}}`, with `errors`
on 422 and `state` on 409 (the `Error` schema). A path that exists answers a
method it does not list with 405 `method_not_allowed` and an `Allow` header; a
path that does not exist answers 404 `not_found`. Bodies are at most
{body_limit} bytes on every route. Every answer carries `X-Request-ID`.

The operator console (`/console/`) and this document's rendering (`/api/docs`)
are pages for people, not part of the API, and are not described here. Nor is
`/virtool42`, where Virtool's 42.x workers claim and run the same jobs in their
own dialect: its contract is Virtool's (packages/contracts in virtool/virtool).
"""


def _headers(names: Iterable[str]) -> dict[str, Any]:
    """The ``headers`` of a response: references to the header components."""
    return {HEADERS[name][0]: {"$ref": f"#/components/headers/{name}"} for name in ("RequestId", *names)}


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint, documenting besides what ``@allow`` and ``@takes_json``
    declare (security, 401 and 403, the request body) and the answers every route may give
    (413 and 500; 503 unless the view touches no database)."""

    def answers(
        self, status: int, schema: type[Schema] | str | None, description: str, *,
        headers: Iterable[str] = (), media_type: str = "application/json",
    ) -> Callable:
        """Document a success answer: its body's schema (a class, a component name, or None) and headers."""
        if isinstance(schema, str):
            schema = {"$ref": f"#/components/schemas/{schema}"}  # type: ignore[assignment]
        return self.alt_response(
            status, schema=schema, description=description, headers=_headers(headers),
            content_type=media_type, success=True,
        )

    def refuses(self, *statuses: int, job_state: Iterable[int] = ()) -> Callable:
        """Document the errors a view answers besides those every route may; ``job_state``
        lists those that carry ``Job-State``."""
        job_state = frozenset(job_state)

        def decorate(view: Callable) -> Callable:
            for status in statuses:
                view = self.alt_response(**_error_response(status, JobState=status in job_state))(view)
            return view

        return decorate

    @staticmethod
    def query(schema: type[Schema]) -> Callable:
        """Document a view's query string (the view loads it with the same schema)."""
        return flask_smorest.Blueprint.doc(parameters=[{"in": "query", "schema": schema}])

    @staticmethod
    def without_database(view: Callable) -> Callable:
        """Mark a view that never touches the database: it cannot answer 503."""
        view.without_database = True  # type: ignore[attr-defined]
        return view

    def _store_endpoint_docs(self, endpoint, obj, parameters, tags, **options):
        _declare(obj, getattr(obj, "access", None), getattr(obj, "body_schema", None))
        obj._apidoc["manual_doc"].setdefault("operationId", endpoint)
        super()._store_endpoint_docs(endpoint, obj, parameters, tags, **options)
        self._docs[endpoint]["access"] = getattr(obj, "access", None)

    def register_views_in_doc(self, api, app, spec, *, name, parameters):
        """Register the views' operations; a route a setting opens to anyone (``open_when``)
        takes no credentials in this app's document."""
        stored = self._docs
        self._docs = deepcopy(stored)
        for info in self._docs.values():
            access: Access | None = info.pop("access", None)
            if access is None or access.open_when is None:
                continue
            setting, value = access.open_when
            if app.config.get(setting) == value:
                for method, operation in info.items():
                    if method != "parameters":
                        operation["manual_doc"]["security"].append({})
        try:
            super().register_views_in_doc(api, app, spec, name=name, parameters=parameters)
        finally:
            self._docs = stored


def _error_response(status: int, *, schema: str = "Error", **headers: bool) -> dict[str, Any]:
    """``alt_response`` arguments for an error status with the envelope and its headers."""
    error_id = HTTP_ERRORS[status][0]
    names = [name for name, present in headers.items() if present]
    return {
        "status_code": status,
        "schema": {"$ref": f"#/components/schemas/{schema}"},
        "description": f"`{error_id}`: {ERROR_DESCRIPTIONS[status]}",
        "headers": _headers(names),
    }


def _declare(view: Callable, access: Access | None, body: Schema | None) -> None:
    """Add to a view's documentation what it declares to the auth hook, and the common errors."""
    doc = view.__dict__.setdefault("_apidoc", {})
    manual = doc.setdefault("manual_doc", {})
    responses = doc.setdefault("response", {}).setdefault("responses", {})
    if access is not None:
        requirements: list[dict[str, list[str]]] = []
        if access.job:
            requirements.append({JOB_KEY: []})
        if access.roles:
            requirements.append({BEARER_TOKEN: sorted(access.roles)})
        manual["security"] = requirements
        challenge = "BasicChallenge" if access.job else "BearerChallenge"
        responses[401] = [_as_doc(_error_response(401, **{challenge: True}))]
        responses[403] = [_as_doc(_error_response(403))]
    if body is not None:
        manual["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": type(body)}},
        }
    for status in (413, 500):
        if status not in responses:
            responses[status] = [_as_doc(_error_response(status))]
    if not getattr(view, "without_database", False) and 503 not in responses:
        responses[503] = [_as_doc(_error_response(503, RetryAfter=True))]


def _as_doc(arguments: dict[str, Any]) -> dict[str, Any]:
    """An ``alt_response`` call's arguments as flask-smorest stores the response's doc."""
    return {
        "schema": arguments["schema"],
        "description": arguments["description"],
        "headers": arguments["headers"],
        "content_type": None,
    }


def not_ready_response() -> dict[str, Any]:
    """``alt_response`` arguments for readiness's 503: the envelope with what is not ready."""
    return _error_response(503, schema="NotReady", RetryAfter=True)


# The marshmallow plugin's mapping of the custom fields and validators.


def _ecma_pattern(pattern: str) -> str:
    """A Python pattern, matched with ``re.match`` (anchored at the start), as an ECMA one."""
    if pattern.endswith("\\Z"):
        return "^" + pattern[: -len("\\Z")] + "$"
    return "^" + pattern


def _has_validator(obj: fields.Field, validator: Any) -> bool:
    return any(v is validator for v in obj.validators)


def _constraints(converter, obj: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """Attribute function: what jobapi's own validators mean in JSON Schema."""
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
    """Attribute function: the fields that take more than one JSON type."""
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
    if isinstance(obj, ErrorField):
        return {"anyOf": [{"$ref": "#/components/schemas/JobError"}, {"type": "null"}]}
    if isinstance(obj, ErrorOut):
        return {"anyOf": [{"type": "string"}, {"type": "object"}, {"type": "null"}]}
    if isinstance(obj, ErrorMessages):
        return {"additionalProperties": {"anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "object"}]}}
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


def _schema_name(schema: Any) -> str:
    cls = schema if isinstance(schema, type) else type(schema)
    for name, known in SCHEMAS:
        if known is cls:
            return name
    return cls.__name__.removesuffix("Schema")


class Api(flask_smorest.Api):
    """flask-smorest's Api, answering errors with jobapi's own envelope (``errors.py``)."""

    ERROR_SCHEMA = ErrorSchema
    # Each operation lists the errors it gives; there is no catch-all.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def _register_error_handlers(self) -> None:
        """errors.py answers every error, on every route, with the one envelope."""

    def _register_responses(self) -> None:
        """The error responses are written per operation (``Blueprint.refuses``)."""

    def _register_etag_headers(self) -> None:
        """No route uses ETags."""

    def _register_pagination_header(self) -> None:
        """Pages are keyset cursors in the body (``JobPage``), not flask-smorest's header."""

    def register_blueprint(self, blp, *, parameters=None, **options) -> None:
        """Register a blueprint and its operations; the tags are the document's own (``TAGS``).

        Once documented, a view is served without the documenting decorators'
        wrappers, which only pass the call on: a request then costs no call
        through each of them.
        """
        name = options.get("name", blp.name)
        self._app.register_blueprint(blp, **options)
        blp.register_views_in_doc(self, self._app, self.spec, name=name, parameters=parameters)
        for endpoint, view in list(self._app.view_functions.items()):
            if endpoint.startswith(name + "."):
                self._app.view_functions[endpoint] = _without_documenting_wrappers(view)


def _without_documenting_wrappers(view: Callable) -> Callable:
    """The view under flask-smorest's ``alt_response`` and ``doc`` wrappers, which only call it."""
    while hasattr(view, "__wrapped__") and view.__code__.co_filename.startswith(_SMOREST_DIRECTORY):
        view = view.__wrapped__
    return view


_SMOREST_DIRECTORY = os.path.dirname(flask_smorest.__file__)


def init_openapi(app: Flask) -> Api:
    """The app's Api, with the document's settings and components.

    The blueprints of the API are registered with its ``register_blueprint``;
    ``freeze_document`` serializes the document once they all are.
    """
    app.config.update(
        API_TITLE="jobapi",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.1.0",
        # The document is served by a route of the API's own (``document`` below).
        OPENAPI_URL_PREFIX=None,
    )
    plugin = MarshmallowPlugin(schema_name_resolver=_schema_name)
    api = Api()
    api.init_app(app, spec_kwargs={
        "marshmallow_plugin": plugin,
        "info": {"description": DESCRIPTION.format(body_limit=app.config["MAX_CONTENT_LENGTH"])},
        "tags": TAGS,
    })
    converter = plugin.converter
    assert converter is not None
    converter.map_to_openapi_type(Timestamp, "string", "date-time")
    converter.add_attribute_function(_constraints)
    converter.add_attribute_function(_custom_fields)
    converter.add_parameter_attribute_function(_query_boolean)
    from .jobs.views import JobIdConverter

    api.register_converter(JobIdConverter, lambda _: {
        "type": "string",
        "pattern": f"^{JOB_ID_PATTERN}$",
        "description": "A job's id: 8 characters of a-z and 0-9 (any other names no job: 404).",
    })

    spec = api.spec
    spec.components.security_scheme(JOB_KEY, {
        "type": "http", "scheme": "basic",
        "description": "A job's own key: user name `job-<id>`, password the key.",
    })
    spec.components.security_scheme(BEARER_TOKEN, {
        "type": "http", "scheme": "bearer",
        "description": (
            "An operator's (`jobapi_op_…`) or a runner's (`jobapi_rn_…`) token; each "
            "route's requirement names the role it takes."
        ),
    })
    spec.components.schema("JsonValue", JSON_VALUE)
    spec.components.schema("JobError", JOB_ERROR)
    for name, schema in SCHEMAS:
        extra: dict[str, Any] = {"description": (schema.__doc__ or "").strip()}
        if schema is StatusInSchema:
            extra.update(STATUS_IN_RULES)
        spec.components.schema(name, extra, schema=schema)
    spec.components.schema("PrometheusText", {"type": "string", "description": "Prometheus text exposition format."})
    spec.components.schema("OpenAPIDocument", {"type": "object", "description": "An OpenAPI 3.1 document."})
    for name, (_, header) in HEADERS.items():
        spec.components.header(name, {**header, "required": True})
    api.register_blueprint(bp, url_prefix="/api")
    return api


def freeze_document(app: Flask, api: Api) -> None:
    """Serialize the document once, now that every route of the API is registered."""
    app.extensions[EXTENSION] = json.dumps(api.spec.to_dict()).encode()


bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json", tags=["meta"])
@bp.answers(200, "OpenAPIDocument", "This document.")
@Blueprint.without_database
def document() -> Response:
    """The API's OpenAPI 3.1 document; no authentication."""
    return Response(current_app.extensions[EXTENSION], mimetype="application/json")
