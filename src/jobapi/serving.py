"""gunicorn's threaded worker, made safe to face slow or silent clients, with JSON errors.

gunicorn's ``gthread`` worker hands each connection to a thread as soon as it
has a byte to read, and the thread then blocks until the whole request head
has arrived and while the application reads the body. A few clients that
send a header a byte a second, or one byte and then nothing, hold every
thread of a worker, and nobody else is answered.

``BufferingWorker`` reads every request in the worker's main event loop
instead, without blocking: only a request received whole (head and body) is
handed to a thread, so the threads only ever run the application. A request
must arrive within its deadlines (``REQUEST_HEADER_TIMEOUT``, default 10 s,
for the head; ``REQUEST_BODY_TIMEOUT``, default 20 s, for the body after
it) or it is answered 408 and closed; a connection that sends nothing is
closed after the header timeout (the keep-alive timeout between requests).
A head over ``MAX_HEAD_BYTES`` is 431, a body over the app's
``MAX_CONTENT_LENGTH`` is 413 however it is sent, before it is read.
Requests are parsed by gunicorn's own parser in the event loop, again each
time more of the head (a whole line) or of a chunked body arrives; a thread
gets the parsed request (a chunked one is parsed again from the bytes
received), so the event loop and the thread always agree on where a request
ends.

Idle connections (kept alive between requests, or opened and silent since)
cost the worker a socket each, and gunicorn stops accepting once a worker
holds ``worker_connections`` (1,000) of any kind: a few thousand idle
connections would shut everyone else out until they time out. So a worker
keeps at most ``MAX_IDLE_CONNECTIONS`` (default 500) idle connections and
closes the one idle longest to make room, as nginx reuses its idle
connections; it does the same rather than stop accepting when it holds
``worker_connections``, or when the process has no file descriptor left
(without an idle connection to close, it pauses accepting briefly instead of
failing).

Errors gunicorn answers itself (400, 414, 431, ...) use the API's JSON
envelope instead of gunicorn's HTML page, in this worker and, through
``JsonErrorsMixin``, in any other.

Select it in ``gunicorn.conf.py``: ``worker_class = "jobapi.serving.BufferingWorker"``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import time
from functools import partial
from http import HTTPStatus
from typing import NamedTuple

from gunicorn import glogging, http, util
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.errors import LimitRequestHeaders, NoMoreData, ParseException
from gunicorn.http.message import Request
from gunicorn.http.unreader import Unreader
from gunicorn.workers import gthread

from .config import DEFAULTS
from .errors import HTTP_ERRORS

# A request head larger than this is refused (431) before it is read whole.
MAX_HEAD_BYTES = 64 * 1024
# How much a single read takes from a socket.
RECV_BYTES = 64 * 1024
# After an error answer, how long and how much the connection is still read
# (and discarded) before it is closed, so the client reads the answer instead
# of a reset caused by the unread rest of its request.
LINGER_SECONDS = 2.0
LINGER_BYTES = 256 * 1024
# How often the event loop looks for connections past their deadline.
SWEEP_SECONDS = 0.25
# The longest a thread waits on a client that does not read its answer.
SEND_TIMEOUT_SECONDS = 30.0
# Idle connections a worker keeps at most (MAX_IDLE_CONNECTIONS); past it, the
# one idle longest is closed.
MAX_IDLE_CONNECTIONS = 500
# accept() errors that mean the process (or the system) has no room for
# another connection now: a file descriptor, or kernel memory.
_NO_ROOM_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# How long a worker with no room and no idle connection to close stops accepting.
NO_ROOM_PAUSE_SECONDS = 0.5

# Errors only the server answers, beside the app's own table.
SERVER_ERRORS: dict[int, tuple[str, str]] = {
    408: ("request_timeout", "Request timeout"),
    417: ("expectation_failed", "Expectation failed"),
    501: ("not_implemented", "Not implemented"),
    505: ("http_version_not_supported", "HTTP version not supported"),
}


def error_envelope(status: int) -> tuple[str, str]:
    """The envelope's ``(id, message)`` for a status the server answers by itself."""
    known = HTTP_ERRORS.get(status) or SERVER_ERRORS.get(status)
    if known:
        return known
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return "_".join(phrase.lower().replace("-", " ").split()), phrase.capitalize()


