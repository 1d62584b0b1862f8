"""deploy/'s systemd units: valid for systemd, pointing at real entry points, and doing what they
say; the README's recipe, run as it is printed: a regular install, owned by root, serving the
console to an operator as an unprivileged user."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, inspect, update
from sqlalchemy.engine import make_url

from conftest import (
    ROOT,
    _drop_postgresql_database,
    _recreate_postgresql_database,
    build_package,
    free_port,
    require_program,
    skip_without,
)
from jobapi.extensions import db
from jobapi.models import Job, utcnow

DEPLOY = ROOT / "deploy"
UNITS = ("jobapi.service", "jobapi-reap.service", "jobapi-reap.timer")
# Where the units expect the checkout and its virtualenv on a server.
SERVER_CHECKOUT = "/srv/jobapi"
SERVER_VENV_BIN = "/srv/jobapi/.venv/bin"


def read_unit(name: str) -> configparser.ConfigParser:
    """A unit file parsed into its sections (keys keep their case)."""
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str
    parser.read_string((DEPLOY / name).read_text())
    return parser


def here(command: str) -> list[str]:
    """A unit's command line with the server's paths replaced by this checkout and this virtualenv."""
    words = shlex.split(command)
    words[0] = words[0].replace(SERVER_VENV_BIN, str(Path(sys.executable).parent))
    return words


def gunicorn_setting(name: str) -> str:
    match = re.search(rf"^{name} = (.+)$", (ROOT / "gunicorn.conf.py").read_text(), re.MULTILINE)
    assert match, f"gunicorn.conf.py does not set {name}"
    return match.group(1)


def test_the_gunicorn_unit_serves_the_app_and_stops_gracefully():
    service = read_unit("jobapi.service")["Service"]
    assert service["WorkingDirectory"] == SERVER_CHECKOUT
    command = here(service["ExecStart"])
    assert Path(command[0]).name == "gunicorn" and os.access(command[0], os.X_OK)
    # Run from the checkout, gunicorn reads gunicorn.conf.py there and serves wsgi.py's app.
    assert command[1:] == ["wsgi:app"]
    assert (ROOT / "gunicorn.conf.py").is_file()
    assert re.search(r"^app = create_app\(\)$", (ROOT / "wsgi.py").read_text(), re.MULTILINE)
    # SIGTERM is gunicorn's graceful stop; systemd waits longer than gunicorn does.
    assert service["KillSignal"] == "SIGTERM"
    assert service["KillMode"] == "mixed"
    assert int(service["TimeoutStopSec"]) > int(gunicorn_setting("graceful_timeout"))
    assert service["Restart"] == "on-failure"
    assert service["EnvironmentFile"] == "/etc/jobapi/jobapi.env"
    assert "WEB_CONCURRENCY" in gunicorn_setting("workers")
    assert service["Environment"].startswith("WEB_CONCURRENCY=")


def test_the_timer_runs_the_reaper_periodically():
    timer = read_unit("jobapi-reap.timer")
    assert timer["Timer"].get("Unit", "jobapi-reap.service") == "jobapi-reap.service"
    assert timer["Timer"]["OnUnitActiveSec"]
    assert timer["Install"]["WantedBy"] == "timers.target"
    service = read_unit("jobapi-reap.service")["Service"]
    assert service["Type"] == "oneshot"
    assert service["WorkingDirectory"] == SERVER_CHECKOUT
    # The reaper writes the state timeout, and the unit says so.
    assert "time out" in read_unit("jobapi-reap.service")["Unit"]["Description"]


def test_the_reaper_units_command_reaps(app, database_url, make_job):
    silent = make_job()
    with app.app_context():
        db.session.execute(
            update(Job).where(Job.id == silent.id).values(state="running", updated_at=utcnow() - timedelta(hours=1))
        )
        db.session.commit()
    command = here(read_unit("jobapi-reap.service")["Service"]["ExecStart"])
    env = {**os.environ, "DATABASE_URL": database_url}
    ran = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    assert f"Reaped job {silent.id}" in ran.stdout
    with app.app_context():
        assert db.session.get(Job, silent.id).state != "running"  # ended by the reaper
        db.session.remove()


def test_systemd_accepts_the_units(tmp_path):
    analyze = require_program("systemd-analyze", "deploy/'s units checked by systemd", "systemd")
    environment = tmp_path / "jobapi.env"
    environment.write_text("DATABASE_URL=sqlite://\n")
    for name in UNITS:
        text = (DEPLOY / name).read_text()
        text = text.replace(SERVER_VENV_BIN, str(Path(sys.executable).parent)).replace(SERVER_CHECKOUT, str(ROOT))
        (tmp_path / name).write_text(text.replace("/etc/jobapi/jobapi.env", str(environment)))
    checked = subprocess.run(
        [analyze, "verify", *(str(tmp_path / name) for name in UNITS)],
        capture_output=True, text=True, timeout=60,
    )
    assert checked.returncode == 0, checked.stderr
    # systemd only warns (exit 0) about unknown keys and values it cannot parse.
    ours = [line for line in checked.stderr.splitlines() if str(tmp_path) in line or "jobapi" in line]
    assert ours == []


# Virtool 42.x workflow pods under KEDA (deploy/keda-virtool42-scaledjob.yaml)


def _scaled_job() -> dict:
    import yaml

    return yaml.safe_load((DEPLOY / "keda-virtool42-scaledjob.yaml").read_text())


def test_the_keda_scaled_job_points_its_pods_and_its_trigger_at_the_dialect():
    scaled = _scaled_job()
    assert (scaled["apiVersion"], scaled["kind"]) == ("keda.sh/v1alpha1", "ScaledJob")
    [container] = scaled["spec"]["jobTargetRef"]["template"]["spec"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["VT_JOBS_API_URL"].endswith("/virtool42")
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "metrics-api"
    assert trigger["metadata"]["url"] == env["VT_JOBS_API_URL"] + "/jobs/counts"
    assert trigger["metadata"]["valueLocation"] == f"pending.{env['VT_WORKFLOW']}"
    assert trigger["metadata"]["format"] == "json" and int(trigger["metadata"]["targetValue"]) >= 1
    assert scaled["spec"]["jobTargetRef"]["template"]["spec"]["restartPolicy"] == "Never"


def test_the_keda_trigger_reads_the_pending_jobs_of_its_workflow(client, make_job):
    scaled = _scaled_job()
    trigger = scaled["spec"]["triggers"][0]["metadata"]
    path = "/" + trigger["url"].split("/", 3)[3]
    workflow = trigger["valueLocation"].split(".")[1]
    for _ in range(3):
        make_job(task=workflow)
    make_job(task="nuvs")
    counts = client.get(path)  # as KEDA asks: no credentials
    assert counts.status_code == 200
    value = counts.get_json()
    for key in trigger["valueLocation"].split("."):
        value = value[key]
    assert value == 3


# The README's Deploying recipe -------------------------------------------------


def recipe() -> list[str]:
    """The commands of the README's Deploying recipe, as printed (its first literal block)."""
    text = (ROOT / "README.rst").read_text()
    section = text[text.index("\nDeploying\n---------\n"):]
    block = section[section.index("::\n\n") + 4:]
    commands = []
    for line in block.splitlines():
        if line.strip() and not line.startswith("    "):
            break
        if line.strip():
            commands.append(line[4:])
    return commands


