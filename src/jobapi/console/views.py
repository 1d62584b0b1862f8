"""The console's pages and the hooks that guard them: CSRF on every form, a signed-in operator
on every page but sign-in, HTML (never JSON, never a stack trace) for every error.

A form's route has one view for GET (its page, which HEAD runs too, as Flask
answers HEAD with the GET view) and another for POST (what it does), so HEAD
never runs a view that writes; a route that takes only POST answers 405 to
HEAD and GET.

As on every route, the request's transaction is committed when a page answers
below 400 (``jobapi.transaction``); a refused action rolls back at once."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
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
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed
from werkzeug.urls import iri_to_uri

from ..extensions import csrf, db
from ..models import FINAL_STATES, STATES
from ..fields import format_timestamp
from ..jobs.schemas import TASK_PATTERN
from ..storage.engines import begin_write
from . import actions
from .timeline import entries, format_duration, segments

log = logging.getLogger(__name__)

bp = Blueprint("console", __name__)

# The session key whose value names the sign-in (a random id; the server keeps its digest).
SESSION_KEY = "sid"
# Pages anyone may open.
PUBLIC_ENDPOINTS = frozenset({"console.sign_in", "console.sign_in_submitted", "console.not_found"})
# Forms that write: their transaction writes from its start (storage.begin_write).
WRITING_ENDPOINTS = frozenset({
    "console.sign_in_submitted", "console.sign_out", "console.new_job_submitted", "console.cancel",
    "console.remove_confirmed",
})
# The live page parts that scripts fetch every few seconds.
FRAGMENT_ENDPOINTS = frozenset({"console.jobs_live", "console.job_live"})
# Paths sign-in never leads back to: itself, live parts, and any path that is no page.
NOT_LANDING_PAGES = PUBLIC_ENDPOINTS | FRAGMENT_ENDPOINTS | {"console.not_found"}

# Scripts and styles come from this server only; no page may be framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
REFRESH_SECONDS = 2
_TASK = re.compile(TASK_PATTERN)
# Characters a page to come back to may not hold: controls (CR and LF among them), which no
# header may carry, and white space.
_NOT_IN_NEXT = re.compile(r"[\x00-\x20\x7f-\x9f\s]")


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
    if request.endpoint in WRITING_ENDPOINTS:
        begin_write(db.session)
    if request.endpoint in PUBLIC_ENDPOINTS:
        return None
    operator = actions.signed_in_operator(session.get(SESSION_KEY))
    if operator is None:
        if SESSION_KEY in session:
            session.clear()
            flash("Your token was revoked or is no longer valid: sign in again.", "error")
        if request.endpoint in FRAGMENT_ENDPOINTS:
            # The page's script reloads the page, which shows the message above.
            return Response("Signed out: sign in again.\n", 401, mimetype="text/plain")
        return redirect(url_for("console.sign_in", next=_here() if _is_page(request.path) else None))
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
    """Where to go after sign-in: a console page of this site, never another site, and never
    anything a header could not carry as it is (CR, LF, other controls): the console's first page then."""
    prefix = url_for("console.jobs")
    if (
        target
        and target.startswith(prefix)
        and not target.startswith("//")
        and "\\" not in target
        and not _NOT_IN_NEXT.search(target)
        and _is_page(target)
    ):
        # Any other character outside ASCII is percent-encoded for the Location header.
        return iri_to_uri(target)
    return prefix


def _is_page(target: str) -> bool:
    """Whether a path (with its query) is a console page to land on: not the sign-in form, a
    page's live part, or a path no page has (``/console/login``)."""
    path = urlsplit(target).path.removeprefix(request.script_root)
    try:
        endpoint, _ = current_app.url_map.bind_to_environ(request.environ).match(path, method="GET")
    except HTTPException:
        return False
    return endpoint.startswith("console.") and endpoint not in NOT_LANDING_PAGES


@bp.get("/sign-in")
def sign_in():
    """Ask for an operator token (or go on, if already signed in)."""
    next_page = _safe_next(request.args.get("next"))
    if actions.signed_in_operator(session.get(SESSION_KEY)) is not None:
        return redirect(next_page)
    return render_template("console/sign_in.html", next_page=next_page)


@bp.post("/sign-in")
def sign_in_submitted():
    """Sign the operator in: a new sign-in on the server, named by the session cookie."""
    next_page = _safe_next(request.form.get("next"))
    try:
        signed_in = actions.sign_in(request.form.get("token", ""), current_app.permanent_session_lifetime)
    except actions.Refused as refused:
        return render_template(
            "console/sign_in.html", next_page=next_page, refusal=refused.message
        ), refused.status
    # Any earlier sign-in of this browser ends; nothing from before (a CSRF token included) is carried over.
    actions.sign_out(session.get(SESSION_KEY))
    session.clear()
    session[SESSION_KEY] = signed_in.session_id
    session.permanent = True
    flash(f"Signed in as {signed_in.token.name}.", "info")
    return redirect(next_page, 303)


@bp.post("/sign-out")
def sign_out():
    """End the sign-in on the server (every copy of the cookie with it) and clear the cookie."""
    actions.sign_out(session.get(SESSION_KEY))
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


@bp.get("/jobs/new")
def new_job():
    """The form that makes a job."""
    return render_template("console/new_job.html", form=NEW_JOB_DEFAULTS, errors={})


@bp.post("/jobs/new")
def new_job_submitted():
    """Make a job; its key is shown on the answer to the form, once."""
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


@bp.get("/jobs/<job_id>/remove")
def remove(job_id: str):
    """Ask to confirm the removal of a job."""
    return render_template("console/remove.html", job=actions.get_job(job_id))


@bp.post("/jobs/<job_id>/remove")
def remove_confirmed(job_id: str):
    """Delete a job and its records (an active job only by force)."""
    force = request.form.get("force") == "1"
    try:
        actions.remove_job(job_id, force=force)
    except actions.Refused as refused:
        db.session.rollback()
        flash(f"Not removed: {refused.message}.", "error")
        return redirect(url_for("console.job", job_id=job_id), 303)
    flash(f"Job {job_id} is removed{' (forced)' if force else ''}.", "info")
    return redirect(url_for("console.jobs"), 303)


# The console's own methods beside the catch-all below: OPTIONS is Flask's, on every route.
_CATCH_ALL_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@bp.route("/<path:anything>")
def not_found(anything: str):
    """Any other path under the console: an HTML 404, or 405 for a route that takes other methods.

    The router prefers this rule to a 405 when another rule has the path but
    not the method (a GET or HEAD on a form's POST-only route): that answer
    is 405, with the methods the route takes.
    """
    adapter = current_app.url_map.bind_to_environ(request.environ)
    taken = set(adapter.allowed_methods()) - _CATCH_ALL_METHODS
    if taken:
        raise MethodNotAllowed(valid_methods=sorted(taken | {"OPTIONS"}))
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
    # The exception's own headers (Allow on a 405), not its HTML type.
    headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
    return _message(error.name, error.description or "", error.code or 500, **headers)


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
