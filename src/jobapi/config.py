"""Configuration defaults and the environment variables that override them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .client_address import DEFAULT_TRUSTED_PROXIES, proxy_networks
from .storage.pooler import pooler_mode

DEFAULTS: dict[str, Any] = {
    # Unset: an embedded SQLite file in the instance folder (see create_app).
    "SQLALCHEMY_DATABASE_URI": None,
    "SQLALCHEMY_TRACK_MODIFICATIONS": False,
    "SQLALCHEMY_ENGINE_OPTIONS": {},
    # What needs a PostgreSQL session of its own (migrations) connects here;
    # unset: DATABASE_URL. See storage/pooler.py.
    "DATABASE_DIRECT_URL": None,
    # Whether DATABASE_URL reaches PostgreSQL through a pooler in transaction
    # mode (PgBouncer): "auto" (asked of each new connection), "none" or
    # "transaction". See storage/pooler.py.
    "DB_POOLER": "auto",
    # Request bodies over this size are refused with 413 before they are read.
    "MAX_CONTENT_LENGTH": 64 * 1024,
    # Seconds to wait for a connection to PostgreSQL before answering 503.
    "DB_CONNECT_TIMEOUT": 2,
    # Milliseconds a PostgreSQL statement (or a lock wait) may take; with the
    # connect timeout, a request on a sick database answers 503 within 5 s.
    "DB_STATEMENT_TIMEOUT_MS": 2500,
    # Seconds jobapi waits for PostgreSQL to answer one statement, commit or
    # rollback before it gives the connection up (storage/engines.py): a frozen server
    # or a black-holed network cannot run the server's own timeout. Longer
    # than the statement timeout, so a server that is merely slow answers first.
    "DB_RESPONSE_TIMEOUT": 5.0,
    # Test each pooled connection with a round trip before use (see storage/engines.py).
    "DB_POOL_PRE_PING": False,
    # Connections kept per process; gunicorn.conf.py sizes it to its threads.
    "DB_POOL_SIZE": 5,
    # Seconds a SQLite writer waits for the write lock before giving up.
    "SQLITE_BUSY_TIMEOUT": 10,
    # Seconds a client is told to wait after a 503.
    "RETRY_AFTER_SECONDS": 5,
    # Seconds a finished job's key still reads the job and replays its last push.
    "JOB_KEY_GRACE_SECONDS": 600,
    # Status records a job may hold; a push past it is refused (SPEC 8).
    "JOB_MAX_STATUS_RECORDS": 10_000,
    # Who may acquire a job by its id (SPEC 7.1): "runner" (a runner token) or "open" (anyone).
    "JOB_ACQUIRE": "runner",
    # "text" (gunicorn's line format) or "json" (one object a line); see logs.py.
    "LOG_FORMAT": "text",
    # Peers whose X-Forwarded-For names the client in log lines: comma-separated
    # addresses or networks (client_address.py). Loopback: nginx on this machine.
    "TRUSTED_PROXIES": DEFAULT_TRUSTED_PROXIES,
    # Signs the console's session cookie. Unset: a random key kept in
    # SECRET_KEY_FILE (default: secret_key in the instance folder); see sessions.py.
    "SECRET_KEY": None,
    "SECRET_KEY_FILE": None,
    "SESSION_COOKIE_NAME": "jobapi_session",
    # Seconds a console sign-in lasts.
    "PERMANENT_SESSION_LIFETIME": 12 * 3600,
    # CSRF tokens are checked on the console's forms only (never on the API,
    # whose callers send bearer tokens or job keys), and live as long as the sign-in.
    "WTF_CSRF_CHECK_DEFAULT": False,
    "WTF_CSRF_TIME_LIMIT": None,
    # Jobs on one page of the console.
    "CONSOLE_PAGE_SIZE": 50,
}

LOG_FORMATS = ("text", "json")
ACQUIRE_MODES = ("runner", "open")


def acquire_mode(value: str) -> str:
    """A ``JOB_ACQUIRE`` value, checked: ``runner`` or ``open``."""
    value = value.strip().lower()
    if value not in ACQUIRE_MODES:
        raise ValueError(f"not one of {', '.join(ACQUIRE_MODES)}")
    return value


def positive_int(value: str) -> int:
    """An integer of at least 1."""
    number = int(value)
    if number < 1:
        raise ValueError(f"{value!r} is less than 1")
    return number


def log_format(value: str) -> str:
    """A ``LOG_FORMAT`` value, checked: ``text`` or ``json``."""
    value = value.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(f"not one of {', '.join(LOG_FORMATS)}")
    return value


def address_list(value: str) -> str:
    """A ``TRUSTED_PROXIES`` value, checked: comma-separated addresses or networks."""
    proxy_networks(value)
    return value


def parse_bool(value: str) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{value!r} is not a boolean")


# Environment variable -> (config key, parser).
ENVIRONMENT: dict[str, tuple[str, Any]] = {
    "DATABASE_URL": ("SQLALCHEMY_DATABASE_URI", str),
    "DATABASE_DIRECT_URL": ("DATABASE_DIRECT_URL", str),
    "DB_POOLER": ("DB_POOLER", pooler_mode),
    "DB_CONNECT_TIMEOUT": ("DB_CONNECT_TIMEOUT", int),
    "DB_STATEMENT_TIMEOUT_MS": ("DB_STATEMENT_TIMEOUT_MS", int),
    "DB_RESPONSE_TIMEOUT": ("DB_RESPONSE_TIMEOUT", float),
    "DB_POOL_SIZE": ("DB_POOL_SIZE", int),
    "DB_POOL_PRE_PING": ("DB_POOL_PRE_PING", parse_bool),
    "SQLITE_BUSY_TIMEOUT": ("SQLITE_BUSY_TIMEOUT", int),
    "JOB_KEY_GRACE_SECONDS": ("JOB_KEY_GRACE_SECONDS", float),
    "RETRY_AFTER_SECONDS": ("RETRY_AFTER_SECONDS", int),
    "LOG_FORMAT": ("LOG_FORMAT", log_format),
    "TRUSTED_PROXIES": ("TRUSTED_PROXIES", address_list),
    "JOB_MAX_STATUS_RECORDS": ("JOB_MAX_STATUS_RECORDS", positive_int),
    "JOB_ACQUIRE": ("JOB_ACQUIRE", acquire_mode),
    "SECRET_KEY": ("SECRET_KEY", str),
    "SECRET_KEY_FILE": ("SECRET_KEY_FILE", str),
}


def from_environment(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Read the settings the environment gives, parsed; empty variables are ignored."""
    environ = os.environ if environ is None else environ
    settings: dict[str, Any] = {}
    for variable, (key, parse) in ENVIRONMENT.items():
        value = environ.get(variable, "").strip()
        if not value:
            continue
        try:
            settings[key] = parse(value)
        except ValueError:
            raise ValueError(f"{variable}={value!r} is not a valid {parse.__name__}") from None
    return settings


def normalize_database_url(url: str) -> str:
    """Select psycopg 3 for PostgreSQL URLs that name no driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url
