"""nginx in front of a benchmarked gunicorn: the production recipe (deploy/nginx.conf) rendered onto loopback ports.

deploy/nginx.conf is a site file (http context) with exactly one
``upstream jobapi { ... }`` block. ``render_site`` points that block's
``server`` lines at the gunicorn(s) under test and its ``listen`` lines at a
free loopback port, and sends the logs it names to the run's own directory;
everything else (timeouts, buffering, body limit, keepalive, error pages) is
served as written. ``NginxProxy`` runs it with a generated main
configuration: ``nginx -p <dir> -c <dir>/nginx.conf -g 'daemon off;'``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / "nginx.conf"


class ProxyError(RuntimeError):
    """nginx could not be configured or started."""


def find_nginx() -> str | None:
    """The nginx binary on PATH or in /usr/sbin, or None."""
    return shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(path, os.X_OK)), None
    )


def _mask(text: str) -> str:
    """The text with comments and quoted strings blanked out (same length), so that
    braces and keywords inside them (JSON error bodies, say) are not read as syntax."""
    out = list(text)
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "#":
            while i < n and text[i] != "\n":
                out[i] = " "
                i += 1
        elif ch in "'\"":
            quote, j = ch, i + 1
            while j < n and text[j] != quote:
                j += 2 if text[j] == "\\" else 1
            for k in range(i, min(j + 1, n)):
                if out[k] != "\n":
                    out[k] = " "
            i = j + 1
        else:
            i += 1
    return "".join(out)


def _block_end(masked: str, open_brace: int) -> int:
    depth = 0
    for i in range(open_brace, len(masked)):
        if masked[i] == "{":
            depth += 1
        elif masked[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    raise ProxyError("deploy/nginx.conf: unbalanced braces")


def render_site(text: str, upstream_ports: Sequence[int], listen_port: int, log_dir: Path) -> str:
    """The site with its upstream on ``upstream_ports``, listening on 127.0.0.1:``listen_port``, logging in ``log_dir``."""
    if not upstream_ports:
        raise ValueError("no upstream")
    masked = _mask(text)
    blocks = list(re.finditer(r"\bupstream\s+jobapi\s*\{", masked))
    if len(blocks) != 1:
        raise ProxyError(f"deploy/nginx.conf: expected exactly one 'upstream jobapi {{ ... }}' block, found {len(blocks)}")
    start = blocks[0].end() - 1
    end = _block_end(masked, start)
    edits: list[tuple[int, int, str]] = []

    servers = list(re.finditer(r"\bserver\s+([^\s;]+)([^;]*);", masked[start:end]))
    if not servers:
        raise ProxyError("deploy/nginx.conf: the upstream jobapi block has no server line")
    # Every gunicorn under test, with the parameters of the first server line.
    parameters = text[start + servers[0].start(2):start + servers[0].end(2)]
    lines = " ".join(f"server 127.0.0.1:{port}{parameters};" for port in upstream_ports)
    for i, match in enumerate(servers):
        edits.append((start + match.start(), start + match.end(), lines if i == 0 else ""))

    listens = [m for m in re.finditer(r"\blisten\s+([^\s;]+)([^;]*);", masked) if not start < m.start() < end]
    if not listens:
        raise ProxyError("deploy/nginx.conf: no listen line")
    kept = False
    for match in listens:
        address = text[match.start(1):match.end(1)]
        if address.startswith("[") or kept:
            edits.append((match.start(), match.end(), ""))  # IPv6, or another listen on the same port
            continue
        parameters = text[match.start(2):match.end(2)]
        edits.append((match.start(), match.end(), f"listen 127.0.0.1:{listen_port}{parameters};"))
        kept = True

    for directive in ("access_log", "error_log"):
        for match in re.finditer(rf"\b{directive}\s+([^\s;]+)", masked):
            target = text[match.start(1):match.end(1)]
            if target in ("off", "stderr") or target.startswith(("syslog:", "memory:")):
                continue
            edits.append((match.start(1), match.end(1), str(log_dir / Path(target).name)))

    for begin, finish, replacement in sorted(edits, reverse=True):
        text = text[:begin] + replacement + text[finish:]
    return text


def main_config(directory: Path, site: Path) -> str:
    """A main configuration that keeps every file nginx writes in ``directory`` and includes the site."""
    temp = {name: directory / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    return "\n".join([
        "worker_processes auto;",
        "worker_rlimit_nofile 8192;",
        f"pid {directory / 'nginx.pid'};",
        f"error_log {directory / 'error.log'} warn;",
        "events { worker_connections 4096; }",
        "http {",
        f"    access_log {directory / 'access.log'};",
        *(f"    {name}_temp_path {path};" for name, path in temp.items()),
        f"    include {site};",
        "}",
        "",
    ])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class NginxProxy:
    """deploy/nginx.conf served by nginx on a free loopback port, in front of the given gunicorn ports."""

    def __init__(self, name: str, binary: str, directory: Path, upstream_ports: Sequence[int],
                 site: Path = SITE) -> None:
        self.name = name
        self.binary = binary
        self.directory = directory
        self.upstream_ports = list(upstream_ports)
        self.site = site
        self.port = 0
        self.process: subprocess.Popen | None = None
        # The gunicorn behind it, for what asks a target for its workers (profiling).
        self.backend = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> list[int]:
        return self.backend.workers() if self.backend is not None else []

    def start(self, timeout: float = 20) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # Workers run as an unprivileged user when nginx starts as root: they must reach their temp paths.
        self.directory.chmod(0o755)
        self.port = _free_port()
        site = self.directory / "site.conf"
        site.write_text(render_site(self.site.read_text(), self.upstream_ports, self.port, self.directory))
        main = self.directory / "nginx.conf"
        main.write_text(main_config(self.directory, site))
        log = open(self.directory / "nginx.out", "ab")
        with log:
            self.process = subprocess.Popen(
                [self.binary, "-p", str(self.directory), "-c", str(main), "-g", "daemon off;"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise ProxyError(f"{self.name}: nginx exited with {self.process.returncode}:\n{self._logs()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                self.stop()
                raise ProxyError(f"{self.name}: nginx did not listen within {timeout:.0f} s:\n{self._logs()}")
            time.sleep(0.1)

    def _logs(self) -> str:
        parts = []
        for name in ("nginx.out", "error.log"):
            with contextlib.suppress(OSError):
                parts.append((self.directory / name).read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # fast shutdown: the benchmark's connections are done
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
