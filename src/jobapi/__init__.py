"""jobapi: workers read their own job and push its status; operators manage jobs."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask

from .config import DEFAULTS, from_environment, normalize_database_url
from .extensions import db, migrate
from .json_provider import FastJSONProvider
from .sessions import init_sessions
from .storage.engines import configure_engine, engine_options
from .version import __version__

__all__ = ["create_app", "__version__", "MIGRATIONS_DIRECTORY"]


def _migrations_directory() -> Path:
    """Alembic's folder: ``jobapi/migrations`` in a regular install (setup.py ships the
    repository's migrations/ there), else migrations/ beside src/ (a checkout, or an
    editable install)."""
    package = Path(__file__).resolve().parent
    shipped = package / "migrations"
    return shipped if (shipped / "env.py").is_file() else package.parents[1] / "migrations"


MIGRATIONS_DIRECTORY = _migrations_directory()


class JobapiFlask(Flask):
    """Flask, asking once per function whether it is a coroutine function.

    Flask asks of every hook and view on every request (``ensure_sync``);
    jobapi's are all plain functions, and their answers never change.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._synchronous: dict[Any, Any] = {}

    def ensure_sync(self, func):
        try:
            return self._synchronous[func]
        except KeyError:
            answer = self._synchronous[func] = super().ensure_sync(func)
            return answer
        except TypeError:  # an unhashable callable: ask every time
            return super().ensure_sync(func)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then the environment, then ``config``."""
    app = JobapiFlask(__name__, instance_relative_config=True)
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
    app.config["DATABASE_DIRECT_URL"] = normalize_database_url(app.config["DATABASE_DIRECT_URL"] or url)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = engine_options(url, app.config)

    # Answers written by orjson, keys in the order the documents are written in.
    app.json = FastJSONProvider(app)
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

    # The app's parts are imported here, as Flask's factories do: importing
    # jobapi (for jobapi.client, say) does not import the whole app. No module
    # imports this one (tests/test_imports.py).
    from .errors import register_error_handlers
    from .jobs.openapi import document_jobs
    from .jobs.views import bp as jobs_bp
    from .observability import init_observability
    from .openapi import freeze_document, init_openapi
    from .probes import init_probes

    # The API's blueprints are registered through flask-smorest's Api, which
    # documents each route as it comes (jobapi.openapi); each subject adds its
    # own components first.
    api = init_openapi(app)
    document_jobs(api)
    api.register_blueprint(jobs_bp, url_prefix="/api")
    init_observability(app, api)
    init_probes(app, api)
    freeze_document(app, api)
    # After the Api's own: errors.py answers every error, on every route, with the one envelope.
    register_error_handlers(app)

    # Pages for people, not part of the API (nor of its document): the
    # operator console and the API's docs.
    from .apidocs import bp as apidocs_bp
    from .console import init_console

    init_console(app)
    app.register_blueprint(apidocs_bp, url_prefix="/api")

    # Virtool's 42.x workers speak a dialect of their own, on the same jobs.
    from .virtool42 import init_virtool42

    init_virtool42(app)

    # Last of the hooks, so its after-request hook runs first (see the module).
    from .request_cycle import init_request_cycle

    init_request_cycle(app)

    from .cli import jobs_cli, tokens_cli

    app.cli.add_command(jobs_cli)
    app.cli.add_command(tokens_cli)
    app.shell_context_processor(_shell_context)
    return app


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
