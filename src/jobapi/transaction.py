"""A request owns its transaction: begun by its first statement, ended in one place.

Nothing begins a transaction before the request's body is read and checked
(``jobapi.auth``). When the view has answered, ``end_transaction`` commits a
success and rolls back anything else, before the answer leaves: a commit
that fails turns the answer into a 503, so no client is told of a write
that did not happen.

A request works through the ORM session, or, for a job's own requests (read
its document, push, ping: the requests workers make all the time), through
``request_connection``: the connection its thread keeps from the same pool,
without the session's bookkeeping, run by ``jobapi.jobs.statements``. Either
way the transaction is ended here.
"""

from __future__ import annotations

from flask import Response, g
from sqlalchemy import exc as sa_exc

from .errors import database_unavailable, handle_database_error
from .extensions import db
from .storage.connections import HeldConnection, begin_on_driver, end_on_driver, held_connection

# g attribute: the request's own connection, once it has one.
_CONNECTION = "request_connection"


def request_connection(*, write: bool = False) -> HeldConnection:
    """The request's own connection (the one its thread keeps from the pool); the first call
    says whether the request writes, and if so begins its transaction (BEGIN; BEGIN
    IMMEDIATE on SQLite)."""
    connection = g.get(_CONNECTION)
    if connection is None:
        connection = held_connection(db.engine, write=write)
        setattr(g, _CONNECTION, connection)
        if write:
            begin_on_driver(connection)
    return connection


def end_transaction(response: Response) -> Response:
    """Commit the request's transaction if it succeeded, else roll it back."""
    try:
        connection = g.get(_CONNECTION)
        if connection is not None:
            end_on_driver(connection, commit=response.status_code < 400)
        # Only a session the request used: making one just to ask costs as much as a query.
        session = db.session() if db.session.registry.has() else None
        if session is not None and session.in_transaction():
            if response.status_code >= 400:
                session.rollback()
            else:
                session.commit()
    except sa_exc.TimeoutError as error:
        return database_unavailable(error)
    except sa_exc.DBAPIError as error:
        return handle_database_error(error)
    return response


def release(_error: BaseException | None) -> None:
    """Leave the request's own connection to its thread, its transaction ended: rolled back,
    if a failure skipped ``end_transaction``."""
    connection = g.pop(_CONNECTION, None)
    if connection is not None and connection.began:
        try:
            end_on_driver(connection, commit=False)
        except sa_exc.SQLAlchemyError:
            pass  # a broken connection is replaced before its next use