def error_response(status: int) -> bytes:
    """A complete HTTP/1.1 answer with the JSON envelope for ``status``; the connection then closes."""
    error_id, message = error_envelope(status)
    body = json.dumps({"id": error_id, "message": message}).encode()
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "Connection: close\r\n"
        "Content-Type: application/json\r\n"
        "X-Content-Type-Options: nosniff\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


class _Captured:
    """Stands in for a client socket while gunicorn writes its HTML error, to learn the status."""

    def __init__(self) -> None:
        self.data = bytearray()

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.data += data

    def status(self) -> int:
        try:
            return int(bytes(self.data).split(b" ", 2)[1])
        except (IndexError, ValueError):
            return 500


class JsonErrorsMixin:
    """A gunicorn worker's own error answers (bad request line, header too large, ...) as JSON."""

    def handle_error(self, req, client, addr, exc):
        """Let gunicorn decide the status and log, then answer the JSON envelope instead of HTML."""
        captured = _Captured()
        super().handle_error(req, captured, addr, exc)
        try:
            util.write_nonblock(client, error_response(captured.status()))
        except Exception:  # the client is gone or will not read: nothing to answer
            self.log.debug("Failed to send error message.")


class Logger(glogging.Logger):
    """gunicorn's logger, which gathers an access log line only when its access logger would write it.

    With ``logconfig_dict`` set, gunicorn's own logger gathers every
    request's fields for its access log (a dict of some 30 of them, headers
    and environment included) even when the ``gunicorn.access`` logger's
    level then discards the line, as jobapi's logging configuration does
    unless ``ACCESS_LOG`` names a log. Select it in ``gunicorn.conf.py``:
    ``logger_class = "jobapi.serving.Logger"``.
    """

    def access(self, resp, req, environ, request_time) -> None:
        if self.access_log.isEnabledFor(logging.INFO):
            super().access(resp, req, environ, request_time)


class _NeedMore(Exception):
    """The bytes received so far end before the request does."""


class _TooLarge(Exception):
    """The request's body is over the limit."""


