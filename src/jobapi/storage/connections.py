"""The connection a thread keeps for a job's own requests, and statements run on the driver
directly (``run_on_driver``) with SQLAlchemy's handling of their errors all the same."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from sqlalchemy import Connection, Engine, event

from . import pooler

# Execution option of a connection whose transaction will write: it begins
# one (BEGIN; BEGIN IMMEDIATE on SQLite, which takes the write lock now).
# Without it, statements run in autocommit: a read needs no transaction.
WRITE_OPTION = "jobapi_write"

# connection record info key: the SQLite file was not writable when the connection was opened.
OPENED_READ_ONLY = "jobapi_opened_read_only"
# connection record info key: (path, (device, inode)) of the SQLite file the connection opened.
OPENED_FILE = "jobapi_opened_file"


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
    opened = info.get(OPENED_FILE)
    return opened is not None and sqlite_file_identity(opened[0]) != opened[1]

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
        """Raise a driver's error as SQLAlchemy would for its own statement (``raise_as_sqlalchemy``),
        noting whether SQLAlchemy found the connection broken."""
        try:
            raise_as_sqlalchemy(self.connection, error, statement, parameters)
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


def track_held_connections(engine: Engine) -> None:
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
    return bool(connection.connection.connection.info.get(OPENED_READ_ONLY))


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
    connection: Connection | HeldConnection, statement: str, parameters: Any = (), *, prepare: bool = True
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
        raise_as_sqlalchemy(connection, error, statement, parameters)


def raise_as_sqlalchemy(connection: Connection, error: Exception, statement: str, parameters: Any) -> None:
    """Raise a driver's error as SQLAlchemy does for a statement it ran itself: wrapped in its
    error classes, through the engine's handle_error events (``engines``: a frozen server, a
    read-only one, a SQLite file that cannot be written), invalidating the connection, and the
    pool's older ones, after a disconnect.

    SQLAlchemy has no public way to do this for a statement it did not run:
    its public way to run one (``exec_driver_sql``) builds an execution
    context and a result for every statement, which the hot paths skip (the
    benchmarks' "Where the time goes"). This calls ``Connection``'s own
    handler, the one ``exec_driver_sql`` calls; ``tests/test_driver_errors.py``
    pins what it does, so an upgrade that changes it fails there.
    """
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
