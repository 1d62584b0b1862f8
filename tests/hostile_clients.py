"""Clients that misbehave on purpose, for tests against a real server: raw requests, slow and silent connections."""

from __future__ import annotations

import json
import resource
import selectors
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import requests


@dataclass
class RawResponse:
    """An HTTP answer read off a socket: status, headers (names lower-cased) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


# What a read took from a socket past the answer it read: the start of the next answer, which the
# next read_response() of that socket begins with.
_READ_AHEAD: weakref.WeakKeyDictionary[socket.socket, bytes] = weakref.WeakKeyDictionary()


def read_response(sock: socket.socket) -> RawResponse:
    """Read one answer (skipping 1xx ones) from ``sock``, up to its Content-Length or to the connection's end.

    Answers to pipelined requests may arrive in one read: what follows this
    answer is kept for the next call.
    """
    data = _READ_AHEAD.pop(sock, b"")
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"connection closed after {data!r}")
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        if status >= 200:
            break
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        length = int(headers["content-length"])
        while len(data) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        body = data[:length]
        if data[length:]:
            _READ_AHEAD[sock] = data[length:]
    else:
        while chunk := sock.recv(65536):
            data += chunk
        body = data
    return RawResponse(status, headers, body)


def raw_exchange(port: int, *parts: bytes, timeout: float = 10.0) -> RawResponse:
    """Send ``parts`` on a new connection to 127.0.0.1:``port`` and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        for part in parts:
            sock.sendall(part)
        return read_response(sock)


def still_waiting(sock: socket.socket) -> bool:
    """Whether the server keeps ``sock`` open without having answered anything on it."""
    sock.settimeout(0.001)
    try:
        sock.recv(1, socket.MSG_PEEK)  # an answer, the end of the connection, or a reset
    except (BlockingIOError, TimeoutError):
        return True
    except OSError:
        return False
    return False


@dataclass
class Attack:
    """Connections held open against a server: some send a header a byte a second, some nothing at all."""

    slow: list[socket.socket] = field(default_factory=list)
    silent: list[socket.socket] = field(default_factory=list)
    bytes_sent: int = 0

    def open_count(self) -> int:
        """How many of the attack's connections the server still keeps open."""
        return sum(still_waiting(sock) for sock in self.slow + self.silent)


@contextmanager
def slow_and_silent_clients(port: int, slow: int, silent: int) -> Iterator[Attack]:
    """Hold ``slow`` connections sending a header a byte a second, and ``silent`` ones that stall.

    Half of the silent connections send nothing after connecting, the other
    half one byte. Everything is closed on exit.
    """
    attack = Attack()
    stop = threading.Event()
    try:
        for index in range(silent):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if index % 2:
                sock.sendall(b"G")
            attack.silent.append(sock)
        for _ in range(slow):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: attacker\r\nX-Slow: ")
            attack.slow.append(sock)

        def drip() -> None:
            while not stop.wait(1.0):
                for sock in attack.slow:
                    try:
                        sock.send(b"a")
                        attack.bytes_sent += 1
                    except OSError:
                        pass

        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        yield attack
    finally:
        stop.set()
        for sock in attack.slow + attack.silent:
            sock.close()


def latencies_while(url: str, seconds: float, **request_args) -> list[tuple[float, int]]:
    """GET ``url`` (a new connection each time) again and again for ``seconds``: (seconds taken, status) of each."""
    answers = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            status = requests.get(url, timeout=5, **request_args).status_code
        except requests.RequestException:
            status = 0
        answers.append((time.monotonic() - started, status))
        time.sleep(0.05)
    return answers


HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: flood\r\n\r\n"


def _answered(data: bytes) -> bool:
    head, found, body = data.partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return True


def raise_open_files_limit(needed: int) -> None:
    """Let this process hold ``needed`` sockets (up to the hard limit), or fail saying why."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise RuntimeError(f"this process may open {hard} files at most; the test needs {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@contextmanager
def idle_connections(port: int, count: int, *, request: bool, seconds: float = 30.0) -> Iterator[list[socket.socket]]:
    """Open ``count`` connections, oldest first; with ``request``, each sends ``GET /healthz`` (keep-alive)
    and reads its answer, within ``seconds`` for all of them. Then they stay open, idle, until the block
    ends. Yields the sockets, in the order they were opened."""
    raise_open_files_limit(count + 256)
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if request:
                sock.sendall(HEALTHZ)
            sockets.append(sock)
        if request:
            received = {sock: b"" for sock in sockets}
            selector = selectors.DefaultSelector()
            for sock in sockets:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            deadline = time.monotonic() + seconds
            while selector.get_map() and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.5):
                    sock = key.fileobj
                    try:
                        chunk = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        chunk = b""
                    received[sock] += chunk
                    if not chunk or _answered(received[sock]):
                        selector.unregister(sock)
            selector.close()
        yield sockets
    finally:
        for sock in sockets:
            sock.close()
