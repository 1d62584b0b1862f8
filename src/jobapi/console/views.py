"""The console's pages and the hooks that guard them: CSRF on every form, a signed-in operator
on every page but sign-in, HTML (never JSON, never a stack trace) for every error.

As on every route, the request's transaction is committed when a page answers
below 400 (``jobapi.transaction``); a refused action rolls back at once."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import (
    Response,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException, InternalServerError

from ..extensions import csrf, db
from ..models import FINAL_STATES, STATES
from ..schemas import TASK_PATTERN, format_timestamp
from ..storage import begin_read, begin_write
from . import actions, bp
from .timeline import entries, format_duration, segments

log = logging.getLogger(__name__)

# The session key that names the signed-in operator's token (its id, never its secret).
OPERATOR_KEY = "operator"
# Pages anyone may open.
PUBLIC_ENDPOINTS = frozenset({"console.sign_in"})
# Forms that change jobs: their transaction writes from its start (storage.begin_write).
WRITING_ENDPOINTS = frozenset({"console.new_job", "console.cancel", "console.remove"})
# The live page parts that scripts fetch every few seconds.
FRAGMENT_ENDPOINTS = frozenset({"console.jobs_live", "console.job_live"})

# Scripts and styles come from this server only; no page may be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
REFRESH_SECONDS = 2
_TASK = re.compile(TASK_PATTERN)


# Hooks


@bp.before_request
def admit():
    """Check the form's CSRF token, start the transaction, and require a signed-in operator."""
    if not current_app.secret_key:
        return _message(
            "The console is not available",
            "It needs a secret key to sign its sessions: set SECRET_KEY, or let the "
            "server write one to its instance folder.",
            503,
        )
    if request.method == "POST":
        csrf.protect()
    if request.method == "POST" and request.endpoint in WRITING_ENDPOINTS:
        begin_write(db.session)
    else:
        begin_read(db.session)
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    operator = actions.signed_in_operator(session.get(OPERATOR_KEY))
    if operator is None:
        if OPERATOR_KEY in session:
            session.clear()
            flash("Your token was revoked or is no longer valid: sign in again.", "error")
        if request.endpoint in FRAGMENT_ENDPOINTS:
            # The page's script reloads the page, which shows the message above.
            return Response("Signed out: sign in again.\n", 401, mimetype="text/plain")
        return redirect(url_for("console.sign_in", next=_here()))
    g.operator = operator
    return None


@bp.after_request
def protect_pages(response: Response) -> Response:
    """Headers every console answer carries: no caching, no framing, no foreign scripts."""
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.context_processor
def console_globals() -> dict[str, Any]:
    """What every template may use: the states, the signed-in operator, the refresh period."""
    return {
        "states": STATES,
        "final_states": FINAL_STATES,
        "operator": g.get("operator"),
        "refresh_ms": REFRESH_SECONDS * 1000,
    }


@bp.app_template_filter("when")
def when(value: datetime | None) -> str:
    """A time as the pages show it: ``2026-01-31 14:05:09 UTC``."""
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("iso")
def iso(value: datetime | None) -> str:
    """A time as the API writes it, for ``<time datetime>``."""
    return "" if value is None else format_timestamp(value)


@bp.app_template_filter("ago")
def ago(value: datetime | None) -> str:
    """How long ago a time was: ``12 s ago``."""
    if value is None:
        return ""
    return format_duration(max(datetime.now(UTC) - value, timedelta(0))) + " ago"


@bp.app_template_filter("pretty_json")
def pretty_json(value: Any) -> str:
    """A JSON value indented for reading, its keys in their stored order."""
    return json.dumps(value, indent=2, ensure_ascii=False)


bp.add_app_template_filter(format_duration, "duration")


# Sign-in


def _here() -> str:
    """The path and query of this request, for coming back after sign-in."""
    return request.full_path.rstrip("?")


