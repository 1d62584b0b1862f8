"""A deadline on every answer PostgreSQL owes a request: a frozen server or a black-holed
network costs a 503 within seconds, never a request hung for the whole outage."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psycopg
from sqlalchemy import Connection


class _Watchdog:
    """Shuts the socket of a connection that has waited on its server past a deadline.

    A frozen server (or a network that silently drops everything) never
    answers and never closes the connection, and its statement_timeout cannot
    fire; a socket shut down here wakes the waiting thread at once with an
    error. One thread per process, started when first needed.
    """

    def __init__(self) -> None:
        self._tokens = itertools.count()
        self.reset()

    def reset(self) -> None:
        """Forget everything: in a forked child, the parent's thread and lock are not its own."""
        self._condition = threading.Condition()
        self._armed: dict[int, tuple[float, psycopg.Connection, int]] = {}
        self._fired: set[int] = set()
        self._wake_at: float | None = None
        self._running = False

    def arm(self, connection: psycopg.Connection, fd: int, seconds: float) -> int:
        """Watch ``fd`` of ``connection`` for ``seconds``; the token disarms it."""
        token = next(self._tokens)
        deadline = time.monotonic() + seconds
        with self._condition:
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="jobapi-db-watchdog", daemon=True).start()
            self._armed[token] = (deadline, connection, fd)
            if self._wake_at is None or deadline < self._wake_at:
                self._condition.notify()
        return token

    def disarm(self, token: int) -> bool:
        """Stop watching; True if the deadline had passed and the socket was shut."""
        with self._condition:
            self._armed.pop(token, None)
            if token in self._fired:
                self._fired.discard(token)
                return True
            return False

    def _run(self) -> None:
        with self._condition:
            while True:
                now = time.monotonic()
                for token, (deadline, connection, fd) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[token]
                        self._fired.add(token)
                        _shut_down(connection, fd)
                self._wake_at = min((entry[0] for entry in self._armed.values()), default=None)
                self._condition.wait(None if self._wake_at is None else self._wake_at - now)


def _shut_down(connection: psycopg.Connection, fd: int) -> None:
    try:
        if connection.pgconn.socket != fd:
            return  # libpq has closed it already (and the number may be reused)
        duplicate = socket.socket(fileno=os.dup(fd))
    except (psycopg.Error, OSError):
        return
    with duplicate:
        try:
            # Shut down, not closed: the socket stays libpq's, which now reads
            # an end of file and fails the wait with OperationalError.
            duplicate.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


_WATCHDOG = _Watchdog()
os.register_at_fork(after_in_child=_WATCHDOG.reset)


class NoAnswer(psycopg.OperationalError):
    """PostgreSQL did not answer within the response deadline; the connection is closed."""


class DeadlineConnection(psycopg.Connection):
    """A psycopg connection whose every wait on the server ends within ``response_timeout`` s.

    Every statement, fetch, commit and rollback waits in ``wait()``. When the
    deadline passes, the watchdog shuts the socket, the wait fails, and the
    connection is broken: SQLAlchemy discards it (and refreshes the pool), and
    the request answers 503. What the server had received and not yet run,
    it runs when it wakes, then sees the closed connection and rolls back;
    only a COMMIT already sent may still take effect, which is why clients
    retry with an Idempotency-Key.
    """

    response_timeout: float | None = None

    def wait(self, gen, *args, **kwargs):
        """Wait for the server as psycopg does, but no longer than the deadline."""
        timeout = self.response_timeout
        try:
            fd = self.pgconn.socket
        except psycopg.OperationalError:
            timeout = None  # closed: psycopg raises its own error
        if not timeout:  # None or 0: no deadline
            return super().wait(gen, *args, **kwargs)
        token = _WATCHDOG.arm(self, fd, timeout)
        try:
            return super().wait(gen, *args, **kwargs)
        except psycopg.OperationalError as error:
            if _WATCHDOG.disarm(token):
                raise NoAnswer(f"no answer from the database within {timeout:g} s") from error
            raise
        finally:
            _WATCHDOG.disarm(token)


# Seconds after a failed connection attempt during which no other is made.
QUIET_SECONDS = 1.0


class NotTried(psycopg.OperationalError):
    """The server has just failed to answer; no new connection was tried."""


class ConnectionGate:
    """While the server is not answering, lets one connection attempt through at a time.

    Once a wait has passed its deadline, every pooled connection is dropped,
    and each request queued behind would wait out a connection attempt of
    its own (the connect timeout), one after another, far past any deadline.
    Instead, requests that need a connection meanwhile wait on the attempt
    under way and share its outcome, and for ``quiet`` seconds after a failed
    one they answer 503 at once. The first connection made ends all this.
    """

    def __init__(self, connect_timeout: float, quiet: float = QUIET_SECONDS) -> None:
        self.connect_timeout = connect_timeout
        self.quiet = quiet
        self._condition = threading.Condition()
        self._failed_at: float | None = None  # None while the server answers
        self._in_flight = False
        self._attempts = 0

    def not_answering(self) -> None:
        """The server missed a deadline: gate connection attempts until one succeeds."""
        with self._condition:
            self._failed_at = time.monotonic()

    def connect(self, make: Callable[[], DeadlineConnection]) -> DeadlineConnection:
        """``make()`` a connection, or share the outcome of the attempt under way (see above)."""
        with self._condition:
            if self._failed_at is not None:
                if self._in_flight:
                    attempt = self._attempts
                    self._condition.wait_for(lambda: self._attempts != attempt, timeout=self.connect_timeout + 1)
                    if self._failed_at is not None:
                        raise NotTried("the database is not answering")
                elif time.monotonic() - self._failed_at < self.quiet:
                    raise NotTried("the database did not answer a moment ago")
            gated = self._failed_at is not None
            self._in_flight = self._in_flight or gated
        try:
            connection = make()
        except psycopg.errors.ConnectionTimeout:
            with self._condition:
                self._failed_at = time.monotonic()
            raise
        else:
            with self._condition:
                self._failed_at = None
            return connection
        finally:
            if gated:
                with self._condition:
                    self._in_flight = False
                    self._attempts += 1
                    self._condition.notify_all()


@contextlib.contextmanager
def without_response_deadline(connection: Connection) -> Iterator[None]:
    """Let statements on this connection run as long as they need (migrations building indexes)."""
    raw = connection.connection.driver_connection
    if not isinstance(raw, DeadlineConnection):
        yield
        return
    saved = raw.response_timeout
    raw.response_timeout = None
    try:
        yield
    finally:
        raw.response_timeout = saved
