"""Which migrations the database is at, against the code's own head (read by ``probes`` once,
when the app is made)."""

from __future__ import annotations

from flask import current_app
from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect, text
from sqlalchemy.orm import Session

from .faults import names_missing_schema

# app.extensions key: the revision ids at the head of the app's migrations.
HEADS_EXTENSION = "jobapi.migration_heads"


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
