"""The client's address in log lines (SPEC 8, client address): the peer's, or the X-Forwarded-For of
a peer in TRUSTED_PROXIES (default loopback) and no one else."""

from __future__ import annotations

import logging
import re
import socket
import time

import pytest

from conftest import start_gunicorn, stop_gunicorn
from jobapi import create_app
from jobapi.client_address import ClientAddress, proxy_networks
from jobapi.config import from_environment
from jobapi.logs import FIELDS_ATTRIBUTE, JSONFormatter, TextFormatter
from real_nginx import start_nginx, stop_nginx

REQUEST_LOGGER = "jobapi.request"


def app_trusting(tmp_path, proxies: str):
    """An app of its own with ``TRUSTED_PROXIES=proxies``; /healthz, all these tests ask, opens no database."""
    return create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'unused.sqlite'}",
                       "TRUSTED_PROXIES": proxies})


def logged_client(app, caplog, peer: str, **headers: str) -> str:
    """The client address the request line names for a request from ``peer`` with ``headers``."""
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    caplog.clear()
    app.test_client().get("/healthz", headers=headers, environ_base={"REMOTE_ADDR": peer})
    [record] = [r for r in caplog.records if r.name == REQUEST_LOGGER]
    return getattr(record, FIELDS_ATTRIBUTE)["client"]


def test_the_peers_address_is_logged(client, caplog):
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    client.get("/healthz", environ_base={"REMOTE_ADDR": "203.0.113.5"})
    [record] = [r for r in caplog.records if r.name == REQUEST_LOGGER]
    assert getattr(record, FIELDS_ATTRIBUTE)["client"] == "203.0.113.5"
    assert TextFormatter().format(record).endswith(" client=203.0.113.5")
    assert '"client": "203.0.113.5"' in JSONFormatter().format(record)


@pytest.mark.parametrize(
    ("peer", "forwarded", "logged"),
    [
        pytest.param("203.0.113.5", "198.51.100.7", "203.0.113.5", id="untrusted peer: header ignored"),
        pytest.param("127.0.0.1", "198.51.100.7", "198.51.100.7", id="loopback proxy: believed"),
        pytest.param("127.0.0.2", "198.51.100.7", "198.51.100.7", id="all of 127/8 is loopback"),
        pytest.param("::1", "2001:db8::7", "2001:db8::7", id="IPv6 loopback proxy"),
        pytest.param("127.0.0.1", "10.9.9.9, 198.51.100.7", "198.51.100.7", id="only the hop nginx added"),
        pytest.param("127.0.0.1", "198.51.100.7, 127.0.0.1", "198.51.100.7", id="trusted hops passed over"),
        pytest.param("127.0.0.1", "job_id=forged request_id=x", "127.0.0.1", id="not an address: the proxy"),
        pytest.param("127.0.0.1", "fe80::1%x job_id=forged", "127.0.0.1", id="IPv6 zone text"),
        pytest.param("127.0.0.1", "", "127.0.0.1", id="empty header"),
    ],
)
def test_x_forwarded_for_is_believed_only_from_trusted_proxies(client, caplog, peer, forwarded, logged):
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    assert logged_client(client.application, caplog, peer, **headers) == logged


def test_trusted_proxies_are_configured(tmp_path, caplog, monkeypatch):
    chain = {"X-Forwarded-For": "198.51.100.7, 10.0.0.5"}
    app = app_trusting(tmp_path, "10.0.0.0/8, 192.0.2.1")
    assert logged_client(app, caplog, "192.0.2.1", **chain) == "198.51.100.7"
    assert logged_client(app, caplog, "127.0.0.1", **chain) == "127.0.0.1"  # loopback no longer trusted
    nobody = app_trusting(tmp_path, "")
    assert logged_client(nobody, caplog, "127.0.0.1", **chain) == "127.0.0.1"
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.5,2001:db8::/32")
    assert from_environment()["TRUSTED_PROXIES"] == "10.0.0.5,2001:db8::/32"
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.5, nginx.internal")
    with pytest.raises(ValueError, match="TRUSTED_PROXIES"):
        from_environment()


def test_the_walk_is_worked_out_once_per_header():
    resolve = ClientAddress(proxy_networks("127.0.0.1"))
    environ = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "198.51.100.7"}
    assert resolve(environ) == resolve(environ) == "198.51.100.7"
    assert resolve._from_proxy.cache_info().hits == 1


# Over HTTP: gunicorn alone, and behind nginx


def _line_for(server, request_id: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [line for line in server.log().splitlines() if f"request_id={request_id}" in line]
        if lines:
            return lines[0]
        time.sleep(0.05)
    raise AssertionError(f"no line for {request_id}:\n{server.log()}")


def _get(port: int, request_id: str, source: str = "127.0.0.1", forwarded: str | None = None) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as sock:
        extra = f"X-Forwarded-For: {forwarded}\r\n" if forwarded else ""
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-ID: {request_id}\r\n{extra}Connection: close\r\n\r\n".encode())
        while sock.recv(65536):
            pass


@pytest.mark.e2e
def test_gunicorn_logs_the_peer_and_believes_only_trusted_proxies(database_url, tmp_path):
    server = start_gunicorn(database_url, tmp_path / "trusting.log", workers=1, threads=2)
    wary = start_gunicorn(database_url, tmp_path / "wary.log", workers=1, threads=2,
                          extra_env={"TRUSTED_PROXIES": "10.0.0.1"})
    try:
        port = int(server.url.rsplit(":", 1)[1])
        _get(port, "direct", source="127.0.0.3")
        _get(port, "forwarded", forwarded="198.51.100.7")
        wary_port = int(wary.url.rsplit(":", 1)[1])
        _get(wary_port, "not-believed", forwarded="198.51.100.7")
        assert _line_for(server, "direct").endswith(" client=127.0.0.3")
        assert _line_for(server, "forwarded").endswith(" client=198.51.100.7")
        assert _line_for(wary, "not-believed").endswith(" client=127.0.0.1")
    finally:
        stop_gunicorn(server.process)
        stop_gunicorn(wary.process)


@pytest.mark.e2e
@pytest.mark.nginx
def test_behind_nginx_the_line_names_the_client_nginx_saw(database_url, tmp_path):
    server = start_gunicorn(database_url, tmp_path / "gunicorn.log", workers=1, threads=2)
    nginx = None
    try:
        nginx = start_nginx(tmp_path / "nginx", [server.url.removeprefix("http://")])
        # The client connects from 127.0.0.9 and says it is someone else: nginx replaces that.
        _get(nginx.port, "through-nginx", source="127.0.0.9", forwarded="203.0.113.66")
        line = _line_for(server, "through-nginx")
    finally:
        if nginx:
            stop_nginx(nginx)
        stop_gunicorn(server.process)
    assert re.search(r" client=127\.0\.0\.9$", line), line
