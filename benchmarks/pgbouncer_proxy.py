"""PgBouncer in front of a benchmarked (or tested) PostgreSQL: the production recipe (deploy/pgbouncer.ini)
rendered onto a loopback port.

deploy/pgbouncer.ini names exactly one database, ``jobapi = ...``. ``render_ini`` points that line at
the database under test, listens on 127.0.0.1 on a port of its own, trusts the users of an auth file
without passwords, and keeps its log, pid file and socket in a folder of its own; everything else
(the pool mode, the pool sizes, the timeouts) is served as written. ``PgBouncer`` runs it in the
foreground as the ``postgres`` user (pgbouncer refuses to run as root).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
INI = ROOT / "deploy" / "pgbouncer.ini"

DATABASE_LINE = re.compile(r"^jobapi[ \t]*=[^\n]*$", re.MULTILINE)
# Where it listens, who may connect and where its files go: the run's own. The rest is the file's.
LOCAL = ("listen_addr", "listen_port", "unix_socket_dir", "auth_type", "auth_file", "auth_hba_file",
         "logfile", "pidfile", "admin_users", "stats_users")


class PgBouncerError(RuntimeError):
    """PgBouncer could not be configured or started."""


def find_pgbouncer() -> str | None:
    """The pgbouncer binary on PATH or in /usr/sbin, or None."""
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None
    )


def render_ini(text: str, database: str, port: int, directory: Path, settings: dict[str, str] | None = None) -> str:
    """The file with ``database`` (``host=... port=... dbname=...``) as its one database, listening on
    127.0.0.1:``port``, trusting the users of ``directory``/userlist.txt, its files in ``directory``;
    ``settings`` replace (or add) settings of its [pgbouncer] section."""
    if len(DATABASE_LINE.findall(text)) != 1:
        raise PgBouncerError("deploy/pgbouncer.ini must name exactly one database, jobapi")
    text = DATABASE_LINE.sub(lambda _match: f"jobapi = {database}", text)
    own = {
        "listen_addr": "127.0.0.1", "listen_port": str(port), "unix_socket_dir": str(directory),
        "auth_type": "trust", "auth_file": str(directory / "userlist.txt"),
        "logfile": str(directory / "pgbouncer.log"), "pidfile": str(directory / "pgbouncer.pid"),
        "admin_users": "postgres", **(settings or {}),
    }
    for name in (*LOCAL, *own):
        text = re.sub(rf"^[ \t]*{name}[ \t]*=[^\n]*\n", "", text, flags=re.MULTILINE)
    section = text.index("[pgbouncer]\n") + len("[pgbouncer]\n")
    return text[:section] + "".join(f"{name} = {value}\n" for name, value in own.items()) + text[section:]


def owned_by_postgres(directory: Path) -> Path:
    """Make ``directory``, owned by the ``postgres`` user when run as root (pgbouncer writes there)."""
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(directory, postgres.pw_uid, postgres.pw_gid)
    return directory


class PgBouncer:
    """deploy/pgbouncer.ini, rendered for one database, run in the foreground on a loopback port."""

    def __init__(self, binary: str, directory: Path, port: int, database: str,
                 settings: dict[str, str] | None = None) -> None:
        self.binary = binary
        self.directory = owned_by_postgres(directory)
        self.port = port
        self.database = database
        self.settings = settings or {}
        self.process: subprocess.Popen | None = None

    @property
    def ini(self) -> Path:
        return self.directory / "pgbouncer.ini"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/jobapi"

    def log(self) -> str:
        path = self.directory / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def write(self) -> None:
        self.ini.write_text(render_ini(INI.read_text(), self.database, self.port, self.directory, self.settings))
        (self.directory / "userlist.txt").write_text('"postgres" ""\n')

    def start(self, timeout: float = 30) -> None:
        """Start it and wait until its admin console answers."""
        import psycopg

        self.write()
        user = {"user": "postgres", "group": "postgres"} if os.geteuid() == 0 else {}
        self.process = subprocess.Popen([self.binary, str(self.ini)], stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **user)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PgBouncerError(f"pgbouncer exited with {self.process.returncode}:\n{self.log()[-2000:]}")
            try:
                self.admin("SHOW VERSION")
                return
            except psycopg.OperationalError:
                time.sleep(0.05)
        self.stop()
        raise PgBouncerError(f"pgbouncer did not answer within {timeout:.0f} s:\n{self.log()[-2000:]}")

    def admin(self, command: str) -> list[tuple]:
        """A command on PgBouncer's admin console (SHOW ..., RELOAD, DISABLE ...): its rows."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="pgbouncer",
                             autocommit=True, connect_timeout=5) as connection:
            cursor = connection.execute(command, prepare=False)
            return cursor.fetchall() if cursor.description else []

    def stop(self) -> None:
        """SIGTERM: PgBouncer exits at once, closing every connection."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
