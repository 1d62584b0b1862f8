"""PostgreSQL of a test's own: private clusters (a primary, a streaming standby), and a private
PgBouncer from deploy/pgbouncer.ini in front of one, each on a free port with its own socket
directory, run as the ``postgres`` user (initdb, pg_ctl and pgbouncer refuse to run as root)."""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import pytest

from conftest import ROOT, free_port, skip_without

sys.path.insert(0, str(ROOT / "benchmarks"))

from pgbouncer_proxy import PgBouncer, find_pgbouncer  # noqa: E402


def pg_bin() -> Path | None:
    """The newest PostgreSQL server's programs (initdb, pg_ctl, pg_basebackup), if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


def make_root(prefix: str) -> Path:
    """A temporary folder the ``postgres`` user owns, with a ``sock`` folder for sockets."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    (root / "sock").mkdir()
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        for path in (root, root / "sock"):
            os.chown(path, postgres.pw_uid, postgres.pw_gid)
    return root


@dataclass
class PrivateCluster:
    """A PostgreSQL cluster of this test's own, on a free port and its own socket directory."""

    bin: Path
    root: Path
    port: int
    # Server settings given at start (-c name=value), such as a time zone.
    settings: dict[str, str] = field(default_factory=dict)
    frozen: list[int] = field(default_factory=list)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_directory(self) -> Path:
        return self.root / "sock"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/jobapi"

    def _run(self, *args: str) -> None:
        subprocess.run(_as_postgres(list(args)), check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.socket_directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        # pg_ctl hands the options to a shell.
        options += "".join(f" -c {shlex.quote(f'{name}={value}')}" for name, value in self.settings.items())
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.root / "log"),
                  "-w", "-t", "60", "start")

    def create_database(self, name: str = "jobapi") -> None:
        self.execute(f'CREATE DATABASE "{name}"', database="postgres")

    def execute(self, sql: str, parameters: tuple = (), database: str = "jobapi") -> list[tuple]:
        """Run one statement on a connection of its own (autocommit); the rows, if any."""
        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database,
                             autocommit=True, connect_timeout=5) as connection:
            cursor = connection.execute(sql, parameters)
            return cursor.fetchall() if cursor.description else []

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def processes(self) -> list[int]:
        """The postmaster of this cluster and its children, the postmaster first."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [postmaster, *children(postmaster)]

    def freeze(self) -> None:
        """Stop every process of the cluster (SIGSTOP): the server neither answers nor hangs up."""
        self.frozen = self.processes()
        for pid in self.frozen:  # the postmaster first: it forks no child after
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """Let the frozen processes run again (SIGCONT)."""
        for pid in reversed(self.frozen):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.frozen = []

    def kill(self) -> None:
        """``kill -9`` of every process of the cluster, frozen ones included: gone for good."""
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.frozen = []

    def kill_postmaster(self) -> None:
        """``kill -9`` of the postmaster alone, as a crash would: its backends notice and exit."""
        processes = self.processes()
        if processes:
            os.kill(processes[0], signal.SIGKILL)

    def make_standby(self, port: int | None = None) -> PrivateCluster:
        """A streaming standby of this cluster (pg_basebackup -R), started."""
        standby = PrivateCluster(bin=self.bin, root=make_root("jobapi-pg-standby-"), port=port or free_port(),
                                 settings=dict(self.settings))
        self._run(str(self.bin / "pg_basebackup"), "-D", str(standby.data), "-h", "127.0.0.1", "-p", str(self.port),
                  "-U", "postgres", "-R", "-X", "stream", "--checkpoint=fast", "--no-sync")
        # Only the primary names synchronous standbys: a promoted standby that had
        # them would wait for a standby it no longer has.
        with (standby.data / "postgresql.auto.conf").open("a") as settings:
            settings.write("synchronous_standby_names = ''\n")
        standby.start()
        return standby

    def promote(self) -> None:
        """Make this standby a primary; returns once it takes writes (pg_ctl promote -w)."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "promote")

    def remove(self) -> None:
        """Stop (or kill, if it will not stop) and delete the cluster."""
        self.thaw()
        try:
            self.stop()
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def children(parent: int) -> list[int]:
    """The processes whose parent is ``parent``."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(Path(stat).parent.name))
    return pids


def wait_until_synchronous(primary: PrivateCluster, timeout: float = 30) -> None:
    """Until a standby streams from the primary as its synchronous standby."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if primary.execute("SELECT sync_state FROM pg_stat_replication", database="postgres") == [("sync",)]:
            return
        time.sleep(0.1)
    raise AssertionError("no synchronous standby streams from the primary")


