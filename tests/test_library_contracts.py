"""What jobapi relies on where a library has no public way to do it, pinned so that an upgrade
that changes it fails here rather than in production.

- SQLAlchemy: a driver's error raised through ``Connection``'s own handler
  (``storage.connections.raise_as_sqlalchemy``) is wrapped in SQLAlchemy's
  classes, goes through the engine's handle_error events, and after a
  disconnect invalidates the connection, so its thread takes a new one.
- gunicorn: jobapi clears its request's "expects 100-continue" flag once the
  body has arrived (``serving.BufferingWorker.handle``), so a client gets one
  interim answer, not two (``tests/test_serving.py``'s 100-continue test
  reads the answer after exactly one).

And what werkzeug's public readers give after ``payload.read_body`` has read
the body itself.
"""

from __future__ import annotations

import json

import pytest
from flask import request
from sqlalchemy import event
from sqlalchemy import exc as sa_exc

from jobapi.extensions import db
from jobapi.payload import read_body
from jobapi.storage.connections import held_connection, run_on_driver

BAD_STATEMENT = "SELECT no_such_column FROM jobs"


def test_a_driver_error_is_raised_as_sqlalchemy_raises_it(app):
    seen = []

    def on_error(context):
        seen.append(context.original_exception)

    with app.app_context():
        event.listen(db.engine, "handle_error", on_error)
        try:
            connection = held_connection(db.engine)
            with pytest.raises(sa_exc.DBAPIError) as raised:
                run_on_driver(connection, BAD_STATEMENT)
        finally:
            event.remove(db.engine, "handle_error", on_error)
        assert isinstance(raised.value.orig, db.engine.dialect.loaded_dbapi.Error)
    assert raised.value.statement == BAD_STATEMENT
    assert seen == [raised.value.orig]
    assert connection.usable  # not a disconnect: the connection stays


def test_a_disconnect_invalidates_the_held_connection(app):
    def as_disconnect(context):
        context.is_disconnect = True

    with app.app_context():
        connection = held_connection(db.engine)
        event.listen(db.engine, "handle_error", as_disconnect)
        try:
            with pytest.raises(sa_exc.DBAPIError) as raised:
                run_on_driver(connection, BAD_STATEMENT)
        finally:
            event.remove(db.engine, "handle_error", as_disconnect)
        assert raised.value.connection_invalidated
        assert not connection.usable
        replacement = held_connection(db.engine)
        assert replacement is not connection
        assert run_on_driver(replacement, "SELECT 1").fetchone() is not None


@pytest.mark.parametrize("chunked", [False, True])
def test_werkzeugs_readers_read_the_body_read_body_read(app, chunked):
    body = json.dumps({"state": "running"}).encode()
    headers = {"Content-Type": "application/json"}
    if chunked:
        headers["Transfer-Encoding"] = "chunked"
    with app.test_request_context("/api/jobs/abcdefgh/status", method="POST", data=body, headers=headers):
        if chunked:
            # werkzeug's test client does not chunk; a server that does ends the stream.
            request.environ["wsgi.input_terminated"] = True
            request.environ.pop("CONTENT_LENGTH", None)
        read_body()
        assert request.get_data() == body
        assert request.get_json() == {"state": "running"}


def test_a_form_is_parsed_after_read_body(app):
    with app.test_request_context("/console/jobs/new", method="POST", data={"task": "align", "user": "ops"}):
        read_body()
        assert request.form.to_dict() == {"task": "align", "user": "ops"}
