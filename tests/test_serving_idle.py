"""gunicorn facing clients directly (SPEC 8, direct exposure): thousands of idle connections never stop
a worker from accepting. Past a per-worker limit, the connection idle longest is closed: kept alive
between requests, or opened and silent since."""

from __future__ import annotations

import resource
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from conftest import LiveServer, start_gunicorn, stop_gunicorn
from hostile_clients import HEALTHZ, idle_connections, read_response, still_waiting

pytestmark = pytest.mark.e2e

FLOOD = 2_100


def port_of(server: LiveServer) -> int:
    return urlsplit(server.url).port


def worker_pids(server: LiveServer) -> set[int]:
    pid = server.process.pid
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return {int(child) for child in children.read().split()}


def fresh_clients_answered(url: str, seconds: float) -> list[float]:
    """GET /healthz on a new connection each time, for ``seconds``; how long each took.

    An answer that takes 2 s or more fails the test at once."""
    took = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            answer = requests.get(url + "/healthz", timeout=2)
        except requests.RequestException as error:
            pytest.fail(f"a fresh client was not answered within 2 s ({error!r}) after {len(took)} were")
        assert answer.status_code == 200
        took.append(time.monotonic() - started)
        time.sleep(0.1)
    return took


@pytest.fixture
def exposed_server(database_url, tmp_path) -> Iterator[LiveServer]:
    """gunicorn as gunicorn.conf.py has it (2 workers), on its own, for a flood."""
    server = start_gunicorn(database_url, tmp_path / "gunicorn.log")
    yield server
    stop_gunicorn(server.process)


@pytest.mark.parametrize("request_first", [True, False], ids=["kept alive after a request", "silent since connecting"])
def test_2100_idle_connections_leave_fresh_clients_answered_within_2_s(exposed_server, request_first):
    workers = worker_pids(exposed_server)
    with idle_connections(port_of(exposed_server), FLOOD, request=request_first) as flood:
        took = fresh_clients_answered(exposed_server.url, 6.0)
        kept = [still_waiting(sock) for sock in flood]
    assert len(took) >= 20 and max(took) < 2.0, took
    # The newest of the flood are kept; the oldest went first, to make room.
    assert all(kept[-50:]), kept[-50:].count(False)
    assert kept.count(True) <= 2 * 500
    # No worker died of it.
    assert worker_pids(exposed_server) == workers
    assert "idle connections past the limit" in exposed_server.log()


@pytest.fixture
def capped_server(database_url, tmp_path) -> Iterator[LiveServer]:
    server = start_gunicorn(database_url, tmp_path / "gunicorn.log", workers=1, threads=2,
                            extra_env={"MAX_IDLE_CONNECTIONS": "10"})
    yield server
    stop_gunicorn(server.process)


def _one_by_one(port: int, count: int) -> list[socket.socket]:
    """``count`` connections, each answered once before the next opens, so they fall idle in that order."""
    opened = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        opened.append(sock)
        sock.sendall(HEALTHZ)
        assert read_response(sock).status == 200
    return opened


def test_past_the_limit_the_connection_idle_longest_is_closed_first(capped_server):
    port = port_of(capped_server)
    flood = _one_by_one(port, 30)
    newer = []
    try:
        time.sleep(0.5)
        assert [still_waiting(sock) for sock in flood] == [False] * 20 + [True] * 10
        # One of those kept is used again: it is no longer the one idle longest, so it stays.
        flood[20].settimeout(10)
        flood[20].sendall(HEALTHZ)
        assert read_response(flood[20]).status == 200
        newer = _one_by_one(port, 5)
        time.sleep(0.5)
        assert [still_waiting(sock) for sock in flood[20:]] == [True] + [False] * 5 + [True] * 4
        assert all(still_waiting(sock) for sock in newer)
    finally:
        for sock in flood + newer:
            sock.close()


def test_a_worker_out_of_file_descriptors_closes_idle_connections_instead_of_dying(database_url, tmp_path):
    server = start_gunicorn(database_url, tmp_path / "gunicorn.log", workers=1, threads=2)
    try:
        [worker] = worker_pids(server)
        # A worker that may open 200 files: fewer than the idle connections it would keep.
        resource.prlimit(worker, resource.RLIMIT_NOFILE, (200, 200))
        with idle_connections(port_of(server), 400, request=True) as flood:
            took = fresh_clients_answered(server.url, 3.0)
            assert sum(still_waiting(sock) for sock in flood) < 200
        assert max(took) < 2.0
        assert worker_pids(server) == {worker}
        assert "Out of file descriptors: closed" in server.log()
    finally:
        stop_gunicorn(server.process)
