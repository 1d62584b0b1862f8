"""The operator command line (SPEC 5): jobs create, list, show, cancel, remove, the shell, and the
``jobapi`` command itself (its version, its help)."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy
from conftest import basic_auth, push
from sqlalchemy import func, select

from jobapi.extensions import db
from jobapi.models import Job, JobStatus

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def jobs(runner, *args):
    return runner.invoke(args=["jobs", *args])


def count_rows(app) -> tuple[int, int]:
    """How many jobs and status records the database holds."""
    with app.app_context():
        counts = (
            db.session.scalar(select(func.count()).select_from(Job)),
            db.session.scalar(select(func.count()).select_from(JobStatus)),
        )
        db.session.rollback()
        return counts


def assert_failed(result):
    """Exit status 1 and one clear line on stderr, nothing on stdout."""
    assert result.exit_code == 1, (result.exit_code, result.output)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]




# jobs create


def test_create_prints_one_json_document_with_key(runner, stored_job, stored):
    result = jobs(
        runner, "create", "--task", "create_subtraction", "--user", "igboyes",
        "--args", '{"subtraction_id": "Thale", "file_id": "vlekszor-ATgenomeTAIR9.171"}',
        "--proc", "2", "--mem", "4",
    )

    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("\n") and result.stdout.count("\n") == 1
    document = json.loads(result.stdout)
    assert set(document) == {
        "id", "task", "args", "proc", "mem", "user", "status", "key",
        "workflow", "state", "stage", "progress", "created_at", "acquired", "archived", "rights", "ping",
        "number", "claim",
    }
    assert re.fullmatch(r"[a-z0-9]{8}", document["id"])
    assert document["number"] == stored_job(document["id"]).number and document["claim"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", document["key"])
    assert document["task"] == "create_subtraction"
    assert document["args"] == {"subtraction_id": "Thale", "file_id": "vlekszor-ATgenomeTAIR9.171"}
    assert (document["proc"], document["mem"]) == (2, 4)
    assert document["user"] == {"id": "igboyes", "handle": "igboyes"}
    [record] = document["status"]
    assert (record["state"], record["stage"], record["error"], record["progress"]) == ("waiting", None, None, 0)
    assert TIMESTAMP.match(record["timestamp"])
    row = stored_job(document["id"])
    assert (row.task, row.user_id, row.proc, row.mem, row.state) == ("create_subtraction", "igboyes", 2, 4, "waiting")
    assert len(stored(document["id"])) == 1


def test_create_key_works_on_get(runner, client):
    document = json.loads(jobs(runner, "create", "--task", "build_index", "--user", "igboyes").stdout)
    key = document.pop("key")

    response = client.get(f"/api/jobs/{document['id']}", headers=basic_auth(f"job-{document['id']}", key))

    assert response.status_code == 200
    assert response.get_json() == document


def test_create_defaults(runner):
    result = jobs(runner, "create", "--task", "t", "--user", "u")

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert (document["args"], document["proc"], document["mem"]) == ({}, 1, 1)


def test_create_makes_distinct_jobs(runner, app):
    first = json.loads(jobs(runner, "create", "--task", "t", "--user", "u").stdout)
    second = json.loads(jobs(runner, "create", "--task", "t", "--user", "u").stdout)

    assert first["id"] != second["id"]
    assert first["key"] != second["key"]
    assert count_rows(app) == (2, 2)


BAD_CREATE = [
    pytest.param(["--task", "Create-Subtraction", "--user", "u"], id="task-bad-characters"),
    pytest.param(["--task", "", "--user", "u"], id="task-empty"),
    pytest.param(["--task", "t" * 65, "--user", "u"], id="task-too-long"),
    pytest.param(["--task", "t", "--user", "u", "--args", "{not json"], id="args-not-json"),
    pytest.param(["--task", "t", "--user", "u", "--args", "[1, 2]"], id="args-array"),
    pytest.param(["--task", "t", "--user", "u", "--args", '"text"'], id="args-string"),
    pytest.param(["--task", "t", "--user", "u", "--args", '{"x": NaN}'], id="args-nan"),
    pytest.param(["--task", "t", "--user", "u", "--proc", "0"], id="proc-0"),
    pytest.param(["--task", "t", "--user", "u", "--mem", "0"], id="mem-0"),
    pytest.param(["--task", "t", "--user", "u", "--proc", "-3"], id="proc-negative"),
    pytest.param(["--task", "t", "--user", "u", "--proc", "two"], id="proc-not-integer"),
    pytest.param(["--task", "t", "--user", ""], id="user-empty"),
    pytest.param(["--task", "t", "--user", "u" * 65], id="user-too-long"),
]


@pytest.mark.parametrize("options", BAD_CREATE)
def test_create_bad_input_fails_and_stores_nothing(runner, app, options):
    result = jobs(runner, "create", *options)

    assert_failed(result)
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize(
    "options",
    [
        pytest.param(["--task", "t"], id="user"),
        pytest.param(["--user", "u"], id="task"),
    ],
)
def test_create_missing_option_fails_with_one_line(runner, app, options):
    line = assert_failed(jobs(runner, "create", *options))

    missing = "--user" if "--task" in options else "--task"
    assert missing in line
    assert count_rows(app) == (0, 0)


def test_create_args_not_json_says_so(runner):
    line = assert_failed(jobs(runner, "create", "--task", "t", "--user", "u", "--args", "{oops"))

    assert "--args" in line


def test_create_bad_task_names_the_field(runner):
    line = assert_failed(jobs(runner, "create", "--task", "Bad Task", "--user", "u"))

    assert line == "Error: Invalid input: task: Must be 1 to 64 characters of a-z, 0-9 and _."


# jobs list


@pytest.fixture
def three_jobs(make_job, client):
    """Three jobs, oldest first: a running assembly, a waiting build for another user, a complete build."""
    first = make_job(task="assemble", user="alice")
    assert push(client, first, "running", "align", 40).status_code == 200
    second = make_job(task="build_index", user="bob")
    third = make_job(task="build_index", user="alice")
    assert push(client, third, "running", "index", 50).status_code == 200
    assert push(client, third, "complete", "done", 100).status_code == 200
    return first, second, third


def list_json(runner, *args):
    result = jobs(runner, "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_json_newest_first_with_state_and_progress(runner, three_jobs):
    first, second, third = three_jobs

    listed = list_json(runner)

    assert [item["id"] for item in listed] == [third.id, second.id, first.id]
    assert [(item["state"], item["progress"]) for item in listed] == [("complete", 100), ("waiting", 0), ("running", 40)]
    assert [item["stage"] for item in listed] == ["done", None, "align"]
    assert [item["task"] for item in listed] == ["build_index", "build_index", "assemble"]
    assert [item["user"] for item in listed] == [{"id": "alice", "handle": "alice"}, {"id": "bob", "handle": "bob"}, {"id": "alice", "handle": "alice"}]
    assert all("status" not in item and "key" not in item for item in listed)


def test_list_json_empty_is_empty_array(runner):
    assert list_json(runner) == []


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--state", "running"], ["first"]),
        (["--state", "waiting"], ["second"]),
        (["--state", "complete"], ["third"]),
        (["--state", "cancelled"], []),
        (["--task", "build_index"], ["third", "second"]),
        (["--task", "nothing"], []),
        (["--user", "alice"], ["third", "first"]),
        (["--user", "alice", "--task", "build_index"], ["third"]),
        (["--limit", "2"], ["third", "second"]),
        (["--limit", "1", "--user", "alice"], ["third"]),
    ],
)
def test_list_filters(runner, three_jobs, options, expected):
    ids = dict(zip(["first", "second", "third"], (job.id for job in three_jobs)))

    listed = list_json(runner, *options)

    assert [item["id"] for item in listed] == [ids[name] for name in expected]


def test_list_unknown_state_is_refused(runner, three_jobs):
    result = jobs(runner, "list", "--state", "paused")

    assert result.exit_code != 0
    assert result.stdout == ""


def test_list_table_has_aligned_columns(runner, three_jobs):
    first, second, third = three_jobs

    result = jobs(runner, "list")

    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.rstrip("\n").split("\n")
    names = header.split()
    assert names[:5] == ["ID", "NUMBER", "STATE", "PROGRESS", "STAGE"]
    assert {"TASK", "USER"} <= set(names)
    starts = [m.start() for m in re.finditer(r"\S+", header)]
    bounds = list(zip(starts, starts[1:] + [None]))

    def cells(line):
        return {name: line[a:b].strip() for name, (a, b) in zip(names, bounds)}

    expected = [
        (third, "complete", "[##########] 100%", "done", "build_index", "alice"),
        (second, "waiting", "[----------]   0%", "-", "build_index", "bob"),
        (first, "running", "[####------]  40%", "align", "assemble", "alice"),
    ]
    assert len(rows) == len(expected)
    for line, (job, state, progress, stage, task, user) in zip(rows, expected):
        # Every cell ends before the next column starts.
        assert all(line[a - 1] == " " for a in starts[1:] if a < len(line))
        row = cells(line)
        assert (row["ID"], row["STATE"], row["PROGRESS"], row["STAGE"], row["TASK"], row["USER"]) == (
            job.id, state, progress, stage, task, user,
        )
    # Numbers are given in creation order: the newest job, listed first, has the largest.
    numbers = [int(cells(line)["NUMBER"]) for line in rows]
    assert numbers == sorted(numbers, reverse=True) and numbers[-1] >= 1


# jobs show


def test_show_prints_the_document(runner, client, job):
    assert push(client, job, "running", "bowtie_build", 40).status_code == 200

    result = jobs(runner, "show", job.id)

    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document == client.get(f"/api/jobs/{job.id}", headers=job.auth).get_json()
    assert "key" not in document
    assert [r["state"] for r in document["status"]] == ["waiting", "running"]


@pytest.mark.parametrize("job_id", ["abcdefgh", "NOT-AN-ID"])
def test_show_unknown_id_fails(runner, job_id):
    line = assert_failed(jobs(runner, "show", job_id))

    assert job_id in line


# jobs cancel


def test_cancel_running_job_keeps_stage_and_progress(runner, client, job, stored, stored_job):
    assert push(client, job, "running", "bowtie_build", 40).status_code == 200

    result = jobs(runner, "cancel", job.id)

    assert result.exit_code == 0, result.output
    assert job.id in result.stdout
    records = stored(job.id)
    assert [r.state for r in records] == ["waiting", "running", "cancelled"]
    assert (records[-1].stage, records[-1].progress, records[-1].error) == ("bowtie_build", 40, None)
    assert records[-1].timestamp >= records[-2].timestamp
    row = stored_job(job.id)
    assert (row.state, row.stage, row.progress, row.status_count) == ("cancelled", "bowtie_build", 40, 3)


def test_cancel_waiting_job(runner, job, stored):
    result = jobs(runner, "cancel", job.id)

    assert result.exit_code == 0, result.output
    records = stored(job.id)
    assert [(r.state, r.stage, r.progress) for r in records] == [("waiting", None, 0), ("cancelled", None, 0)]


def test_cancelled_job_refuses_pushes(runner, client, job):
    jobs(runner, "cancel", job.id)

    response = client.post(
        f"/api/jobs/{job.id}/status", json={"state": "running", "stage": "s", "progress": 1}, headers=job.auth
    )

    assert response.status_code == 409
    assert response.get_json()["id"] == "conflict"


def test_cancel_already_cancelled_is_left_alone(runner, job, stored):
    assert jobs(runner, "cancel", job.id).exit_code == 0
    before = [(r.seq, r.state, r.timestamp) for r in stored(job.id)]

    result = jobs(runner, "cancel", job.id)

    assert result.exit_code == 0, result.output
    assert "already cancelled" in result.stdout
    assert [(r.seq, r.state, r.timestamp) for r in stored(job.id)] == before


@pytest.mark.parametrize(
    "pushes",
    [
        pytest.param([("running", "a", 10, None), ("complete", "done", 100, None)], id="complete"),
        pytest.param([("running", "a", 10, None), ("error", "a", 10, "boom")], id="error-from-running"),
        pytest.param([("error", "setup", 0, "boom")], id="error-from-waiting"),
    ],
)
def test_cancel_finished_job_is_refused(runner, client, job, stored, stored_job, pushes):
    for state, stage, progress, error in pushes:
        assert push(client, job, state, stage, progress, error=error).status_code == 200
    before = [(r.seq, r.state) for r in stored(job.id)]
    final = pushes[-1][0]

    line = assert_failed(jobs(runner, "cancel", job.id))

    assert final in line
    assert [(r.seq, r.state) for r in stored(job.id)] == before
    assert stored_job(job.id).state == final


@pytest.mark.parametrize("job_id", ["abcdefgh", "NOT-AN-ID"])
def test_cancel_unknown_id_fails(runner, app, job_id):
    assert_failed(jobs(runner, "cancel", job_id))
    assert count_rows(app) == (0, 0)


# jobs remove


@pytest.mark.parametrize(
    "pushes",
    [
        pytest.param([("running", "a", 10, None), ("complete", "done", 100, None)], id="complete"),
        pytest.param([("error", "setup", 0, "boom")], id="error"),
        pytest.param([("cancelled", "a", 10, None)], id="cancelled"),
    ],
)
def test_remove_finished_job_deletes_it_and_its_records(runner, client, app, make_job, stored, stored_job, pushes):
    job, other = make_job(), make_job()
    for state, stage, progress, error in pushes:
        assert push(client, job, state, stage, progress, error=error).status_code == 200

    result = jobs(runner, "remove", job.id)

    assert result.exit_code == 0, result.output
    assert job.id in result.stdout
    assert stored_job(job.id) is None
    assert stored(job.id) == []
    assert stored_job(other.id) is not None
    assert count_rows(app) == (1, 1)


@pytest.mark.parametrize("state", ["waiting", "running"])
def test_remove_active_job_is_refused(runner, client, job, stored, stored_job, state):
    if state == "running":
        assert push(client, job, "running", "a", 10).status_code == 200
    before = [(r.seq, r.state) for r in stored(job.id)]

    line = assert_failed(jobs(runner, "remove", job.id))

    assert state in line
    assert stored_job(job.id).state == state
    assert [(r.seq, r.state) for r in stored(job.id)] == before


@pytest.mark.parametrize("state", ["waiting", "running"])
def test_remove_active_job_with_force(runner, client, app, job, stored, stored_job, state):
    if state == "running":
        assert push(client, job, "running", "a", 10).status_code == 200

    result = jobs(runner, "remove", job.id, "--force")

    assert result.exit_code == 0, result.output
    assert stored_job(job.id) is None
    assert stored(job.id) == []
    assert count_rows(app) == (0, 0)


@pytest.mark.parametrize("job_id", ["abcdefgh", "NOT-AN-ID"])
def test_remove_unknown_id_fails(runner, app, job, stored_job, job_id):
    assert_failed(jobs(runner, "remove", job_id, "--force"))
    assert_failed(jobs(runner, "remove", job_id))

    assert stored_job(job.id) is not None
    assert count_rows(app) == (1, 1)


def test_removed_job_cannot_be_shown(runner, job):
    assert jobs(runner, "remove", job.id, "--force").exit_code == 0

    assert_failed(jobs(runner, "show", job.id))


# flask shell


def test_shell_context_has_session_models_and_sqlalchemy(app, job):
    with app.app_context():
        context = app.make_shell_context()

        assert context["db"] is db
        assert context["session"] is db.session
        assert context["Job"] is Job
        assert context["JobStatus"] is JobStatus
        assert context["sqlalchemy"] is sqlalchemy
        found = context["session"].scalars(context["sqlalchemy"].select(context["Job"])).all()
        assert [row.id for row in found] == [job.id]
        context["session"].rollback()


# Details an operator relies on


def test_rotate_key_refuses_a_finished_job(runner, client, job, stored_job):
    assert push(client, job, "cancelled", "s", 0).status_code == 200
    digest = stored_job(job.id).key_digest
    line = assert_failed(jobs(runner, "rotate-key", job.id))
    assert line == "Error: Job is cancelled"
    assert stored_job(job.id).key_digest == digest


def test_rotate_key_gives_a_key_that_works(runner, client, job):
    result = jobs(runner, "rotate-key", job.id)
    assert result.exit_code == 0
    key = json.loads(result.stdout)["key"]
    assert client.get(f"/api/jobs/{job.id}", headers=basic_auth(f"job-{job.id}", key)).status_code == 200


@pytest.mark.parametrize("limit", ["0", "101"])
def test_list_limit_is_1_to_100_as_the_api(runner, limit):
    line = assert_failed(jobs(runner, "list", "--limit", limit))
    assert "--limit" in line and "1<=x<=100" in line


def test_show_pretty_indents(runner, job):
    result = jobs(runner, "show", job.id, "--pretty")
    assert result.exit_code == 0
    assert result.stdout.startswith('{\n  "id": ')
    assert json.loads(result.stdout)["id"] == job.id


def test_a_deleted_token_frees_its_name(runner):
    def tokens(*args):
        return runner.invoke(args=["tokens", *args])

    assert tokens("create", "--name", "node-1", "--role", "runner").exit_code == 0
    assert tokens("revoke", "node-1").exit_code == 0
    assert assert_failed(tokens("create", "--name", "node-1", "--role", "runner")) == (
        "Error: A token named 'node-1' already exists"
    )
    assert tokens("delete", "node-1").stdout == "Deleted token 'node-1'\n"
    assert tokens("create", "--name", "node-1", "--role", "runner").exit_code == 0
    assert assert_failed(tokens("delete", "nobody")) == "Error: No token named 'nobody'"


def test_the_jobapi_command_is_flask_app_jobapi(database_url, app, job):
    command = Path(sys.executable).with_name("jobapi")
    env = {**os.environ, "DATABASE_URL": database_url}
    listed = subprocess.run([str(command), "jobs", "list", "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert [item["id"] for item in json.loads(listed.stdout)] == [job.id]
    helped = subprocess.run([str(command), "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert "jobs" in helped.stdout and "tokens" in helped.stdout and "db" in helped.stdout


def run_jobapi(database_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The installed ``jobapi`` command, on the test database."""
    command = Path(sys.executable).with_name("jobapi")
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([str(command), *args], env=env, input=stdin, capture_output=True, text=True, timeout=60)


