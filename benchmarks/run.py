#!/usr/bin/env python3
"""jobapi's benchmark suite: wrk against a real gunicorn on PostgreSQL, every figure a ratio to a bare Flask reference.

    python benchmarks/run.py            # full: warm-up, then 5 rounds of 6 s per scenario (~12 min)
    python benchmarks/run.py --quick    # 3 rounds of 3 s, memory after 1,000 and 10,000 requests
    make bench [BENCH_ARGS=--quick]

It makes its own PostgreSQL database (jobapi_bench on 127.0.0.1:5432, user
postgres; dropped and made anew, dropped again at the end), builds it with
the migrations, seeds it with bulk SQL (benchmarks/seeding.py), and serves
jobapi and the reference (benchmarks/reference_app.py) with the repository's
gunicorn.conf.py on a free loopback port. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WRK_DIR = HERE / "wrk"
RESULTS = HERE / "results"
GUNICORN_CONF = ROOT / "gunicorn.conf.py"

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{database}"

# wrk: as many threads as connections, so a thread is a connection (see wrk/common.lua).
CONNECTIONS = 16

sys.path.insert(0, str(HERE))
from seeding import Seeder, SeededJob, SeedingError, auth_args  # noqa: E402


class BenchError(RuntimeError):
    """The benchmark cannot go on."""


# ---------------------------------------------------------------------------
# Plan


@dataclass(frozen=True)
class Plan:
    """How long and how often each scenario is measured."""

    rounds: int
    seconds: int
    warmup_seconds: int
    memory_early: int
    memory_late: int
    history_jobs: int = 100_000
    history_records_per_job: int = 10


FULL = Plan(rounds=5, seconds=6, warmup_seconds=3, memory_early=1_000, memory_late=50_000)
QUICK = Plan(rounds=3, seconds=3, warmup_seconds=2, memory_early=1_000, memory_late=10_000)


def log(message: str = "") -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------------
# Processes: gunicorn, wrk, py-spy


def free_port() -> int:
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
        self.port = free_port()
        env = {**os.environ, **self.env, "BIND": f"127.0.0.1:{self.port}"}
        command = [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), *self.extra_args, self.app_spec]
        with open(self.log_path, "ab") as log_file:
            log_file.write(f"\n==== {datetime.now().isoformat()} {' '.join(command)}\n".encode())
            log_file.flush()
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
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

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
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
    match = _BENCH_LINE.search(output)
    if not match:
        raise BenchError(f"wrk printed no BENCH line:\n{output[-2000:]}")
    values = dict(part.split("=", 1) for part in match.group(1).split())
    first = _FIRST_ERROR.search(output)
    return WrkResult(
        **{name: (values[name] if name == "codes" else int(values[name]))
           for name in WrkResult.__dataclass_fields__ if name != "first_error"},
        first_error=first.group(1) if first else "",
    )


class Wrk:
    """Runs wrk with the benchmark's Lua scripts."""

    def __init__(self, binary: str, log_path: Path) -> None:
        self.binary = binary
        self.log_path = log_path

    def command(self, url: str, script: str, seconds: int, jobs: Sequence[SeededJob], max_requests: int | None) -> list[str]:
        command = [self.binary, f"-t{CONNECTIONS}", f"-c{CONNECTIONS}", f"-d{seconds}s", "--timeout", "10s",
                   "-s", str(WRK_DIR / script), url, "--", f"threads={CONNECTIONS}"]
        if max_requests:
            command.append(f"max={max_requests}")
        return command + auth_args(jobs)

    def _env(self) -> dict[str, str]:
        return {**os.environ, "BENCH_WRK_DIR": str(WRK_DIR)}

    def _log(self, command: list[str], output: str) -> None:
        with open(self.log_path, "a") as log_file:
            shown = " ".join(command[: command.index("--") + 2]) + f" ... ({len(command) - command.index('--') - 2} jobs)"
            log_file.write(f"==== {datetime.now().isoformat()} {shown}\n{output}\n")

    def run(self, url: str, script: str, seconds: int, jobs: Sequence[SeededJob]) -> WrkResult:
        """Load for ``seconds``."""
        command = self.command(url, script, seconds, jobs, None)
        completed = subprocess.run(command, cwd=ROOT, env=self._env(), capture_output=True, text=True,
                                   timeout=seconds + 60, stdin=subprocess.DEVNULL)
        self._log(command, completed.stdout + completed.stderr)
        if completed.returncode != 0:
            raise BenchError(f"wrk failed ({completed.returncode}): {completed.stderr.strip()[-1000:]}")
        return parse_wrk(completed.stdout)

    def run_count(self, url: str, script: str, total: int, jobs: Sequence[SeededJob], timeout: float) -> WrkResult:
        """Load until about ``total`` responses (each thread stops after its share), at most ``timeout`` s.

        wrk's main thread sleeps for the whole -d duration even when every
        thread has stopped, so it is interrupted (SIGINT: wrk then prints its
        summary) once every thread has said it is done.
        """
        command = self.command(url, script, int(timeout) + 5, jobs, total)
        process = subprocess.Popen(command, cwd=ROOT, env=self._env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
        output, done_threads, deadline = [], 0, time.monotonic() + timeout
        try:
            while done_threads < CONNECTIONS and time.monotonic() < deadline:
                ready, _, _ = select.select([process.stdout], [], [], 1.0)
                if not ready:
                    if process.poll() is not None:
                        break
                    continue
                line = process.stdout.readline()
                if not line:
                    break
                output.append(line)
                done_threads += line.startswith("BENCH_THREAD_DONE")
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            rest, _ = process.communicate(timeout=30)
            output.append(rest)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        text = "".join(output)
        self._log(command, text)
        return parse_wrk(text)


# ---------------------------------------------------------------------------
# Databases


def recreate_postgresql_database(database: str) -> str:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{database}"')
    return POSTGRES_URL.format(database=database)


def drop_postgresql_database(database: str) -> None:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def postgresql_maintenance(database: str) -> None:
    """After a bulk load: statistics and visibility map up to date, dirty pages written."""
    import psycopg

    conninfo = POSTGRES_ADMIN.replace("dbname=postgres", f"dbname={database}")
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute("VACUUM (ANALYZE) jobs")
        connection.execute("VACUUM (ANALYZE) job_status")
        connection.execute("CHECKPOINT")


def migrate(database_url: str, log_path: Path) -> None:
    """Build the schema with the repository's migrations (flask db upgrade)."""
    env = {**os.environ, "DATABASE_URL": database_url}
    completed = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "jobapi", "db", "upgrade"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
    )
    with open(log_path, "a") as log_file:
        log_file.write(f"==== flask db upgrade ({database_url})\n{completed.stdout}{completed.stderr}\n")
    if completed.returncode != 0:
        raise BenchError(f"flask db upgrade failed:\n{completed.stderr[-2000:]}")


