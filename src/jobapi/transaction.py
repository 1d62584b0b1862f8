"""A request owns its transaction: begun by its first statement, ended in one place.

Nothing begins a transaction before the request's body is read and checked
(``jobapi.auth``). When the view has answered, ``end_transaction`` commits a
success and rolls back anything else, before the answer leaves: a commit
that fails turns the answer into a 503, so no client is told of a write
that did not happen.
"""

from __future__ import annotations

from flask import Flask, Response
from sqlalchemy import exc as sa_exc

from .errors import database_unavailable, handle_database_error
from .extensions import db


def init_transactions(app: Flask) -> None:
    """End every request's transaction. Register it after the other ``after_request``
    hooks, so it runs first and they see the answer as it leaves."""
    app.after_request(end_transaction)


def end_transaction(response: Response) -> Response:
    """Commit the request's transaction if it succeeded, else roll it back."""
    session = db.session()
    if not session.in_transaction():
        return response
    if response.status_code >= 400:
        session.rollback()
        return response
    try:
        session.commit()
    except sa_exc.TimeoutError as error:
        return database_unavailable(error)
    except sa_exc.DBAPIError as error:
        return handle_database_error(error)
    return response
