"""Database engines per dialect: SQLite pragmas and write transactions, PostgreSQL timeouts,
and the faults each can show (a server that stops answering, a file that cannot be written)."""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, scoped_session

from . import pooler
from .deadline import ConnectionGate, DeadlineConnection, NoAnswer

# Execution option of a connection whose transaction will write: it begins
# one (BEGIN; BEGIN IMMEDIATE on SQLite, which takes the write lock now).
# Without it, statements run in autocommit: a read needs no transaction.
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
    _track_held_connections(engine)
    if engine.dialect.name == "sqlite":
        _configure_sqlite(engine, config)
    elif engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg":
        _configure_postgresql(engine, config)


# PostgreSQL

# PostgreSQL's "cannot execute ... in a read-only transaction".
READ_ONLY_SQLSTATE = "25006"

# Whether new sessions would be read-only: a standby, or
# default_transaction_read_only from the most specific of ALTER ROLE ... IN
# DATABASE, ALTER ROLE, ALTER DATABASE (which a session reads only as it
# begins, so this one's may be stale), else the server's own setting.
_POSTGRESQL_READ_ONLY = (
    """
    SELECT pg_is_in_recovery(),
           (SELECT CASE WHEN source IN ('database', 'user', 'database user') THEN boot_val ELSE setting END
              FROM pg_settings WHERE name = 'default_transaction_read_only'),
           (SELECT split_part(setting, '=', 2)
              FROM pg_db_role_setting s, unnest(s.setconfig) AS setting
             WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
               AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = current_user))
               AND split_part(setting, '=', 1) = 'default_transaction_read_only'
             ORDER BY s.setrole <> 0 DESC, s.setdatabase <> 0 DESC
             LIMIT 1)
    """
)


def _configure_postgresql(engine: Engine, config: dict[str, Any]) -> None:
    _begin_writes(engine, "BEGIN")
    response_timeout = config["DB_RESPONSE_TIMEOUT"]
    gate = ConnectionGate(connect_timeout=config["DB_CONNECT_TIMEOUT"])

    def make(cargs, cparams) -> DeadlineConnection:
        connection = DeadlineConnection.connect(*cargs, **cparams)
        connection.response_timeout = response_timeout
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
                row = cursor.execute(_POSTGRESQL_READ_ONLY).fetchone()
            dbapi_connection.rollback()
        except psycopg.Error as error:
            raise sa_exc.DisconnectionError(str(error)) from error
        if _postgresql_read_only(*row) is None:
            raise sa_exc.DisconnectionError("a read-only session; the database takes writes again")


# SQLite

# SQLite's primary result codes after which a connection is replaced: one
# opened while its file could not be written stays read-only for good.
_SQLITE_REPLACE_AFTER = frozenset({sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN})

# Below this much free space, the next writes (their WAL frames) may fail.
SQLITE_MIN_FREE_BYTES = 1024 * 1024

# connection record info key: the file was not writable when the connection was opened.
_OPENED_READ_ONLY = "jobapi_opened_read_only"
# connection record info key: (path, (device, inode)) of the file the connection opened.
_OPENED_FILE = "jobapi_opened_file"


