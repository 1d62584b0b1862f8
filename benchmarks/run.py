#!/usr/bin/env python3
"""jobapi's benchmark suite: wrk against a real gunicorn on PostgreSQL, every figure a ratio to bare Flask and to the yardstick.

    python benchmarks/run.py                # full: 5 alternating rounds of 5 s per scenario (about 11 minutes)
    python benchmarks/run.py --quick        # 3 rounds of 2 s, smaller history and memory runs (under 3 minutes)
    python benchmarks/run.py --only curve   # the concurrency curve alone (1, 16, 64, 256 connections; direct and nginx)
    make bench [BENCH_ARGS=...]             # the same; make bench-curve for the curve

It makes its own PostgreSQL databases (jobapi_bench and beside it on
127.0.0.1:5432, user postgres; made anew, dropped at the end), builds them
with the migrations, seeds them with bulk SQL (benchmarks/seeding.py), and
serves jobapi, the bare Flask reference (benchmarks/reference_app.py) and the
yardstick (benchmarks/yardstick_app.py) with the repository's
gunicorn.conf.py on free loopback ports. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from nginx_proxy import SITE, NginxProxy, ProxyError, find_nginx  # noqa: E402
from pgbouncer_proxy import INI, PgBouncer, PgBouncerError, find_pgbouncer  # noqa: E402
from processes import (  # noqa: E402
    ROOT, BenchError, Server, Wrk, WrkResult, ensure_wrk, free_port, http_request, log, rss_kib, wrk_threads,
)
from report import Row, render_curve, render_memory, render_table  # noqa: E402
from seeding import Seeder, SeededJob, SeedingError  # noqa: E402

RESULTS = HERE / "results"
POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"
POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{database}"

# The main table's connections (and wrk threads: a thread per connection).
CONNECTIONS = 16
CURVE_LEVELS = (1, 16, 64, 256)
# POST rows of the curve: each connection has jobs of its own, so no push waits on another's row lock.
CURVE_JOBS_PER_CONNECTION = 4

# Every server of the run: the POST 10,000-record row starts at the default
# cap of a job's history (JOB_MAX_STATUS_RECORDS, 10,000), and must measure
# pushes, not refusals. The check itself costs the same whatever the cap.
SERVER_ENV = {"JOB_MAX_STATUS_RECORDS": "1000000"}
# jobapi's servers take claims from Virtool's 42.x pods, which send no credentials.
JOBAPI_ENV = {"JOB_ACQUIRE": "open"}


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
    history_jobs: int
    history_records_per_job: int
    curve_rounds: int
    curve_seconds: int
    curve_warmup_seconds: int


FULL = Plan(rounds=5, seconds=5, warmup_seconds=2, memory_early=1_000, memory_late=50_000,
            history_jobs=100_000, history_records_per_job=10,
            curve_rounds=3, curve_seconds=3, curve_warmup_seconds=1)
QUICK = Plan(rounds=3, seconds=2, warmup_seconds=1, memory_early=1_000, memory_late=4_000,
             history_jobs=10_000, history_records_per_job=10,
             curve_rounds=1, curve_seconds=2, curve_warmup_seconds=1)


# ---------------------------------------------------------------------------
# Scenario keys: what --only takes


SCENARIOS: dict[str, str] = {
    "reference": "bare Flask answering jobapi's 5-record document as a constant (runs with every row)",
    "yardstick_get5": "the yardstick (plain Flask + psycopg): GET 5-record job",
    "yardstick_post_spread": "the yardstick: POST spread over 64 jobs",
    "get5": "GET 5-record job",
    "post_spread": "POST spread over 64 jobs (4 per connection, none shared)",
    "post_one": "POST concentrated on one job (all connections wait on its row lock)",
    "get_1": "GET 1-record job",
    "get_100": "GET 100-record job",
    "get_1000": "GET 1,000-record job",
    "post_1": "POST on 1-record jobs",
    "post_10000": "POST on 10,000-record jobs",
    "get_10": "GET, database holding 10 jobs",
    "post_10": "POST, database holding 10 jobs",
    "get_100k": "GET, 10 jobs among 100,000 (--quick: 10,000) with their history",
    "post_100k": "POST, 10 jobs among 100,000 (--quick: 10,000) with their history",
    "direct_get5": "GET 5-record job, direct, statements prepared (the pair of the two rows below)",
    "unprepared_get5": "GET 5-record job, direct, as through a pooler (DB_POOLER=transaction: nothing prepared, "
                       "the statement timeout per transaction)",
    "pgbouncer_get5": "GET 5-record job through PgBouncer (deploy/pgbouncer.ini)",
    "direct_post": "POST spread over 64 jobs, direct, statements prepared",
    "unprepared_post": "POST spread over 64 jobs, direct, as through a pooler (DB_POOLER=transaction)",
    "pgbouncer_post": "POST spread over 64 jobs through PgBouncer (deploy/pgbouncer.ini)",
    "v42_claim_empty": "Virtool 42.x: an empty claim (404, nothing waiting), as an idle pod polls it",
    "sqlite_get5": "SQLite: GET 5-record job",
    "sqlite_post_spread": "SQLite: POST spread over 64 jobs",
    "memory": "VmRSS of the workers after 1,000 and 50,000 (--quick: 4,000) requests",
    "curve": "the concurrency curve: 1, 16, 64, 256 connections, direct and through deploy/nginx.conf "
             "(not in the default run)",
}
GROUPS: dict[str, list[str]] = {
    "postgresql": ["reference", "yardstick_get5", "yardstick_post_spread", "get5", "post_spread", "post_one",
                   "v42_claim_empty",
                   "get_1", "get_100", "get_1000", "post_1", "post_10000", "get_10", "post_10", "get_100k",
                   "post_100k"],
    "yardstick": ["yardstick_get5", "yardstick_post_spread"],
    "targets": ["get5", "post_spread"],
    "sqlite": ["sqlite_get5", "sqlite_post_spread"],
    "pgbouncer": ["direct_get5", "unprepared_get5", "pgbouncer_get5", "direct_post", "unprepared_post",
                  "pgbouncer_post"],
}
# A row comes with the rows it is compared with.
PARTNERS: dict[str, list[str]] = {
    "get5": ["reference", "yardstick_get5"],
    "post_spread": ["reference", "yardstick_post_spread"],
    "yardstick_get5": ["reference"],
    "yardstick_post_spread": ["reference"],
    "get_100": ["get_1"],
    "get_1000": ["get_1"],
    "post_10000": ["post_1"],
    "get_100k": ["get_10"],
    "post_100k": ["post_10"],
    "sqlite_get5": ["reference"],
    "sqlite_post_spread": ["reference"],
    "unprepared_get5": ["direct_get5"],
    "pgbouncer_get5": ["direct_get5", "unprepared_get5"],
    "unprepared_post": ["direct_post"],
    "pgbouncer_post": ["direct_post", "unprepared_post"],
    "v42_claim_empty": ["get5"],
}
DEFAULT_KEYS = frozenset(SCENARIOS) - {"curve"}


def scenario_help() -> str:
    """The scenario keys and groups, for --help."""
    width = max(len(k) for k in SCENARIOS)
    lines = ["scenario keys (for --only):"]
    lines += [f"  {key:<{width}}  {text}" for key, text in SCENARIOS.items()]
    lines.append("groups (for --only):")
    lines += [f"  {name:<{width}}  {', '.join(keys)}" for name, keys in GROUPS.items()]
    lines.append("Every row brings the rows it is a ratio to (the reference, the yardstick, its pair).")
    return "\n".join(lines)


def select_keys(only: str | None, curve: bool = False) -> frozenset[str]:
    """The scenario keys to run; ``ValueError`` naming the valid keys for an unknown one."""
    if not only:
        return DEFAULT_KEYS | ({"curve"} if curve else set())
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCENARIOS and name not in GROUPS]
    if unknown or not names:
        raise ValueError(
            f"unknown scenario key(s): {', '.join(unknown) or '(none given)'}; valid keys: {', '.join(SCENARIOS)}; "
            f"groups: {', '.join(GROUPS)}")
    keys = set()
    for name in names:
        keys.update(GROUPS.get(name, [name]))
    for key in list(keys):
        keys.update(PARTNERS.get(key, []))
    if curve:
        keys.add("curve")
    return frozenset(keys)


# ---------------------------------------------------------------------------
# Databases


def recreate_postgresql_database(database: str) -> str:
    """Drop and make a database; its SQLAlchemy URL."""
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        connection.execute(f'CREATE DATABASE "{database}"')
    return POSTGRES_URL.format(database=database)


def drop_postgresql_database(database: str) -> None:
    """Drop a database the run made."""
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def postgresql_maintenance(*databases: str) -> None:
    """After a bulk load: statistics and visibility maps up to date, then dirty pages written (once: a
    checkpoint is the whole server's)."""
    import psycopg

    for database in databases:
        conninfo = POSTGRES_ADMIN.replace("dbname=postgres", f"dbname={database}")
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute("VACUUM (ANALYZE) jobs")
            connection.execute("VACUUM (ANALYZE) job_status")
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as connection:
        connection.execute("CHECKPOINT")


def migrate(database_urls: Sequence[str], log_path: Path) -> None:
    """Build the schemas with the repository's migrations (flask db upgrade), all databases at once."""
    processes = [
        (url, subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "jobapi", "db", "upgrade"],
            cwd=ROOT, env={**os.environ, "DATABASE_URL": url}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, stdin=subprocess.DEVNULL,
        ))
        for url in database_urls
    ]
    failed = []
    for url, process in processes:
        try:
            stdout, stderr = process.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        with open(log_path, "a") as log_file:
            log_file.write(f"==== flask db upgrade ({url})\n{stdout}{stderr}\n")
        if process.returncode != 0:
            failed.append(f"{url}:\n{stderr[-2000:]}")
    if failed:
        raise BenchError("flask db upgrade failed for " + "\n".join(failed))


