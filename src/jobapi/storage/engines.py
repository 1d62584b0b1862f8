"""Database engines per dialect: their options, SQLite's pragmas, PostgreSQL's timeouts, the
events that mark a connection broken, and transactions that write (``begin_write``)."""

from __future__ import annotations

import json
import os
import sqlite3
from typing import Any

import orjson
import psycopg
from psycopg.types.json import set_json_loads
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, scoped_session

from ..deadline import ConnectionGate, DeadlineConnection, NoAnswer
from . import pooler
from .connections import (
    OPENED_FILE,
    OPENED_READ_ONLY,
    WRITE_OPTION,
    sqlite_file_changed,
    sqlite_file_identity,
    track_held_connections,
)
from .faults import POSTGRESQL_READ_ONLY, READ_ONLY_SQLSTATE, postgresql_read_only, sqlite_read_only

def engine_options(url: str, config: dict[str, Any]) -> dict[str, Any]:
    """Engine keyword arguments suited to the database the URL names."""
    backend = make_url(url).get_backend_name()
    # Without pre-ping, a connection the database dropped fails its request
    # (503) and SQLAlchemy discards the whole pool, so the next request
    # connects afresh: recovery costs one 503, not a round trip per request.
    options: dict[str, Any] = {"pool_pre_ping": config["DB_POOL_PRE_PING"]}
    if backend == "postgresql":
        options.update(
            # Transactions are begun explicitly, and only by requests that
            # write (``begin_write``): a read costs no BEGIN and no ROLLBACK.
            isolation_level="AUTOCOMMIT",
            pool_size=config["DB_POOL_SIZE"],
            max_overflow=config["DB_POOL_SIZE"],
            # A request waits at most this long for a pooled connection.
            pool_timeout=config["DB_CONNECT_TIMEOUT"],
            connect_args={
                "connect_timeout": config["DB_CONNECT_TIMEOUT"],
                # The statement timeout and UTC sessions (times come back in
                # datetime.UTC, ready to write as documents show them) as the
                # session starts, where DB_POOLER says the URL is direct; else
                # set once connected, or per transaction (pooler.py).
                **pooler.startup_options(config),
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
    track_held_connections(engine)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine, config)
    elif engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        _configure_postgresql(engine, config)



def json_loads(data: bytes) -> Any:
    """JSON from PostgreSQL (a job's args, a record's error, a document's history), parsed by
    orjson, several times faster; what it cannot read (an integer beyond 64 bits) by the
    standard library's parser, as before."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(bytes(data))


def _configure_postgresql(engine: Engine, config: dict[str, Any]) -> None:
    _begin_writes(engine, "BEGIN")
    response_timeout = config["DB_RESPONSE_TIMEOUT"]
    gate = ConnectionGate(connect_timeout=config["DB_CONNECT_TIMEOUT"])

    def make(cargs, cparams) -> DeadlineConnection:
        connection = DeadlineConnection.connect(*cargs, **cparams)
        connection.response_timeout = response_timeout
        set_json_loads(json_loads, connection)
        try:
            pooler.set_up(connection, config)
        except BaseException:
            connection.close()
            raise
        return connection

    @event.listens_for(engine, "do_connect")
    def connect(_dialect, _record, cargs, cparams):
        return gate.connect(lambda: make(cargs, cparams))

    @event.listens_for(engine, "handle_error")
    def on_error(context):
        error = context.original_exception
        if isinstance(error, NoAnswer):
            gate.not_answering()
        # A session begun while the database was read-only stays read-only:
        # drop it (and the pool with it), so that once writes are allowed
        # again new sessions take their places.
        if getattr(error, "sqlstate", None) == READ_ONLY_SQLSTATE:
            context.is_disconnect = True

    @event.listens_for(engine, "checkout")
    def replace_read_only(dbapi_connection, _record, _proxy):
        # Such a session may also sit in the pool, taken by a read: once new
        # sessions may write, replace it rather than fail a write with it.
        # The server reports the setting, so this costs a query only then.
        if dbapi_connection.info.parameter_status("default_transaction_read_only") != "on":
            return
        try:
            with dbapi_connection.cursor() as cursor:
                row = cursor.execute(POSTGRESQL_READ_ONLY).fetchone()
            dbapi_connection.rollback()
        except psycopg.Error as error:
            raise sa_exc.DisconnectionError(str(error)) from error
        if postgresql_read_only(*row) is None:
            raise sa_exc.DisconnectionError("a read-only session; the database takes writes again")


# SQLite

# SQLite's primary result codes after which a connection is replaced: one
# opened while its file could not be written stays read-only for good.
_SQLITE_REPLACE_AFTER = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN})

def _configure_sqlite(engine: Engine, config: dict[str, Any]) -> None:
    _begin_writes(engine, "BEGIN IMMEDIATE")
    busy_ms = int(config["SQLITE_BUSY_TIMEOUT"] * 1000)
    path = engine.url.database or ""
    on_disk = path not in ("", ":memory:") and not path.startswith("file:")
    # Once the file has existed, its absence is a fault, not a database to make:
    # a new connection would make an empty file where the database was.
    existed = [on_disk and os.path.exists(path)]

    if on_disk:

        @event.listens_for(engine, "do_connect")
        def note_writability(_dialect, record, _cargs, _cparams):
            if existed[0] and not os.path.exists(path):
                raise sqlite3.OperationalError(f"the database file {path} is gone (deleted or moved away)")
            # SQLite opens a file it may not write read-only, and the
            # connection stays so; the checkout below replaces it once the
            # file can be written again.
            record.info[OPENED_READ_ONLY] = sqlite_read_only(path) is not None

        @event.listens_for(engine, "checkout")
        def replace_read_only(_dbapi_connection, record, _proxy):
            if record.info.get(OPENED_READ_ONLY) and sqlite_read_only(path) is None:
                raise sa_exc.DisconnectionError("opened read-only; the file is writable again")
            if sqlite_file_changed(record.info):
                raise sa_exc.DisconnectionError("the database file was deleted or replaced")

    @event.listens_for(engine, "handle_error")
    def on_error(context):
        error = context.original_exception
        code = getattr(error, "sqlite_errorcode", None)
        if isinstance(error, sqlite3.Error) and code is not None and code & 0xFF in _SQLITE_REPLACE_AFTER:
            context.is_disconnect = True

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection, record):  # pragma: no cover - exercised via SQLite tests
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
        if on_disk:
            record.info[OPENED_FILE] = (path, sqlite_file_identity(path))
            existed[0] = True


def _begin_writes(engine: Engine, statement: str) -> None:
    """Both drivers run in autocommit; a connection that will write begins its transaction."""

    @event.listens_for(engine, "begin")
    def on_begin(connection):
        # Through a pooler, reads begin one too: the statement timeout is the transaction's.
        driver = connection.connection.driver_connection
        if connection.get_execution_options().get(WRITE_OPTION) or pooler.is_pooled(driver):
            connection.exec_driver_sql(pooler.begin_statement(driver, statement))


def begin_write(session: Session) -> None:
    """Start the session's transaction as one that will write.

    Reads run without a transaction; a request that writes begins one here,
    before its first statement: BEGIN on PostgreSQL (writers then lock the
    rows they change), BEGIN IMMEDIATE on SQLite, which takes the database's
    write lock now.
    """
    if isinstance(session, scoped_session):
        session = session()
    if session.in_transaction():
        if session.connection().get_execution_options().get(WRITE_OPTION):
            return
        raise RuntimeError("begin_write() must start the transaction")
    session.connection(execution_options={WRITE_OPTION: True})


def write_connection(session: Session) -> Connection:
    """The session's connection, its transaction begun as a writing one (``begin_write``)."""
    begin_write(session)
    return session.connection()



def as_writer(connection: Connection) -> Connection:
    """A connection (a migration's, say) whose transactions begin as writing ones."""
    return connection.execution_options(**{WRITE_OPTION: True})


def direct_engine(app) -> Engine | None:
    """An engine on ``DATABASE_DIRECT_URL`` (for what needs a session: migrations, LISTEN),
    set up as the app's own; None when that is ``DATABASE_URL``: use the app's engine."""
    url = app.config.get("DATABASE_DIRECT_URL")
    if not url or url == app.config["SQLALCHEMY_DATABASE_URI"]:
        return None
    # Direct by its name: asked as any new connection is, unless DB_POOLER=none says so already.
    config = {**app.config, "DB_POOLER": "none" if app.config["DB_POOLER"] == "none" else "auto"}
    config["SQLALCHEMY_ENGINE_OPTIONS"] = {}
    engine = create_engine(url, **engine_options(url, config))
    configure_engine(engine, config)
    return engine
