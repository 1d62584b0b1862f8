"""The migrations build exactly the models' schema, and the database is at the newest revision."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

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
from jobapi.storage.engines import write_connection
from jobapi.jobs import service
from jobapi.models import Counter, Job, JobStatus, User, utcnow


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


def test_numbers_and_user_ids_are_given_to_existing_jobs_in_creation_order(scratch_database_url):
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": scratch_database_url})
    directory = str(MIGRATIONS_DIRECTORY)
    with app.app_context():
        upgrade(directory=directory, revision="0005")
        now = utcnow()
        # Ids in another order than their times, and a tie broken by id.
        made = [("zzzzzzzz", "bob", 3), ("mmmmmmmm", "alice", 1), ("aaaaaaaa", "bob", 2), ("bbbbbbbb", "carol", 2)]
        for job_id, user, minutes in made:
            db.session.execute(
                text(
                    "INSERT INTO jobs (id, task, args, proc, mem, user_id, key_digest, created_at, state, "
                    "stage, progress, updated_at, status_count, claimed_by) VALUES (:id, 't', '{}', 1, 1, :user, "
                    ":digest, :at, 'waiting', NULL, 0, :at, 1, :runner)"
                ),
                {"id": job_id, "user": user, "digest": "0" * 64, "at": now - timedelta(minutes=10 - minutes),
                 "runner": "r" * 64},
            )
        db.session.commit()

        upgrade(directory=directory)
        numbers = dict(db.session.execute(select(Job.id, Job.number)).all())
        assert numbers == {"mmmmmmmm": 1, "aaaaaaaa": 2, "bbbbbbbb": 3, "zzzzzzzz": 4}
        users = dict(db.session.execute(select(User.handle, User.id)).all())
        assert sorted(users, key=users.get) == ["alice", "bob", "carol"]
        assert db.session.get(Counter, "job_number").value == 4
        db.session.rollback()
        new = service.create_job(write_connection(db.session), task="t", user="dave")
        db.session.commit()
        assert new.job.number == 5
        assert db.session.scalar(select(User.id).where(User.handle == "dave")) > max(users.values())
        # A runner id as long as 42.x workers make them fits now.
        db.session.execute(update(Job).where(Job.id == new.job.id).values(claimed_by="p" * 255))
        db.session.commit()

        downgrade(directory=directory, revision="0005")
        assert db.session.execute(text("SELECT COUNT(*) FROM jobs")).scalar_one() == 5
        db.session.commit()
        upgrade(directory=directory)
        assert db.session.get(Job, new.job.id).number == 5
        db.session.remove()
        db.engine.dispose()
