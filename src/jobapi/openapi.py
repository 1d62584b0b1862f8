"""The API's contract: an OpenAPI 3.1 document, served at ``GET /api/openapi.json``.

flask-smorest builds it from the decorators beside each view (``answers``,
``refuses``, ``query``, its own ``doc``), from what the view declares to
``jobapi.admission`` (``@allow``: its security and its 401/403;
``@takes_json``: its request body), which ``Blueprint.route`` documents
with flask-smorest's public decorators, and from the view's docstring. This
module holds what is the same for every route (the error envelope, the
headers, the security schemes); each subject adds its own components beside
its views (``jobs.openapi``, ``probes``).

``tests/test_openapi.py`` fails when a route is not described;
``tests/test_fuzz.py`` runs schemathesis against a live server with it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

import flask_smorest
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Flask, Response, current_app
from marshmallow import Schema, fields, validate

from .errors import BASIC_CHALLENGE, BEARER_CHALLENGE, HTTP_ERRORS, ErrorMessages, ErrorSchema
from .fields import Timestamp, no_nul
from .jobs.states import STATES
from .version import __version__

# app.extensions key: the document, serialized once the app is made.
EXTENSION = "jobapi.openapi"

# Security schemes: a job's key (HTTP Basic) and operators' and runners' tokens
# (HTTP Bearer; the requirement names the token's role, as OpenAPI 3.1 allows).
JOB_KEY = "jobKey"
BEARER_TOKEN = "bearerToken"

NO_NUL_PATTERN = "^[^\\u0000]*$"

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


def error_response(status: int, *, schema: str = "Error", **headers: bool) -> dict[str, Any]:
    """``alt_response`` arguments for an error status with the envelope and its headers."""
    error_id = HTTP_ERRORS[status][0]
    names = [name for name, present in headers.items() if present]
    return {
        "status_code": status,
        "schema": {"$ref": f"#/components/schemas/{schema}"},
        "description": f"`{error_id}`: {ERROR_DESCRIPTIONS[status]}",
        "headers": _headers(names),
    }


class Blueprint(flask_smorest.Blueprint):
    """flask-smorest's blueprint, documenting besides what ``@allow`` and ``@takes_json``
    declare (security, 401 and 403, the request body) and the answers every route may give
    (413 and 500; 503 unless the view touches no database or documents its own)."""

    def route(self, rule: str, *, parameters=None, tags=None, **options: Any) -> Callable:
        """Register a view, documented with what it declares and what every route may answer."""
        register = super().route(rule, parameters=parameters, tags=tags, **options)
        endpoint = options.get("endpoint")

        def decorate(view: Callable) -> Callable:
            return register(self._documented(view, endpoint or view.__name__))

        return decorate

    def _documented(self, view: Callable, endpoint: str) -> Callable:
        access = getattr(view, "access", None)
        body: Schema | None = getattr(view, "body_schema", None)
        details: dict[str, Any] = {"operationId": endpoint}
        if access is not None:
            requirements: list[dict[str, list[str]]] = []
            if access.job:
                requirements.append({JOB_KEY: []})
            if access.roles:
                requirements.append({BEARER_TOKEN: sorted(access.roles)})
            details["security"] = requirements
            challenge = "BasicChallenge" if access.job else "BearerChallenge"
            view = self.alt_response(**error_response(401, **{challenge: True}))(view)
            view = self.alt_response(**error_response(403))(view)
        if body is not None:
            details["requestBody"] = {"required": True, "content": {"application/json": {"schema": type(body)}}}
        view = self.alt_response(**error_response(413))(view)
        view = self.alt_response(**error_response(500))(view)
        if not getattr(view, "without_database", False) and not getattr(view, "own_unavailable", False):
            view = self.alt_response(**error_response(503, RetryAfter=True))(view)
        return self.doc(**details)(view)

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
                view = self.alt_response(**error_response(status, JobState=status in job_state))(view)
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

    @staticmethod
    def own_unavailable(view: Callable) -> Callable:
        """Mark a view that documents its own 503 (readiness)."""
        view.own_unavailable = True  # type: ignore[attr-defined]
        return view


# The marshmallow plugin's mapping of the shared fields and validators.


def _ecma_pattern(pattern: str) -> str:
    """A Python pattern, matched with ``re.match`` (anchored at the start), as an ECMA one."""
    if pattern.endswith("\\Z"):
        return "^" + pattern[: -len("\\Z")] + "$"
    return "^" + pattern


def _constraints(converter, obj: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """Attribute function: a pattern's meaning in JSON Schema, and no NUL."""
    regexps = [v for v in obj.validators if isinstance(v, validate.Regexp)]
    if regexps:
        return {"pattern": _ecma_pattern(regexps[0].regex.pattern)}
    if any(v is no_nul for v in obj.validators):
        # A pattern constrains strings only: a nullable field's null stays valid.
        return {"pattern": NO_NUL_PATTERN}
    return {}


def _error_messages(converter, obj: fields.Field, **kwargs: Any) -> dict[str, Any]:
    """Attribute function: validation messages, by field, as lists or nested."""
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
    """A schema's component name when no subject named it: its class's, without "Schema"."""
    cls = schema if isinstance(schema, type) else type(schema)
    return cls.__name__.removesuffix("Schema")


