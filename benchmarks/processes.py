"""The benchmark's processes: gunicorn servers on free loopback ports, and wrk with the suite's Lua scripts."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from seeding import SeededJob, auth_args

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_DIR = HERE / "wrk"
GUNICORN_CONF = ROOT / "gunicorn.conf.py"

# wrk drives connections from at most this many threads (one thread per
# connection up to 16, so the main rows keep a connection per thread).
MAX_WRK_THREADS = 16


class BenchError(RuntimeError):
    """The benchmark cannot go on."""


def log(message: str = "") -> None:
    """Print a progress line at once."""
    print(message, flush=True)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
                 body: bytes | None = None, timeout: float = 10) -> tuple[int, bytes]:
    """One HTTP request to 127.0.0.1:port; (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (a gunicorn master's workers)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    with contextlib.suppress(OSError):
        return sorted(int(p) for p in path.read_text().split())
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status VmRSS."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for process {pid}")


class Server:
    """A gunicorn (the repository's gunicorn.conf.py) serving one app on a free loopback port."""

    def __init__(self, name: str, app_spec: str, env: dict[str, str], log_path: Path,
                 extra_args: Sequence[str] = ()) -> None:
        self.name = name
        self.app_spec = app_spec
        self.env = env
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.process: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60) -> None:
        """Launch gunicorn and wait until every worker is up."""
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start gunicorn without waiting for it (several servers boot at once)."""
        self.port = free_port()
        env = {**os.environ, **self.env, "BIND": f"127.0.0.1:{self.port}"}
        command = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), *self.extra_args, self.app_spec]
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n==== {datetime.now().isoformat()} {self.name}: {' '.join(command)}\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60) -> None:
        """Wait until the launched gunicorn answers and its number of workers is steady."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise BenchError(f"{self.name}: gunicorn exited with {self.process.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError):
                http_request(self.port, "GET", "/bench-ready", timeout=2)
                break
            if time.monotonic() > deadline:
                raise BenchError(f"{self.name}: gunicorn did not answer within {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.2)
        # Every worker booted: the number of workers stays the same for a second.
        seen, stable_since = children(self.process.pid), time.monotonic()
        while time.monotonic() - stable_since < 1.0 and time.monotonic() < deadline:
            time.sleep(0.2)
            now = children(self.process.pid)
            if now != seen:
                seen, stable_since = now, time.monotonic()

    def workers(self) -> list[int]:
        return children(self.process.pid) if self.process else []

    def terminate(self) -> None:
        """Ask gunicorn to stop, without waiting (several servers stop at once)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """Stop gunicorn (SIGTERM, then SIGKILL to its session after 30 s) and wait for it."""
        self.terminate()
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # the session this script made for it
            process.wait(timeout=10)


def ensure_wrk() -> str:
    """The wrk binary, installed from Debian's packages if missing."""
    found = shutil.which("wrk")
    if found:
        return found
    log("wrk is missing: installing it with apt-get ...")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(install, env=env, stdout=subprocess.DEVNULL, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL, timeout=600, check=True)
        subprocess.run(install, env=env, stdout=subprocess.DEVNULL, timeout=600, check=True)
    found = shutil.which("wrk")
    if not found:
        raise BenchError("wrk could not be installed (apt-get install wrk)")
    return found


@dataclass
class WrkResult:
    """One wrk run, as its done() hook printed it."""

    requests: int
    duration_us: int
    p50_us: int
    p90_us: int
    p99_us: int
    max_us: int
    non2xx: int
    codes: str
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    # Requests sent when no job of the connection's thread was free (see wrk/common.lua).
    shared: int = 0
    first_error: str = ""

    @property
    def rps(self) -> float:
        return self.requests / (self.duration_us / 1e6) if self.duration_us else 0.0

    @property
    def socket_errors(self) -> int:
        return self.connect_errors + self.read_errors + self.write_errors + self.timeouts


_BENCH_LINE = re.compile(r"^BENCH (.*)$", re.MULTILINE)
_FIRST_ERROR = re.compile(r"^BENCH_FIRST_ERROR (.*)$", re.MULTILINE)


def parse_wrk(output: str) -> WrkResult:
    """The figures of the ``BENCH`` line that wrk/common.lua's done() prints."""
    match = _BENCH_LINE.search(output)
    if not match:
        raise BenchError(f"wrk printed no BENCH line:\n{output[-2000:]}")
    values = dict(part.split("=", 1) for part in match.group(1).split())
    fields = {}
    for name, spec in WrkResult.__dataclass_fields__.items():
        if name == "first_error":
            continue
        if name not in values:
            if spec.default is dataclasses.MISSING:  # a required figure
                raise BenchError(f"wrk's BENCH line has no {name}: {match.group(0)}")
            continue
        fields[name] = values[name] if name == "codes" else int(values[name])
    first = _FIRST_ERROR.search(output)
    return WrkResult(**fields, first_error=first.group(1) if first else "")


def wrk_threads(connections: int) -> int:
    """wrk's -t for a number of connections: a divisor of it, at most MAX_WRK_THREADS."""
    threads = min(connections, MAX_WRK_THREADS)
    while connections % threads:
        threads -= 1
    return threads


class Wrk:
    """Runs wrk with the benchmark's Lua scripts."""

    def __init__(self, binary: str, log_path: Path) -> None:
        self.binary = binary
        self.log_path = log_path

    def command(self, url: str, script: str, seconds: int, jobs: Sequence[SeededJob], connections: int,
                max_requests: int | None = None) -> list[str]:
        threads = wrk_threads(connections)
        command = [self.binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                   "-s", str(WRK_DIR / script), url, "--", f"threads={threads}", f"connections={connections}"]
        if max_requests:
            command.append(f"max={max_requests}")
        return command + auth_args(jobs)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "BENCH_WRK_DIR": str(WRK_DIR)}

    def _log(self, command: list[str], output: str) -> None:
        with open(self.log_path, "a") as log_file:
            cut = command.index("--") + 3
            shown = " ".join(command[:cut]) + f" ... ({len(command) - cut} arguments)"
            log_file.write(f"==== {datetime.now().isoformat()} {shown}\n{output}\n")

    def run(self, url: str, script: str, seconds: int, jobs: Sequence[SeededJob], connections: int) -> WrkResult:
        """Load for ``seconds``."""
        command = self.command(url, script, seconds, jobs, connections)
        completed = subprocess.run(command, cwd=ROOT, env=self._env(), capture_output=True, text=True,
                                   timeout=seconds + 60, stdin=subprocess.DEVNULL)
        self._log(command, completed.stdout + completed.stderr)
        if completed.returncode != 0:
            raise BenchError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()[-1000:]}")
        return parse_wrk(completed.stdout)

    def run_count(self, url: str, script: str, total: int, jobs: Sequence[SeededJob], connections: int,
                  timeout: float) -> WrkResult:
        """Load until about ``total`` responses (each thread stops after its share), at most ``timeout`` s.

        wrk's main thread sleeps for the whole -d duration even when every
        thread has stopped, so it is interrupted (SIGINT: wrk then prints its
        summary) as soon as every thread has said it is done. The pipe is
        read unbuffered: a buffered reader could hold the last lines while
        select() waits on an empty pipe until wrk's duration runs out.
        """
        command = self.command(url, script, int(timeout) + 5, jobs, connections, total)
        threads = wrk_threads(connections)
        process = subprocess.Popen(command, cwd=ROOT, env=self._env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        output = b""
        deadline = time.monotonic() + timeout
        try:
            fd = process.stdout.fileno()
            while output.count(b"BENCH_THREAD_DONE") < threads and time.monotonic() < deadline:
                ready, _, _ = select.select([fd], [], [], 0.5)
                if ready:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    output += chunk
                elif process.poll() is not None:
                    break
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            rest, _ = process.communicate(timeout=30)
            output += rest
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        text = output.decode(errors="replace")
        self._log(command, text)
        return parse_wrk(text)
