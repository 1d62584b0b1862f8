"""Signed session cookies for the console: the secret key that signs them, and the cookie's flags.

``SECRET_KEY`` comes from the environment. When it is unset, a random key is
made once and kept in a file (``SECRET_KEY_FILE``, by default ``secret_key``
in the instance folder, mode 0600), so sessions survive restarts and every
gunicorn worker signs with the same key.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from pathlib import Path

from flask import Flask, Request, request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface

log = logging.getLogger(__name__)

SECRET_KEY_FILE_NAME = "secret_key"
# A key read from a file must be at least this long to be taken as one.
MIN_KEY_LENGTH = 32


class SecretKeyError(RuntimeError):
    """The secret key file cannot be made or read."""


def instance_secret_key(path: str | os.PathLike[str]) -> str:
    """The key kept in ``path``, made there first if there is none.

    Workers starting at once may all find no file: each writes a key of its
    own to a temporary file and links it into place, which only one link can
    do (the link is atomic and fails if the name exists). So the file is
    never seen half-written, and every worker reads the one key that won.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".secret_key-")
        try:
            # mkstemp makes the file 0600: readable by this user alone.
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_hex(32) + "\n")
                file.flush()
                os.fsync(file.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                pass  # another process made it first: its key is the one
        finally:
            os.unlink(temporary)
    key = path.read_text(encoding="ascii").strip()
    if len(key) < MIN_KEY_LENGTH:
        raise SecretKeyError(
            f"{path} holds no usable key (shorter than {MIN_KEY_LENGTH} characters); "
            "remove it to have a new one made, or set SECRET_KEY"
        )
    return key


# Where the console's pages are: the only routes with a session.
CONSOLE_PATH = "/console"


class ConsoleSessionInterface(SecureCookieSessionInterface):
    """Flask's signed cookie, scoped to the console and Secure whenever the request was HTTPS.

    ``request.is_secure`` is true when the server saw HTTPS, or a trusted
    proxy said so (gunicorn reads ``X-Forwarded-Proto`` from the addresses in
    its ``forwarded_allow_ips``).
    """

    def open_session(self, app: Flask, incoming: Request) -> SecureCookieSession | None:
        """The console's session; no other route has one (the API's requests pay nothing for it)."""
        if not incoming.path.startswith(CONSOLE_PATH):
            return None  # Flask gives the request a null session, which is never saved
        return super().open_session(app, incoming)

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config["SESSION_COOKIE_SECURE"]) or request.is_secure

    def get_cookie_path(self, app: Flask) -> str:
        # Only the console reads the session: the API never receives the cookie.
        return app.config["SESSION_COOKIE_PATH"] or (request.script_root + CONSOLE_PATH)


def init_sessions(app: Flask) -> None:
    """Give the app its secret key and the console's session cookie."""
    app.config["SESSION_COOKIE_HTTPONLY"] = True
    app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    app.session_interface = ConsoleSessionInterface()
    if app.config.get("SECRET_KEY"):
        return
    path = app.config.get("SECRET_KEY_FILE") or os.path.join(app.instance_path, SECRET_KEY_FILE_NAME)
    try:
        app.config["SECRET_KEY"] = instance_secret_key(path)
    except (OSError, SecretKeyError) as error:
        # The API needs no key: it keeps serving, and the console says what is missing.
        log.warning("no secret key, so the console cannot sign anyone in: %s; set SECRET_KEY", error)
