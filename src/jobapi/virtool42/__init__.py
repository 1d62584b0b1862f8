"""Virtool's 42.x jobs API dialect, under ``/virtool42`` (SPEC 12).

Virtool's newest worker runtime (``@virtool/workflow``) claims its own work over
HTTP and speaks camelCase, with integer job ids, declared steps, a success-only
finish and a refused ping as its cancel signal. This package is that dialect as
a thin adapter: its blueprint (``views``), the contract's shapes in marshmallow
and the documents built from a job (``schemas``), and its SQL (``statements``).
Every rule it applies is ``jobapi.jobs.service``'s, shared with the 31.x routes,
the console and the command line, so both dialects serve the same jobs.
"""

from __future__ import annotations

from flask import Flask

URL_PREFIX = "/virtool42"


def init_virtool42(app: Flask) -> None:
    """Serve the dialect under ``/virtool42`` (outside the API's OpenAPI document)."""
    from .views import bp

    app.register_blueprint(bp, url_prefix=URL_PREFIX)
