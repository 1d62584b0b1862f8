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
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from . import __version__
from .errors import error_response
from .extensions import db
from .openapi import Api, Blueprint, not_ready_response
from .schemas import HealthSchema, ReadySchema
from .storage import names_missing_schema, write_problem

log = logging.getLogger(__name__)

bp = Blueprint("probes", __name__)

_PROBES = ["probes"]

# app.extensions key: the revision ids at the head of the app's migrations.
HEADS_EXTENSION = "jobapi.migration_heads"


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
    api.register_blueprint(bp)


def database_revisions(session: Session) -> frozenset[str] | None:
    """The revisions the database is migrated to; None if it never was.

    Raises SQLAlchemy's errors when the database cannot answer.
    """
    try:
        return frozenset(session.scalars(text("SELECT version_num FROM alembic_version")))
    except sa_exc.DBAPIError as error:
        if not names_missing_schema(error):
            raise  # the database cannot answer: no second try to wait on
        # A missing table and a lost connection can be the same error class
        # (SQLite says OperationalError for both): ask the catalog which.
        session.rollback()
        if not inspect(session.connection()).has_table("alembic_version"):
            return None
        raise


def migrations_behind(session: Session) -> bool:
    """True when the database is not migrated to the code's head (or never was).

    Raises SQLAlchemy's errors when the database cannot answer.
    """
    current = database_revisions(session)
    return current is None or current != current_app.extensions[HEADS_EXTENSION]


@bp.get("/healthz", tags=_PROBES)
@bp.answers(200, HealthSchema, "The process answers.")
@Blueprint.without_database
def healthz():
    """The process is up and answering, and which release it runs; touches nothing else."""
    return {"status": "ok", "version": __version__}


@bp.get("/readyz", tags=_PROBES)
@bp.answers(200, ReadySchema, "Ready to serve.")
@bp.alt_response(**not_ready_response())
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