def _safe_next(target: str | None) -> str:
    """Where to go after sign-in: a console page of this site, never another site."""
    prefix = url_for("console.jobs")
    if target and target.startswith(prefix) and not target.startswith("//") and "\\" not in target:
        return target
    return prefix


@bp.route("/sign-in", methods=["GET", "POST"])
def sign_in():
    """Ask for an operator token; keep the operator signed in with the session cookie."""
    next_page = _safe_next(request.values.get("next"))
    if request.method == "GET":
        if actions.signed_in_operator(session.get(OPERATOR_KEY)) is not None:
            return redirect(next_page)
        return render_template("console/sign_in.html", next_page=next_page)
    try:
        token = actions.sign_in(request.form.get("token", ""))
    except actions.Refused as refused:
        return render_template(
            "console/sign_in.html", next_page=next_page, refusal=refused.message
        ), refused.status
    # A new session: nothing from before sign-in (a CSRF token included) is carried over.
    session.clear()
    session[OPERATOR_KEY] = token.id
    session.permanent = True
    flash(f"Signed in as {token.name}.", "info")
    return redirect(next_page, 303)


@bp.post("/sign-out")
def sign_out():
    """Forget the operator: the session cookie is cleared."""
    session.clear()
    flash("Signed out.", "info")
    return redirect(url_for("console.sign_in"), 303)


# Jobs


def _filters() -> tuple[actions.Filters, list[str]]:
    """The jobs page's filters from the query string, and a note for each one ignored."""
    notes = []
    state = request.args.get("state") or None
    if state is not None and state not in STATES:
        notes.append(f"There is no state {state!r}: showing every state.")
        state = None
    task = (request.args.get("task") or "").strip() or None
    if task is not None and not _TASK.match(task):
        notes.append("A task is 1 to 64 characters of a-z, 0-9 and _: showing every task.")
        task = None
    user = (request.args.get("user") or "").strip() or None
    if user is not None and (len(user) > 64 or "\x00" in user):
        notes.append("A user is 1 to 64 characters: showing every user.")
        user = None
    return actions.Filters(state=state, task=task, user=user), notes


def _jobs_context() -> dict[str, Any]:
    filters, notes = _filters()
    page = actions.list_jobs(
        filters,
        current_app.config["CONSOLE_PAGE_SIZE"],
        cursor=request.args.get("cursor") or None,
        before=request.args.get("before") or None,
    )
    kept = {k: v for k, v in (("state", filters.state), ("task", filters.task), ("user", filters.user)) if v}
    position = {k: request.args[k] for k in ("cursor", "before") if request.args.get(k)}
    return {
        "filters": filters,
        "notes": notes,
        "page": page,
        "counts": actions.count_by_state(filters),
        "kept": kept,
        "live_url": url_for("console.jobs_live", **kept, **position),
        "here": url_for("console.jobs", **kept, **position),
        "now": datetime.now(UTC),
    }


@bp.get("/")
def jobs():
    """Every job, newest first: counts by state, filters, keyset pages; refreshed live."""
    return render_template("console/jobs.html", **_jobs_context())


@bp.get("/jobs/_rows")
def jobs_live():
    """The live part of the jobs page (counts, table, pages), for the page's script to swap in."""
    return render_template("console/_jobs_live.html", **_jobs_context())


def _job_context(job_id: str) -> dict[str, Any]:
    job = actions.get_job(job_id)
    now = datetime.now(UTC)
    timeline = entries(actions.status_history(job))
    return {
        "job": job,
        "timeline": timeline,
        "segments": segments(timeline, finished=job.finished, now=now),
        "now": now,
        "live_url": url_for("console.job_live", job_id=job.id),
    }


@bp.get("/jobs/<job_id>")
def job(job_id: str):
    """One job: its fields, its timeline, its last heartbeat; refreshed live until it finishes."""
    return render_template("console/job.html", **_job_context(job_id))


@bp.get("/jobs/<job_id>/_live")
def job_live(job_id: str):
    """The live part of a job's page, for the page's script to swap in."""
    return render_template("console/_job_live.html", **_job_context(job_id))


