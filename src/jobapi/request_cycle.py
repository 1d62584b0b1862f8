"""What every request goes through, in order.

Before the view: the request gets its id (the client's ``X-Request-ID`` if
it is safe to log, else a new one) and its clock starts, then its body is
read whole within the limit (``payload.read_body``). After the view: its
transaction is committed or rolled back (``transaction.end_transaction``,
which may turn the answer into a 503), its id is echoed beside
``X-Content-Type-Options: nosniff``, and it is logged and counted
(``observability.observe``). Then, whatever happened, its
connection is left clean (``transaction.release``).

Two hooks rather than one per concern: Flask calls each hook through a
proxy of the request context, on every request.
"""

from __future__ import annotations

import os
import re
import time

from flask import Flask, Response, g, request

from . import observability, transaction
from .payload import read_body

# An X-Request-ID the client sends is used only in this shape; anything else
# could forge a field of a log line, so the request gets an id of its own.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def init_request_cycle(app: Flask) -> None:
    """Install the hooks. The after-request hook is registered after every other, so it
    runs first: the others see the answer as it leaves, after the commit."""
    app.before_request(start_request)
    app.after_request(finish_request)
    app.teardown_request(transaction.release)


def start_request() -> None:
    """The request's id and clock, then its body."""
    # The object behind Flask's proxy, looked up once (_get_current_object is its documented way).
    context = g._get_current_object()
    context.request_started = time.perf_counter()
    supplied = request.environ.get("HTTP_X_REQUEST_ID", "")
    # 128 random bits, as a uuid4's hex, without making the UUID.
    context.request_id = supplied if REQUEST_ID.fullmatch(supplied) else os.urandom(16).hex()
    read_body()


def finish_request(response: Response) -> Response:
    """End the transaction, echo the request's id, log and count the answer."""
    response = transaction.end_transaction(response)
    context = g._get_current_object()
    headers = response.headers
    headers["X-Request-ID"] = context.get("request_id", "")
    # No browser may take an answer for anything but its Content-Type says.
    headers["X-Content-Type-Options"] = "nosniff"
    observability.observe(response, context)
    return response
