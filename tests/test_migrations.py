"""The migrations build exactly the models' schema, and the database is at the newest revision."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from jobapi import MIGRATIONS_DIRECTORY
from jobapi.extensions import db


def script_directory() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIRECTORY))
    return ScriptDirectory.from_config(config)


def test_migrated_schema_matches_the_models(app):
    with app.app_context(), db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, db.metadata)

    assert differences == []


def test_migrations_have_one_head():
    heads = script_directory().get_heads()

    assert len(heads) == 1


def test_database_is_at_the_head_revision(app):
    with app.app_context(), db.engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_heads()

    assert current == tuple(script_directory().get_heads())


def test_models_tables_are_all_migrated(app):
    with app.app_context(), db.engine.connect() as connection:
        tables = set(db.inspect(connection).get_table_names())

    assert set(db.metadata.tables) <= tables
    assert {"jobs", "job_status", "alembic_version"} <= tables