# ---------------------------------------------------------------------------
# Scenarios


@dataclass
class Scenario:
    """A row to measure: a route on a target (a gunicorn, or nginx before one), and the jobs of each run."""

    key: str
    label: str
    target: Server | NginxProxy
    script: str
    job_sets: Sequence[Sequence[SeededJob]]
    group: str = "postgresql"
    server: str = "jobapi"
    path: str = "direct"
    connections: int = CONNECTIONS

    @property
    def kind(self) -> str:
        """``get``, ``post``, or ``claim`` (claim42.lua: a POST with no yardstick twin)."""
        return {"get.lua": "get", "post.lua": "post"}.get(self.script, "claim")

    def jobs(self, run_index: int) -> Sequence[SeededJob]:
        """The jobs of the warm-up (0) or of round ``run_index``."""
        return self.job_sets[0] if len(self.job_sets) == 1 else self.job_sets[run_index]


@dataclass(frozen=True)
class Timing:
    """Rounds, their length and the warm-up of one measurement."""

    rounds: int
    seconds: int
    warmup_seconds: int


# Rows that get an extra round under py-spy with --profile.
PROFILED = {"get5": "GET jobapi", "post_spread": "POST jobapi", "post_one": "POST one job",
            "yardstick_get5": "GET yardstick", "yardstick_post_spread": "POST yardstick"}