class Clusters:
    """Private clusters made one after another (``make(**settings)``, started), all removed at once."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.made: list[PrivateCluster] = []

    def make(self, **settings: str) -> PrivateCluster:
        cluster = PrivateCluster(bin=self.binaries, root=make_root("jobapi-pg-"), port=free_port(), settings=settings)
        self.made.append(cluster)
        cluster.init()
        cluster.start()
        return cluster

    def standby_of(self, primary: PrivateCluster) -> PrivateCluster:
        """A streaming standby of ``primary``, started."""
        standby = primary.make_standby()
        self.made.append(standby)
        return standby

    def remove_all(self) -> None:
        for cluster in self.made:
            cluster.remove()
        self.made = []


@pytest.fixture
def clusters(is_postgresql) -> Iterator[Clusters]:
    """Private clusters for the test, removed after it; in the PostgreSQL half of the suite only."""
    if not is_postgresql:
        pytest.skip("runs in the PostgreSQL half of the suite")
    binaries = pg_bin()
    if binaries is None:
        skip_without("initdb", "PostgreSQL servers of the tests' own (stopped, frozen, failed over)", "postgresql")
    made = Clusters(binaries)
    try:
        yield made
    finally:
        made.remove_all()


@pytest.fixture
def private_cluster(clusters) -> PrivateCluster:
    """One private cluster, started."""
    return clusters.make()


# PgBouncer


def pgbouncer_binary() -> str:
    """The pgbouncer program; skips the test when there is none (fails it under CI=true)."""
    return find_pgbouncer() or skip_without("pgbouncer", "deploy/pgbouncer.ini in front of PostgreSQL")


class PrivateBouncer(PgBouncer):
    """A PgBouncer of this test's own, from deploy/pgbouncer.ini, in front of a private cluster."""

    def __init__(self, root: Path, port: int, target: PrivateCluster, settings: dict[str, str]) -> None:
        super().__init__(pgbouncer_binary(), root, port, self._database(target), settings)
        self.target = target

    @staticmethod
    def _database(target: PrivateCluster) -> str:
        # Through the server's socket: its log tells PgBouncer's connections ([local]) from others.
        return f"host={target.socket_directory} port={target.port} dbname=jobapi"

    def config(self) -> dict[str, str]:
        """PgBouncer's settings as it runs with them (SHOW CONFIG)."""
        return {row[0]: row[1] for row in self.admin("SHOW CONFIG")}

    def repoint(self, target: PrivateCluster) -> None:
        """Point the database at another server and reload, as an operator does after a failover."""
        self.target = target
        self.database = self._database(target)
        self.write()
        os.kill(self.process.pid, signal.SIGHUP)


@pytest.fixture
def make_bouncer() -> Iterator:
    """Start private PgBouncers (``make_bouncer(cluster, **settings)``), stopped after the test."""
    pgbouncer_binary()
    made: list[PrivateBouncer] = []

    def make(target: PrivateCluster, **settings: str) -> PrivateBouncer:
        bouncer = PrivateBouncer(make_root("jobapi-pgbouncer-"), free_port(), target, settings)
        made.append(bouncer)
        bouncer.start()
        return bouncer

    try:
        yield make
    finally:
        for bouncer in made:
            bouncer.stop()
            shutil.rmtree(bouncer.directory, ignore_errors=True)
