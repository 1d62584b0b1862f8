"""deploy/nginx.conf, run by a real nginx in front of real gunicorns: proxying, hostile clients, errors, restarts."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
from sqlalchemy import select

from conftest import LiveServer, free_port, require_program, start_gunicorn, stop_gunicorn
from hostile_clients import latencies_while, raw_exchange, slow_and_silent_clients
from jobapi.client import JobAPIError, JobClient
from jobapi.extensions import db
from jobapi.models import JobStatus
from real_nginx import Nginx, nginx_binary, render_site, start_nginx, stop_nginx

pytestmark = [pytest.mark.e2e, pytest.mark.nginx]

# Test-only locations, so that every error page can be seen, whatever makes it.
STATUS_LOCATIONS = "\n".join(f"    location = /test-status/{code} {{ return {code}; }}" for code in (500, 503))


def port_of(url: str) -> int:
    return urlsplit(url).port


def assert_envelope(status: int, headers, body: bytes, expected_status: int, error_id: str) -> None:
    assert status == expected_status, (status, body)
    assert headers["content-type"] == "application/json"
    assert headers["x-content-type-options"] == "nosniff"
    document = json.loads(body)
    assert set(document) == {"id", "message"}
    assert document["id"] == error_id
    assert document["message"][0].isupper()


@pytest.fixture(scope="module")
def proxy(live_server, tmp_path_factory) -> Iterator[Nginx]:
    """nginx in front of the session's gunicorn."""
    server = start_nginx(tmp_path_factory.mktemp("nginx"), [live_server.url.removeprefix("http://")],
                         server_extra=STATUS_LOCATIONS)
    yield server
    stop_nginx(server)


def test_the_site_file_follows_its_convention():
    text = Path(__file__).resolve().parents[1].joinpath("deploy", "nginx.conf").read_text()
    assert len(re.findall(r"^upstream jobapi \{", text, re.MULTILINE)) == 1
    assert re.search(r"^\s*server 127\.0\.0\.1:8000( [^;]*)?;", text, re.MULTILINE)
    assert len(re.findall(r"^\s*listen\s", text, re.MULTILINE)) == 1
    rendered = render_site(["127.0.0.1:1111", "127.0.0.1:2222"], "127.0.0.1:3333")
    upstream = re.search(r"^upstream jobapi \{.*?^\}", rendered, re.MULTILINE | re.DOTALL).group(0)
    assert re.findall(r"^\s*server (\S+) max_fails=0;", upstream, re.MULTILINE) == ["127.0.0.1:1111", "127.0.0.1:2222"]
    assert "listen 127.0.0.1:3333;" in rendered


