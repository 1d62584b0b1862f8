"""The command line: ``jobapi jobs …`` and ``jobapi tokens …`` (also ``flask --app jobapi …``).

Each command owns its transaction: it commits what it did, and any refusal
(an unknown id, a finished job, bad input) or database error is one line on
stderr and exit status 1, with nothing written.
"""

from __future__ import annotations

import code
import json
import platform
import sys
from typing import Any

import click
from flask import current_app
from flask.cli import FlaskGroup, ScriptInfo, routes_command, run_command, with_appcontext
from marshmallow import ValidationError
from sqlalchemy import exc as sa_exc

from . import tokens
from .version import __version__
from .exceptions import DomainError, JobNotFound
from .extensions import db
from .jobs import pages, service
from .jobs.reaper import JobLocked, reap_job, silent_jobs
from .jobs.states import STATES
from .models import ROLES
from .payload import TooDeep, loads_strict
from .storage.engines import write_connection
from .fields import format_timestamp
from .jobs.documents import job_document
from .jobs.schemas import job_create_schema, job_summary_schema
from .terminal import progress_cell, watch_job


def _validation_message(error: ValidationError) -> str:
    messages = error.messages
    if isinstance(messages, dict):
        parts = [
            f"{field}: {' '.join(map(str, errs)) if isinstance(errs, list) else errs}"
            for field, errs in messages.items()
        ]
        return "Invalid input: " + "; ".join(parts)
    return f"Invalid input: {messages}"


def _domain_message(error: DomainError) -> str:
    if isinstance(error, JobNotFound) and error.message == JobNotFound.message and error.job_id:
        return f"Job {error.job_id} not found"
    return error.message


