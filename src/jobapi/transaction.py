"""A request owns its transaction: begun by its first statement, ended in one place.

Nothing begins a transaction before the request's body is read and checked
(``jobapi.auth``). When the view has answered, ``end_transaction`` commits a
success and rolls back anything else, before the answer leaves: a commit
that fails turns the answer into a 503, so no client is told of a write
that did not happen.

A request works through the ORM session, or, for a job's own requests (read
its document, push, ping: the requests workers make all the time), through
``request_connection``: one connection of the same pool, without the
session's bookkeeping, run by ``jobapi.jobs.statements``. Either way it is
ended here.
"""

from __future__ import annotations

from flask import Flask, Response, g
from sqlalchemy import Connection
from sqlalchemy import exc as sa_exc

from .errors import database_unavailable, handle_database_error
from .extensions import db
from .storage import begin_on_driver, end_on_driver

# g attribute: the request's own connection, once it has one.
_CONNECTION = "request_connection"


def init_transactions(app: Flask) -> None:
    """End every request's transaction. Register it after the other ``after_request``
    hooks, so it runs first and they see the answer as it leaves."""
    app.after_request(end_transaction)
    app.teardown_request(_release_connection)


def request_connection(*, write: bool = False) -> Connection:
    """The request's own connection from the pool; the first call says whether the request
    writes, and if so begins its transaction (BEGIN; BEGIN IMMEDIATE on SQLite)."""
    connection = g.get(_CONNECTION)
    if connection is None:
        connection = db.engine.connect()
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


def _release_connection(_error: BaseException | None) -> None:
    """Give the request's own connection back to the pool (rolled back, if a failure left it open)."""
    connection = g.pop(_CONNECTION, None)
    if connection is not None:
        connection.close()