# ---------------------------------------------------------------------------
# Scenarios


@dataclass
class Row:
    """A scenario's results: the warm-up and every measured round."""

    key: str
    label: str
    group: str
    rounds: list[WrkResult] = field(default_factory=list)
    warmup: WrkResult | None = None
    note: str = ""
    # Rows measured in one Bench.measure call have alternating rounds (round i of each close in time).
    batch: int = 0

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.rounds)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_us for r in self.rounds) / 1000

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_us for r in self.rounds) / 1000

    @property
    def non2xx(self) -> int:
        return sum(r.non2xx for r in self.rounds)

    @property
    def socket_errors(self) -> int:
        return sum(r.socket_errors for r in self.rounds)


@dataclass
class Scenario:
    """A row to measure: a route on a server, and the jobs of each run (one set, or one per run)."""

    key: str
    label: str
    server: Server
    script: str
    job_sets: Sequence[Sequence[SeededJob]]
    group: str = "postgresql"

    def jobs(self, run_index: int) -> Sequence[SeededJob]:
        """The jobs of the warm-up (0) or of round ``run_index``."""
        return self.job_sets[0] if len(self.job_sets) == 1 else self.job_sets[run_index]


class Bench:
    """Runs scenarios, keeps their rows, prints the table."""

    def __init__(self, plan: Plan, wrk: Wrk, only: set[str] | None, profile: bool, run_dir: Path) -> None:
        self.plan = plan
        self.wrk = wrk
        self.only = only
        self.profile = profile
        self.run_dir = run_dir
        self.rows: dict[str, Row] = {}
        self.batches = 0
        self.memory: dict[str, object] | None = None
        self.profiles: list[str] = []
        # The 5-minute load average before the run: other work on the machine skews every figure.
        self.load_averages: list[float] = []

    def wanted(self, *keys: str) -> bool:
        return self.only is None or any(key in self.only for key in keys)

    def measure(self, *scenarios: Scenario) -> None:
        """Warm each scenario up, then measure them in turn, round by round.

        Scenarios compared with each other are measured in one call: their
        rounds alternate, so the machine's drift touches them alike.
        """
        plan = self.plan
        chosen = [s for s in scenarios if self.wanted(s.key, s.group)]
        for scenario in chosen:
            if len(scenario.job_sets) not in (1, plan.rounds + 1):
                raise BenchError(f"{scenario.key}: {len(scenario.job_sets)} job sets for {plan.rounds} rounds")
        if not chosen:
            return
        log("- " + ", ".join(f"{s.label} [{s.key}]" for s in chosen) + (" (rounds alternate)" if len(chosen) > 1 else ""))
        width = max(len(s.key) for s in chosen)
        self.batches += 1
        for scenario in chosen:
            row = Row(key=scenario.key, label=scenario.label, group=scenario.group, batch=self.batches)
            if scenario.script == "get.lua":
                job = scenario.jobs(0)[0]
                status, body = http_request(scenario.server.port, "GET", f"/api/jobs/{job.id}",
                                            {"Authorization": f"Basic {job.token}"})
                row.note = f"document {len(body):,} bytes"
                if status != 200:
                    log(f"    check: GET answered {status}: {body[:300]!r}")
            row.warmup = self.wrk.run(scenario.server.url, scenario.script, plan.warmup_seconds, scenario.jobs(0))
            log(f"    {scenario.key:<{width}}  warm-up  {describe(row.warmup)}")
            self.rows[scenario.key] = row
        for i in range(1, plan.rounds + 1):
            # A B C, then C B A, ...: no scenario always follows the same one.
            for scenario in (chosen if i % 2 else chosen[::-1]):
                result = self.wrk.run(scenario.server.url, scenario.script, plan.seconds, scenario.jobs(i))
                self.rows[scenario.key].rounds.append(result)
                log(f"    {scenario.key:<{width}}  round {i}  {describe(result)}")
        if self.profile:
            for scenario in chosen:
                if scenario.key in PROFILED:
                    self.profile_round(scenario)

    def profile_round(self, scenario: Scenario) -> None:
        """One more round (not counted) with py-spy sampling every worker; print where the time goes."""
        import profiling

        py_spy = profiling.find_py_spy()
        if not py_spy:
            log("    profile: py-spy not found (pip install py-spy); skipped")
            return
        outputs, processes = [], []
        seconds = max(self.plan.seconds, 10)
        for pid in scenario.server.workers():
            out = self.run_dir / f"profile-{scenario.key}-{pid}.txt"
            outputs.append(out)
            processes.append(subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                 "--format", "raw", "--output", str(out), "--nonblocking", "--gil"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        time.sleep(0.5)
        try:
            self.wrk.run(scenario.server.url, scenario.script, seconds, scenario.jobs(self.plan.rounds))
        finally:
            for process in processes:
                try:
                    process.wait(timeout=seconds + 30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        report = profiling.summarize([o for o in outputs if o.exists()],
                                     title=f"{scenario.label}: py-spy samples of threads holding the GIL")
        (self.run_dir / f"profile-{scenario.key}.txt").write_text(report)
        self.profiles.append(report)
        log(report)


PROFILED = {"get5", "post_spread", "post_one"}


def describe(result: WrkResult) -> str:
    text = f"{result.rps:8.1f} req/s  p50 {result.p50_us / 1000:6.1f} ms  p99 {result.p99_us / 1000:6.1f} ms"
    if result.non2xx or result.socket_errors:
        text += f"  NON-2XX {result.non2xx} ({result.codes}) socket errors {result.socket_errors}"
        if result.first_error:
            text += f"\n             first: {result.first_error[:200]}"
    return text


def split(jobs: list[SeededJob], size: int) -> list[list[SeededJob]]:
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


# ---------------------------------------------------------------------------
# The run


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    plan = Plan(**{**asdict(plan), **{k: v for k, v in (("rounds", args.rounds), ("seconds", args.seconds)) if v}})
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = RESULTS / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    server_log = run_dir / "gunicorn.log"
    only = set(args.only.split(",")) if args.only else None
    started = time.monotonic()

    log(f"jobapi benchmark ({'quick' if args.quick else 'full'}): {plan.rounds} rounds of {plan.seconds} s "
        f"after a {plan.warmup_seconds} s warm-up, {CONNECTIONS} connections; logs in {run_dir.relative_to(ROOT)}")
    record_source(run_dir / "source.txt")
    wrk = Wrk(ensure_wrk(), run_dir / "wrk.log")
    bench = Bench(plan, wrk, only, args.profile, run_dir)
    bench.load_averages.append(os.getloadavg()[1])
    runs = plan.rounds + 1  # POST scenarios: fresh jobs for the warm-up and for each round
    history = bench.wanted("get_100k", "post_100k")

    with contextlib.ExitStack() as cleanup:
        def database(name: str) -> str:
            url = recreate_postgresql_database(name)
            if not args.keep_database:
                cleanup.callback(drop_postgresql_database, name)
            migrate(url, server_log)
            return url

        def jobapi_server(name: str, database_url: str) -> Server:
            server = Server(name, "wsgi:app", {"DATABASE_URL": database_url}, server_log)
            cleanup.callback(server.stop)
            server.start()
            return server

        # Three PostgreSQL databases: the scenarios' jobs; exactly 10 jobs; 10 jobs among months of history.
        main_db, small_db, large_db = args.database, f"{args.database}_10jobs", f"{args.database}_100kjobs"
        log(f"PostgreSQL: databases {main_db}, {small_db}, {large_db} (made anew), migrated; seeding ...")
        t0 = time.monotonic()
        main_url, small_url = database(main_db), database(small_db)
        large_url = database(large_db) if history else None
        main = Seeder(main_url)
        get5 = main.make_jobs(1, 5)
        get1 = main.make_jobs(1, 1)
        get100 = main.make_jobs(1, 100)
        get1000 = main.make_jobs(1, 1000)
        spread = split(main.make_jobs(64 * runs, 1), 64)
        concentrated = split(main.make_jobs(runs, 1), 1)
        post1 = split(main.make_jobs(CONNECTIONS * runs, 1), CONNECTIONS)
        post10k = main.make_jobs(CONNECTIONS, 10_000) if bench.wanted("post_10000") else []
        memory_jobs = main.make_jobs(64, 1)
        postgresql_maintenance(main_db)
        ten_small = Seeder(small_url).make_jobs(10, 5)
        postgresql_maintenance(small_db)
        if history:
            large = Seeder(large_url)
            large.make_history(plan.history_jobs, plan.history_records_per_job)
            ten_large = large.make_jobs(10, 5)
            postgresql_maintenance(large_db)
        log(f"  done in {time.monotonic() - t0:.1f} s "
            + (f"({plan.history_jobs:,} jobs with {plan.history_jobs * plan.history_records_per_job:,} records "
               f"by COPY, then VACUUM ANALYZE and CHECKPOINT)" if history else ""))

        sqlite = bench.wanted("sqlite", "sqlite_get5", "sqlite_post_spread")
        if sqlite:
            directory = Path(tempfile.mkdtemp(prefix="jobapi-bench-"))
            cleanup.callback(shutil.rmtree, directory, True)
            sqlite_url = f"sqlite:///{directory / 'jobapi.sqlite'}"
            log(f"SQLite: {sqlite_url}, migrated and seeded")
            migrate(sqlite_url, server_log)
            sqlite_seeder = Seeder(sqlite_url)
            sqlite_get5 = sqlite_seeder.make_jobs(1, 5)
            sqlite_spread = split(sqlite_seeder.make_jobs(64 * runs, 1), 64)

        # The reference answers the document jobapi gives for a 5-record job.
        api = jobapi_server("jobapi", main_url)
        job = get5[0]
        status, document = http_request(api.port, "GET", f"/api/jobs/{job.id}", {"Authorization": f"Basic {job.token}"})
        if status != 200:
            raise BenchError(f"jobapi answered {status} to GET of a seeded job: {document[:500]!r}")
        document_path = run_dir / "reference-document.json"
        document_path.write_bytes(document)
        reference = Server("reference", "reference_app:app", {"BENCH_REFERENCE_DOCUMENT": str(document_path)},
                           server_log, extra_args=["--pythonpath", str(HERE)])
        cleanup.callback(reference.stop)
        reference.start()
        ref_status, ref_body = http_request(reference.port, "GET", f"/api/jobs/{job.id}")
        log(f"reference document: {len(ref_body):,} bytes (jobapi's 5-record document: {len(document):,} bytes)")
        if ref_status != 200 or len(ref_body) != len(document):
            raise BenchError("the reference does not answer the same document")

        # Servers that are not being measured sit idle.
        scenarios = [
            Scenario("reference", "reference (bare Flask, constant document)", reference, "get.lua", [[job]],
                     group="reference"),
            Scenario("get5", "GET 5-record job", api, "get.lua", [get5]),
            Scenario("post_spread", "POST spread over 64 jobs", api, "post.lua", spread),
            Scenario("post_one", "POST concentrated on one job", api, "post.lua", concentrated),
        ]
        if sqlite:
            sqlite_api = jobapi_server("jobapi-sqlite", sqlite_url)
            scenarios += [
                Scenario("sqlite_get5", "SQLite: GET 5-record job", sqlite_api, "get.lua", [sqlite_get5],
                         group="sqlite"),
                Scenario("sqlite_post_spread", "SQLite: POST spread over 64 jobs", sqlite_api, "post.lua",
                         sqlite_spread, group="sqlite"),
            ]
        bench.measure(*scenarios)
        reference.stop()
        if sqlite:
            sqlite_api.stop()

        bench.measure(
            Scenario("get_1", "GET 1-record job", api, "get.lua", [get1]),
            Scenario("get_100", "GET 100-record job", api, "get.lua", [get100]),
            Scenario("get_1000", "GET 1,000-record job", api, "get.lua", [get1000]),
        )
        bench.measure(
            Scenario("post_1", "POST on 1-record jobs", api, "post.lua", post1),
            Scenario("post_10000", "POST on 10,000-record jobs", api, "post.lua", [post10k]),
        )
        api.stop()

        small_api = jobapi_server("jobapi-10-jobs", small_url)
        large_api = jobapi_server("jobapi-100k-jobs", large_url) if history else None
        get_pair = [Scenario("get_10", "GET 5-record job, 10 jobs in db", small_api, "get.lua", [[ten_small[0]]])]
        post_pair = [Scenario("post_10", "POST over 10 jobs, 10 jobs in db", small_api, "post.lua", [ten_small])]
        if history:
            get_pair.append(Scenario("get_100k", "GET 5-record job, 100,000 jobs in db", large_api, "get.lua",
                                     [[ten_large[0]]]))
            post_pair.append(Scenario("post_100k", "POST over 10 jobs, 100,000 jobs in db", large_api, "post.lua",
                                      [ten_large]))
        bench.measure(*get_pair)
        bench.measure(*post_pair)
        small_api.stop()
        if large_api:
            large_api.stop()

        # Memory: a fresh server, then requests (half GET, half POST) until the early and the late count.
        if bench.wanted("memory"):
            api = jobapi_server("jobapi", main_url)
            bench.memory = measure_memory(plan, wrk, api, get5, memory_jobs)
            api.stop()

    report = render(bench, plan, args.quick)
    log("")
    log(report)
    (run_dir / "table.txt").write_text(report + "\n\n" + "\n\n".join(bench.profiles))
    (run_dir / "results.json").write_text(json.dumps({
        "plan": asdict(plan),
        "rows": {key: {"label": row.label, "batch": row.batch, "rps": row.rps, "p50_ms": row.p50_ms, "p99_ms": row.p99_ms,
                       "non2xx": row.non2xx, "rounds": [asdict(r) for r in row.rounds]}
                 for key, row in bench.rows.items()},
        "memory": bench.memory,
    }, indent=2))
    log(f"\n(took {(time.monotonic() - started) / 60:.1f} min; results in {run_dir.relative_to(ROOT)})")
    return 0


def record_source(path: Path) -> None:
    """Which code was measured: the commit and the uncommitted changes (the work tree may be moving)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        parts = []
        for command in (["git", "rev-parse", "HEAD"], ["git", "status", "--short"], ["git", "diff", "--stat"]):
            completed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=30)
            parts.append(f"$ {' '.join(command)}\n{completed.stdout}")
        path.write_text("\n".join(parts))


def measure_memory(plan: Plan, wrk: Wrk, server: Server, get_jobs: list[SeededJob],
                   post_jobs: list[SeededJob]) -> dict[str, object]:
    """Each worker's VmRSS after ``plan.memory_early`` requests, and after ``plan.memory_late``."""
    log(f"- memory: RSS of each worker after {plan.memory_early:,} and {plan.memory_late:,} requests (half GET, half POST)")
    readings: dict[int, list[int]] = {}
    served = 0
    bad = 0
    for target in (plan.memory_early, plan.memory_late):
        remaining = target - served
        for script, jobs in (("get.lua", get_jobs), ("post.lua", post_jobs)):
            result = wrk.run_count(server.url, script, remaining // 2, jobs, timeout=300)
            served += result.requests
            bad += result.non2xx + result.socket_errors
        for pid in server.workers():
            readings.setdefault(pid, []).append(rss_kib(pid))
        log(f"    after {served:,} requests ({bad} non-2xx or socket errors): " + ", ".join(
            f"{pid}: {values[-1] / 1024:.1f} MiB" for pid, values in readings.items()))
    return {"early": plan.memory_early, "late": plan.memory_late, "served": served, "non2xx": bad,
            "rss_kib": {str(pid): values for pid, values in readings.items()}}


# ---------------------------------------------------------------------------
# The report


@dataclass(frozen=True)
class Target:
    text: str
    numerator: str
    denominator: str
    minimum: float


TARGETS = [
    Target("GET 5-record / reference", "get5", "reference", 0.30),
    Target("POST spread over 64 jobs / reference", "post_spread", "reference", 0.20),
    Target("POST 10,000-record / POST 1-record", "post_10000", "post_1", 0.90),
    Target("GET 1,000-record / GET 1-record", "get_1000", "get_1", 0.10),
    Target("GET, 100,000 jobs / 10 jobs", "get_100k", "get_10", 0.90),
    Target("POST, 100,000 jobs / 10 jobs", "post_100k", "post_10", 0.90),
]

def paired_ratio(top: Row, bottom: Row) -> tuple[float, str]:
    """top / bottom: the median of round-by-round ratios when their rounds alternated, else of the medians."""
    if top.batch == bottom.batch and len(top.rounds) == len(bottom.rounds) and top.rounds:
        ratios = [a.rps / b.rps for a, b in zip(top.rounds, bottom.rounds) if b.rps]
        if ratios:
            return statistics.median(ratios), (
                f"median of {len(ratios)} paired rounds: {min(ratios):.2f}..{max(ratios):.2f}; "
                f"ratio of medians {top.rps / bottom.rps:.2f}")
    return top.rps / bottom.rps, "ratio of medians, measured apart"


ORDER = ["reference", "get5", "post_spread", "post_one", "get_1", "get_100", "get_1000", "post_1", "post_10000",
         "get_10", "post_10", "get_100k", "post_100k", "sqlite_get5", "sqlite_post_spread"]


def render(bench: Bench, plan: Plan, quick: bool) -> str:
    rows = bench.rows
    reference = rows.get("reference")
    lines = []
    width = max([len(r.label) for r in rows.values()] + [8])
    header = f"{'scenario':<{width}}  {'req/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'x ref':>6}  {'non-2xx':>7}"
    lines += [f"Requests/s (median of {plan.rounds} x {plan.seconds} s after a {plan.warmup_seconds} s warm-up, "
              f"{CONNECTIONS} connections), p50/p99 latency (median of rounds), non-2xx over all rounds", "",
              f"Machine: {os.cpu_count()} CPUs; 5-minute load average before the run {bench.load_averages[0]:.1f} "
              "(work other than this benchmark skews every figure)",
              "", header, "-" * len(header)]
    for key in ORDER + [k for k in rows if k not in ORDER]:
        row = rows.get(key)
        if row is None:
            continue
        ratio = f"{row.rps / reference.rps:6.2f}" if reference else "     -"
        bad = f"{row.non2xx}" + (f"+{row.socket_errors}s" if row.socket_errors else "")
        lines.append(f"{row.label:<{width}}  {row.rps:8.1f}  {row.p50_ms:7.1f}  {row.p99_ms:7.1f}  {ratio}  {bad:>7}")
    notes = [f"  {row.label}: {row.note}" for row in rows.values() if row.note]
    problems = []
    for row in rows.values():
        for i, result in enumerate(([row.warmup] if row.warmup else []) + row.rounds):
            if result.non2xx or result.socket_errors:
                where = "warm-up" if (row.warmup and i == 0) else "round"
                problems.append(f"  {row.label} ({where}): {result.non2xx} non-2xx ({result.codes}), "
                                f"{result.socket_errors} socket errors; first: {result.first_error[:160]}")
    if notes:
        lines += ["", "Notes:"] + notes
    if problems:
        lines += ["", "NON-2XX RESPONSES OR SOCKET ERRORS (rates of these rows are not to be trusted):"] + problems

    lines += ["", "Targets:"]
    for target in TARGETS:
        top, bottom = rows.get(target.numerator), rows.get(target.denominator)
        if not top or not bottom:
            lines.append(f"  {target.text}: not measured")
            continue
        ratio, how = paired_ratio(top, bottom)
        verdict = "OK" if ratio >= target.minimum else "MISSED"
        if top.non2xx or bottom.non2xx:
            verdict += " (but non-2xx responses: not valid)"
        lines.append(f"  {target.text} = {ratio:.2f} (target >= {target.minimum:.2f}) {verdict}  [{how}]")
    for key in ("sqlite_get5", "sqlite_post_spread"):
        if key in rows and reference:
            ratio, how = paired_ratio(rows[key], reference)
            lines.append(f"  {rows[key].label} / reference = {ratio:.2f} (no target)  [{how}]")

    memory = bench.memory
    if memory:
        early, late = memory["early"], memory["late"]
        lines += ["", f"Memory: VmRSS of each gunicorn worker after {early:,} and {late:,} requests "
                      f"(served {memory['served']:,}, non-2xx/errors {memory['non2xx']})"]
        worst = 0.0
        for pid, values in memory["rss_kib"].items():
            if len(values) < 2:
                lines.append(f"  worker {pid}: {values[0] / 1024:.1f} MiB, then gone (replaced?)")
                continue
            ratio = values[1] / values[0]
            worst = max(worst, abs(ratio - 1))
            lines.append(f"  worker {pid}: {values[0] / 1024:6.1f} MiB -> {values[1] / 1024:6.1f} MiB  (x{ratio:.3f})")
        verdict = "OK" if worst <= 0.10 else "MISSED"
        scope = "" if late >= 50_000 else f" (only {late:,} requests: --quick; the target is for 50,000)"
        lines.append(f"  largest change {worst * 100:.1f} % (target within 10 %) {verdict}{scope}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------


def _raise_interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 3 s; memory after 1,000 and 10,000 requests")
    parser.add_argument("--rounds", type=int, help="rounds per scenario")
    parser.add_argument("--seconds", type=int, help="seconds per round")
    parser.add_argument("--only", help="comma-separated scenario keys or groups (postgresql, sqlite, memory) to run; "
                                       "the reference always runs")
    parser.add_argument("--profile", action="store_true",
                        help="after measuring GET 5-record and the two POST scenarios, one more round under py-spy")
    parser.add_argument("--database", default="jobapi_bench", help="PostgreSQL database to make and drop, with NAME_10jobs and NAME_100kjobs beside it")
    parser.add_argument("--keep-database", action="store_true", help="leave the PostgreSQL databases for inspection")
    args = parser.parse_args(argv)
    if args.only:
        args.only = args.only + ",reference"
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        return run(args)
    except KeyboardInterrupt:
        log("\ninterrupted: servers stopped, database dropped")
        return 130
    except (BenchError, SeedingError) as error:
        log(f"\nbenchmark failed: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
