"""A WSGI app that answers what it was told about the request: for tests of the proxy headers and scheme.

Served by gunicorn with the repository's gunicorn.conf.py:
``gunicorn -c gunicorn.conf.py --pythonpath tests echo_wsgi:app``.
"""

from __future__ import annotations

import json

from werkzeug.wrappers import Request

ECHOED = (
    "HTTP_HOST",
    "HTTP_X_FORWARDED_FOR",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_SSL",
    "HTTP_X_REQUEST_ID",
    "REMOTE_ADDR",
    "wsgi.url_scheme",
)


def app(environ, start_response):
    """Answer a JSON object of the environ's proxy-related keys, ``is_secure`` and the body's length."""
    request = Request(environ)
    document = {key: environ.get(key) for key in ECHOED}
    document["is_secure"] = request.is_secure
    document["body_length"] = len(request.get_data())
    body = json.dumps(document).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