def recipe_line(starting: str, containing: str = "") -> str:
    found = [line for line in recipe() if line.startswith(starting) and containing in line]
    assert len(found) == 1, f"the recipe has {len(found)} lines starting {starting!r} with {containing!r}"
    return found[0]


def test_the_recipe_installs_what_the_units_run():
    install = recipe_line("python3 -m venv")
    # A regular install (its migrations inside the package), as jobapi.service's comment says.
    assert install.endswith(".venv/bin/pip install .")
    assert "`python3 -m venv .venv && .venv/bin/pip install .`" in (DEPLOY / "jobapi.service").read_text()
    # The user gets no home in the clone: root's git would refuse a folder another user owns.
    adduser = shlex.split(recipe_line("adduser"))
    assert "--no-create-home" in adduser and adduser[adduser.index("--home") + 1] != SERVER_CHECKOUT
    # The settings sign the console's sessions.
    assert "SECRET_KEY=" in recipe_line("printf", "jobapi.env")


def test_a_regular_install_ships_its_migrations_and_applies_them(tmp_path):
    lib = build_package(tmp_path)
    shipped = sorted(p.relative_to(lib / "jobapi" / "migrations") for p in (lib / "jobapi" / "migrations").rglob("*.py"))
    expected = sorted(p.relative_to(ROOT / "migrations") for p in (ROOT / "migrations").rglob("*.py"))
    assert shipped == expected and (lib / "jobapi" / "migrations" / "alembic.ini").is_file()
    # `jobapi db upgrade` from the installed package, far from any checkout.
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    env |= {"PYTHONPATH": str(lib), "DATABASE_URL": f"sqlite:///{tmp_path / 'installed.sqlite'}"}
    ran = subprocess.run(
        [sys.executable, "-c", "import jobapi, sys; from jobapi.cli import main; print(jobapi.MIGRATIONS_DIRECTORY); main()",
         "db", "upgrade"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[0] == str(lib / "jobapi" / "migrations")
    engine = create_engine(env["DATABASE_URL"])
    try:
        assert {"jobs", "job_status", "api_tokens", "alembic_version"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


UNPRIVILEGED = "nobody"  # stands in for the recipe's user jobapi


def as_unprivileged(*command: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["runuser", "-u", UNPRIVILEGED, "--", *command], capture_output=True, text=True, timeout=60, **kwargs
    )


@pytest.fixture
def unprivileged_python() -> tuple[str, str]:
    """A Python of this version that the unprivileged user may run (this one may live in root's
    home), and this environment's site-packages (the dependencies) for PYTHONPATH."""
    if os.geteuid() != 0:
        reason = "the recipe is run as root, which switches to an unprivileged user (runuser)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI runs as root: {reason}")
        pytest.skip(reason)
    require_program("runuser", "the recipe run as an unprivileged user", "util-linux")
    site_packages = os.pathsep.join(dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib")))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"):
        probe = as_unprivileged(
            candidate, "-c", "import sys, flask; print('%d.%d' % sys.version_info[:2])",
            env={**os.environ, "PYTHONPATH": site_packages},
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate, site_packages
    skip_without(f"python{version}", f"the recipe run as an unprivileged user ({UNPRIVILEGED} can run no Python {version})")


@pytest.fixture
def root_owned_install(unprivileged_python) -> Iterator[Path]:
    """A folder like /srv/jobapi after the recipe: owned by root, readable by all, writable by root
    alone, holding wsgi.py, gunicorn.conf.py, jobapi built as a regular install (lib/) and its
    ``jobapi`` command (bin/)."""
    python, _ = unprivileged_python
    folder = Path(tempfile.mkdtemp(prefix="jobapi-srv-"))
    try:
        build_package(folder)
        for name in ("wsgi.py", "gunicorn.conf.py"):
            shutil.copy(ROOT / name, folder / name)
        launcher = folder / "bin" / "jobapi"
        launcher.parent.mkdir()
        launcher.write_text(f"#!{python}\nfrom jobapi.cli import main\nmain()\n")
        for path in [folder, *folder.rglob("*")]:
            path.chmod(0o755 if path.is_dir() or path == launcher else 0o644)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_the_recipe_serves_the_console_as_an_unprivileged_user(
    root_owned_install, unprivileged_python, database_url, is_postgresql
):
    """The recipe's own lines (its settings file, its migration and token commands) and
    jobapi.service's command, run as an unprivileged user, on a database of the test's own."""
    if not is_postgresql:
        pytest.skip("the recipe's database is PostgreSQL: runs in the PostgreSQL half of the suite")
    srv = root_owned_install
    python, site_packages = unprivileged_python
    url = make_url(database_url)
    url = url.set(database=f"{url.database}_recipe").render_as_string(hide_password=False)
    _recreate_postgresql_database(url)
    settings = srv / "etc" / "jobapi.env"
    settings.parent.mkdir(mode=0o755)
    port = free_port()
    # The settings file as the recipe writes it, then this test's database and address.
    wrote = subprocess.run(
        ["sh", "-c", recipe_line("printf", "jobapi.env").replace("/etc/jobapi/jobapi.env", str(settings))],
        capture_output=True, text=True, timeout=60,
    )
    assert wrote.returncode == 0, wrote.stderr
    with settings.open("a") as file:
        file.write(f"DATABASE_URL={url}\nBIND=127.0.0.1:{port}\n")
    settings.chmod(0o644)
    env = {
        key: value for key, value in os.environ.items()
        if not key.startswith(("SECRET_KEY", "DATABASE_URL", "TEST_DATABASE_URL", "PROMETHEUS", "LOG_", "PYTHON"))
    }
    env["PYTHONPATH"] = os.pathsep.join((str(srv / "lib"), site_packages))

    def as_the_service(line: str) -> subprocess.CompletedProcess:
        command = line.replace("-u jobapi ", f"-u {UNPRIVILEGED} ").replace("/etc/jobapi/jobapi.env", str(settings))
        command = command.replace(".venv/bin/jobapi", str(srv / "bin" / "jobapi"))
        return subprocess.run(["sh", "-c", command], cwd=srv, env=env, capture_output=True, text=True, timeout=120)

    # jobapi.service's command, its program run by the Python the unprivileged user can run.
    exec_start = shlex.split(read_unit("jobapi.service")["Service"]["ExecStart"])
    assert exec_start[0] == f"{SERVER_VENV_BIN}/gunicorn"
    gunicorn = [python, "-m", "gunicorn", *exec_start[1:]]
    server = None
    log = tempfile.TemporaryFile()

    def server_log() -> str:
        log.seek(0)
        return log.read().decode(errors="replace")

    try:
        migrated = as_the_service(recipe_line("runuser", "db upgrade"))
        assert migrated.returncode == 0, migrated.stderr
        made = as_the_service(recipe_line("runuser", "tokens create"))
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip()
        # gunicorn as jobapi.service starts it, its settings file read into its environment.
        server = subprocess.Popen(
            ["runuser", "-u", UNPRIVILEGED, "--", "sh", "-c", f'set -a; . "{settings}"; exec "$@"', "sh", *gunicorn],
            cwd=srv, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, server_log()
            try:
                if requests.get(base + "/readyz", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "gunicorn did not become ready:\n" + server_log()
            time.sleep(0.2)
        browser = requests.Session()
        form = browser.get(base + "/console/sign-in", timeout=10)
        assert form.status_code == 200, form.text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        signed_in = browser.post(base + "/console/sign-in", data={"token": token, "csrf_token": csrf}, timeout=10)
        assert signed_in.status_code == 200 and "Signed in as admin" in signed_in.text, signed_in.text
        assert "<h1>Jobs</h1>" in browser.get(base + "/console/", timeout=10).text
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()
        _drop_postgresql_database(url)