def _first_line(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _echo_table(rows: list[tuple[str, ...]]) -> None:
    """Print rows (the first is the header) in columns aligned by padding."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _print_json(document: Any, *, pretty: bool = False) -> None:
    click.echo(json.dumps(document, indent=2 if pretty else None))


def _short_time(value) -> str:
    return format_timestamp(value)[:19] + "Z" if value else "-"


class OneLineErrors(click.Command):
    """A command whose usage errors, refusals and database errors are one line and exit status 1."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as error:
            raise click.ClickException(error.format_message()) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except DomainError as error:
            raise click.ClickException(_domain_message(error)) from None
        except ValidationError as error:
            raise click.ClickException(_validation_message(error)) from None
        except sa_exc.SQLAlchemyError as error:
            raise click.ClickException(f"Database error: {_first_line(error)}") from None


@click.group("jobs")
def jobs_cli() -> None:
    """Make, list, show, watch, cancel, remove and reap jobs."""


jobs_cli.command_class = OneLineErrors


@jobs_cli.command("create")
@click.option("--task", required=True, help="Task name: 1-64 characters of a-z, 0-9 and _.")
@click.option("--user", required=True, help="Who the job runs for: 1-64 characters.")
@click.option("--args", "args_json", default="{}", show_default=True, help="Task arguments, a JSON object.")
@click.option("--proc", default=1, show_default=True, type=int, help="CPU cores the job may use.")
@click.option("--mem", default=1, show_default=True, type=int, help="GiB of memory the job may use.")
@with_appcontext
def create_command(task: str, user: str, args_json: str, proc: int, mem: int) -> None:
    """Make a job; print its document and its key (shown only this once) as JSON."""
    try:
        args = loads_strict(args_json)
    except TooDeep as error:
        raise click.ClickException(f"--args is {error}") from None
    except ValueError as error:
        raise click.ClickException(f"--args is not valid JSON: {error}") from None
    data = job_create_schema.load(
        {"task": task, "user": user, "args": args, "proc": proc, "mem": mem}
    )
    new = service.create_job(write_connection(db.session), **data)
    db.session.commit()
    _print_json({**job_document(new.job, service.document_history(db.session.connection(), new.job.id)), "key": new.key})


@jobs_cli.command("list")
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state.")
@click.option("--task", help="Only jobs of this task.")
@click.option("--user", help="Only jobs run for this user.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100), help="At most this many jobs (1-100).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@with_appcontext
def list_command(state: str | None, task: str | None, user: str | None, limit: int, as_json: bool) -> None:
    """List jobs, newest first, with their current state and progress."""
    jobs = pages.list_jobs(db.session, state=state, task=task, user=user, limit=limit).jobs
    if as_json:
        _print_json(job_summary_schema.dump(jobs, many=True))
        return
    rows = [("ID", "NUMBER", "STATE", "PROGRESS", "STAGE", "TASK", "USER", "CREATED")]
    for job in jobs:
        rows.append((
            job.id,
            str(job.number),
            job.state,
            progress_cell(job.progress),
            job.stage or "-",
            job.task,
            job.user_id,
            _short_time(job.created_at),
        ))
    _echo_table(rows)
    if not jobs:
        click.echo("(no jobs)")


@jobs_cli.command("show")
@click.argument("job_id")
@click.option("--pretty", is_flag=True, help="Indent the JSON for reading.")
@with_appcontext
def show_command(job_id: str, pretty: bool) -> None:
    """Print a job's document as JSON."""
    found = service.read_job(db.session.connection(), job_id)
    if found is None:
        raise JobNotFound(job_id)
    _print_json(job_document(found.job, found.history), pretty=pretty)


@jobs_cli.command("cancel")
@click.argument("job_id")
@with_appcontext
def cancel_command(job_id: str) -> None:
    """Cancel a job that is not finished, keeping its last stage and progress."""
    outcome = service.cancel_job(write_connection(db.session), job_id)
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
    """Give a job that is not finished a new key and print it as JSON; the old key stops working."""
    key = service.rotate_key(write_connection(db.session), job_id)
    db.session.commit()
    _print_json({"id": job_id, "key": key})


@jobs_cli.command("reap")
@click.option(
    "--timeout", default=300.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
    help="Seconds of silence (no push, no ping) after which a job at work has timed out.",
)
@with_appcontext
def reap_command(timeout: float) -> None:
    """Time out jobs at work (preparing or running) that sent no heartbeat for longer than the timeout.

    Each job is reaped in a transaction of its own; a job a request holds
    right now is skipped, and left for the next run.
    """
    candidates = silent_jobs(db.session, timeout)
    db.session.rollback()
    reaped = skipped = 0
    for job_id in candidates:
        try:
            item = reap_job(db.session, job_id, timeout)
            db.session.commit()
        except JobLocked:
            db.session.rollback()
            skipped += 1
            click.echo(f"Skipped job {job_id}: a request holds it; the next run will look again", err=True)
            continue
        if item is not None:
            reaped += 1
            click.echo(f"Reaped job {item.job.id} ({item.job.task}): {item.record.error}")
    click.echo(f"{reaped} {'job' if reaped == 1 else 'jobs'} reaped" + (f", {skipped} skipped" if skipped else ""))


@jobs_cli.command("watch")
@click.argument("job_id")
@click.option(
    "--interval", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True),
    help="Seconds between looks at the job.",
)
@with_appcontext
def watch_command(job_id: str, interval: float) -> None:
    """Show a job's stage and progress until it finishes: exit 0 if it completes, else 1."""
    record = watch_job(db.session, job_id, interval).record
    if record.state == "complete":
        return
    ending = WATCH_ENDINGS.get(record.state, f"ended {record.state}")
    line = f"Job {job_id} {ending} at stage {record.stage or '-'}"
    if record.error is not None:
        line += ": " + (record.error if isinstance(record.error, str) else json.dumps(record.error))
    click.echo(line, err=True)
    click.get_current_context().exit(1)


# A final state other than complete, as ``jobs watch`` words it.
WATCH_ENDINGS = {
    "error": "failed",
    "cancelled": "was cancelled",
    "terminated": "was terminated",
    "timeout": "timed out",
}


@jobs_cli.command("remove")
@click.argument("job_id")
@click.option("--force", is_flag=True, help="Remove the job even if it is not finished.")
@with_appcontext
def remove_command(job_id: str, force: bool) -> None:
    """Delete a job and all its status records."""
    service.remove_job(write_connection(db.session), job_id, force=force)
    db.session.commit()
    click.echo(f"Removed job {job_id}")


@click.group("tokens")
def tokens_cli() -> None:
    """Make, list, revoke and delete operator and runner tokens."""


tokens_cli.command_class = OneLineErrors


@tokens_cli.command("create")
@click.option("--name", required=True, help="A unique name: who or what holds the token.")
@click.option("--role", required=True, type=click.Choice(ROLES), help="operator: manage jobs; runner: claim work.")
@with_appcontext
def create_token_command(name: str, role: str) -> None:
    """Make a bearer token and print it on stdout; it is shown only this once."""
    name = name.strip()
    if not 1 <= len(name) <= 64 or not name.isprintable():
        raise click.ClickException("--name must be 1 to 64 printable characters")
    new = tokens.create_token(db.session, name=name, role=role)
    db.session.commit()
    click.echo(new.secret)
    click.echo(f"Token {name!r} ({role}) made; it is shown only this once.", err=True)


@tokens_cli.command("list")
@with_appcontext
def list_tokens_command() -> None:
    """List tokens (never their secrets), revoked ones included."""
    rows = [("NAME", "ROLE", "CREATED", "REVOKED")]
    for token in tokens.list_tokens(db.session):
        rows.append((token.name, token.role, _short_time(token.created_at), _short_time(token.revoked_at)))
    _echo_table(rows)


@tokens_cli.command("revoke")
@click.argument("name")
@with_appcontext
def revoke_token_command(name: str) -> None:
    """Revoke a token by name; it stops working at once (its name stays taken until deleted)."""
    changed = tokens.revoke_token(db.session, name)
    db.session.commit()
    click.echo(f"Revoked token {name!r}" if changed else f"Token {name!r} was already revoked")


@tokens_cli.command("delete")
@click.argument("name")
@with_appcontext
def delete_token_command(name: str) -> None:
    """Delete a token by name: it stops working at once, and the name can be used again."""
    tokens.delete_token(db.session, name)
    db.session.commit()
    click.echo(f"Deleted token {name!r}")


# The commands ``jobapi --help`` lists, in this order, and the words for those that
# come from libraries (their own are generic).
OWN_COMMANDS = {
    "jobs": None,
    "tokens": None,
    "db": "Apply the migrations (db upgrade), draft one (db migrate).",
    "shell": None,
    "openapi": "Print or write the API's OpenAPI document (flask-smorest).",
}
FLASK_COMMANDS = {
    "routes": "Show the app's URL rules.",
    "run": "Flask's development server, for trying a change; serve with gunicorn (make serve).",
}


class JobapiGroup(FlaskGroup):
    """``flask --app jobapi`` under jobapi's own name: its version, its commands first, and
    Flask's options for choosing an app hidden (this command has its app)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(add_default_commands=False, add_version_option=False, load_dotenv=False, **kwargs)
        # -A/--app and -e/--env-file choose an app and a .env file (python-dotenv, which jobapi
        # does not install); --debug only matters to `run`. They still work, unlisted.
        for param in self.params:
            if param.name in ("app", "env_file", "debug"):
                param.hidden = True
        click.version_option(__version__, "--version", prog_name="jobapi", message="%(prog)s %(version)s")(self)
        self.add_command(shell_command)
        self.add_command(routes_command)
        self.add_command(run_command)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows: dict[str, tuple[str, str]] = {}
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                text = OWN_COMMANDS.get(name) or FLASK_COMMANDS.get(name) or command.get_short_help_str(120)
                rows[name] = (name, text)
        own = [rows.pop(name) for name in OWN_COMMANDS if name in rows]
        flask = [rows.pop(name) for name in FLASK_COMMANDS if name in rows]
        with formatter.section("Commands"):
            formatter.write_dl(own + sorted(rows.values()))
        if flask:
            with formatter.section("Flask's commands"):
                formatter.write_dl(flask)


@click.command("shell", short_help="A Python shell with the database session and the models loaded.")
@with_appcontext
def shell_command() -> None:
    """A Python shell in the app's context, with the database session and the models loaded
    (the banner lists them)."""
    names = current_app.make_shell_context()
    url = db.engine.url.render_as_string(hide_password=True)
    banner = (
        f"jobapi {__version__} shell (Python {platform.python_version()}), database {url}\n"
        f"Loaded: {', '.join(names)}\n"
        "For example: session.scalars(select(Job).limit(5)).all()"
    )
    # Tab completion of those names, where Python's interactive start-up sets up readline.
    interactive_hook = getattr(sys, "__interactivehook__", None)
    if interactive_hook is not None:
        try:
            import readline
            from rlcompleter import Completer
        except ImportError:
            pass
        else:
            readline.set_completer(Completer(names).complete)
        interactive_hook()
    code.interact(banner=banner, local=names, exitmsg="")


def main() -> None:
    """The ``jobapi`` command: ``flask --app jobapi`` under a name of its own (Flask finds the
    app as ``--app jobapi`` does: ``jobapi.create_app``)."""
    JobapiGroup(
        name="jobapi",
        help=(
            "jobapi's command line: make and manage jobs and tokens, apply the database's "
            "migrations, open a shell. Settings come from the environment, as for the "
            "server (DATABASE_URL; README: Configuration)."
        ),
    ).main(prog_name="jobapi", obj=ScriptInfo(app_import_path="jobapi"))
