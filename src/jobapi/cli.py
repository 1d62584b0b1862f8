"""The ``flask jobs`` commands with which operators make and manage jobs."""

from __future__ import annotations

import json
from typing import Any

import click
from flask.cli import with_appcontext
from marshmallow import ValidationError

from . import service
from .errors import APIError, NotFound
from .extensions import db
from .payload import loads_strict
from .models import ROLES, STATES
from .schemas import (
    format_timestamp,
    job_create_schema,
    job_out_schema,
    job_summary_schema,
)
from .terminal import progress_cell, watch_job


def _fail(message: str) -> None:
    db.session.rollback()
    raise click.ClickException(message)


def _fail_for_job(job_id: str, error: APIError) -> None:
    _fail(f"Job {job_id} not found" if isinstance(error, NotFound) else error.message)


def _validation_message(error: ValidationError) -> str:
    messages = error.messages
    if isinstance(messages, dict):
        parts = [
            f"{field}: {' '.join(map(str, errs)) if isinstance(errs, list) else errs}"
            for field, errs in messages.items()
        ]
        return "Invalid input: " + "; ".join(parts)
    return f"Invalid input: {messages}"


def _echo_table(rows: list[tuple[str, ...]]) -> None:
    """Print rows (the first is the header) in columns aligned by padding."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document))


class OneLineErrors(click.Command):
    """A command whose usage errors (a missing option, say) are one line and exit status 1."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as error:
            raise click.ClickException(error.format_message()) from None


@click.group("jobs")
def jobs_cli() -> None:
    """Make, list, show, cancel and remove jobs."""


jobs_cli.command_class = OneLineErrors


@jobs_cli.command("create")
@click.option("--task", required=True, help="Task name: 1-64 characters of a-z, 0-9, _.")
@click.option("--user", required=True, help="Who the job runs for.")
@click.option("--args", "args_json", default="{}", show_default=True, help="Task arguments, a JSON object.")
@click.option("--proc", default=1, show_default=True, type=int, help="CPU cores the job may use.")
@click.option("--mem", default=1, show_default=True, type=int, help="GiB of memory the job may use.")
@with_appcontext
def create_command(task: str, user: str, args_json: str, proc: int, mem: int) -> None:
    """Make a job; print its document and its key (shown only this once) as JSON."""
    try:
        args = loads_strict(args_json)
    except ValueError as error:
        _fail(f"--args is not valid JSON: {error}")
    try:
        data = job_create_schema.load(
            {"task": task, "user": user, "args": args, "proc": proc, "mem": mem}
        )
    except ValidationError as error:
        _fail(_validation_message(error))
    new = service.create_job(db.session, **data)
    db.session.commit()
    _print_json({**job_out_schema.dump(new.job), "key": new.key})


