"""The faults a database can show though it answers: a schema short of the code's, a SQLite
file that cannot be written or whose disk is full, a PostgreSQL server that refuses writes."""

from __future__ import annotations

import os
import sqlite3

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.orm import Session

# PostgreSQL's "cannot execute ... in a read-only transaction".
READ_ONLY_SQLSTATE = "25006"

# Whether new sessions would be read-only: a standby, or
# default_transaction_read_only from the most specific of ALTER ROLE ... IN
# DATABASE, ALTER ROLE, ALTER DATABASE (which a session reads only as it
# begins, so this one's may be stale), else the server's own setting.
POSTGRESQL_READ_ONLY = (
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


# Below this much free space, the next writes (their WAL frames) may fail.
SQLITE_MIN_FREE_BYTES = 1024 * 1024

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
        return postgresql_read_only(*session.execute(text(POSTGRESQL_READ_ONLY)).one())
    return None


def postgresql_read_only(in_recovery: bool, server_default: str, stored_default: str | None) -> str | None:
    if in_recovery:
        return "the server is a read-only standby"
    if _postgresql_true(stored_default if stored_default is not None else server_default):
        return "new sessions are read-only (default_transaction_read_only)"
    return None


def _postgresql_true(value: str) -> bool:
    # PostgreSQL takes any unambiguous prefix of true/yes, and on and 1.
    value = value.strip().lower()
    return value in ("on", "1") or (value != "" and ("true".startswith(value) or "yes".startswith(value)))
