"""One measure of every request, written as one log line and counted in the metrics."""

from __future__ import annotations

import functools
import logging
import re
import time
from urllib.parse import quote

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from . import metrics
from .jobs.service import is_job_id, loaded_id
from .logs import FIELDS_ATTRIBUTE, init_app_logging
from .openapi import Api

request_log = logging.getLogger("jobapi.request")


def init_observability(app: Flask, api: Api) -> None:
    """Let the request log reach stderr, and serve ``/metrics`` (``observe`` is called by
    ``jobapi.request_cycle`` for every request)."""
    init_app_logging(app)
    api.register_blueprint(metrics.bp)


def _job_id(context) -> str | None:
    """The job the request is about: the one authenticated, else the path's if it looks like one."""
    job = context.get("job")
    if job is not None:
        # Without a query: after a rollback (a 503) a mapped job is expired.
        job_id = loaded_id(job)
        if job_id is not None:
            return job_id
    candidate = (request.view_args or {}).get("job_id")
    # Anything else in that path segment is the client's text, kept out of the logs.
    return candidate if isinstance(candidate, str) and is_job_id(candidate) else None


def record_stored_push(state: str) -> None:
    """A view stored a job's pushed record in this state: it is counted once the request commits."""
    g.stored_push_state = state


@functools.lru_cache(maxsize=256)
def _route_name(rule: str) -> str:
    """A rule as people write it: ``/api/jobs/<job_id>``, without converter names."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"<\1>", rule)


# What a logged path may show as it is; anything else is percent-encoded, so
# no client text can look like a field of the line ("job_id=", spaces, quotes).
_PATH_SAFE = "/-._~:@!$&'()*+,;"


def _route() -> str | None:
    """The URL rule the request matched; for a 405, the rule of the path whatever its method."""
    if request.url_rule is not None:
        return _route_name(request.url_rule.rule)
    if isinstance(request.routing_exception, MethodNotAllowed):
        allowed = request.routing_exception.valid_methods or []
        adapter = current_app.url_map.bind_to_environ(request.environ)
        for method in allowed:
            try:
                rule, _ = adapter.match(method=method, return_rule=True)
            except HTTPException:
                continue
            return _route_name(rule.rule)
    return None


def observe(response: Response, context) -> None:
    """Count the answer in the metrics and write its one log line (``context`` is the
    request's ``g``)."""
    started = context.get("request_started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    route = _route()
    status = response.status_code
    method = request.method
    metrics.observe_request(route, method, status, seconds)
    pushed = context.get("stored_push_state")
    if pushed is not None and status < 400:
        metrics.count_push(pushed)
    fields = {
        "method": method,
        "route": route,
        "path": None if route else quote(request.path, safe=_PATH_SAFE),
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
        "job_id": _job_id(context),
        "request_id": context.get("request_id"),
    }
    # The formatter adds the job and request ids (logs.py).
    request_log.info(
        "%s %s %s %.1fms", method, route or fields["path"], status, seconds * 1000,
        extra={FIELDS_ATTRIBUTE: fields},
    )
