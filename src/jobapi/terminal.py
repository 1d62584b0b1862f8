"""Jobs drawn for a terminal: progress bars, and the line ``flask jobs watch`` keeps up to date."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import click
from sqlalchemy.orm import Session

from .exceptions import JobNotFound
from .jobs import service
from .models import Job, JobStatus

BAR_WIDTH = 20


def progress_bar(progress: int, width: int = BAR_WIDTH) -> str:
    """``[########------------]`` for 40%: ``width`` cells, full only at 100."""
    progress = min(max(progress, 0), 100)
    filled = progress * width // 100
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress_cell(progress: int, width: int = 10) -> str:
    """A bar and the percentage, always the same length: ``[####------]  40%``."""
    return f"{progress_bar(progress, width)} {progress:>3}%"


def watch_line(job: Job) -> str:
    """One line of a job's current state: id, state, bar, percentage, stage."""
    return f"{job.id}  {job.state:<9}  {progress_cell(job.progress, BAR_WIDTH)}  {job.stage or '-'}"


def _is_terminal() -> bool:
    return sys.stdout.isatty()


@dataclass(frozen=True)
class Watched:
    """A job seen to finish, and its final record."""

    job: Job
    record: JobStatus


def watch_job(
    session: Session,
    job_id: str,
    interval: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> Watched:
    """Show a job's line each time it changes until the job finishes; return it then.

    On a terminal the line is redrawn in place; elsewhere (a pipe, a log)
    each change is a new line. Raises ``JobNotFound`` for an unknown job, or
    one removed while watched.
    """
    in_place = _is_terminal()
    shown: str | None = None
    try:
        while True:
            # A new transaction and an empty identity map for every look, so
            # each one reads what has been committed since the last.
            session.rollback()
            session.expunge_all()
            job = service.get_job(session, job_id)
            if job is None:
                raise JobNotFound(job_id, "Not found" if shown is None else f"Job {job_id} was removed")
            line = watch_line(job)
            if line != shown:
                if in_place:
                    # Spaces cover what is left of a longer line drawn before.
                    click.echo("\r" + line.ljust(len(shown or "")), nl=False)
                else:
                    click.echo(line)
                shown = line
            if job.finished:
                return Watched(job=job, record=service.last_status(session, job))
            # No transaction held while waiting: through a pooler it would hold a server.
            session.rollback()
            sleep(interval)
    finally:
        if in_place and shown is not None:
            click.echo()