@jobs_cli.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--task", help="Only jobs of this task.")
@click.option("--user", help="Only jobs run for this user.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@with_appcontext
def list_command(state: str | None, task: str | None, user: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first, with their current state and progress."""
    jobs = service.list_jobs(db.session, state=state, task=task, user=user, limit=limit).jobs
    if as_json:
        _print_json(job_summary_schema.dump(jobs, many=True))
        return
    rows = [("ID", "STATE", "PROGRESS", "STAGE", "TASK", "USER", "CREATED")]
    for job in jobs:
        rows.append((
            job.id,
            job.state,
            progress_cell(job.progress),
            job.stage or "-",
            job.task,
            job.user_id,
            format_timestamp(job.created_at)[:19] + "Z",
        ))
    _echo_table(rows)
    if not jobs:
        click.echo("(no jobs)")


@jobs_cli.command("show")
@click.argument("job_id")
@with_appcontext
def show_command(job_id: str) -> None:
    """Print a job's document as JSON."""
    try:
        job = service.require_job(db.session, job_id)
    except APIError as error:
        _fail_for_job(job_id, error)
    _print_json(job_out_schema.dump(job))


@jobs_cli.command("cancel")
@click.argument("job_id")
@with_appcontext
def cancel_command(job_id: str) -> None:
    """Cancel a waiting or running job, keeping its last stage and progress."""
    try:
        outcome = service.cancel_job(db.session, job_id)
    except APIError as error:
        _fail_for_job(job_id, error)
    db.session.commit()
    record = outcome.record
    where = f"at stage {record.stage or '-'}, {record.progress}%"
    if outcome.changed:
        click.echo(f"Cancelled job {job_id} {where}")
    else:
        click.echo(f"Job {job_id} was already cancelled {where}; left as it is")


@jobs_cli.command("rotate-key")
@click.argument("job_id")
@with_appcontext
def rotate_key_command(job_id: str) -> None:
    """Give a job a new key and print it as JSON; the old key stops working at once."""
    try:
        key = service.rotate_key(db.session, job_id)
    except APIError as error:
        _fail_for_job(job_id, error)
    db.session.commit()
    _print_json({"id": job_id, "key": key})


@jobs_cli.command("reap")
@click.option(
    "--timeout", default=300.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
    help="Seconds of silence (no push, no ping) after which a running job has failed.",
)
@with_appcontext
def reap_command(timeout: float) -> None:
    """Fail running jobs that have sent no heartbeat for longer than the timeout."""
    reaped = service.reap_jobs(db.session, timeout)
    db.session.commit()
    for item in reaped:
        click.echo(f"Reaped job {item.job.id} ({item.job.task}): {item.record.error}")
    click.echo(f"{len(reaped)} job(s) reaped")


@jobs_cli.command("watch")
@click.argument("job_id")
@click.option(
    "--interval", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
    help="Seconds between looks at the job.",
)
@with_appcontext
def watch_command(job_id: str, interval: float) -> None:
    """Show a job's stage and progress until it finishes: exit 0 if it completes, else 1."""
    try:
        watched = watch_job(db.session, job_id, interval)
    except APIError as error:
        _fail(error.message)
    record = watched.record
    if record.state == "error":
        click.echo(f"Job {job_id} failed at stage {record.stage or '-'}: {record.error}", err=True)
        click.get_current_context().exit(1)
    if record.state == "cancelled":
        click.echo(f"Job {job_id} was cancelled at stage {record.stage or '-'}", err=True)
        click.get_current_context().exit(1)


@jobs_cli.command("remove")
@click.argument("job_id")
@click.option("--force", is_flag=True, help="Remove the job even if it is not finished.")
@with_appcontext
def remove_command(job_id: str, force: bool) -> None:
    """Delete a job and all its status records."""
    try:
        service.remove_job(db.session, job_id, force=force)
    except APIError as error:
        _fail_for_job(job_id, error)
    db.session.commit()
    click.echo(f"Removed job {job_id}")


@click.group("tokens")
def tokens_cli() -> None:
    """Make, list and revoke operator and runner tokens."""


tokens_cli.command_class = OneLineErrors


@tokens_cli.command("create")
@click.option("--name", required=True, help="A unique name: who or what holds the token.")
@click.option("--role", required=True, type=click.Choice(ROLES), help="operator: manage jobs; runner: claim work.")
@with_appcontext
def create_token_command(name: str, role: str) -> None:
    """Make a bearer token and print it on stdout; it is shown only this once."""
    name = name.strip()
    if not 1 <= len(name) <= 64 or not name.isprintable():
        _fail("--name must be 1 to 64 printable characters")
    try:
        new = service.create_token(db.session, name=name, role=role)
    except APIError as error:
        _fail(error.message)
    db.session.commit()
    click.echo(new.secret)
    click.echo(f"Token {name!r} ({role}) made; it is shown only this once.", err=True)


@tokens_cli.command("list")
@with_appcontext
def list_tokens_command() -> None:
    """List tokens (never their secrets), revoked ones included."""
    rows = [("NAME", "ROLE", "CREATED", "REVOKED")]
    for token in service.list_tokens(db.session):
        rows.append((
            token.name,
            token.role,
            format_timestamp(token.created_at)[:19] + "Z",
            format_timestamp(token.revoked_at)[:19] + "Z" if token.revoked_at else "-",
        ))
    _echo_table(rows)


@tokens_cli.command("revoke")
@click.argument("name")
@with_appcontext
def revoke_token_command(name: str) -> None:
    """Revoke a token by name; it stops working at once."""
    try:
        changed = service.revoke_token(db.session, name)
    except APIError as error:
        _fail(error.message)
    db.session.commit()
    click.echo(f"Revoked token {name!r}" if changed else f"Token {name!r} was already revoked")
