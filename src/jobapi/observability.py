"""One measure of every request, written as one log line and counted in the metrics."""

from __future__ import annotations

import functools
import logging
import re
import time
from urllib.parse import quote

from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from . import metrics
from .client_address import ClientAddress, proxy_networks
from .jobs.ids import is_job_id
from .logs import FIELDS_ATTRIBUTE, init_app_logging
from .openapi import Api

request_log = logging.getLogger("jobapi.request")

# app.extensions key: the app's ClientAddress (its TRUSTED_PROXIES).
CLIENT_ADDRESS_EXTENSION = "jobapi.client_address"


def init_observability(app: Flask, api: Api) -> None:
    """Let the request log reach stderr, learn which proxies to believe about the client's
    address, and serve ``/metrics`` (``observe`` is called by ``jobapi.request_cycle`` for
    every request)."""
    init_app_logging(app)
    app.extensions[CLIENT_ADDRESS_EXTENSION] = ClientAddress(proxy_networks(app.config["TRUSTED_PROXIES"]))
    api.register_blueprint(metrics.bp)


def _job_id(context) -> str | None:
    """The job the request is about: the one authenticated, else the path's if it looks like one."""
    job = context.get("job")
    if job is not None:
        return job.id
    candidate = (request.view_args or {}).get("job_id")
    # Anything else in that path segment is the client's text, kept out of the logs.
    return candidate if isinstance(candidate, str) and is_job_id(candidate) else None


@functools.lru_cache(maxsize=256)
def _route_name(rule: str) -> str:
    """A rule as people write it: ``/api/jobs/<job_id>``, without converter names."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"<\1>", rule)


# What a logged path may show as it is; anything else is percent-encoded, so
# no client text can look like a field of the line ("job_id=", spaces, quotes).
_PATH_SAFE = "/-._~:@!$&'()*+,;"


def _route(incoming) -> str | None:
    """The URL rule the request matched; for a 405, the rule of the path whatever its method."""
    if incoming.url_rule is not None:
        return _route_name(incoming.url_rule.rule)
    if isinstance(incoming.routing_exception, MethodNotAllowed):
        allowed = incoming.routing_exception.valid_methods or []
        adapter = current_app.url_map.bind_to_environ(incoming.environ)
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
    # The object behind Flask's proxy, looked up once (_get_current_object is its documented way).
    incoming = request._get_current_object()
    started = context.get("request_started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    route = _route(incoming)
    status = response.status_code
    method = incoming.method
    metrics.observe_request(route, method, status, seconds)
    pushed = context.get("stored_push_state")
    if pushed is not None and status < 400:
        metrics.count_push(pushed)
    fields = {
        "method": method,
        "route": route,
        "path": None if route else quote(incoming.path, safe=_PATH_SAFE),
        "status": status,
        "duration_ms": round(seconds * 1000, 1),
        "job_id": _job_id(context),
        "request_id": context.get("request_id"),
        "client": current_app.extensions[CLIENT_ADDRESS_EXTENSION](incoming.environ),
    }
    if request_log.isEnabledFor(logging.INFO):
        # A record made directly: Logger.info would also look up the calling
        # frame, for fields no line shows. The formatter adds the job and
        # request ids (logs.py).
        request_log.handle(request_log.makeRecord(
            request_log.name, logging.INFO, __file__, 0, "%s %s %s %.1fms",
            (method, route or fields["path"], status, seconds * 1000), None,
            extra={FIELDS_ATTRIBUTE: fields},
        ))
