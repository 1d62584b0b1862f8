"""Failover: a primary with a synchronous streaming standby, the primary killed (kill -9 of its
postmaster) or frozen (every process stopped, as a hung host or a black-holed network) under
load, then the standby promoted. Two gunicorn instances on a libpq multi-host URL
(target_session_attrs=read-write), or on PgBouncer repointed after the promotion; workers
retry each push with its Idempotency-Key until it is answered 200.

Afterwards every push answered 200 is stored once and nothing twice; no request took past
10 s or got anything but 200 or 503 (with Retry-After); every instance writes again within
10 s of the promotion; while only the read-only standby answered, /readyz was 503."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import start_gunicorn, stop_gunicorn
from failover_load import ANSWER_WITHIN, Pair, Run, failover_under_load, make_pair
from private_postgresql import clusters, make_bouncer  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

# SPEC 13: from the promotion, every instance writes again within this.
BACK_WITHIN = 10.0


@pytest.fixture
def pair(clusters) -> Pair:
    made = make_pair(clusters)
    assert made.standby.execute("SHOW synchronous_standby_names") == [("",)]
    return made


def assert_nothing_lost_or_twice(run: Run, pair: Pair) -> None:
    """Every acknowledged push stored once on the new primary, nothing else, in order."""
    for worker in run.workers:
        rows = pair.standby.execute("SELECT seq, stage FROM job_status WHERE job_id = %s ORDER BY seq",
                                    (worker.job_id,))
        stages = [stage for _seq, stage in rows[1:]]
        assert len(stages) == len(set(stages)), f"{worker.job_id}: a push stored twice"
        assert stages == worker.acknowledged, f"{worker.job_id}: stored and acknowledged pushes differ"
        assert [seq for seq, _stage in rows] == list(range(1, len(rows) + 1))
        (count,) = pair.standby.execute("SELECT status_count FROM jobs WHERE id = %s", (worker.job_id,))[0]
        assert count == len(rows)


def assert_failover_held(run: Run, instances: int) -> None:
    attempts = run.attempts
    statuses = {a.status for a in attempts}
    assert statuses <= {200, 503}, sorted(map(str, statuses))
    assert any(a.status == 503 and a.started > run.fault_at for a in attempts), "the outage was not seen"
    assert all(a.retry_after for a in attempts if a.status == 503)
    slowest = max(a.ended - a.started for a in attempts)
    assert slowest < ANSWER_WITHIN, f"a request took {slowest:.1f} s"
    assert run.ready_during_outage and set(run.ready_during_outage) == {503}
    for instance in range(instances):
        assert run.back_after(instance) < BACK_WITHIN, f"instance {instance} wrote again only after"
        # And from then on under load: nothing but 200 once 10 s have passed.
        late = [a for a in attempts if a.instance == instance and a.started > run.promoted_at + BACK_WITHIN]
        assert late and {a.status for a in late} == {200}, f"instance {instance}"
    print("failover: " + ", ".join(f"instance {n} writes {run.back_after(n):.1f} s after the promotion"
                                   for n in range(instances))
          + f"; slowest request {slowest:.1f} s; {sum(a.status == 503 for a in attempts)} answers 503")


@pytest.fixture
def instances(pair, tmp_path) -> Iterator[list]:
    """Two gunicorn instances on the multi-host URL."""
    servers = []
    try:
        for n in range(2):
            servers.append(start_gunicorn(pair.multi_host_url, tmp_path / f"gunicorn-{n}.log", workers=2, threads=2))
        yield servers
    finally:
        for server in servers:
            stop_gunicorn(server.process)


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_multi_host_url_fails_over_with_nothing_lost_or_twice(pair, instances, fault):
    """kill -9 of the primary's postmaster, or every process of it stopped; the standby promoted."""
    cut = pair.primary.kill_postmaster if fault == "killed" else pair.primary.freeze
    try:
        run = failover_under_load([server.url for server in instances], pair, cut)
        assert_failover_held(run, instances=len(instances))
        assert_nothing_lost_or_twice(run, pair)
        for server in instances:
            assert server.process.poll() is None
            assert "Traceback" not in server.log()
    finally:
        pair.primary.kill()  # never thawed: it would take writes the new primary lacks


def test_pgbouncer_repointed_after_a_promotion(pair, make_bouncer, tmp_path):
    """PgBouncer cannot follow a promotion: repointed (its database line, then a reload), the
    instances behind it write again, with nothing lost or twice."""
    bouncer = make_bouncer(pair.primary)
    servers = []
    try:
        for n in range(2):
            servers.append(start_gunicorn(bouncer.url, tmp_path / f"gunicorn-{n}.log", workers=2, threads=2,
                                          extra_env={"DATABASE_DIRECT_URL": pair.primary.url}))
        run = failover_under_load([server.url for server in servers], pair, pair.primary.kill_postmaster,
                                  after_promotion=lambda: bouncer.repoint(pair.standby))
        assert_failover_held(run, instances=len(servers))
        assert_nothing_lost_or_twice(run, pair)
    finally:
        for server in servers:
            stop_gunicorn(server.process)
        pair.primary.kill()
