"""Alembic environment: migrates the database of the app that ``flask db`` builds."""

import logging
from logging.config import fileConfig

from alembic import context
from flask import current_app

from jobapi.deadline import without_response_deadline
from jobapi.storage.engines import as_writer, direct_engine

config = context.config
if config.config_file_name and not logging.getLogger().handlers:
    fileConfig(config.config_file_name, disable_existing_loggers=False)
logger = logging.getLogger("alembic.env")

migrate_ext = current_app.extensions["migrate"]
# Migrations hold a session of their own: through DATABASE_DIRECT_URL where it
# is not DATABASE_URL (which may be a pooler in transaction mode).
own_engine = direct_engine(current_app)
engine = own_engine or migrate_ext.db.engine
config.set_main_option(
    "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
)
target_metadata = migrate_ext.db.metadata


def run_migrations_offline() -> None:
    """Emit the migrations as SQL, without a database."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _skip_empty_autogenerate(context_, revision, directives) -> None:
    if getattr(config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
        directives[:] = []
        logger.info("No changes in schema detected.")


def _render_item(type_, obj, autogen_context):
    # Migrations name plain SQLAlchemy types, never the app's own decorators.
    impl = getattr(obj, "impl", None)
    if type_ == "type" and impl is not None and obj.__class__.__module__.startswith("jobapi."):
        return f"sa.{impl!r}"
    return False


def _sqlite_foreign_keys(connection, enabled: bool) -> None:
    # Batch migrations copy and drop tables; with foreign keys on, dropping
    # jobs would cascade into job_status. The pragma only works outside a
    # transaction, so it goes straight to the driver's connection.
    if connection.dialect.name == "sqlite":
        raw = connection.connection.driver_connection
        raw.execute(f"PRAGMA foreign_keys={'ON' if enabled else 'OFF'}")


def run_migrations_online() -> None:
    """Run the migrations against the app's database, in one transaction."""
    conf_args = dict(migrate_ext.configure_args)
    conf_args.setdefault("process_revision_directives", _skip_empty_autogenerate)
    conf_args.setdefault("render_item", _render_item)
    # Like the statement timeout below, the client's deadline on answers is
    # for requests, not for building indexes on large tables.
    with engine.connect() as plain, without_response_deadline(plain):
        # Migrations write: their transaction begins as a writing one.
        connection = as_writer(plain)
        _sqlite_foreign_keys(connection, False)
        try:
            context.configure(
                connection=connection, target_metadata=target_metadata, **conf_args
            )
            with context.begin_transaction():
                if connection.dialect.name == "postgresql":
                    # The app's statement timeout is for requests, not for
                    # building indexes on large tables.
                    context.execute("SET LOCAL statement_timeout = 0")
                context.run_migrations()
            connection.commit()
        finally:
            _sqlite_foreign_keys(connection, True)


try:
    if context.is_offline_mode():
        run_migrations_offline()
    else:
        run_migrations_online()
finally:
    if own_engine is not None:
        own_engine.dispose()