def sqlite_file_identity(path: str) -> tuple[int, int] | None:
    """The (device, inode) of the file at ``path``; None if there is none. One stat() call."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def sqlite_file_changed(info: dict[str, Any]) -> bool:
    """Whether the file a connection opened (its record's ``info``) was deleted or replaced since.

    A connection keeps the file it opened, deleted or not: its writes would
    go where no new connection looks, and vanish with the last connection.
    """
    opened = info.get(_OPENED_FILE)
    return opened is not None and sqlite_file_identity(opened[0]) != opened[1]


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
            record.info[_OPENED_READ_ONLY] = sqlite_read_only(path) is not None

        @event.listens_for(engine, "checkout")
        def replace_read_only(_dbapi_connection, record, _proxy):
            if record.info.get(_OPENED_READ_ONLY) and sqlite_read_only(path) is None:
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
            record.info[_OPENED_FILE] = (path, sqlite_file_identity(path))
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


class HeldConnection:
    """A connection of the engine's pool that one thread keeps for a job's own requests.

    gunicorn's threads each serve one request at a time, and the pool has a
    connection for each: a thread that keeps its own pays no checkout and no
    check-in per request. It is replaced once SQLAlchemy finds it broken (a
    disconnect invalidates it), and every statement's error goes through
    SQLAlchemy's handling (``run_on_driver``).
    """

    __slots__ = ("engine", "connection", "driver", "postgresql", "began", "broken", "dbapi_error")

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # SQLAlchemy's Connection, made once: it raises connection failures as
        # SQLAlchemy's errors, and handles the statements' errors (``fail``).
        self.connection = engine.connect()
        self.driver = self.connection.connection.driver_connection
        self.postgresql = engine.dialect.name == "postgresql"
        self.dbapi_error = engine.dialect.loaded_dbapi.Error
        self.began = False
        self.broken = False

    @property
    def usable(self) -> bool:
        """Whether SQLAlchemy has not found the connection broken."""
        return not self.broken

    def fail(self, error: Exception, statement: str, parameters: Any) -> None:
        """Raise a driver's error as SQLAlchemy would for its own statement: wrapped, through the
        engine's handle_error events, invalidating the connection after a disconnect."""
        try:
            self.connection._handle_dbapi_exception(error, statement, parameters, None, None)
        finally:
            self.broken = self.connection.invalidated or self.connection.closed

    def release(self) -> None:
        """Give the connection back to the pool (which replaces it if it was invalidated)."""
        self.connection.close()


_HELD = threading.local()
# Every thread's held connections, by engine: given back when the engine is
# disposed (or collected), so none outlives its pool unclosed.
_ALL_HELD: weakref.WeakKeyDictionary[Engine, set[HeldConnection]] = weakref.WeakKeyDictionary()
_ALL_HELD_LOCK = threading.Lock()


def _release_all(held: set[HeldConnection]) -> None:
    # The pool is going: close the connections themselves, not just give them back.
    for connection in list(held):
        held.discard(connection)
        connection.broken = True  # its thread takes a new one before its next request
        try:
            if not connection.connection.closed:
                connection.connection.invalidate()
            connection.release()
        except Exception:  # noqa: BLE001 - closing what is broken may fail; it is gone either way
            pass


def _track_held_connections(engine: Engine) -> None:
    """Give the engine's held connections back when it is disposed or collected."""
    held: set[HeldConnection] = set()
    with _ALL_HELD_LOCK:
        _ALL_HELD[engine] = held
    event.listen(engine, "engine_disposed", lambda _engine: _release_all(held))
    weakref.finalize(engine, _release_all, held)


def held_connection(engine: Engine, *, write: bool = False) -> HeldConnection:
    """This thread's own connection to the engine's database, checked out once and kept.

    For a write, a PostgreSQL session begun read-only is replaced first, as the
    pool's checkout does (``_configure_postgresql``): the database may take
    writes again. The server reports the setting, so asking costs nothing.
    """
    held: weakref.WeakKeyDictionary[Engine, HeldConnection] | None = getattr(_HELD, "connections", None)
    if held is None:
        held = _HELD.connections = weakref.WeakKeyDictionary()
    connection = held.get(engine)
    if connection is not None and connection.usable:
        if not (write and _opened_read_only(connection)) and not _sqlite_file_changed(connection):
            return connection
    everyone = _ALL_HELD.get(engine)
    if connection is not None:
        if everyone is not None:
            everyone.discard(connection)
        connection.release()
        del held[engine]  # should no new one be made (the database is gone), none is held
    connection = held[engine] = HeldConnection(engine)
    if everyone is not None:
        everyone.add(connection)
    return connection


def _opened_read_only(connection: HeldConnection) -> bool:
    """Whether the connection was opened when the database could not be written (and so
    cannot write now, whatever the database can). The pool's checkout asks this too."""
    if connection.postgresql:
        return connection.driver.info.parameter_status("default_transaction_read_only") == "on"
    return bool(connection.connection.connection.info.get(_OPENED_READ_ONLY))


def _sqlite_file_changed(connection: HeldConnection) -> bool:
    """Whether a held SQLite connection's file was deleted or replaced (then the pool's checkout
    does not let it out again, and a new one is opened on the file there now, if any)."""
    return not connection.postgresql and sqlite_file_changed(connection.connection.connection.info)


def is_postgresql(connection: Connection | HeldConnection) -> bool:
    """Whether the connection is to PostgreSQL (else SQLite)."""
    if isinstance(connection, HeldConnection):
        return connection.postgresql
    return connection.dialect.name == "postgresql"


def run_on_driver(
    connection: Connection | HeldConnection, statement: str, parameters: tuple = (), *, prepare: bool = True
) -> Any:
    """Run one statement on the connection's driver (prepared, on PostgreSQL), for the hot
    paths; SQLAlchemy still handles its errors: its error classes, the engine's
    handle_error events, and the pool's renewal after a disconnect."""
    if isinstance(connection, HeldConnection):
        try:
            if connection.postgresql:
                return pooler.execute(connection.driver, statement, parameters, prepare=prepare)
            return connection.driver.execute(statement, parameters)
        except connection.dbapi_error as error:
            connection.fail(error, statement, parameters)
    driver = connection.connection.driver_connection
    try:
        if connection.dialect.name == "postgresql":
            return pooler.execute(driver, statement, parameters, prepare=True)
        return driver.execute(statement, parameters)
    except connection.dialect.loaded_dbapi.Error as error:
        # What Connection.execute does with a driver's error.
        connection._handle_dbapi_exception(error, statement, parameters, None, None)


def begin_on_driver(connection: HeldConnection) -> None:
    """Begin a writing transaction on the held connection (BEGIN; BEGIN IMMEDIATE on SQLite,
    which takes the write lock now), which ``end_on_driver`` ends."""
    # Not prepared: a statement without parameters costs least as a simple query.
    begin = pooler.begin_statement(connection.driver) if connection.postgresql else "BEGIN IMMEDIATE"
    run_on_driver(connection, begin, prepare=False)
    connection.began = True


def end_on_driver(connection: HeldConnection, *, commit: bool) -> None:
    """Commit (or roll back) the transaction ``begin_on_driver`` began; nothing if none.

    The engine's commit and rollback events fire as for SQLAlchemy's own.
    """
    if not connection.began:
        return
    connection.began = False
    if not connection.usable:
        return  # SQLAlchemy closed it after a disconnect: the server ended the transaction
    listeners = connection.engine.dispatch.commit if commit else connection.engine.dispatch.rollback
    if listeners:
        listeners(connection.connection)
    try:
        connection.driver.commit() if commit else connection.driver.rollback()
    except connection.dbapi_error as error:
        connection.fail(error, "COMMIT" if commit else "ROLLBACK", ())


def as_writer(connection: Connection) -> Connection:
    """A connection (a migration's, say) whose transactions begin as writing ones."""
    return connection.execution_options(**{WRITE_OPTION: True})


# PostgreSQL's undefined table, column and object; SQLite's words for them.
_MISSING_SCHEMA_SQLSTATES = frozenset({"42P01", "42703", "42704"})
_MISSING_SCHEMA_SQLITE = ("no such table", "no such column", "has no column named")


def names_missing_schema(error: sa_exc.DBAPIError) -> bool:
    """The database answered that a table, column or type the statement names does not exist."""
    if getattr(error.orig, "sqlstate", None) in _MISSING_SCHEMA_SQLSTATES:
        return True
    message = str(error.orig)
    return isinstance(error.orig, sqlite3.OperationalError) and any(
        words in message for words in _MISSING_SCHEMA_SQLITE
    )


def sqlite_read_only(path: str) -> str | None:
    """Why the SQLite file at ``path`` (or its WAL files, or its folder) cannot be written, or None."""
    directory = os.path.dirname(os.path.abspath(path))
    for candidate in (path, path + "-wal", path + "-shm"):
        # access() also says no to root on a read-only or immutable file.
        if os.path.exists(candidate) and not os.access(candidate, os.W_OK):
            return f"{os.path.basename(candidate)} is read-only"
    if not os.access(directory, os.W_OK):
        return f"{directory} is read-only"
    return None


def sqlite_disk_full(path: str) -> str | None:
    """Why the file system of the SQLite file at ``path`` has no room for writes, or None."""
    stats = os.statvfs(os.path.dirname(os.path.abspath(path)))
    # root may use the blocks reserved for it; anyone else only the rest.
    blocks = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail
    free = blocks * stats.f_frsize
    if free < SQLITE_MIN_FREE_BYTES:
        return f"only {free} bytes free on its disk"
    return None


def write_problem(session: Session) -> str | None:
    """Why a write would fail now though the database answers, or None: a check for /readyz.

    SQLite: the file, its WAL files or its folder are read-only, or its disk
    is full. PostgreSQL: the server is a standby, or new sessions are
    read-only (``default_transaction_read_only`` from ALTER DATABASE or ALTER
    ROLE, which existing sessions do not see, or from the server's settings).
    """
    bind = session.get_bind()
    if bind.dialect.name == "sqlite":
        path = bind.url.database or ""
        if path in ("", ":memory:") or path.startswith("file:"):
            return None
        return sqlite_read_only(path) or sqlite_disk_full(path)
    if bind.dialect.name == "postgresql":
        return _postgresql_read_only(*session.execute(text(_POSTGRESQL_READ_ONLY)).one())
    return None


def _postgresql_read_only(in_recovery: bool, server_default: str, stored_default: str | None) -> str | None:
    if in_recovery:
        return "the server is a read-only standby"
    if _postgresql_true(stored_default if stored_default is not None else server_default):
        return "new sessions are read-only (default_transaction_read_only)"
    return None


def _postgresql_true(value: str) -> bool:
    # PostgreSQL takes any unambiguous prefix of true/yes, and on and 1.
    value = value.strip().lower()
    return value in ("on", "1") or (value != "" and ("true".startswith(value) or "yes".startswith(value)))
