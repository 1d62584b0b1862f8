"""The migrations build exactly the models' schema, and the database is at the newest revision."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade
from sqlalchemy import create_engine, select, text, update
from sqlalchemy.engine import make_url

from jobapi import MIGRATIONS_DIRECTORY, create_app
from jobapi.extensions import db
from jobapi.models import Job, JobStatus, utcnow


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


@pytest.fixture
def scratch_database_url(database_url, tmp_path) -> Iterator[str]:
    """An empty database beside the test database, for migrating step by step."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        yield f"sqlite:///{tmp_path / 'scratch.sqlite'}"
        return
    scratch = url.set(database=f"{url.database}_migrations")
    admin = create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{scratch.database}" WITH (FORCE)')
        connection.exec_driver_sql(f'CREATE DATABASE "{scratch.database}"')
    yield scratch.render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{scratch.database}" WITH (FORCE)')
    admin.dispose()


def test_virtool_migration_keeps_string_errors_and_comes_back(scratch_database_url):
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": scratch_database_url})
    directory = str(MIGRATIONS_DIRECTORY)
    with app.app_context():
        upgrade(directory=directory, revision="0003")
        now = utcnow()
        db.session.execute(
            text(
                "INSERT INTO jobs (id, task, args, proc, mem, user_id, key_digest, created_at, state, "
                "stage, progress, updated_at, status_count) VALUES ('abcdefgh', 't', '{}', 1, 1, 'u', "
                ":digest, :now, 'error', 'build', 40, :now, 2)"
            ),
            {"digest": "0" * 64, "now": now},
        )
        for seq, state, error in ((1, "waiting", None), (2, "error", "bowtie2-build exited 137")):
            db.session.execute(
                text(
                    "INSERT INTO job_status (job_id, seq, state, stage, error, progress, timestamp) "
                    "VALUES ('abcdefgh', :seq, :state, 'build', :error, 40, :now)"
                ),
                {"seq": seq, "state": state, "error": error, "now": now},
            )
        db.session.commit()

        upgrade(directory=directory)
        records = db.session.scalars(select(JobStatus).order_by(JobStatus.seq)).all()
        assert [r.error for r in records] == [None, "bowtie2-build exited 137"]
        db.session.rollback()
        # The widened state check takes Virtool's states.
        db.session.execute(update(Job).values(state="terminated"))
        db.session.commit()

        downgrade(directory=directory, revision="0003")
        rows = db.session.execute(text("SELECT error FROM job_status ORDER BY seq")).scalars().all()
        assert rows == [None, "bowtie2-build exited 137"]
        assert db.session.execute(text("SELECT state FROM jobs")).scalar_one() == "error"
        db.session.commit()
        upgrade(directory=directory)
        db.session.remove()
        db.engine.dispose()