def test_nginx_accepts_the_site_file(tmp_path):
    binary = nginx_binary()
    from real_nginx import main_conf

    site = tmp_path / "jobapi.conf"
    site.write_text(render_site(["127.0.0.1:8000"], f"127.0.0.1:{free_port()}"))
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_conf(tmp_path, site))
    checked = subprocess.run(
        [binary, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True, text=True, timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
    assert "[warn]" not in checked.stderr, checked.stderr


def test_a_worker_reads_and_pushes_through_nginx(proxy, job, stored):
    with JobClient(proxy.url, job.id, job.key, retries=0) as client:
        assert client.get()["id"] == job.id
        assert client.push("running", "bowtie_build", 40)["stage"] == "bowtie_build"
    assert [record.stage for record in stored(job.id)] == [None, "bowtie_build"]


def test_a_request_id_reaches_the_app_if_well_formed(proxy):
    kept = requests.get(proxy.url + "/healthz", headers={"X-Request-ID": "build-7.step:3"}, timeout=5)
    assert kept.headers["X-Request-ID"] == "build-7.step:3"
    # A malformed one is replaced by nginx's own, before the app sees it.
    for bad in ("two words", "x" * 129, "job_id=forged"):
        made = requests.get(proxy.url + "/healthz", headers={"X-Request-ID": bad}, timeout=5)
        assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"]), made.headers


def test_the_apps_errors_pass_through_untouched(proxy):
    answer = requests.get(proxy.url + "/api/jobs/nosuchjob", timeout=5)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == 'Basic realm="jobs"'
    assert answer.json()["id"] == "unauthorized"


@pytest.fixture(scope="module")
def echo_server(tmp_path_factory) -> Iterator[LiveServer]:
    """A gunicorn serving tests/echo_wsgi.py with the repository's gunicorn.conf.py."""
    server = start_gunicorn(
        "sqlite://", tmp_path_factory.mktemp("gunicorn-echo") / "gunicorn.log", workers=1, threads=2,
        app_args=("--pythonpath", "tests", "echo_wsgi:app"),
    )
    yield server
    stop_gunicorn(server.process)


@pytest.fixture(scope="module")
def echo_proxy(echo_server, tmp_path_factory) -> Iterator[Nginx]:
    server = start_nginx(tmp_path_factory.mktemp("nginx-echo"), [echo_server.url.removeprefix("http://")])
    yield server
    stop_nginx(server)


def test_forwarded_headers_are_nginxs_not_the_clients(echo_proxy):
    told = requests.get(
        echo_proxy.url,
        headers={
            "Host": "jobs.example.org",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Ssl": "on",
            "X-Forwarded-Host": "evil.example",
        },
        timeout=5,
    ).json()
    assert told["HTTP_X_FORWARDED_FOR"] == "127.0.0.1"
    assert told["HTTP_X_FORWARDED_HOST"] == "jobs.example.org"
    assert told["HTTP_HOST"] == "jobs.example.org"
    assert told["HTTP_X_FORWARDED_PROTO"] == "http"
    assert told["HTTP_X_FORWARDED_SSL"] is None
    assert told["wsgi.url_scheme"] == "http" and told["is_secure"] is False
    assert re.fullmatch(r"[0-9a-f]{32}", told["HTTP_X_REQUEST_ID"])


def test_the_body_reaches_the_app_whole(echo_proxy):
    body = b"x" * 60_000
    assert requests.post(echo_proxy.url, data=body, timeout=5).json()["body_length"] == 60_000
    chunked = requests.post(echo_proxy.url, data=iter([body[:30_000], body[30_000:]]), timeout=5)
    assert chunked.json()["body_length"] == 60_000


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made by openssl; skips without it (fails under CI=true)."""
    openssl = require_program("openssl", "HTTPS through nginx")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


def test_over_https_the_app_sees_a_secure_request(echo_server, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    nginx = start_nginx(tmp_path / "nginx", [echo_server.url.removeprefix("http://")], certificate=(cert, key))
    try:
        told = requests.get(nginx.url, verify=str(cert), timeout=5).json()
    finally:
        stop_nginx(nginx)
    assert told["HTTP_X_FORWARDED_PROTO"] == "https"
    assert told["wsgi.url_scheme"] == "https" and told["is_secure"] is True


def test_slow_and_silent_clients_do_not_delay_others_through_nginx(proxy, job):
    url = f"{proxy.url}/api/jobs/{job.id}"
    with slow_and_silent_clients(proxy.port, slow=200, silent=200) as attack:
        answers = latencies_while(url, 8.0, auth=job.requests_auth)
        held, dripped = attack.open_count(), attack.bytes_sent
    assert len(answers) >= 30
    assert all(status == 200 for _, status in answers), answers
    assert max(seconds for seconds, _ in answers) < 1.0, [(i, a) for i, a in enumerate(answers) if a[0] > 0.1]
    assert held == 400  # nginx gives a head 10 s: the attack held on throughout
    assert dripped >= 200 * 6


@pytest.mark.parametrize(
    ("parts", "status", "error_id"),
    [
        pytest.param(
            [b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"],
            431, "request_header_fields_too_large", id="100 KB header",
        ),
        pytest.param(
            [b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"], 414, "uri_too_long", id="10 KB request line",
        ),
        pytest.param([b"GARBAGE\r\n\r\n"], 400, "bad_request", id="garbage request line"),
        pytest.param([b"GET / HTTP/1.1\r\n\r\n"], 400, "bad_request", id="no Host"),
        pytest.param([b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"], 505, "http_version_not_supported", id="HTTP/2.0 line"),
        pytest.param(
            [b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"],
            501, "not_implemented", id="unknown transfer coding",
        ),
        pytest.param(
            [b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n"],
            413, "payload_too_large", id="Content-Length over 64 KiB",
        ),
        pytest.param(
            [b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
             b"8000\r\n" + b"a" * 0x8000 + b"\r\n" + b"8000\r\n" + b"a" * 0x8000 + b"\r\n" + b"10\r\n" + b"a" * 16
             + b"\r\n0\r\n\r\n"],
            413, "payload_too_large", id="chunked body over 64 KiB",
        ),
        pytest.param([b"GET /test-status/500 HTTP/1.1\r\nHost: x\r\n\r\n"], 500, "internal_error", id="500"),
        pytest.param([b"GET /test-status/503 HTTP/1.1\r\nHost: x\r\n\r\n"], 503, "service_unavailable", id="503"),
        pytest.param(
            [b"GET /_jobapi/error.json HTTP/1.1\r\nHost: x\r\n\r\n"], 404, "not_found", id="the error page itself",
        ),
        # Odd methods nginx refuses itself (any other method token goes to the app, which answers it).
        pytest.param([b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n"], 405, "method_not_allowed", id="TRACE"),
        pytest.param(
            [b"TRACE /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"],
            405, "method_not_allowed", id="TRACE with a body",
        ),
        pytest.param([b"CONNECT / HTTP/1.1\r\nHost: x\r\n\r\n"], 405, "method_not_allowed", id="CONNECT to a path"),
        pytest.param(
            [b"CONNECT 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\n\r\n"], 400, "bad_request", id="CONNECT to an authority",
        ),
        pytest.param([b"get / HTTP/1.1\r\nHost: x\r\n\r\n"], 400, "bad_request", id="lower-case method"),
        # nginx passes this one on; gunicorn refuses it, in the same envelope.
        pytest.param([b"A" * 40 + b" / HTTP/1.1\r\nHost: x\r\n\r\n"], 400, "bad_request", id="40-letter method"),
        pytest.param([b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"], 400, "bad_request", id="OPTIONS *"),
        pytest.param([b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"], 400, "bad_request", id="HTTP/2 preface"),
        pytest.param(
            [b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 20 + b"\r\n\r\n"],
            400, "bad_request", id="TLS hello on the plain port",
        ),
        # Malformed requests.
        pytest.param([b"GET / HTTP/3.0\r\nHost: x\r\n\r\n"], 505, "http_version_not_supported", id="HTTP/3.0 line"),
        pytest.param([b"GET x HTTP/1.1\r\nHost: x\r\n\r\n"], 400, "bad_request", id="path without a slash"),
        pytest.param([b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n"], 400, "bad_request", id="path above the root"),
        pytest.param([b"GET /%zz HTTP/1.1\r\nHost: x\r\n\r\n"], 400, "bad_request", id="bad percent escape"),
        pytest.param([b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n"], 400, "bad_request", id="NUL in the path"),
        pytest.param([b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"], 400, "bad_request", id="two Hosts"),
        pytest.param([b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n"], 400, "bad_request", id="Host with a slash"),
        pytest.param([b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"], 400, "bad_request", id="space in a name"),
        pytest.param(
            [b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n"], 400, "bad_request", id="folded header",
        ),
        pytest.param([b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n"], 400, "bad_request", id="CR in a value"),
        pytest.param(
            [b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
            400, "bad_request", id="Content-Length and chunked",
        ),
        pytest.param(
            [b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"],
            400, "bad_request", id="two Content-Lengths",
        ),
        pytest.param(
            [b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n"], 400, "bad_request",
            id="negative Content-Length",
        ),
        pytest.param(
            [b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n"], 400, "bad_request",
            id="Content-Length past 64 bits",
        ),
        pytest.param(
            [b"POST /api/jobs HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n"],
            400, "bad_request", id="bad chunk size",
        ),
        pytest.param(
            [b"POST /api/jobs HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"],
            400, "bad_request", id="chunked in HTTP/1.0",
        ),
        pytest.param(
            [b"DELETE /api/jobs/abcdefgh HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n"],
            413, "payload_too_large", id="DELETE with a body over 64 KiB",
        ),
    ],
)
def test_errors_nginx_answers_itself_are_json(proxy, parts, status, error_id):
    answer = raw_exchange(proxy.port, *parts)
    assert_envelope(answer.status, answer.headers, answer.body, status, error_id)
    if status == 503:
        assert answer.headers["retry-after"] == "5"
    else:
        assert "retry-after" not in answer.headers


@pytest.mark.parametrize("method", ["FOO", "PROPFIND", "PURGE"])
def test_other_methods_reach_the_app_which_answers_405(proxy, method):
    answer = raw_exchange(proxy.port, f"{method} /api/jobs HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert_envelope(answer.status, answer.headers, answer.body, 405, "method_not_allowed")
    assert answer.headers["allow"]


def test_the_site_file_writes_the_apps_envelope_for_every_error_it_answers():
    from jobapi.serving import error_envelope

    text = Path(__file__).resolve().parents[1].joinpath("deploy", "nginx.conf").read_text()
    bodies = dict(re.findall(r"^\s*(\d{3}) '(\{.*\})\\n';$", text, re.MULTILINE))
    pages = re.findall(r"^\s*error_page ([\d ]+?) (?:=(\d+) )?/_jobapi/error\.json;", text, re.MULTILINE)
    answered = {int(code) for codes, overwrite in pages for code in ([overwrite] if overwrite else codes.split())}
    assert {405, 400, 413, 414, 431, 502, 503, 504} <= answered
    assert answered == {int(code) for code in bodies}
    for code, body in bodies.items():
        error_id, message = error_envelope(int(code))
        assert json.loads(body) == {"id": error_id, "message": message}, code


def test_plain_http_to_the_tls_port_is_a_json_400(echo_server, tmp_path):
    cert, key = self_signed_certificate(tmp_path)
    nginx = start_nginx(tmp_path / "nginx", [echo_server.url.removeprefix("http://")], certificate=(cert, key))
    try:
        answer = raw_exchange(nginx.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    finally:
        stop_nginx(nginx)
    assert_envelope(answer.status, answer.headers, answer.body, 400, "bad_request")


def test_an_unreachable_upstream_is_502(tmp_path):
    nginx = start_nginx(tmp_path, [f"127.0.0.1:{free_port()}"])
    try:
        answer = requests.get(nginx.url + "/healthz", timeout=10)
    finally:
        stop_nginx(nginx)
    assert_envelope(answer.status_code, answer.headers, answer.content, 502, "bad_gateway")


class SilentUpstream:
    """An upstream that accepts connections, keeps what it is sent, and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.received = bytearray()
        self.held: list[socket.socket] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        self.listener.settimeout(0.05)
        while not self.stop.is_set():
            try:
                sock = self.listener.accept()[0]
                sock.setblocking(False)
                self.held.append(sock)
            except TimeoutError:
                pass
            for sock in self.held:
                try:
                    self.received += sock.recv(65536)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for sock in self.held:
            sock.close()
        self.listener.close()


@pytest.fixture
def silent_upstream() -> Iterator[SilentUpstream]:
    upstream = SilentUpstream()
    yield upstream
    upstream.close()


def test_a_request_reaches_the_upstream_only_once_its_body_has_arrived(tmp_path, silent_upstream):
    nginx = start_nginx(tmp_path, [silent_upstream.address], directives={"client_body_timeout": "1s"})
    head = b"POST /api/jobs/abcdefgh/status HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as stalled:
            stalled.sendall(head + b"01234")
            started = time.monotonic()
            try:
                ending = stalled.recv(1024)
            except ConnectionResetError:
                ending = b""
            waited = time.monotonic() - started
        # Timed out, the connection is reset without an answer
        # (reset_timedout_connection), and nothing of it went upstream.
        assert ending == b"" and 0.5 < waited < 5
        assert bytes(silent_upstream.received) == b""
        with socket.create_connection(("127.0.0.1", nginx.port), timeout=10) as slow:
            slow.sendall(head + b"01234")
            time.sleep(0.3)
            assert bytes(silent_upstream.received) == b""
            slow.sendall(b"56789")
            deadline = time.monotonic() + 5
            while b"0123456789" not in silent_upstream.received and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        stop_nginx(nginx)
    assert silent_upstream.received.startswith(b"POST /api/jobs/abcdefgh/status HTTP/1.1\r\n")
    assert silent_upstream.received.endswith(b"\r\n\r\n0123456789")


def test_an_upstream_that_does_not_answer_in_time_is_504(tmp_path, silent_upstream):
    nginx = start_nginx(tmp_path, [silent_upstream.address], directives={"proxy_read_timeout": "1s"})
    try:
        started = time.monotonic()
        answer = requests.get(nginx.url + "/healthz", timeout=10)
        waited = time.monotonic() - started
    finally:
        stop_nginx(nginx)
    assert_envelope(answer.status_code, answer.headers, answer.content, 504, "gateway_timeout")
    assert waited < 5


def test_several_instances_survive_a_rolling_restart_under_load(
    app, database_url, is_postgresql, make_job, tmp_path
):
    if not is_postgresql:
        pytest.skip("several instances share one database in production: PostgreSQL (the other half of the suite)")
    instances = [start_gunicorn(database_url, tmp_path / f"instance-{n}.log") for n in range(2)]
    nginx = None
    try:
        nginx = start_nginx(tmp_path / "nginx", [server.url.removeprefix("http://") for server in instances])
        jobs = [make_job() for _ in range(16)]
        pushes = 100
        done = [0] * len(jobs)
        errors: list[str] = []
        restarted = threading.Event()

        def work(index: int) -> None:
            job = jobs[index]
            with JobClient(nginx.url, job.id, job.key) as client:
                for step in range(pushes):
                    try:
                        client.push("running", f"step-{step}", step)
                    except JobAPIError as error:
                        errors.append(f"{job.id} step {step}: {error!r}")
                        return
                    done[index] += 1
                    # A steady load while the instances restart, then the rest at once.
                    restarted.wait(0.25)

        pushed_when_restarted = []
        with ThreadPoolExecutor(len(jobs)) as pool:
            futures = [pool.submit(work, index) for index in range(len(jobs))]
            try:
                time.sleep(1.0)
                for index, server in enumerate(instances):
                    server.process.send_signal(signal.SIGTERM)
                    assert server.process.wait(timeout=30) == 0  # in-flight requests finished, then it left
                    instances[index] = start_gunicorn(database_url, server.log_path, port=port_of(server.url))
                    # No reload of nginx in between: with max_fails=0 it sends
                    # requests to an instance again as soon as it is back.
                    pushed_when_restarted.append(sum(done))
            finally:
                restarted.set()
            for future in futures:
                future.result()
    finally:
        if nginx:
            stop_nginx(nginx)
        for server in instances:
            stop_gunicorn(server.process)

    assert errors == []
    total = len(jobs) * pushes
    assert 0 < pushed_when_restarted[0] < pushed_when_restarted[1] < total, pushed_when_restarted
    with app.app_context():
        for job in jobs:
            records = db.session.scalars(
                select(JobStatus).where(JobStatus.job_id == job.id).order_by(JobStatus.seq)
            ).all()
            assert [record.seq for record in records] == list(range(1, pushes + 2))
            assert [record.state for record in records] == ["waiting"] + ["running"] * pushes
            assert [record.stage for record in records] == [None] + [f"step-{step}" for step in range(pushes)]
        db.session.remove()
    # A request on a kept-alive connection an instance closed as it stopped
    # can get a 502 (nginx does not resend a POST): the client retried it.
    failed_gateways = sum(1 for line in nginx.access_log().splitlines() if '" 502 ' in line)
    print(f"rolling restart: {failed_gateways} answers 502 from nginx, retried by the clients")
