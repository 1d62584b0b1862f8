"""``/api/docs``: the OpenAPI document rendered by Swagger UI, from the files of the installed
``flask-swagger-ui`` package, so the page works without reaching any other site."""

from __future__ import annotations

from importlib.resources import files

from flask import Blueprint, Response, abort, render_template, send_from_directory

bp = Blueprint("apidocs", __name__)

# Swagger UI's files, as the package ships them.
SWAGGER_UI_DIRECTORY = str(files("flask_swagger_ui") / "dist")
# The files the page loads; nothing else of the package is served.
SWAGGER_UI_FILES = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "LICENSE", "VERSION"})

# Swagger UI sets style attributes and fetches the document; everything comes from here.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@bp.get("/docs")
def docs() -> Response:
    """The page: Swagger UI pointed at ``/api/openapi.json``."""
    response = Response(render_template("apidocs.html"))
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response


@bp.get("/docs/<name>")
def swagger_ui_file(name: str) -> Response:
    """One of Swagger UI's files."""
    if name not in SWAGGER_UI_FILES:
        abort(404)
    return send_from_directory(SWAGGER_UI_DIRECTORY, name, max_age=3600)
