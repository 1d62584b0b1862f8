#!/usr/bin/env python3
"""What a failover costs: a primary with a synchronous standby, killed (kill -9 of its postmaster) or
frozen (every process stopped) under load, the standby promoted 3 s later, for several values of
DB_CONNECT_TIMEOUT and DB_RESPONSE_TIMEOUT, and once through PgBouncer repointed after the promotion.

    python benchmarks/failover.py            # every row (about 4 minutes)
    python benchmarks/failover.py --only frozen-2-5,killed-2-5

It runs the harness of tests/test_failover.py (tests/failover_load.py): private clusters as the
postgres user on free ports, two gunicorn instances of 2 processes x 2 threads, 6 workers
retrying each push with its Idempotency-Key, and prints per row when each instance wrote again
after the promotion, the slowest request, and how many answers were 503 (no other status is
accepted: the run stops on anything else, or on a push lost or stored twice).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import free_port, start_gunicorn, stop_gunicorn  # noqa: E402
from failover_load import Pair, Run, failover_under_load, make_pair  # noqa: E402
from private_postgresql import Clusters, PrivateBouncer, make_root, pg_bin  # noqa: E402

# Row key -> (fault, DB_CONNECT_TIMEOUT, DB_RESPONSE_TIMEOUT, through PgBouncer).
ROWS = {
    "killed-2-5": ("killed", 2, 5.0, False),
    "frozen-1-5": ("frozen", 1, 5.0, False),
    "frozen-2-5": ("frozen", 2, 5.0, False),
    "frozen-5-5": ("frozen", 5, 5.0, False),
    "frozen-2-3": ("frozen", 2, 3.0, False),
    "pgbouncer-killed": ("killed", 2, 5.0, True),
    "pgbouncer-frozen": ("frozen", 2, 5.0, True),
}


def measure(binaries: Path, fault: str, connect_timeout: int, response_timeout: float, pgbouncer: bool,
            logs: Path) -> tuple[Run, list[str]]:
    clusters = Clusters(binaries)
    servers, bouncer = [], None
    try:
        pair: Pair = make_pair(clusters)
        env = {"DB_CONNECT_TIMEOUT": str(connect_timeout), "DB_RESPONSE_TIMEOUT": str(response_timeout)}
        url = pair.multi_host_url
        after_promotion = lambda: None  # noqa: E731
        if pgbouncer:
            bouncer = PrivateBouncer(make_root("jobapi-pgbouncer-"), free_port(), pair.primary, {})
            bouncer.start()
            url, env["DATABASE_DIRECT_URL"] = bouncer.url, pair.primary.url
            after_promotion = lambda: bouncer.repoint(pair.standby)  # noqa: E731
        for n in range(2):
            servers.append(start_gunicorn(url, logs / f"gunicorn-{fault}-{n}.log", workers=2, threads=2,
                                          extra_env=env))
        cut = pair.primary.kill_postmaster if fault == "killed" else pair.primary.freeze
        run = failover_under_load([server.url for server in servers], pair, cut, after_promotion)
        problems = check(run, pair)
        return run, problems
    finally:
        for server in servers:
            stop_gunicorn(server.process)
        if bouncer is not None:
            bouncer.stop()
            shutil.rmtree(bouncer.directory, ignore_errors=True)
        for cluster in clusters.made:
            cluster.kill()  # the old primary is never thawed: it would take writes the new one lacks
        clusters.remove_all()


def check(run: Run, pair: Pair) -> list[str]:
    """What the tests would refuse: a status other than 200 or 503, a push lost or stored twice."""
    problems = [f"{a.stage}: {a.status}" for a in run.attempts if a.status not in (200, 503)]
    for worker in run.workers:
        rows = pair.standby.execute("SELECT stage FROM job_status WHERE job_id = %s AND seq > 1 ORDER BY seq",
                                    (worker.job_id,))
        if [stage for (stage,) in rows] != worker.acknowledged:
            problems.append(f"{worker.job_id}: stored and acknowledged pushes differ")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help=f"comma-separated rows: {', '.join(ROWS)}")
    args = parser.parse_args()
    keys = [key.strip() for key in args.only.split(",")] if args.only else list(ROWS)
    unknown = [key for key in keys if key not in ROWS]
    if unknown:
        parser.error(f"unknown rows {', '.join(unknown)}; valid: {', '.join(ROWS)}")
    binaries = pg_bin()
    if binaries is None:
        parser.error("PostgreSQL's server programs are not installed")
    logs = Path(tempfile.mkdtemp(prefix="jobapi-failover-"))
    header = (f"{'row':<18} {'fault':<7} {'connect':>7} {'response':>8} {'pgbouncer':>9}  "
              f"{'writes again after promotion':>28}  {'slowest':>7}  {'503s':>5}  problems")
    lines = [header, "-" * len(header)]
    for key in keys:
        fault, connect_timeout, response_timeout, pgbouncer = ROWS[key]
        started = time.monotonic()
        run, problems = measure(binaries, fault, connect_timeout, response_timeout, pgbouncer, logs)
        back = " / ".join(f"{run.back_after(n):.1f} s" for n in range(2))
        slowest = max(a.ended - a.started for a in run.attempts)
        unavailable = sum(a.status == 503 for a in run.attempts)
        line = (f"{key:<18} {fault:<7} {connect_timeout:>5} s {response_timeout:>6.0f} s {'yes' if pgbouncer else 'no':>9}  "
                f"{back:>28}  {slowest:5.1f} s  {unavailable:>5}  {'; '.join(problems[:3]) or '-'}")
        lines.append(line)
        print(f"{line}   ({time.monotonic() - started:.0f} s)", flush=True)
    print("\n" + "\n".join(lines))
    print(f"\ngunicorn logs in {logs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
