"""Database engines per dialect: SQLite pragmas and write transactions, PostgreSQL timeouts
and a deadline on every answer."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, scoped_session

from .deadline import ConnectionGate, DeadlineConnection, NoAnswer

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
                # A peer that vanished (a black-holed network, a dead host):
                # the kernel drops a connection whose sent data goes
                # unacknowledged this long, and probes idle pooled ones, which
                # also keeps firewalls from forgetting them. A server that is
                # frozen but whose kernel still acknowledges is caught by the
                # response deadline (DeadlineConnection) instead.
                "tcp_user_timeout": int(config["DB_RESPONSE_TIMEOUT"] * 1000),
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 5,
                "keepalives_count": 3,
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
    elif engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        _configure_postgresql(engine, config)


def _configure_postgresql(engine: Engine, config: dict[str, Any]) -> None:
    response_timeout = config["DB_RESPONSE_TIMEOUT"]
    gate = ConnectionGate(connect_timeout=config["DB_CONNECT_TIMEOUT"])

    @event.listens_for(engine, "do_connect")
    def connect(_dialect, _record, cargs, cparams):
        connection = gate.connect(lambda: DeadlineConnection.connect(*cargs, **cparams))
        connection.response_timeout = response_timeout
        return connection

    @event.listens_for(engine, "handle_error")
    def on_error(context):
        error = context.original_exception
        if isinstance(error, NoAnswer):
            gate.not_answering()


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