class Plugin(MarshmallowPlugin):
    """apispec's marshmallow plugin, mapping the fields and validators every subject shares
    from the start (the Api documents its error schema as it is made)."""

    def init_spec(self, spec) -> None:
        super().init_spec(spec)
        self.converter.map_to_openapi_type(Timestamp, "string", "date-time")
        self.converter.add_attribute_function(_constraints)
        self.converter.add_attribute_function(_error_messages)
        self.converter.add_parameter_attribute_function(_query_boolean)


class Api(flask_smorest.Api):
    """flask-smorest's Api; errors are answered with jobapi's own envelope (``errors.py``,
    whose handlers ``create_app`` registers after this Api's)."""

    # Referred to by name: the component is registered, described, with the others (init_openapi).
    ERROR_SCHEMA = {"$ref": "#/components/schemas/Error"}
    # Each operation lists the errors it gives; there is no catch-all.
    DEFAULT_ERROR_RESPONSE_NAME = None

    def init_app(self, app: Flask, *, spec_kwargs: dict[str, Any] | None = None) -> None:
        """Bind the Api to the app (kept as ``app``, for ``register_blueprint``)."""
        self.app = app
        super().init_app(app, spec_kwargs=spec_kwargs)

    def register_blueprint(self, blp, *, parameters=None, **options) -> None:
        """Register a blueprint and its operations.

        Once documented, a view is served without the documenting decorators'
        wrappers, which only pass the call on: a request then costs no call
        through each of them.
        """
        name = options.get("name", blp.name)
        super().register_blueprint(blp, parameters=parameters, **options)
        for endpoint, view in list(self.app.view_functions.items()):
            if endpoint.startswith(name + "."):
                self.app.view_functions[endpoint] = _without_documenting_wrappers(view)


def _without_documenting_wrappers(view: Callable) -> Callable:
    """The view under flask-smorest's ``alt_response`` and ``doc`` wrappers, which only call it
    (each made with ``functools.wraps``, which keeps the view as ``__wrapped__``)."""
    while hasattr(view, "__wrapped__") and view.__code__.co_filename.startswith(_SMOREST_DIRECTORY):
        view = view.__wrapped__
    return view


_SMOREST_DIRECTORY = os.path.dirname(flask_smorest.__file__)


def init_openapi(app: Flask) -> Api:
    """The app's Api, with the document's settings and the components every route shares.

    Each subject adds its own components and registers its blueprint with
    the Api's ``register_blueprint``; ``freeze_document`` serializes the
    document once they all have.
    """
    app.config.update(
        API_TITLE="jobapi",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.1.0",
        # The document is served by a route of the API's own (``document`` below).
        OPENAPI_URL_PREFIX=None,
    )
    api = Api()
    api.init_app(app, spec_kwargs={
        "marshmallow_plugin": Plugin(schema_name_resolver=_schema_name),
        "info": {"description": DESCRIPTION.format(body_limit=app.config["MAX_CONTENT_LENGTH"])},
        "tags": TAGS,
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
    spec.components.schema("PrometheusText", {"type": "string", "description": "Prometheus text exposition format."})
    spec.components.schema("OpenAPIDocument", {"type": "object", "description": "An OpenAPI 3.1 document."})
    for name, (_, header) in HEADERS.items():
        spec.components.header(name, {**header, "required": True})
    document_schemas(api, [("Error", ErrorSchema)])
    api.register_blueprint(bp, url_prefix="/api")
    return api


def document_schemas(
    api: Api, schemas: Iterable[tuple[str, type[Schema]]], extra: dict[type[Schema], dict[str, Any]] | None = None
) -> None:
    """Add schemas to the document's components under their names, described by their docstrings
    (and ``extra``'s JSON Schema, by schema); a nested schema comes before those that hold it."""
    for name, schema in schemas:
        details: dict[str, Any] = {"description": (schema.__doc__ or "").strip(), **(extra or {}).get(schema, {})}
        api.spec.components.schema(name, details, schema=schema)


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def _drop_unused_schemas(document: dict[str, Any]) -> None:
    """Leave out the schema components nothing refers to: those flask-smorest registers for
    features jobapi does not use (its pagination header's)."""
    schemas = document["components"]["schemas"]
    while True:
        rest = {key: value for key, value in document.items() if key != "components"}
        text = json.dumps([rest, {k: v for k, v in document["components"].items() if k != "schemas"}, schemas])
        used = set(re.findall(r'"#/components/schemas/([^"]+)"', text))
        unused = [name for name in schemas if name not in used]
        if not unused:
            return
        for name in unused:
            del schemas[name]


def freeze_document(app: Flask, api: Api) -> None:
    """Serialize the document once, now that every route of the API is registered. A route
    that a setting opens to anyone (``@allow(open_when=...)``) takes no credentials in this
    app's document."""
    document = api.spec.to_dict()
    for rule in app.url_map.iter_rules():
        access = getattr(app.view_functions.get(rule.endpoint), "access", None)
        if access is None or not access.is_open(app.config):
            continue
        for method, operation in document["paths"].get(_openapi_path(rule.rule), {}).items():
            if method.upper() in (rule.methods or ()):
                operation["security"].append({})
    # The document's tags are its own, not one per blueprint.
    document["tags"] = TAGS
    _drop_unused_schemas(document)
    app.extensions[EXTENSION] = json.dumps(document).encode()


bp = Blueprint("openapi", __name__)


@bp.get("/openapi.json", tags=["meta"])
@bp.answers(200, "OpenAPIDocument", "This document.")
@Blueprint.without_database
def document() -> Response:
    """The API's OpenAPI 3.1 document; no authentication."""
    return Response(current_app.extensions[EXTENSION], mimetype="application/json")
