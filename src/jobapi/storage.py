"""Database engines per dialect: SQLite pragmas and write transactions, PostgreSQL timeouts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, scoped_session

# Execution option that asks SQLite for the write lock when the transaction begins.
WRITE_OPTION = "jobapi_write"


def engine_options(url: str, config: dict[str, Any]) -> dict[str, Any]:
    """Engine keyword arguments suited to the database the URL names."""
    backend = make_url(url).get_backend_name()
    # Without pre-ping, a connection the database dropped fails its request
    # (503) and SQLAlchemy discards the whole pool, so the next request
    # connects afresh: recovery costs one 503, not a round trip per request.
    options: dict[str, Any] = {"pool_pre_ping": config["DB_POOL_PRE_PING"]}
    if backend == "postgresql":
        options.update(
            pool_size=config["DB_POOL_SIZE"],
            max_overflow=config["DB_POOL_SIZE"],
            # A request waits at most this long for a pooled connection.
            pool_timeout=config["DB_CONNECT_TIMEOUT"],
            connect_args={
                "connect_timeout": config["DB_CONNECT_TIMEOUT"],
                "options": f"-c statement_timeout={config['DB_STATEMENT_TIMEOUT_MS']}",
                "application_name": "jobapi",
            },
        )
    elif backend == "sqlite":
        options.update(
            connect_args={"timeout": config["SQLITE_BUSY_TIMEOUT"]},
        )
    options.update(config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
    return options


def configure_engine(engine: Engine, config: dict[str, Any]) -> None:
    """Install the per-connection set-up a dialect needs."""
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine, config)


def _configure_sqlite(engine: Engine, config: dict[str, Any]) -> None:
    busy_ms = int(config["SQLITE_BUSY_TIMEOUT"] * 1000)

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, _record):  # pragma: no cover - exercised via SQLite tests
        # Take over BEGIN from the sqlite3 module so a writing transaction can
        # begin IMMEDIATE: a reader that later tries to write gets SQLITE_BUSY
        # at once, without waiting on the busy timeout.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        if connection.get_execution_options().get(WRITE_OPTION):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


def begin_write(session: Session) -> None:
    """Start the session's transaction as one that will write.

    On SQLite this takes the database's write lock now (BEGIN IMMEDIATE); on
    PostgreSQL writers lock the rows they change instead, so nothing happens.
    It must come before anything else in the transaction.
    """
    if isinstance(session, scoped_session):
        session = session()
    if session.in_transaction():
        if session.connection().get_execution_options().get(WRITE_OPTION):
            return
        raise RuntimeError("begin_write() must start the transaction")
    session.connection(execution_options={WRITE_OPTION: True})


def begin_read(session: Session) -> None:
    """Let a request that only reads run without a transaction on PostgreSQL.

    Its statements then cost no BEGIN and ROLLBACK round trips; each reads
    committed data. SQLite keeps its (cheap, local) read transaction.
    """
    if isinstance(session, scoped_session):
        session = session()
    if session.in_transaction() or session.get_bind().dialect.name != "postgresql":
        return
    session.connection(execution_options={"isolation_level": "AUTOCOMMIT"})
