"""Prometheus metrics, served at ``GET /metrics`` in the text format.

Under gunicorn (``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR`` before
any worker starts) each worker writes its values to files in that directory
and a scrape, answered by any worker, adds up every worker's. Without the
variable (tests, ``flask run``) the values live in this process.

- ``jobapi_http_requests_total{route, method, status}``: requests answered.
- ``jobapi_http_request_duration_seconds{route}``: how long they took (histogram).
- ``jobapi_status_pushes_total{state}``: status records stored by job pushes.
- ``jobapi_jobs{state}``: jobs by current state, counted at scrape time.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Iterator

from flask import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from .extensions import db
from .jobs.pages import count_by_state
from .jobs.states import STATES
from .openapi import Blueprint

log = logging.getLogger(__name__)

# Decided once, at import, as prometheus_client decides how it stores values.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

# The route label of a request that matched no route (404, 405).
UNMATCHED_ROUTE = "<unmatched>"
# Methods named as themselves; any other is "other", so labels stay few.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# This process's metrics; not the library's global registry, so nothing else
# lands on /metrics by accident.
PROCESS_REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "jobapi_http_requests",
    "HTTP requests answered, by route, method and status.",
    ["route", "method", "status"],
    registry=PROCESS_REGISTRY,
)
REQUEST_DURATION = Histogram(
    "jobapi_http_request_duration_seconds",
    "Time to answer an HTTP request, by route.",
    ["route"],
    registry=PROCESS_REGISTRY,
)
STATUS_PUSHES = Counter(
    "jobapi_status_pushes",
    "Status records stored by job pushes (retries replayed are not counted), by state.",
    ["state"],
    registry=PROCESS_REGISTRY,
)

bp = Blueprint("metrics", __name__)


@functools.lru_cache(maxsize=1024)
def _request_counter(route: str, method: str, status: int):
    # A metric's child per label values, looked up once: labels() checks and
    # locks on every call, and requests come in few shapes.
    return REQUESTS.labels(route=route, method=method, status=str(status))


@functools.lru_cache(maxsize=256)
def _duration_histogram(route: str):
    return REQUEST_DURATION.labels(route=route)


@functools.lru_cache(maxsize=64)
def _push_counter(state: str):
    return STATUS_PUSHES.labels(state=state)


def observe_request(route: str | None, method: str, status: int, seconds: float) -> None:
    """Count an answered request and its duration."""
    route = route or UNMATCHED_ROUTE
    method = method if method in KNOWN_METHODS else "other"
    _request_counter(route, method, status).inc()
    _duration_histogram(route).observe(seconds)


def count_push(state: str) -> None:
    """Count a status record a job's push stored."""
    _push_counter(state).inc()


class JobStateCollector:
    """``jobapi_jobs{state}``: one GROUP BY on the jobs table, at scrape time."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self) -> Iterator[Metric]:
        try:
            counts = count_by_state(self.session)
        except sa_exc.SQLAlchemyError as error:
            # The other metrics are still worth a scrape; this one is left out.
            log.warning("jobapi_jobs left out of the scrape: %s", type(error).__name__)
            return
        finally:
            self.session.rollback()
        family = GaugeMetricFamily("jobapi_jobs", "Jobs by current state.", labels=["state"])
        for state in STATES:
            family.add_metric([state], counts.get(state, 0))
        yield family


@bp.get("/metrics", tags=["probes"])
@bp.answers(200, "PrometheusText", "Every metric, in Prometheus's text exposition format.", media_type="text/plain")
@Blueprint.without_database  # a scrape without the database leaves out the jobs gauge, and still answers
def metrics() -> Response:
    """Every metric, in Prometheus's text format; unauthenticated, like the probes."""
    registry = CollectorRegistry()
    if MULTIPROCESS:
        MultiProcessCollector(registry)
    else:
        registry.register(PROCESS_REGISTRY)
    registry.register(JobStateCollector(db.session))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