def test_version_is_jobapis(database_url):
    import jobapi

    shown = run_jobapi(database_url, "--version")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == f"jobapi {jobapi.__version__}\n"


def test_help_lists_jobapis_commands_first_and_explains_flasks(database_url):
    helped = run_jobapi(database_url, "--help")
    assert helped.returncode == 0, helped.stderr
    sections = re.split(r"^(\S.*):\n", helped.stdout, flags=re.MULTILINE)
    commands = dict(zip(sections[1::2], sections[2::2]))
    own = re.findall(r"^  (\S+)  ", commands["Commands"], re.MULTILINE)
    assert own[:4] == ["jobs", "tokens", "db", "shell"]
    assert re.findall(r"^  (\S+)  ", commands["Flask's commands"], re.MULTILINE) == ["routes", "run"]
    assert "serve with gunicorn" in " ".join(commands["Flask's commands"].split())
    # Flask's options for choosing an app and a .env file, and --debug, are not offered.
    for option in ("--app", "-A,", "--env-file", "-e,", "--debug"):
        assert option not in helped.stdout
    assert "--version" in commands["Options"]


def test_shell_banner_lists_the_names_it_loads(database_url, app, job):
    ran = run_jobapi(
        database_url, "shell",
        stdin="print('ids', [row.id for row in session.scalars(select(Job))])\nprint('names', sorted(dir()))\n",
    )
    assert ran.returncode == 0, ran.stderr
    listed = re.search(r"^Loaded: (.+)$", ran.stderr, re.MULTILINE).group(1).split(", ")
    assert {"db", "session", "Job", "JobStatus", "ApiToken", "sqlalchemy", "select"} <= set(listed)
    defined = re.search(r"names (\[.*\])", ran.stdout).group(1)
    assert sorted(listed) == [name for name in ast.literal_eval(defined) if not name.startswith("__")]
    assert f"ids ['{job.id}']" in ran.stdout
    assert make_url_text(database_url) in ran.stderr  # the banner says which database


def make_url_text(database_url: str) -> str:
    return sqlalchemy.engine.make_url(database_url).render_as_string(hide_password=True)
