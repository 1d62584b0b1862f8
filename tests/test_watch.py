"""``flask jobs watch``: a job's stage and progress bar until it finishes; and the bars of ``jobs list``."""

from __future__ import annotations

import threading
import time

import pytest
from conftest import push_through_service

from jobapi import terminal
from jobapi.extensions import db
from jobapi.storage.engines import write_connection
from jobapi.jobs import service
from jobapi.terminal import progress_bar, progress_cell

# A watch that never sees the job finish would wait for ever.
pytestmark = pytest.mark.timeout(60)


def watch(runner, job_id: str, *args: str):
    return runner.invoke(args=["jobs", "watch", job_id, "--interval", "0.05", *args])


# The bar


@pytest.mark.parametrize(
    ("progress", "bar"),
    [(0, "[--------------------]"), (40, "[########------------]"), (99, "[###################-]"), (100, "[####################]")],
)
def test_progress_bar(progress, bar):
    assert progress_bar(progress) == bar


def test_progress_cells_have_one_length():
    assert {len(progress_cell(p)) for p in (0, 5, 40, 100)} == {len("[----------] 100%")}


# Watching


def test_watch_a_complete_job(app, runner, job):
    push_through_service(app, job.id, "running", "bowtie_build", 40)
    push_through_service(app, job.id, "complete", "done", 100)

    result = watch(runner, job.id)

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{job.id}  complete   [####################] 100%  done\n"
    assert result.stderr == ""


def test_watch_follows_the_job_until_it_completes(app, runner, job):
    push_through_service(app, job.id, "running", "bowtie_build", 40)
    steps = [("running", "bowtie_build", 70), ("complete", "done", 100)]

    def work() -> None:
        for state, stage, progress in steps:
            time.sleep(0.3)
            push_through_service(app, job.id, state, stage, progress)

    worker = threading.Thread(target=work)
    worker.start()
    try:
        result = watch(runner, job.id)
    finally:
        worker.join()

    assert result.exit_code == 0, result.output
    # One line per change seen (the output is no terminal), each poll reading fresh data.
    assert result.stdout.splitlines() == [
        f"{job.id}  running    [########------------]  40%  bowtie_build",
        f"{job.id}  running    [##############------]  70%  bowtie_build",
        f"{job.id}  complete   [####################] 100%  done",
    ]


def test_watch_an_errored_job_prints_the_error(app, runner, job):
    push_through_service(app, job.id, "running", "bowtie_build", 40)
    push_through_service(app, job.id, "error", "bowtie_build", 40, error="bowtie2-build exited 137")

    result = watch(runner, job.id)

    assert result.exit_code == 1
    assert "error" in result.stdout
    assert result.stderr == f"Job {job.id} failed at stage bowtie_build: bowtie2-build exited 137\n"


def test_watch_a_job_cancelled_while_watched(app, runner, job):
    push_through_service(app, job.id, "running", "bowtie_build", 40)

    def cancel() -> None:
        time.sleep(0.3)
        with app.app_context():
            service.cancel_job(write_connection(db.session), job.id)
            db.session.commit()

    thread = threading.Thread(target=cancel)
    thread.start()
    try:
        result = watch(runner, job.id)
    finally:
        thread.join()

    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1] == f"{job.id}  cancelled  [########------------]  40%  bowtie_build"
    assert result.stderr == f"Job {job.id} was cancelled at stage bowtie_build\n"


def test_watch_an_unknown_job(runner):
    result = watch(runner, "zzzzzzzz")

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == ["Error: Job zzzzzzzz not found"]


def test_watch_a_job_removed_while_watched(app, runner, job):
    def remove() -> None:
        time.sleep(0.3)
        with app.app_context():
            service.remove_job(write_connection(db.session), job.id, force=True)
            db.session.commit()

    thread = threading.Thread(target=remove)
    thread.start()
    try:
        result = watch(runner, job.id)
    finally:
        thread.join()

    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [f"Error: Job {job.id} was removed"]


def test_watch_on_a_terminal_redraws_one_line(app, runner, job, monkeypatch):
    monkeypatch.setattr(terminal, "_is_terminal", lambda: True)
    push_through_service(app, job.id, "running", "bowtie_build", 40)

    def finish() -> None:
        time.sleep(0.3)
        push_through_service(app, job.id, "complete", "x", 100)

    thread = threading.Thread(target=finish)
    thread.start()
    try:
        result = watch(runner, job.id)
    finally:
        thread.join()

    assert result.exit_code == 0
    # Each line overwrites the last, spaces covering a longer one's tail.
    assert result.stdout == (
        f"\r{job.id}  running    [########------------]  40%  bowtie_build"
        f"\r{job.id}  complete   [####################] 100%  x           \n"
    )


def test_interval_must_be_positive(runner, job):
    result = runner.invoke(args=["jobs", "watch", job.id, "--interval", "0"])
    assert result.exit_code != 0
    assert result.stdout == ""


# jobs list


def test_list_shows_aligned_progress_bars(app, runner, make_job):
    jobs = [make_job() for _ in range(3)]
    push_through_service(app, jobs[0].id, "running", "a", 5)
    push_through_service(app, jobs[1].id, "running", "bowtie_build", 100)

    result = runner.invoke(args=["jobs", "list"])

    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    column = header.index("PROGRESS")
    cells = {line.split()[0]: line[column:column + len("[----------] 100%")] for line in rows}
    assert cells == {
        jobs[0].id: "[----------]   5%",
        jobs[1].id: "[##########] 100%",
        jobs[2].id: "[----------]   0%",
    }
