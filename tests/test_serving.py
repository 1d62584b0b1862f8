"""gunicorn facing clients directly: slow and silent clients hold no thread, its own errors are JSON.

These drive a real gunicorn (``gunicorn.conf.py``, so ``jobapi.serving.BufferingWorker``)
over raw sockets, the way a hostile or broken client would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import requests
from conftest import ROOT, LiveServer, start_gunicorn, stop_gunicorn
from gunicorn.config import Config
from hostile_clients import latencies_while, raw_exchange, read_response, slow_and_silent_clients, still_waiting

from jobapi.logs import logging_config
from jobapi.serving import Logger

pytestmark = pytest.mark.e2e


def port_of(server: LiveServer) -> int:
    return urlsplit(server.url).port


def push_request(job, body: bytes, *headers: str) -> bytes:
    """The head of an authenticated push for ``job`` with a body of ``len(body)`` bytes."""
    lines = [
        f"POST /api/jobs/{job.id}/status HTTP/1.1",
        "Host: 127.0.0.1",
        f"Authorization: {job.auth['Authorization']}",
        "Content-Type: application/json",
        *headers,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def assert_envelope(answer, status: int, error_id: str) -> None:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-content-type-options"] == "nosniff"
    body = answer.json()
    assert body["id"] == error_id
    assert body["message"][0].isupper() and set(body) == {"id", "message"}


@pytest.fixture(scope="module")
def quick_server(app, database_url, tmp_path_factory) -> Iterator[LiveServer]:
    """A gunicorn that gives a request 2 s for its head and 2 s for its body, and an idle connection 1 s."""
    server = start_gunicorn(
        database_url,
        tmp_path_factory.mktemp("gunicorn-quick") / "gunicorn.log",
        workers=1,
        threads=2,
        extra_env={"REQUEST_HEADER_TIMEOUT": "2", "REQUEST_BODY_TIMEOUT": "2", "GUNICORN_CMD_ARGS": "--keep-alive 1"},
    )
    yield server
    stop_gunicorn(server.process)


def test_slow_and_silent_clients_do_not_delay_others(live_server, job):
    # 2 workers x 4 threads: 48 slow headers and 48 stalled connections are
    # six times the threads there are.
    url = f"{live_server.url}/api/jobs/{job.id}"
    with slow_and_silent_clients(port_of(live_server), slow=48, silent=48) as attack:
        answers = latencies_while(url, 6.0, auth=job.requests_auth)
        held, dripped = attack.open_count(), attack.bytes_sent
    assert len(answers) >= 20
    assert all(status == 200 for _, status in answers), answers
    assert max(seconds for seconds, _ in answers) < 1.0, [(i, a) for i, a in enumerate(answers) if a[0] > 0.1]
    assert held == 96  # the attack held on throughout
    assert dripped >= 48 * 4


@pytest.mark.parametrize(
    ("parts", "status", "error_id"),
    [
        pytest.param(
            [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"],
            431, "request_header_fields_too_large", id="100 KB header",
        ),
        pytest.param(
            [b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Many: aaaaaaaaaaaaaaaa\r\n" * 4000 + b"\r\n"],
            431, "request_header_fields_too_large", id="100 KB of small headers",
        ),
        pytest.param(
            [b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"], 414, "uri_too_long", id="10 KB request line",
        ),
        pytest.param([b"GARBAGE\r\n\r\n"], 400, "bad_request", id="garbage request line"),
        pytest.param([b"GET / HTTP/1.1\nHost: x\n\n"], 400, "bad_request", id="bare LF"),
        pytest.param([b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"], 400, "bad_request", id="bad header name"),
        pytest.param(
            [b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"],
            400, "bad_request", id="two content lengths",
        ),
        pytest.param(
            [b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"],
            400, "bad_request", id="bad chunk size",
        ),
    ],
)
def test_gunicorns_own_errors_are_json(live_server, parts, status, error_id):
    answer = raw_exchange(port_of(live_server), *parts)
    assert_envelope(answer, status, error_id)
    assert answer.headers["connection"] == "close"


def test_a_body_over_64_kib_is_413_before_it_is_read(live_server, job, stored):
    body = json.dumps({"state": "running", "stage": "x" * 70_000}).encode()
    with socket.create_connection(("127.0.0.1", port_of(live_server)), timeout=10) as sock:
        # Only the head: the answer does not wait for a body it would refuse.
        sock.sendall(push_request(job, body, f"Content-Length: {len(body)}"))
        assert_envelope(read_response(sock), 413, "payload_too_large")
    assert [record.state for record in stored(job.id)] == ["waiting"]


def test_a_chunked_body_over_64_kib_is_413(live_server, job, stored):
    body = json.dumps({"state": "running", "stage": "x" * 70_000}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 8192]), body[i:i + 8192]) for i in range(0, len(body), 8192))
    answer = raw_exchange(
        port_of(live_server), push_request(job, body, "Transfer-Encoding: chunked"), chunks + b"0\r\n\r\n"
    )
    assert_envelope(answer, 413, "payload_too_large")
    assert [record.state for record in stored(job.id)] == ["waiting"]


def test_a_chunked_push_arriving_in_pieces_is_stored(live_server, job, stored):
    body = json.dumps({"state": "running", "stage": "bowtie_build", "progress": 40}).encode()
    with socket.create_connection(("127.0.0.1", port_of(live_server)), timeout=10) as sock:
        sock.sendall(push_request(job, body, "Transfer-Encoding: chunked"))
        for i in range(0, len(body), 7):
            piece = body[i:i + 7]
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.01)
        sock.sendall(b"0\r\n\r\n")
        answer = read_response(sock)
    assert answer.status == 200, answer
    assert answer.json()["stage"] == "bowtie_build"
    assert [record.stage for record in stored(job.id)] == [None, "bowtie_build"]


def test_keep_alive_and_pipelined_requests_are_answered_in_order(live_server, job):
    get = f"GET /api/jobs/{job.id} HTTP/1.1\r\nHost: x\r\nAuthorization: {job.auth['Authorization']}\r\n"
    with socket.create_connection(("127.0.0.1", port_of(live_server)), timeout=10) as sock:
        sock.sendall((get + "\r\n").encode())
        first = read_response(sock)
        # Two more at once, the second cut in two.
        sock.sendall((get + "X-Request-ID: second\r\n\r\n" + get[:20]).encode())
        time.sleep(0.2)
        sock.sendall((get[20:] + "X-Request-ID: third\r\n\r\n").encode())
        second, third = read_response(sock), read_response(sock)
    assert [first.status, second.status, third.status] == [200, 200, 200]
    assert [second.headers["x-request-id"], third.headers["x-request-id"]] == ["second", "third"]
    assert third.json()["id"] == job.id


def test_expect_100_continue_gets_its_interim_answer(live_server, job, stored):
    body = json.dumps({"state": "running", "stage": "align", "progress": 5}).encode()
    with socket.create_connection(("127.0.0.1", port_of(live_server)), timeout=10) as sock:
        sock.sendall(push_request(job, body, f"Content-Length: {len(body)}", "Expect: 100-continue"))
        assert sock.recv(1024) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = read_response(sock)
    assert answer.status == 200, answer
    assert [record.stage for record in stored(job.id)] == [None, "align"]


def test_a_request_stalled_mid_head_or_mid_body_is_answered_408(quick_server, job, stored):
    port = port_of(quick_server)
    body = json.dumps({"state": "running", "stage": "align"}).encode()
    mid_head = socket.create_connection(("127.0.0.1", port), timeout=10)
    mid_body = socket.create_connection(("127.0.0.1", port), timeout=10)
    silent = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        mid_head.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        mid_body.sendall(push_request(job, body, f"Content-Length: {len(body)}") + body[:5])
        started = time.monotonic()
        # Meanwhile (the worker has 2 threads), others are served.
        assert requests.get(quick_server.url + "/healthz", timeout=1).status_code == 200
        assert_envelope(read_response(mid_head), 408, "request_timeout")
        assert_envelope(read_response(mid_body), 408, "request_timeout")
        assert 1.5 < time.monotonic() - started < 5
        # A connection that never said anything is closed without an answer.
        silent.settimeout(5)
        assert silent.recv(1024) == b""
    finally:
        for sock in (mid_head, mid_body, silent):
            sock.close()
    assert [record.state for record in stored(job.id)] == ["waiting"]


def test_a_connection_idle_between_requests_is_closed_after_keep_alive(quick_server):
    with socket.create_connection(("127.0.0.1", port_of(quick_server)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock).status == 200
        assert still_waiting(sock)
        started = time.monotonic()
        sock.settimeout(10)
        assert sock.recv(1024) == b""
        assert time.monotonic() - started < 3


def test_a_stopping_server_finishes_the_request_it_is_reading(app, database_url, tmp_path, job, stored):
    server = start_gunicorn(database_url, tmp_path / "gunicorn.log", workers=1, threads=2)
    body = json.dumps({"state": "running", "stage": "last_words", "progress": 99}).encode()
    try:
        with socket.create_connection(("127.0.0.1", port_of(server)), timeout=10) as sock:
            sock.sendall(push_request(job, body, f"Content-Length: {len(body)}") + body[:5])
            time.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            # A new connection is refused (a proxy tries another instance),
            # not queued for a worker that will never take it and then reset.
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port_of(server)), timeout=5).close()
            sock.sendall(body[5:])
            answer = read_response(sock)
        assert answer.status == 200, answer
        assert answer.headers["connection"] == "close"
        assert server.process.wait(timeout=25) == 0
    finally:
        stop_gunicorn(server.process)
    assert [record.stage for record in stored(job.id)] == [None, "last_words"]


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory) -> Iterator[LiveServer]:
    """A gunicorn serving tests/echo_wsgi.py, trusting forwarded headers from 127.0.0.1 (the default)."""
    server = start_gunicorn(
        "sqlite://", tmp_path_factory.mktemp("gunicorn-echo") / "gunicorn.log", workers=1, threads=2,
        app_args=("--pythonpath", "tests", "echo_wsgi:app"),
    )
    yield server
    stop_gunicorn(server.process)


def test_the_scheme_comes_from_x_forwarded_proto_of_a_trusted_proxy(echo_server):
    told = requests.get(echo_server.url, headers={"X-Forwarded-Proto": "https"}, timeout=5).json()
    assert told["wsgi.url_scheme"] == "https" and told["is_secure"] is True
    plain = requests.get(echo_server.url, timeout=5).json()
    assert plain["wsgi.url_scheme"] == "http" and plain["is_secure"] is False
    # Only X-Forwarded-Proto counts: a client's X-Forwarded-Ssl passed through
    # by a proxy can neither upgrade the scheme nor contradict it.
    ssl = requests.get(echo_server.url, headers={"X-Forwarded-Ssl": "on", "X-Forwarded-Proto": "http"}, timeout=5)
    assert ssl.status_code == 200 and ssl.json()["wsgi.url_scheme"] == "http"


def test_forwarded_proto_from_an_untrusted_peer_is_ignored(echo_server):
    # Trusted are 127.0.0.1 and ::1 (gunicorn.conf.py's default); this client
    # connects from another loopback address.
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
    with socket.create_connection(
        ("127.0.0.1", port_of(echo_server)), timeout=10, source_address=("127.0.0.2", 0)
    ) as sock:
        sock.sendall(request)
        told = read_response(sock).json()
    assert told["REMOTE_ADDR"] == "127.0.0.2"
    assert told["wsgi.url_scheme"] == "http" and told["is_secure"] is False


@pytest.mark.parametrize(
    ("environment", "trusted"),
    [({}, "['127.0.0.1', '::1']"), ({"FORWARDED_ALLOW_IPS": "10.0.0.11,10.0.1.0/24"}, "['10.0.0.11', '10.0.1.0/24']")],
)
def test_gunicorn_conf_trusts_the_proxy_addresses_it_is_given(tmp_path, environment, trusted):
    env = {key: value for key, value in os.environ.items() if key not in ("FORWARDED_ALLOW_IPS", "GUNICORN_CMD_ARGS")}
    env.update(environment, PROMETHEUS_MULTIPROC_DIR=str(tmp_path), DATABASE_URL="sqlite://")
    printed = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--print-config", "wsgi:app"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )
    assert printed.returncode == 0, printed.stderr
    settings = dict(
        (name.strip(), value.strip()) for name, _, value in (line.partition("=") for line in printed.stdout.splitlines())
    )
    assert settings["forwarded_allow_ips"] == trusted
    assert settings["secure_scheme_headers"] == "{'X-FORWARDED-PROTO': 'https'}"
    assert settings["worker_class"] == "jobapi.serving.BufferingWorker"
    assert settings["logger_class"] == "jobapi.serving.Logger"


# gunicorn's logger: an access log line only when there is an access log


def test_no_access_log_no_access_fields_gathered(monkeypatch):
    config = Config()
    config.set("logconfig_dict", logging_config("text"))  # accesslog unset, as gunicorn.conf.py leaves it
    logger = Logger(config)

    def gathered(*args):
        raise AssertionError("access log fields gathered with no access log")

    monkeypatch.setattr(logger, "atoms", gathered)
    logger.access(None, None, {}, None)


def test_an_access_log_asked_for_is_written(app, database_url, tmp_path, job):
    access = tmp_path / "access.log"
    server = start_gunicorn(database_url, tmp_path / "gunicorn.log", workers=1, threads=2,
                            extra_env={"ACCESS_LOG": str(access)})
    try:
        answer = requests.get(f"{server.url}/api/jobs/{job.id}", auth=(f"job-{job.id}", job.key), timeout=10)
        assert answer.status_code == 200
    finally:
        stop_gunicorn(server.process)
    written = access.read_text()
    assert f"GET /api/jobs/{job.id} HTTP/1.1" in written and " 200 " in written