NEW_JOB_DEFAULTS = {"task": "", "user": "", "args": "{}", "proc": "1", "mem": "1"}


@bp.route("/jobs/new", methods=["GET", "POST"])
def new_job():
    """Make a job; its key is shown on the answer to the form, once."""
    if request.method == "GET":
        return render_template("console/new_job.html", form=NEW_JOB_DEFAULTS, errors={})
    form = {name: request.form.get(name, default) for name, default in NEW_JOB_DEFAULTS.items()}
    try:
        made = actions.make_job(form)
    except actions.FormInvalid as invalid:
        return render_template("console/new_job.html", form=form, errors=invalid.errors), 422
    return render_template("console/job_made.html", job=made.job, key=made.key), 201


@bp.post("/jobs/<job_id>/cancel")
def cancel(job_id: str):
    """Cancel a job, keeping its last stage and progress; a finished one is refused."""
    try:
        outcome = actions.cancel_job(job_id)
    except actions.Refused as refused:
        db.session.rollback()
        flash(f"Not cancelled: {refused.message}.", "error")
        return redirect(url_for("console.job", job_id=job_id), 303)
    if outcome.changed:
        flash(f"Job {job_id} is cancelled: its worker's next push is refused.", "info")
    else:
        flash(f"Job {job_id} was already cancelled.", "info")
    return redirect(url_for("console.job", job_id=job_id), 303)


@bp.route("/jobs/<job_id>/remove", methods=["GET", "POST"])
def remove(job_id: str):
    """Ask to confirm, then delete a job and its records (an active job only by force)."""
    if request.method == "GET":
        job = actions.get_job(job_id)
        return render_template("console/remove.html", job=job)
    force = request.form.get("force") == "1"
    try:
        actions.remove_job(job_id, force=force)
    except actions.Refused as refused:
        db.session.rollback()
        flash(f"Not removed: {refused.message}.", "error")
        return redirect(url_for("console.job", job_id=job_id), 303)
    flash(f"Job {job_id} is removed{' (forced)' if force else ''}.", "info")
    return redirect(url_for("console.jobs"), 303)


@bp.route("/<path:anything>")
def not_found(anything: str):
    """Any other path under the console: an HTML 404."""
    return _message("Not found", "There is no such page in the console.", 404)


# Errors: HTML pages, never JSON, never a stack trace.


def _message(title: str, text: str, status: int, **headers: str):
    body = render_template("console/message.html", title=title, text=text, status=status)
    return body, status, headers


@bp.errorhandler(actions.Refused)
def refused(error: actions.Refused):
    db.session.rollback()
    return _message("Not possible", error.message, error.status)


@bp.errorhandler(CSRFError)
def csrf_refused(error: CSRFError):
    return _message(
        "Form refused",
        "The form did not carry this console's security token (or it no longer matches "
        "your sign-in), so it was not carried out. Reload the page and try again.",
        400,
    )


@bp.errorhandler(HTTPException)
def http_error(error: HTTPException):
    if isinstance(error, InternalServerError):
        return internal_error(error)
    return _message(error.name, error.description or "", error.code or 500)


@bp.errorhandler(InternalServerError)
def internal_error(error: InternalServerError):
    # Flask has already logged the original exception's traceback.
    log.error("console page failed, request id %s", g.get("request_id", "-"))
    db.session.rollback()
    return _message(
        "Something went wrong",
        f"The server could not show this page. Request id: {g.get('request_id', '-')}.",
        500,
    )


def database_unavailable(error: sa_exc.SQLAlchemyError):
    log.warning("database unavailable on a console page, request id %s", g.get("request_id", "-"))
    db.session.rollback()
    return _message(
        "Database unavailable",
        "The database does not answer just now; this page will work again once it does.",
        503,
        **{"Retry-After": str(current_app.config["RETRY_AFTER_SECONDS"])},
    )


for _exc_type in (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError):
    bp.register_error_handler(_exc_type, database_unavailable)
