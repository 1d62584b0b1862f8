"""jobapi: workers read their own job and push its status; operators manage jobs."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from flask import Flask, g, request

from .config import DEFAULTS, from_environment, normalize_database_url
from .extensions import db, migrate
from .sessions import init_sessions
from .storage import configure_engine, engine_options

try:
    __version__ = version("jobapi")
except PackageNotFoundError:  # pragma: no cover - imported from a checkout that was never installed
    __version__ = "0.0.0"

# migrations/ sits at the repository root, beside src/.
MIGRATIONS_DIRECTORY = Path(__file__).resolve().parents[2] / "migrations"

# An X-Request-ID the client sends is used only in this shape; anything else
# could forge a field of a log line, so the request gets an id of its own.
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then the environment, then ``config``."""
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(DEFAULTS)
    app.config.from_mapping(from_environment())
    if config:
        app.config.from_mapping(config)

    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if not url:
        os.makedirs(app.instance_path, exist_ok=True)
        url = "sqlite:///" + os.path.join(app.instance_path, "jobapi.sqlite")
    url = normalize_database_url(url)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(url, app.config)

    # Keep keys in the order the documents are written in.
    app.json.sort_keys = False
    init_sessions(app)

    db.init_app(app)
    migrate.init_app(
        app,
        db,
        directory=str(app.config.get("MIGRATIONS_DIRECTORY") or MIGRATIONS_DIRECTORY),
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with app.app_context():
        configure_engine(db.engine, app.config)

    app.before_request(_assign_request_id)
    app.after_request(_echo_request_id)

    from .errors import register_error_handlers
    from .payload import read_body

    register_error_handlers(app)
    # Every body is read whole, within the limit, before anything else looks at it.
    app.before_request(read_body)

    from .jobs.views import bp as jobs_bp
    from .observability import init_observability
    from .openapi import freeze_document, init_openapi
    from .probes import init_probes

    # The API's blueprints are registered through flask-smorest's Api, which
    # documents each route as it comes (jobapi.openapi).
    api = init_openapi(app)
    api.register_blueprint(jobs_bp, url_prefix="/api")
    init_observability(app, api)
    init_probes(app, api)
    freeze_document(app, api)

    # Pages for people, not part of the API (nor of its document): the
    # operator console and the API's docs.
    from .apidocs import bp as apidocs_bp
    from .console import init_console

    init_console(app)
    app.register_blueprint(apidocs_bp, url_prefix="/api")

    # Last of the after_request hooks, so it runs first: the others see the
    # answer as it leaves, after the commit.
    from .transaction import init_transactions

    init_transactions(app)

    from .cli import jobs_cli, tokens_cli

    app.cli.add_command(jobs_cli)
    app.cli.add_command(tokens_cli)
    app.shell_context_processor(_shell_context)
    return app


def _assign_request_id() -> None:
    supplied = request.headers.get("X-Request-ID", "")
    g.request_id = supplied if REQUEST_ID.fullmatch(supplied) else uuid.uuid4().hex


def _echo_request_id(response):
    response.headers["X-Request-ID"] = g.get("request_id", "")
    return response


def _shell_context() -> dict[str, Any]:
    import sqlalchemy

    from .models import ApiToken, Job, JobStatus

    return {
        "db": db,
        "session": db.session,
        "Job": Job,
        "JobStatus": JobStatus,
        "ApiToken": ApiToken,
        "sqlalchemy": sqlalchemy,
        "select": sqlalchemy.select,
    }