class _BufferUnreader(Unreader):
    """gunicorn's parser input over the bytes received so far; reading past them raises ``_NeedMore``."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data: bytes | None = data or None

    def chunk(self, size_hint=None):
        if self._data is None:
            raise _NeedMore
        data, self._data = self._data, None
        return data


class Arrival(NamedTuple):
    """How much of a request has arrived: where its head and the whole request end (``None``: not yet)."""

    head_end: int | None
    end: int | None
    expects_continue: bool = False
    # The parsed request, ready to serve, when it arrived whole and its body
    # is still unread (not chunked): a thread then need not parse it again.
    request: Request | None = None
    # How many bytes the whole request takes, once its head says (Content-Length).
    length: int | None = None


def _expects_continue(req: Request) -> bool:
    """Whether the client waits for a 100 Continue before its body: an HTTP/1.1 request with
    ``Expect: 100-continue`` (HTTP/1.0's is ignored, RFC 9110 10.1.1), as gunicorn reads it."""
    return req.version >= (1, 1) and any(
        name == "EXPECT" and value.lower() == "100-continue" for name, value in req.headers
    )


def request_arrival(cfg, data: bytes, client, max_body: int) -> Arrival:
    """How much of the first request in ``data`` has arrived, read by gunicorn's own parser.

    Raises ``_TooLarge`` for a body over ``max_body`` as soon as that is
    known (from its ``Content-Length``, or once that much of a chunked body
    has arrived), ``LimitRequestHeaders`` for a head over ``MAX_HEAD_BYTES``,
    and gunicorn's other ``ParseException``s for a malformed request.
    """
    unreader = _BufferUnreader(data)
    try:
        req = Request(cfg, unreader, client)
    except _NeedMore:
        if len(data) > MAX_HEAD_BYTES:
            raise LimitRequestHeaders("request head over %d bytes" % MAX_HEAD_BYTES) from None
        return Arrival(None, None)
    head_end = len(data) - len(unreader.buf.getvalue())
    if head_end > MAX_HEAD_BYTES:
        raise LimitRequestHeaders("request head over %d bytes" % MAX_HEAD_BYTES)
    expects_continue = _expects_continue(req)
    reader = req.body.reader
    if isinstance(reader, LengthReader):
        if reader.length > max_body:
            raise _TooLarge
        end = head_end + reader.length
        if len(data) < end:
            return Arrival(head_end, None, expects_continue, length=end)
        return Arrival(head_end, end, expects_continue, req, end)
    if isinstance(reader, ChunkedReader):
        if len(data) - head_end > 2 * max_body + MAX_HEAD_BYTES:
            raise _TooLarge  # chunk framing and trailers far beyond any body allowed
        received = 0
        try:
            while piece := req.body.read(8192):
                received += len(piece)
                if received > max_body:
                    raise _TooLarge
        except _NeedMore:
            # What the interrupted read had decoded is still in the readers' buffers.
            received += req.body.buf.tell() + reader.buf.tell()
            if received > max_body:
                raise _TooLarge from None
            return Arrival(head_end, None, expects_continue)
        return Arrival(head_end, len(data) - len(unreader.buf.getvalue()), expects_continue)
    # Neither Content-Length nor chunked: a request has no body (RFC 9112
    # 6.3), whatever follows it on the connection.
    req.body = Body(LengthReader(unreader, 0))
    return Arrival(head_end, head_end, expects_continue, req)


def _drained(req: Request) -> bool:
    """Read what the app left of a body (already in memory); whether the connection can serve another request."""
    body = req.body
    if body is None or getattr(body, "failed", False):
        return False
    while body.read(8192):
        pass
    return True


def _seconds(variable: str, default: float) -> float:
    value = os.environ.get(variable, "").strip()
    return float(value) if value else default


def _count(variable: str, default: int) -> int:
    value = os.environ.get(variable, "").strip()
    return int(value) if value else default


class _Connection:
    """A client connection and what the event loop has read of its next request."""

    # What the event loop waits for on it.
    IDLE = "idle"  # a kept-alive connection between requests
    HEAD = "head"  # a request head
    BODY = "body"  # the rest of a request whose head has arrived
    LINGER = "linger"  # the client to leave, after an error answer

    def __init__(self, sock, client, server) -> None:
        self.sock = sock
        self.client = client
        self.server = server
        self.buffer = bytearray()
        self.request = b""
        self.state = self.HEAD
        self.deadline = 0.0
        self.continue_sent = False
        self.lingered = 0
        self.parsed: Request | None = None
        self.length: int | None = None
        sock.setblocking(False)

    def close(self) -> None:
        util.close(self.sock)


class BufferingWorker(JsonErrorsMixin, gthread.ThreadWorker):
    """The threaded worker, with each request read whole by the event loop before a thread serves it."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.header_timeout = _seconds("REQUEST_HEADER_TIMEOUT", 10.0)
        self.body_timeout = _seconds("REQUEST_BODY_TIMEOUT", 20.0)
        self.max_body = DEFAULTS["MAX_CONTENT_LENGTH"]
        self.max_idle = max(1, _count("MAX_IDLE_CONNECTIONS", MAX_IDLE_CONNECTIONS))
        self.waiting: set[_Connection] = set()
        # Connections with nothing of a request received, in the order they fell
        # idle (a dict keeps it): the first is the one idle longest.
        self.idle: dict[_Connection, None] = {}
        self._idle_closed = 0
        self._closed_for_room = 0
        self._accept_paused_until = 0.0
        self._next_sweep = 0.0

    @classmethod
    def check_config(cls, cfg, log):
        """Refuse what the event loop does not read: TLS, HTTP/2 and the PROXY protocol belong to the proxy."""
        super().check_config(cfg, log)
        protocols = cfg.http_protocols if isinstance(cfg.http_protocols, (list, tuple)) else [cfg.http_protocols]
        if cfg.is_ssl or "h2" in protocols or cfg.http2_cleartext != "off" or cfg.proxy_protocol != "off":
            raise RuntimeError(
                "jobapi.serving.BufferingWorker serves plain HTTP/1.1 only: "
                "terminate TLS and HTTP/2 at the proxy in front"
            )

    def load_wsgi(self):
        """Load the app, and take its body limit (``MAX_CONTENT_LENGTH``) if it is a Flask app."""
        super().load_wsgi()
        config = getattr(self.wsgi, "config", None)
        if config is not None and config.get("MAX_CONTENT_LENGTH"):
            self.max_body = int(config["MAX_CONTENT_LENGTH"])

    # -- the event loop's side -------------------------------------------------

    def accept(self, listener) -> bool:
        """Take a new connection, if one is queued, and wait in the event loop for its first request.

        A worker never stops accepting for idle connections: at
        ``worker_connections``, or with no file descriptor left, it closes
        the connection idle longest to make room.
        """
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno in _NO_ROOM_ERRNOS:
                self._no_room(e)
                return False
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return False
        self.nr_conns += 1
        if self.nr_conns >= self.worker_connections and self.idle:
            self._close_idle_longest()
        conn = _Connection(sock, client, listener.getsockname())
        self._wait(conn, _Connection.HEAD, self.header_timeout)
        self._fall_idle(conn)
        return True

    def _no_room(self, error: OSError) -> None:
        """No room for another connection: close the one idle longest, or stop accepting briefly."""
        if self.idle:
            self._close(next(iter(self.idle)))
            self._closed_for_room += 1  # said once a sweep (murder_pending)
            return
        self.log.warning(
            "Out of file descriptors (%s) and no idle connection to close: not accepting for %.1f s",
            error.strerror, NO_ROOM_PAUSE_SECONDS,
        )
        self._accept_paused_until = time.monotonic() + NO_ROOM_PAUSE_SECONDS
        self.set_accept_enabled(False)

    def set_accept_enabled(self, enabled):
        """Stop or resume accepting; a stopping worker also takes what is queued and closes its listeners."""
        if enabled and time.monotonic() < self._accept_paused_until:
            return  # the run loop asks again on its next turn
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:
            self._close_listeners()

    def _close_listeners(self) -> None:
        # While any process holds a listening socket open, the kernel keeps
        # completing connections into its queue; when the last one exits,
        # every connection still queued is reset, requests sent on them
        # included. A proxy cannot tell such a request was never read, and
        # does not retry it. So a stopping worker takes what is queued now
        # and closes its listeners: from then on, once every worker of the
        # server has done the same (the master closed its own first),
        # connections are refused, which a proxy safely retries elsewhere.
        for listener in self.sockets:
            try:
                while self.accept(listener):
                    pass
            except OSError:
                pass
            util.close(listener)

    def _wait(self, conn: _Connection, state: str, seconds: float) -> None:
        conn.state = state
        conn.deadline = time.monotonic() + seconds
        if conn not in self.waiting:
            self.waiting.add(conn)
            self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._readable, conn))

    def _fall_idle(self, conn: _Connection) -> None:
        """``conn`` waits with nothing of a request received: past the limit, close the one idle longest."""
        self.idle[conn] = None
        while len(self.idle) > self.max_idle:
            self._close_idle_longest()

    def _close_idle_longest(self) -> None:
        self._close(next(iter(self.idle)))
        self._idle_closed += 1

    def _unwait(self, conn: _Connection) -> None:
        self.idle.pop(conn, None)
        if conn in self.waiting:
            self.waiting.discard(conn)
            try:
                self.poller.unregister(conn.sock)
            except (KeyError, ValueError, OSError):
                pass

    def _close(self, conn: _Connection) -> None:
        self._unwait(conn)
        self.nr_conns -= 1
        conn.close()

    def _readable(self, conn: _Connection, _fileobj) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)  # the client left; half a request is nobody's
            return
        self.idle.pop(conn, None)
        if conn.state == _Connection.LINGER:
            conn.lingered += len(data)
            if conn.lingered > LINGER_BYTES:
                self._close(conn)
            return
        if conn.state == _Connection.IDLE:
            conn.state = _Connection.HEAD
            conn.deadline = time.monotonic() + self.header_timeout
        conn.buffer += data
        if conn.state == _Connection.HEAD and b"\n" not in data and len(conn.buffer) <= MAX_HEAD_BYTES:
            return  # no line has ended: the head cannot be complete, nor newly wrong
        if conn.state == _Connection.BODY and conn.length is not None and len(conn.buffer) < conn.length:
            return  # more of a body of known length
        self._advance(conn)

    def _advance(self, conn: _Connection) -> None:
        """Hand the request to a thread once it has all arrived; refuse it if it is wrong."""
        try:
            arrival = request_arrival(self.cfg, bytes(conn.buffer), conn.client, self.max_body)
        except _TooLarge:
            self.log.info("Request body over %d bytes from ip=%s", self.max_body, self._ip(conn))
            self._refuse(conn, error_response(413))
            return
        except ParseException as exc:
            self.handle_error(None, conn.sock, conn.client, exc)
            self._linger(conn)
            return
        if arrival.end is not None:
            self._unwait(conn)
            conn.request = bytes(conn.buffer[:arrival.end])
            conn.parsed = arrival.request
            del conn.buffer[:arrival.end]
            self.enqueue_req(conn)
        elif arrival.head_end is not None and conn.state == _Connection.HEAD:
            conn.state = _Connection.BODY
            conn.length = arrival.length
            conn.deadline = time.monotonic() + self.body_timeout
            if arrival.expects_continue and len(conn.buffer) == arrival.head_end:
                self._send_continue(conn)

    def _send_continue(self, conn: _Connection) -> None:
        if not conn.continue_sent:
            conn.continue_sent = True
            try:
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                pass

    def _refuse(self, conn: _Connection, answer: bytes) -> None:
        try:
            conn.sock.send(answer)
        except OSError:
            pass
        self._linger(conn)

    def _linger(self, conn: _Connection) -> None:
        """Close after an error answer: stop writing, read and drop what the client still sends, briefly."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.buffer.clear()
        self._wait(conn, _Connection.LINGER, LINGER_SECONDS)

    def _ip(self, conn: _Connection) -> str:
        return conn.client[0] if isinstance(conn.client, tuple) else str(conn.client)

    def murder_pending(self):
        """Close connections past their deadline: a request not all arrived in time is answered 408."""
        now = time.monotonic()
        if now < self._next_sweep:
            return  # deadlines are kept to a fraction of a second, not rechecked on every event
        self._next_sweep = now + SWEEP_SECONDS
        # One line per sweep, however many a flood made it close.
        if self._idle_closed:
            self.log.info(
                "Closed %d idle connections past the limit (MAX_IDLE_CONNECTIONS=%d, worker_connections=%d)",
                self._idle_closed, self.max_idle, self.worker_connections,
            )
            self._idle_closed = 0
        if self._closed_for_room:
            self.log.warning(
                "Out of file descriptors: closed %d idle connections to accept new ones", self._closed_for_room
            )
            self._closed_for_room = 0
        for conn in [c for c in self.waiting if c.deadline <= now]:
            if conn.state == _Connection.LINGER or not conn.buffer:
                self._close(conn)  # an idle connection, or one that never said anything
            else:
                self.log.info("Request not received in time from ip=%s", self._ip(conn))
                self._refuse(conn, error_response(408))

    def murder_keepalived(self, force=False):
        """At the very end, close every connection still waiting."""
        if force:
            for conn in list(self.waiting):
                self._close(conn)

    def _cap_keepalive(self, deadline):
        """A stopping worker closes connections that wait between requests by ``deadline``."""
        for conn in self.waiting:
            if not conn.buffer:
                conn.deadline = min(conn.deadline, deadline)

    # -- the thread's side -----------------------------------------------------

    def handle(self, conn: _Connection):
        """Serve one request received whole (runs in a thread); whether to keep the connection."""
        req = conn.parsed
        try:
            conn.sock.settimeout(SEND_TIMEOUT_SECONDS)  # blocking writes, bounded
            if req is None:
                req = next(http.get_parser(self.cfg, [conn.request], conn.client))
            # Its body has arrived: no client is waiting for a 100 Continue.
            # gunicorn sends one itself when this flag of its request says so,
            # and has no public way to tell it not to: the flag is set here,
            # and tests/test_serving.py pins that a client gets exactly one.
            req._expected_100_continue = False
            keep = self.handle_request(req, conn)
            return keep and _drained(req)
        except (NoMoreData, StopIteration) as e:
            self.log.debug("Closing connection. %s", e)
        except TimeoutError:
            self.log.debug("Client did not read its answer in time")
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as e:
            self.handle_error(req, conn.sock, conn.client, e)
        return False

    def finish_request(self, conn: _Connection, fs):
        """Back in the event loop after a request: wait for the next one, or close."""
        try:
            keep = (not fs.cancelled()) and fs.result()
        except Exception:
            keep = False
        try:
            conn.sock.setblocking(False)
        except OSError:
            self.nr_conns -= 1
            conn.close()
            return
        conn.parsed = None
        conn.length = None
        conn.request = b""
        conn.continue_sent = False
        if not keep:
            self._linger(conn)
        elif conn.buffer:
            # The client already sent (part of) its next request.
            self._wait(conn, _Connection.HEAD, self.header_timeout)
            self._advance(conn)
        else:
            linger = self.cfg.keepalive if self.alive else min(self.cfg.keepalive, gthread.STOP_KEEPALIVE_LINGER)
            self._wait(conn, _Connection.IDLE, linger)
            self._fall_idle(conn)

