"""A real nginx for tests: deploy/nginx.conf rendered for test upstreams, started on a free loopback port."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


from conftest import ROOT, free_port, require_program

NGINX_CONF = ROOT / "deploy" / "nginx.conf"

UPSTREAM_BLOCK = re.compile(r"^upstream jobapi \{\n.*?^\}\n", re.MULTILINE | re.DOTALL)
# A server line of the upstream block, commented out or not.
SERVER_LINE = re.compile(r"^[ \t]*#?[ \t]*server[ \t]+[^;\n]*;[^\n]*\n", re.MULTILINE)
LISTEN_LINE = re.compile(r"^([ \t]*)listen[ \t]+[^;\n]*;[^\n]*$", re.MULTILINE)


def nginx_binary() -> str:
    """The nginx program; skips the test when there is none (fails it under CI=true)."""
    return require_program(
        "nginx", "deploy/nginx.conf in front of gunicorn", paths=("/usr/sbin/nginx", "/usr/local/sbin/nginx")
    )


def render_site(
    upstreams: list[str],
    listen: str,
    directives: dict[str, str] | None = None,
    server_extra: str = "",
) -> str:
    """deploy/nginx.conf with ``upstreams`` (host:port) as its servers and ``listen`` as its address.

    ``directives`` replaces the value of directives that appear once in the
    file (``{"proxy_read_timeout": "1s"}``); ``server_extra`` is added to the
    server block, after the listen line.
    """
    text = NGINX_CONF.read_text()
    blocks = UPSTREAM_BLOCK.findall(text)
    assert len(blocks) == 1, "deploy/nginx.conf must have exactly one `upstream jobapi` block"
    block = blocks[0]
    first = SERVER_LINE.search(block)
    assert first, "the upstream block names no server"
    # Every instance under test, with the parameters of the file's first server line.
    parameters = re.match(r"[ \t]*#?[ \t]*server[ \t]+[^\s;]+([^;\n]*);", first.group(0)).group(1)
    servers = "".join(f"    server {address}{parameters};\n" for address in upstreams)
    rendered = SERVER_LINE.sub("", block[: first.start()]) + servers + SERVER_LINE.sub("", block[first.start():])
    text = text.replace(block, rendered)

    listens = LISTEN_LINE.findall(text)
    assert len(listens) == 1, "deploy/nginx.conf must have exactly one listen line"
    text = LISTEN_LINE.sub(lambda m: f"{m.group(1)}listen {listen};" + (f"\n{server_extra}" if server_extra else ""), text)

    for name, value in (directives or {}).items():
        pattern = re.compile(rf"^([ \t]*){re.escape(name)}[ \t]+[^;\n]*;", re.MULTILINE)
        assert len(pattern.findall(text)) == 1, f"{name} must appear once in deploy/nginx.conf"
        text = pattern.sub(lambda m: f"{m.group(1)}{name} {value};", text)
    return text


def main_conf(prefix: Path, site: Path) -> str:
    """An nginx.conf that keeps everything (pid, logs, temporary files) under ``prefix`` and includes ``site``."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # as root, workers would run as nobody
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / (kind + '_temp')};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
pid {prefix / 'nginx.pid'};
error_log {prefix / 'error.log'} info;
events {{
    worker_connections 4096;
}}
http {{
    default_type application/octet-stream;
    access_log {prefix / 'access.log'};
{temp}
    include {site};
}}
"""


@dataclass
class Nginx:
    """A running nginx and where it keeps its files."""

    url: str
    port: int
    prefix: Path
    process: subprocess.Popen

    def error_log(self) -> str:
        path = self.prefix / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_nginx(
    prefix: Path,
    upstreams: list[str],
    directives: dict[str, str] | None = None,
    server_extra: str = "",
    certificate: tuple[Path, Path] | None = None,
) -> Nginx:
    """Start nginx in the foreground with the rendered site file; wait until it accepts connections.

    ``certificate`` (certificate and key files) makes it listen with TLS.
    """
    binary = nginx_binary()
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    listen, scheme = f"127.0.0.1:{port}", "http"
    if certificate:
        listen, scheme = listen + " ssl", "https"
        server_extra += f"\n    ssl_certificate {certificate[0]};\n    ssl_certificate_key {certificate[1]};"
    site = prefix / "jobapi.conf"
    site.write_text(render_site(upstreams, listen, directives, server_extra))
    conf = prefix / "nginx.conf"
    conf.write_text(main_conf(prefix, site))
    output = open(prefix / "nginx.out", "wb")
    process = subprocess.Popen(
        [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf), "-g", "daemon off;"],
        stdout=output, stderr=subprocess.STDOUT,
    )
    output.close()
    server = Nginx(url=f"{scheme}://127.0.0.1:{port}", port=port, prefix=prefix, process=process)
    deadline = time.monotonic() + 15
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    "nginx exited:\n" + (prefix / "nginx.out").read_text(errors="replace") + server.error_log()
                )
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return server
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not listen:\n" + server.error_log()) from None
                time.sleep(0.05)
    except BaseException:
        stop_nginx(server)
        raise


def stop_nginx(server: Nginx) -> None:
    """Stop nginx (fast shutdown), killing it if it lingers."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
