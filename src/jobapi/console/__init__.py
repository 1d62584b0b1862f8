"""The operator console: server-rendered pages to sign in, watch jobs live, read their
timelines, make, cancel and remove them. Its routes are for people, not part of the API."""

from __future__ import annotations

from flask import Flask, redirect, url_for

from ..extensions import csrf
from .views import bp


def init_console(app: Flask) -> None:
    """CSRF checks for the console's forms, its pages at ``/console/``, and ``/`` leading there."""
    csrf.init_app(app)
    app.register_blueprint(bp, url_prefix="/console")
    app.add_url_rule("/", endpoint="index", view_func=_index)


def _index():
    """The site's root: the console."""
    return redirect(url_for("console.jobs"))

