"""Probes for an orchestrator: ``/healthz`` (the process answers) and ``/readyz`` (it can serve).

Both are unauthenticated and cheap. ``/readyz`` is ready when the database
answers, its migrations are at the head of ``migrations/``, and it would
accept writes; the head is read from the migration scripts once, when the app
is made.
"""

from __future__ import annotations

import logging

from alembic.script import ScriptDirectory
from alembic.util import CommandError
from flask import Flask, current_app
from marshmallow import Schema, fields, validate
from sqlalchemy import exc as sa_exc

from .errors import ErrorSchema, error_response
from .extensions import db
from .openapi import Api, Blueprint, document_schemas
from .openapi import error_response as documented_error
from .storage.faults import write_problem
from .storage.revisions import HEADS_EXTENSION, database_revisions
from .version import __version__

log = logging.getLogger(__name__)

bp = Blueprint("probes", __name__)

_PROBES = ["probes"]


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


def init_probes(app: Flask, api: Api) -> None:
    """Read the head revisions of the app's migrations and register the probe routes."""
    directory = app.extensions["migrate"].directory
    try:
        heads = frozenset(ScriptDirectory(directory).get_heads())
    except CommandError as error:
        # Without its migrations the app still serves; it is just never ready.
        log.warning("no migrations at %s (%s): /readyz will answer 503", directory, error)
        heads = frozenset()
    app.extensions[HEADS_EXTENSION] = heads
    document_schemas(api, [("Health", HealthSchema), ("Ready", ReadySchema), ("NotReady", NotReadySchema)])
    api.register_blueprint(bp)


@bp.get("/healthz", tags=_PROBES)
@bp.answers(200, HealthSchema, "The process answers.")
@Blueprint.without_database
def healthz():
    """The process is up and answering, and which release it runs; touches nothing else."""
    return {"status": "ok", "version": __version__}


@bp.get("/readyz", tags=_PROBES)
@bp.answers(200, ReadySchema, "Ready to serve.")
@bp.alt_response(**documented_error(503, schema="NotReady", RetryAfter=True))
@Blueprint.own_unavailable
def readyz():
    """Ready to serve: the database answers, its migrations are at head, writes would succeed; else 503."""
    heads = current_app.extensions[HEADS_EXTENSION]
    try:
        current = database_revisions(db.session)
        refused = write_problem(db.session)
    except sa_exc.SQLAlchemyError as error:
        log.warning("not ready: database unavailable: %s", _first_line(error))
        return _not_ready("Database unavailable", database="unavailable", migrations="unknown")
    finally:
        db.session.rollback()
    if current is None:
        return _not_ready("Database has no migrations applied", database="ok", migrations="none")
    if not heads or current != heads:
        return _not_ready(
            f"Database migrations at {_revisions(current)}, the code's head is {_revisions(heads)}",
            database="ok",
            migrations="not_at_head",
        )
    if refused:
        log.warning("not ready: writes would fail: %s", refused)
        return _not_ready(f"Database refuses writes: {refused}", database="refuses_writes", migrations="head")
    return {"status": "ready", "database": "ok", "migrations": "head"}


def _first_line(error: Exception) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _revisions(revisions: frozenset[str]) -> str:
    return ", ".join(sorted(revisions)) or "none"


def _not_ready(message: str, **details: str):
    return error_response(
        503,
        "service_unavailable",
        message,
        {"Retry-After": str(current_app.config["RETRY_AFTER_SECONDS"])},
        **details,
    )