class Bench:
    """Runs scenarios and keeps their rows."""

    def __init__(self, plan: Plan, wrk: Wrk, keys: frozenset[str], profile: bool, run_dir: Path) -> None:
        self.plan = plan
        self.wrk = wrk
        self.keys = keys
        self.profile = profile
        self.run_dir = run_dir
        self.rows: dict[str, Row] = {}
        self.batches = 0
        self.memory: dict[str, object] | None = None
        self.profiles: list[str] = []
        self.categories: dict[str, Counter[str]] = {}
        # The 5-minute load average before the run: other work on the machine skews every figure.
        self.load_averages: list[float] = []
        self.started = time.monotonic()

    def wanted(self, *keys: str) -> bool:
        return any(key in self.keys for key in keys)

    def measure(self, *scenarios: Scenario, timing: Timing | None = None) -> None:
        """Warm each scenario up, then measure them in turn, round by round.

        Scenarios compared with each other are measured in one call: their
        rounds alternate (A B C, then C B A, ...), so the machine's drift
        touches them alike.
        """
        timing = timing or Timing(self.plan.rounds, self.plan.seconds, self.plan.warmup_seconds)
        chosen = [s for s in scenarios if s.group == "curve" or self.wanted(s.key)]
        for scenario in chosen:
            if len(scenario.job_sets) not in (1, timing.rounds + 1):
                raise BenchError(f"{scenario.key}: {len(scenario.job_sets)} job sets for {timing.rounds} rounds")
        if not chosen:
            return
        log(f"- at {time.monotonic() - self.started:.0f} s: " + ", ".join(f"{s.label} [{s.key}]" for s in chosen)
            + (" (rounds alternate)" if len(chosen) > 1 else ""))
        width = max(len(s.key) for s in chosen)
        self.batches += 1
        for scenario in chosen:
            row = Row(key=scenario.key, label=scenario.label, group=scenario.group, kind=scenario.kind,
                      server=scenario.server, path=scenario.path, connections=scenario.connections,
                      batch=self.batches)
            if scenario.kind == "get":
                job = scenario.jobs(0)[0]
                status, body = http_request(scenario.target.port, "GET", f"/api/jobs/{job.id}",
                                            {"Authorization": f"Basic {job.token}"})
                row.note = f"document {len(body):,} bytes"
                if status != 200:
                    log(f"    check: GET answered {status}: {body[:300]!r}")
            if timing.warmup_seconds:
                row.warmup = self.wrk.run(scenario.target.url, scenario.script, timing.warmup_seconds,
                                          scenario.jobs(0), scenario.connections)
                log(f"    {scenario.key:<{width}}  warm-up  {describe(row.warmup)}")
            self.rows[scenario.key] = row
        for i in range(1, timing.rounds + 1):
            for scenario in (chosen if i % 2 else chosen[::-1]):
                result = self.wrk.run(scenario.target.url, scenario.script, timing.seconds, scenario.jobs(i),
                                      scenario.connections)
                self.rows[scenario.key].rounds.append(result)
                log(f"    {scenario.key:<{width}}  round {i}  {describe(result)}")
        if self.profile:
            for scenario in chosen:
                if scenario.key in PROFILED:
                    self.profile_round(scenario, timing)

    def profile_round(self, scenario: Scenario, timing: Timing) -> None:
        """One more round (not counted) with py-spy sampling every worker; where the time goes."""
        import profiling

        py_spy = profiling.find_py_spy()
        if not py_spy:
            log("    profile: py-spy not found (pip install -e '.[bench]'); skipped")
            return
        outputs, processes = [], []
        seconds = max(timing.seconds, 10)
        for pid in scenario.target.workers():
            out = self.run_dir / f"profile-{scenario.key}-{pid}.txt"
            outputs.append(out)
            processes.append(subprocess.Popen(
                [py_spy, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200",
                 "--format", "raw", "--output", str(out), "--nonblocking", "--gil"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        time.sleep(0.5)
        try:
            self.wrk.run(scenario.target.url, scenario.script, seconds, scenario.jobs(timing.rounds),
                         scenario.connections)
        finally:
            for process in processes:
                try:
                    process.wait(timeout=seconds + 30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        found = [o for o in outputs if o.exists()]
        report = profiling.summarize(found, title=f"{scenario.label}: py-spy samples of threads holding the GIL")
        self.categories[PROFILED[scenario.key]] = profiling.categories(found)
        (self.run_dir / f"profile-{scenario.key}.txt").write_text(report)
        self.profiles.append(report)
        log(report)


def describe(result: WrkResult) -> str:
    text = f"{result.rps:8.1f} req/s  p50 {result.p50_us / 1000:6.1f} ms  p99 {result.p99_us / 1000:6.1f} ms"
    if result.non2xx or result.socket_errors:
        text += f"  NON-2XX {result.non2xx} ({result.codes}) socket errors {result.socket_errors}"
        if result.first_error:
            text += f"\n             first: {result.first_error[:200]}"
    if result.shared:
        text += f"  ({result.shared} requests on a shared job)"
    return text


def split(jobs: list[SeededJob], size: int) -> list[list[SeededJob]]:
    return [jobs[i:i + size] for i in range(0, len(jobs), size)]


# ---------------------------------------------------------------------------
# The run


def run(args: argparse.Namespace, keys: frozenset[str]) -> int:
    plan = QUICK if args.quick else FULL
    plan = Plan(**{**asdict(plan), **{k: v for k, v in (("rounds", args.rounds), ("seconds", args.seconds)) if v}})
    levels = tuple(args.levels) if args.levels else CURVE_LEVELS
    pgbouncer_note = ""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = RESULTS / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    server_log = run_dir / "gunicorn.log"
    started = time.monotonic()

    log(f"jobapi benchmark ({'quick' if args.quick else 'full'}): {plan.rounds} rounds of {plan.seconds} s "
        f"after a {plan.warmup_seconds} s warm-up, {CONNECTIONS} connections; logs in {run_dir.relative_to(ROOT)}")
    record_source(run_dir / "source.txt")
    wrk = Wrk(ensure_wrk(), run_dir / "wrk.log")
    bench = Bench(plan, wrk, keys, args.profile, run_dir)
    bench.load_averages.append(os.getloadavg()[1])
    runs = plan.rounds + 1  # POST scenarios: fresh jobs for the warm-up and for each round
    history = bench.wanted("get_100k", "post_100k")
    small = bench.wanted("get_10", "post_10")
    curve = bench.wanted("curve")
    nginx_note = ""

    with contextlib.ExitStack() as cleanup:
        def database(name: str) -> str:
            url = recreate_postgresql_database(name)
            if not args.keep_database:
                cleanup.callback(drop_postgresql_database, name)
            return url

        def server(name: str, app_spec: str, database_url: str | None = None, extra: Sequence[str] = (),
                   env: dict[str, str] | None = None) -> Server:
            server_env = {**SERVER_ENV, **(env or {})}
            if database_url:
                server_env["DATABASE_URL"] = database_url
            made = Server(name, app_spec, server_env, server_log, extra_args=extra)
            cleanup.callback(made.stop)
            return made

        def stop(*servers: Server | None) -> None:
            for one in servers:
                if one is not None:
                    one.terminate()
            for one in servers:
                if one is not None:
                    one.stop()

        def serve(*servers: Server) -> None:
            # Booting is mostly waiting (imports, workers settling): the servers boot side by side.
            for one in servers:
                one.launch()
            for one in servers:
                one.wait_ready()

        # PostgreSQL: the scenarios' jobs; exactly 10 jobs; 10 jobs among months of history. SQLite beside them.
        main_db, small_db, large_db = args.database, f"{args.database}_10jobs", f"{args.database}_100kjobs"
        sqlite = bench.wanted("sqlite_get5", "sqlite_post_spread")
        log(f"PostgreSQL: database {main_db}" + (f", {small_db}" if small else "") + (f", {large_db}" if history else "")
            + " (made anew)" + (" and a SQLite file" if sqlite else "") + ", migrated; seeding ...")
        t0 = time.monotonic()
        main_url = database(main_db)
        small_url = database(small_db) if small else None
        large_url = database(large_db) if history else None
        sqlite_url = None
        if sqlite:
            directory = Path(tempfile.mkdtemp(prefix="jobapi-bench-"))
            cleanup.callback(shutil.rmtree, directory, True)
            sqlite_url = f"sqlite:///{directory / 'jobapi.sqlite'}"
        migrate([url for url in (main_url, small_url, large_url, sqlite_url) if url], server_log)

        main = Seeder(main_url)
        get5 = main.make_jobs(1, 5)
        get1 = main.make_jobs(1, 1) if bench.wanted("get_1") else []
        get100 = main.make_jobs(1, 100) if bench.wanted("get_100") else []
        get1000 = main.make_jobs(1, 1000) if bench.wanted("get_1000") else []

        def spread_sets(key: str, per_run: int) -> list[list[SeededJob]]:
            return split(main.make_jobs(per_run * runs, 1), per_run) if bench.wanted(key) else []

        spread = spread_sets("post_spread", 64)
        pooled_spread = {key: spread_sets(key, 64) for key in ("direct_post", "unprepared_post", "pgbouncer_post")}
        yardstick_spread = spread_sets("yardstick_post_spread", 64)
        concentrated = spread_sets("post_one", 1)
        post1 = spread_sets("post_1", CONNECTIONS)
        post10k = main.make_jobs(CONNECTIONS, 10_000) if bench.wanted("post_10000") else []
        memory_jobs = main.make_jobs(64, 1) if bench.wanted("memory") else []
        curve_jobs: dict[tuple[str, str, int], list[list[SeededJob]]] = {}
        if curve:
            for level in levels:
                for name in ("yardstick", "jobapi"):
                    for path in ("direct", "nginx"):
                        per_run = CURVE_JOBS_PER_CONNECTION * level
                        curve_jobs[(name, path, level)] = split(
                            main.make_jobs(per_run * (plan.curve_rounds + 1), 1), per_run)
        if small:
            ten_small = Seeder(small_url).make_jobs(10, 5)
        if history:
            large = Seeder(large_url)
            large.make_history(plan.history_jobs, plan.history_records_per_job)
            ten_large = large.make_jobs(10, 5)
        postgresql_maintenance(main_db, *([small_db] if small else []), *([large_db] if history else []))
        if sqlite:
            sqlite_seeder = Seeder(sqlite_url)
            sqlite_get5 = sqlite_seeder.make_jobs(1, 5)
            sqlite_spread = split(sqlite_seeder.make_jobs(64 * runs, 1), 64)
        log(f"  done in {time.monotonic() - t0:.1f} s "
            + (f"({plan.history_jobs:,} jobs with {plan.history_jobs * plan.history_records_per_job:,} records "
               f"by COPY, then VACUUM ANALYZE and CHECKPOINT)" if history else ""))

        api = server("jobapi", "wsgi:app", main_url, env=JOBAPI_ENV)
        yardstick = server("yardstick", "yardstick_app:app", main_url, extra=["--pythonpath", str(HERE)])
        sqlite_api = server("jobapi-sqlite", "wsgi:app", sqlite_url) if sqlite else None
        serve(*(s for s in (api, yardstick, sqlite_api) if s))

        # The reference answers the document jobapi gives for a 5-record job.
        job = get5[0]
        status, document = http_request(api.port, "GET", f"/api/jobs/{job.id}", {"Authorization": f"Basic {job.token}"})
        if status != 200:
            raise BenchError(f"jobapi answered {status} to GET of a seeded job: {document[:500]!r}")
        document_path = run_dir / "reference-document.json"
        document_path.write_bytes(document)
        reference = server("reference", "reference_app:app", extra=["--pythonpath", str(HERE)],
                           env={"BENCH_REFERENCE_DOCUMENT": str(document_path)})
        serve(reference)
        ref_status, ref_body = http_request(reference.port, "GET", f"/api/jobs/{job.id}")
        log(f"reference document: {len(ref_body):,} bytes (jobapi's 5-record document: {len(document):,} bytes)")
        if ref_status != 200 or len(ref_body) != len(document):
            raise BenchError("the reference does not answer the same document")
        y_status, y_body = http_request(yardstick.port, "GET", f"/api/jobs/{job.id}",
                                        {"Authorization": f"Basic {job.token}"})
        if y_status != 200 or y_body != document:
            raise BenchError(f"the yardstick answers another document ({y_status}): {y_body[:300]!r}")

        # Servers that are not being measured sit idle.
        scenarios = [
            Scenario("reference", "reference (bare Flask, constant document)", reference, "get.lua", [[job]],
                     server="reference"),
            Scenario("yardstick_get5", "yardstick: GET 5-record job", yardstick, "get.lua", [get5],
                     server="yardstick"),
            Scenario("get5", "GET 5-record job", api, "get.lua", [get5]),
            Scenario("yardstick_post_spread", "yardstick: POST spread over 64 jobs", yardstick, "post.lua",
                     yardstick_spread, server="yardstick"),
            Scenario("post_spread", "POST spread over 64 jobs", api, "post.lua", spread),
            Scenario("post_one", "POST concentrated on one job", api, "post.lua", concentrated),
            # The request an idle fleet of 42.x pods sends every 2 s each, beside the GET it should cost about.
            Scenario("v42_claim_empty", "42.x: empty claim (404)", api, "claim42.lua", [get5]),
        ]
        if sqlite:
            scenarios += [
                Scenario("sqlite_get5", "SQLite: GET 5-record job", sqlite_api, "get.lua", [sqlite_get5],
                         group="sqlite"),
                Scenario("sqlite_post_spread", "SQLite: POST spread over 64 jobs", sqlite_api, "post.lua",
                         sqlite_spread, group="sqlite"),
            ]
        bench.measure(*scenarios)
        stop(sqlite_api)

        if bench.wanted(*GROUPS["pgbouncer"]):
            pgbouncer_note = measure_pgbouncer(bench, server, serve, stop, cleanup, run_dir, api, main_db, main_url,
                                               get5, pooled_spread)

        bench.measure(
            Scenario("get_1", "GET 1-record job", api, "get.lua", [get1]),
            Scenario("get_100", "GET 100-record job", api, "get.lua", [get100]),
            Scenario("get_1000", "GET 1,000-record job", api, "get.lua", [get1000]),
        )
        bench.measure(
            Scenario("post_1", "POST on 1-record jobs", api, "post.lua", post1),
            Scenario("post_10000", "POST on 10,000-record jobs", api, "post.lua", [post10k]),
        )

        if curve:
            nginx_note = measure_curve(bench, plan, levels, run_dir, cleanup,
                                       {"reference": reference, "yardstick": yardstick, "jobapi": api},
                                       job, curve_jobs)
        stop(reference, yardstick, api)

        # The memory row's server boots with the last ones and stays idle until its turn: fresh, unused.
        memory_api = server("jobapi-memory", "wsgi:app", main_url) if bench.wanted("memory") else None
        small_api = server("jobapi-10-jobs", "wsgi:app", small_url) if small else None
        large_api = server("jobapi-history", "wsgi:app", large_url) if history else None
        serve(*(s for s in (memory_api, small_api, large_api) if s))
        if small or history:
            pair_get, pair_post = [], []
            if small:
                pair_get.append(Scenario("get_10", "GET 5-record job, 10 jobs in db", small_api, "get.lua",
                                         [[ten_small[0]]]))
                pair_post.append(Scenario("post_10", "POST over 10 jobs, 10 jobs in db", small_api, "post.lua",
                                          [ten_small]))
            if history:
                pair_get.append(Scenario("get_100k", f"GET 5-record job, {plan.history_jobs:,} jobs in db",
                                         large_api, "get.lua", [[ten_large[0]]]))
                pair_post.append(Scenario("post_100k", f"POST over 10 jobs, {plan.history_jobs:,} jobs in db",
                                          large_api, "post.lua", [ten_large]))
            bench.measure(*pair_get)
            bench.measure(*pair_post)
            stop(small_api, large_api)

        # Memory: requests (half GET, half POST) to the fresh server until the early and the late count.
        if memory_api:
            bench.memory = measure_memory(plan, wrk, memory_api, get5, memory_jobs)
            stop(memory_api)

    parts = [render_table(bench.rows, rounds=plan.rounds, seconds=plan.seconds, warmup_seconds=plan.warmup_seconds,
                          connections=CONNECTIONS, load_average=bench.load_averages[0], cpus=os.cpu_count() or 0,
                          history_jobs=plan.history_jobs)]
    if pgbouncer_note:
        parts.append(pgbouncer_note)
    if bench.memory:
        parts.append(render_memory(bench.memory))
    if curve:
        parts.append(render_curve(bench.rows, levels, rounds=plan.curve_rounds, seconds=plan.curve_seconds,
                                  warmup_seconds=plan.curve_warmup_seconds, nginx_note=nginx_note))
    if bench.categories:
        import profiling

        parts.append("Where the time goes (py-spy, samples of worker threads holding the GIL, % of each "
                     "route's samples; see profiling.py for the categories):\n"
                     + profiling.category_table(bench.categories))
    report = "\n\n".join(p for p in parts if p)
    log("")
    log(report)
    (run_dir / "table.txt").write_text(report + "\n\n" + "\n\n".join(bench.profiles))
    (run_dir / "results.json").write_text(json.dumps({
        "plan": asdict(plan),
        "levels": levels,
        "rows": {key: {"label": row.label, "batch": row.batch, "group": row.group, "kind": row.kind,
                       "server": row.server, "path": row.path, "connections": row.connections,
                       "rps": row.rps, "p50_ms": row.p50_ms, "p99_ms": row.p99_ms,
                       "non2xx": row.non2xx, "socket_errors": row.socket_errors,
                       "rounds": [asdict(r) for r in row.rounds]}
                 for key, row in bench.rows.items()},
        "memory": bench.memory,
        "categories": {name: dict(counts) for name, counts in bench.categories.items()},
    }, indent=2))
    log(f"\n(took {(time.monotonic() - started) / 60:.1f} min; results in {run_dir.relative_to(ROOT)})")
    return 0


def measure_pgbouncer(bench: Bench, server, serve, stop, cleanup: contextlib.ExitStack, run_dir: Path, api: Server,
                      database: str, database_url: str, get5: list[SeededJob],
                      spread: dict[str, list[list[SeededJob]]]) -> str:
    """GET 5-record and POST spread direct (prepared), direct as through a pooler, and through PgBouncer
    (deploy/pgbouncer.ini in front of the same database), their rounds alternating; a line saying how."""
    binary = find_pgbouncer()
    if binary is None:
        note = "PgBouncer rows skipped: pgbouncer is not installed (apt-get install pgbouncer)"
        log(f"- {note}")
        return note
    bouncer = PgBouncer(binary, run_dir / "pgbouncer", free_port(), f"host=127.0.0.1 port=5432 dbname={database}")
    cleanup.callback(bouncer.stop)
    try:
        bouncer.start()
    except PgBouncerError as error:
        raise BenchError(str(error)) from None
    config = {row[0]: row[1] for row in bouncer.admin("SHOW CONFIG")}
    unprepared = server("jobapi-unprepared", "wsgi:app", database_url, env={"DB_POOLER": "transaction"})
    pooled = server("jobapi-pgbouncer", "wsgi:app", bouncer.url, env={"DATABASE_DIRECT_URL": database_url})
    serve(unprepared, pooled)
    note = (f"PgBouncer: {binary} serving {INI.relative_to(ROOT)} (pool_mode {config['pool_mode']}, "
            f"default_pool_size {config['default_pool_size']}) in front of the same database")
    log(f"- {note}")
    bench.measure(
        Scenario("direct_get5", "GET 5-record job, direct (prepared)", api, "get.lua", [get5], group="pgbouncer"),
        Scenario("unprepared_get5", "GET 5-record job, direct, unprepared", unprepared, "get.lua", [get5],
                 group="pgbouncer"),
        Scenario("pgbouncer_get5", "GET 5-record job, through PgBouncer", pooled, "get.lua", [get5],
                 group="pgbouncer"),
    )
    bench.measure(
        Scenario("direct_post", "POST spread, direct (prepared)", api, "post.lua", spread["direct_post"],
                 group="pgbouncer"),
        Scenario("unprepared_post", "POST spread, direct, unprepared", unprepared, "post.lua",
                 spread["unprepared_post"], group="pgbouncer"),
        Scenario("pgbouncer_post", "POST spread, through PgBouncer", pooled, "post.lua", spread["pgbouncer_post"],
                 group="pgbouncer"),
    )
    stop(unprepared, pooled)
    bouncer.stop()
    return note


def measure_curve(bench: Bench, plan: Plan, levels: Sequence[int], run_dir: Path, cleanup: contextlib.ExitStack,
                  servers: dict[str, Server], get_job: SeededJob,
                  post_jobs: dict[tuple[str, str, int], list[list[SeededJob]]]) -> str:
    """Throughput and latency at each level of connections, each server direct and through nginx."""
    proxies: dict[str, NginxProxy] = {}
    binary = find_nginx()
    if binary is None:
        note = "nginx rows skipped: nginx is not installed (apt-get install nginx)"
    elif not SITE.exists():
        note = f"nginx rows skipped: {SITE.relative_to(ROOT)} does not exist"
    else:
        note = f"nginx: {binary} serving {SITE.relative_to(ROOT)} in front of each server (one nginx per server)"
        for name, server in servers.items():
            proxy = NginxProxy(f"nginx-{name}", binary, run_dir / f"nginx-{name}", [server.port])
            proxy.backend = server
            cleanup.callback(proxy.stop)
            try:
                proxy.start()
            except ProxyError as error:
                raise BenchError(str(error)) from None
            proxies[name] = proxy
    log(f"- concurrency curve at {', '.join(map(str, levels))} connections; {note}")
    timing = Timing(plan.curve_rounds, plan.curve_seconds, plan.curve_warmup_seconds)
    paths = ["direct"] + (["nginx"] if proxies else [])
    for level in levels:
        for kind, names in (("get", ("reference", "yardstick", "jobapi")), ("post", ("yardstick", "jobapi"))):
            scenarios = []
            for name in names:
                for path in paths:
                    target = servers[name] if path == "direct" else proxies[name]
                    if kind == "get":
                        job_sets = [[get_job]]
                        script = "get.lua"
                    else:
                        job_sets = post_jobs[(name, path, level)]
                        script = "post.lua"
                    scenarios.append(Scenario(
                        f"curve_{kind}_{name}_{path}_{level}",
                        f"{kind.upper()} {name} {path}, {level} conns (wrk -t{wrk_threads(level)})",
                        target, script, job_sets, group="curve", server=name, path=path, connections=level))
            bench.measure(*scenarios, timing=timing)
    return note


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
    started = time.monotonic()
    for target in (plan.memory_early, plan.memory_late):
        remaining = target - served
        for script, jobs in (("get.lua", get_jobs), ("post.lua", post_jobs)):
            result = wrk.run_count(server.url, script, remaining // 2, jobs, CONNECTIONS, timeout=300)
            served += result.requests
            bad += result.non2xx + result.socket_errors
        for pid in server.workers():
            readings.setdefault(pid, []).append(rss_kib(pid))
        log(f"    after {served:,} requests ({bad} non-2xx or socket errors, {time.monotonic() - started:.0f} s): "
            + ", ".join(f"{pid}: {values[-1] / 1024:.1f} MiB" for pid, values in readings.items()))
    return {"early": plan.memory_early, "late": plan.memory_late, "served": served, "non2xx": bad,
            "seconds": time.monotonic() - started,
            "rss_kib": {str(pid): values for pid, values in readings.items()}}


# ---------------------------------------------------------------------------


def _raise_interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def _levels(text: str) -> list[int]:
    levels = [int(part) for part in text.split(",") if part.strip()]
    if not levels or any(level < 1 for level in levels):
        raise argparse.ArgumentTypeError("comma-separated connection counts, each at least 1")
    return levels


def parser() -> argparse.ArgumentParser:
    """The command line, with the scenario keys in its help."""
    parser = argparse.ArgumentParser(description=__doc__, epilog=scenario_help(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="3 rounds of 2 s, 10,000 jobs of history, memory after 1,000 and 4,000 requests, "
                             "a curve of 1 round of 2 s per point")
    parser.add_argument("--rounds", type=int, help="rounds per scenario of the main table")
    parser.add_argument("--seconds", type=int, help="seconds per round of the main table")
    parser.add_argument("--only", metavar="KEYS",
                        help="comma-separated scenario keys or groups to run (listed below)")
    parser.add_argument("--curve", action="store_true", help="add the concurrency curve to the run")
    parser.add_argument("--levels", type=_levels, metavar="N,N,...",
                        help=f"the curve's connection counts (default {','.join(map(str, CURVE_LEVELS))})")
    parser.add_argument("--profile", action="store_true",
                        help="after measuring GET 5-record and the POST rows (jobapi and yardstick), one more round "
                             "under py-spy (pip install -e '.[bench]'), and the table of where the time goes")
    parser.add_argument("--database", default="jobapi_bench",
                        help="PostgreSQL database to make and drop, with NAME_10jobs and NAME_100kjobs beside it")
    parser.add_argument("--keep-database", action="store_true", help="leave the PostgreSQL databases for inspection")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    command_line = parser()
    args = command_line.parse_args(argv)
    try:
        keys = select_keys(args.only, args.curve)
    except ValueError as error:
        command_line.error(str(error))
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        return run(args, keys)
    except KeyboardInterrupt:
        log("\ninterrupted: servers stopped, databases dropped")
        return 130
    except (BenchError, SeedingError) as error:
        log(f"\nbenchmark failed: {error}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
