"""PostgreSQL behind a pooler in transaction mode (PgBouncer): what a connection may keep for
itself, decided once, as it is made; and the direct connection for what needs a session.

Through such a pooler every transaction may run on another server connection,
shared with other clients, so nothing may outlive a transaction: no startup
``options`` (PgBouncer refuses them), no prepared statement (psycopg's own,
after a statement's fifth run, and the hot paths' explicit ones), no ``SET``.
A pooled connection sets the statement timeout in each transaction instead:
``BEGIN; SET LOCAL statement_timeout = …`` as one message, and a statement run
outside a transaction (a read) goes in one message with it, the two as one
implicit transaction, so neither costs a round trip. Times come back in the
server's zone, and answers write them in UTC (``fields.format_timestamp``).

A direct connection keeps what is faster: its session's statement timeout
and zone are set once, and its hot statements are prepared.

``DB_POOLER`` says which a connection is: ``none`` (the settings go as the
startup ``options``, as libpq sends them), ``transaction``, or ``auto`` (the
default), which asks each new connection: a pooler answers the client with a
process id of its own (its cancel key), never the server's
``pg_backend_pid()``, so the two differ only through one. That costs a round
trip per new connection (two for a direct one, which then sets its session).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.pq import TransactionStatus

POOLER_MODES = ("auto", "none", "transaction")

# The attribute of a psycopg connection that holds what each of its transactions
# sets (``SET LOCAL ...``); absent on a direct connection, whose session holds it.
_LOCAL = "jobapi_transaction_settings"


def pooler_mode(value: str) -> str:
    """A ``DB_POOLER`` value, checked: ``auto``, ``none`` or ``transaction``."""
    value = value.strip().lower()
    if value not in POOLER_MODES:
        raise ValueError(f"not one of {', '.join(POOLER_MODES)}")
    return value


def startup_options(config: dict[str, Any]) -> dict[str, str]:
    """libpq connection parameters that set the session as it starts: only where the
    URL is known to be direct (``DB_POOLER=none``)."""
    if config["DB_POOLER"] != "none":
        return {}
    return {"options": f"-c statement_timeout={config['DB_STATEMENT_TIMEOUT_MS']} -c TimeZone=UTC"}


def set_up(connection: psycopg.Connection, config: dict[str, Any]) -> None:
    """Settle a new connection as direct or pooled (see the module), before any other use."""
    mode = config["DB_POOLER"]
    if mode == "none":
        return  # the startup options set the session
    timeout = int(config["DB_STATEMENT_TIMEOUT_MS"])
    autocommit = connection.autocommit
    connection.autocommit = True  # no transaction left open on a shared server
    try:
        if mode == "transaction" or _through_pooler(connection):
            connection.prepare_threshold = None
            setattr(connection, _LOCAL, f"SET LOCAL statement_timeout = {timeout}")
        else:
            connection.execute(f"SET statement_timeout = {timeout}; SET TimeZone = 'UTC'")
    finally:
        connection.autocommit = autocommit


def _through_pooler(connection: psycopg.Connection) -> bool:
    (server_pid,) = connection.execute("SELECT pg_backend_pid()").fetchone()
    return server_pid != connection.info.backend_pid


def is_pooled(connection: Any) -> bool:
    """Whether the driver's connection goes through a transaction pooler."""
    return hasattr(connection, _LOCAL)


def begin_statement(connection: Any, begin: str = "BEGIN") -> str:
    """The statement that begins a transaction on the driver's connection: ``begin``, and on a
    pooled connection the transaction's settings with it (one simple query)."""
    settings = getattr(connection, _LOCAL, None)
    return begin if settings is None else f"{begin}; {settings}"


def execute(connection: psycopg.Connection, statement: str, parameters: Any = (), *, prepare: bool = True) -> psycopg.Cursor:
    """Run one statement on the driver's connection, as the connection allows: prepared if
    asked on a direct one; on a pooled one never prepared, and outside a transaction sent in
    one message after its transaction's settings (bound by the client: one simple query)."""
    settings = getattr(connection, _LOCAL, None)
    if settings is None:
        return connection.execute(statement, parameters, prepare=prepare)
    if connection.pgconn.transaction_status != TransactionStatus.IDLE or statement.startswith("BEGIN"):
        return connection.execute(statement, parameters, prepare=False)
    cursor = psycopg.ClientCursor(connection)
    cursor.execute(f"{settings}; {statement}", parameters)
    cursor.nextset()  # past the SET's result, to the statement's
    return cursor
