"""The one JSON error envelope: HTTP's own errors, the table that maps the domain's
refusals to it, and the handlers that emit them."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, current_app, g, jsonify
from marshmallow import Schema, ValidationError, fields, validate
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException, InternalServerError

from . import exceptions as domain
from .extensions import db
from .jobs.states import STATES
from .storage.faults import READ_ONLY_SQLSTATE, names_missing_schema
from .storage.revisions import migrations_behind

log = logging.getLogger(__name__)

BASIC_CHALLENGE = 'Basic realm="jobs"'
BEARER_CHALLENGE = 'Bearer realm="jobapi"'

# Status code -> (id, message) for errors raised by the framework itself.
HTTP_ERRORS: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Invalid authorization header"),
    403: ("insufficient_rights", "Insufficient rights"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    409: ("conflict", "Conflict"),
    411: ("length_required", "Length required"),
    413: ("payload_too_large", "Payload too large"),
    414: ("uri_too_long", "URI too long"),
    415: ("unsupported_media_type", "Expected application/json"),
    422: ("invalid_input", "Invalid input"),
    431: ("request_header_fields_too_large", "Request header fields too large"),
    500: ("internal_error", "Internal server error"),
    503: ("service_unavailable", "Service unavailable"),
}


class APIError(Exception):
    """An error the API answers with its JSON envelope; raised by views, hooks and services."""

    status = 500
    error_id = "internal_error"
    message = "Internal server error"

    def __init__(self, message: str | None = None, **extra: Any) -> None:
        super().__init__(message or self.message)
        if message:
            self.message = message
        self.extra = extra

    def headers(self) -> dict[str, str]:
        """Headers the response must carry."""
        return {}


class BadRequest(APIError):
    status, error_id, message = 400, "bad_request", "Malformed JSON"


class Unauthorized(APIError):
    """401, with the challenge of the scheme the route expects (job Basic by default)."""

    status, error_id, message = 401, "unauthorized", "Invalid authorization header"

    def __init__(self, message: str | None = None, *, challenge: str = BASIC_CHALLENGE) -> None:
        super().__init__(message)
        self.challenge = challenge

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.challenge}


class InsufficientRights(APIError):
    status, error_id, message = 403, "insufficient_rights", "Insufficient rights"


class InvalidInput(APIError):
    """422 with the fields (or headers) at fault: ``InvalidInput(errors={name: [message]})``."""

    status, error_id, message = 422, "invalid_input", "Invalid input"


class UnsupportedMediaType(APIError):
    status, error_id, message = 415, "unsupported_media_type", "Expected application/json"


class ErrorMessages(fields.Dict):
    """Validation messages by field (or header): a list of messages, or nested by key or index."""


class ErrorSchema(Schema):
    """The error envelope of every error (SPEC 3)."""

    id = fields.String(required=True)
    message = fields.String(required=True)
    errors = ErrorMessages(keys=fields.String())
    state = fields.String(validate=validate.OneOf(STATES))


def error_response(
    status: int,
    error_id: str,
    message: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    """Build the envelope ``{"id", "message", ...}`` with its status and headers."""
    response = jsonify({"id": error_id, "message": message, **extra})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def handle_api_error(error: APIError) -> Response:
    return error_response(
        error.status, error.error_id, error.message, error.headers(), **error.extra
    )


# The domain's refusals as HTTP answers: (status, id, message or None for the
# exception's own, the field an invalid_input names).
DOMAIN_ERRORS: dict[type[domain.DomainError], tuple[int, str, str | None, str | None]] = {
    domain.JobNotFound: (404, "not_found", None, None),
    domain.TokenNotFound: (404, "not_found", None, None),
    domain.JobStateError: (409, "conflict", None, None),
    domain.TokenExists: (409, "conflict", None, None),
    domain.AlreadyAcquired: (400, "bad_request", None, None),
    domain.StepNotFound: (404, "not_found", None, None),
    domain.StepAlreadyStarted: (409, "conflict", None, None),
    domain.IdempotencyKeyReused: (422, "invalid_input", "Invalid input", "Idempotency-Key"),
    domain.InvalidCursor: (422, "invalid_input", "Invalid input", "cursor"),
}


def domain_error_status(error: domain.DomainError) -> tuple[int, str, str | None, str | None]:
    """The row of ``DOMAIN_ERRORS`` for an exception (the nearest class it is one of)."""
    for cls in type(error).__mro__:
        if cls in DOMAIN_ERRORS:
            return DOMAIN_ERRORS[cls]
    return (500, "internal_error", "Internal server error", None)


def handle_domain_error(error: domain.DomainError) -> Response:
    status, error_id, message, field = domain_error_status(error)
    extra: dict[str, Any] = {}
    if isinstance(error, domain.JobStateError):
        extra["state"] = error.state
    if field is not None:
        extra["errors"] = {field: [error.message]}
    return error_response(status, error_id, message or error.message, **extra)


def handle_validation_error(error: ValidationError) -> Response:
    messages = error.messages
    if not isinstance(messages, dict):
        messages = {"_schema": messages}
    return error_response(422, "invalid_input", "Invalid input", errors=messages)


def handle_http_exception(error: HTTPException) -> Response:
    code = error.code or 500
    if code >= 500:
        # InternalServerError is handled below; any other 5xx keeps its status.
        log.error("HTTP %s raised: %s", code, error)
    error_id, message = HTTP_ERRORS.get(code, (_snake(error.name), error.name))
    # Keep the headers the exception carries (Allow on 405), not its HTML type.
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    if code == 401:
        headers["WWW-Authenticate"] = BASIC_CHALLENGE
    return error_response(code, error_id, message, headers)


def handle_internal_error(error: InternalServerError) -> Response:
    # Flask has already logged the traceback of the original exception.
    log.error("internal error, request id %s", g.get("request_id", "-"))
    return error_response(500, "internal_error", "Internal server error")


def database_unavailable(error: sa_exc.SQLAlchemyError) -> Response:
    """The 503 of a database that cannot serve now; the session is rolled back."""
    log.warning(
        "database unavailable, request id %s: %s",
        g.get("request_id", "-"),
        str(error).splitlines()[0] if str(error) else type(error).__name__,
    )
    db.session.rollback()
    retry_after = str(current_app.config["RETRY_AFTER_SECONDS"])
    return error_response(
        503, "service_unavailable", "Database unavailable", {"Retry-After": retry_after}
    )


def handle_database_error(error: sa_exc.DBAPIError) -> Response:
    """A database error: 503 when the database cannot serve now, a bug (500) otherwise.

    It cannot serve when it is unreachable or does not answer, refuses
    writes (read-only), or lacks the tables and columns of the code's
    migrations ("Database not migrated").
    """
    if names_missing_schema(error):
        db.session.rollback()
        try:
            behind = migrations_behind(db.session)
        except sa_exc.SQLAlchemyError:
            return database_unavailable(error)
        if behind:
            log.warning("database not migrated, request id %s", g.get("request_id", "-"))
            db.session.rollback()
            retry_after = str(current_app.config["RETRY_AFTER_SECONDS"])
            return error_response(
                503, "service_unavailable", "Database not migrated", {"Retry-After": retry_after}
            )
        raise error  # at head, yet without what the code needs: a bug
    read_only = getattr(error.orig, "sqlstate", None) == READ_ONLY_SQLSTATE
    if read_only or isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError)):
        return database_unavailable(error)
    raise error


def _snake(name: str) -> str:
    return "_".join(name.lower().replace("-", " ").split())


def register_error_handlers(app: Flask) -> None:
    """Answer every error, on every route, with the JSON envelope."""
    app.register_error_handler(APIError, handle_api_error)
    app.register_error_handler(domain.DomainError, handle_domain_error)
    app.register_error_handler(ValidationError, handle_validation_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(InternalServerError, handle_internal_error)
    # Connection failures, timeouts, a pool with no free connection, a
    # read-only or unmigrated database: the database cannot serve now, which
    # is no bug of the request.
    app.register_error_handler(sa_exc.TimeoutError, database_unavailable)
    app.register_error_handler(sa_exc.DBAPIError, handle_database_error)
