"""deploy/'s systemd units: valid for systemd, pointing at real entry points, and doing what they say."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from conftest import ROOT
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
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("systemd-analyze is not installed, and CI must check the units (.ci/run installs systemd)")
        pytest.skip("systemd-analyze is not installed: deploy/'s units are not verified by systemd")
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
