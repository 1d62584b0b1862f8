"""Fuzzing: schemathesis drives a live gunicorn from the OpenAPI document it serves.

Every operation of ``/api/openapi.json`` gets generated requests, valid and invalid
(schemathesis's examples, coverage and fuzzing phases), sent with real credentials:
a fresh job's key on a job's own routes (the path names that job, in one of its
states), an operator's or a runner's token on theirs, as each operation's
``security`` says. Every response must be no 5xx and conform to the document
(status, headers, body, content type), and valid input must be accepted, invalid
refused. It runs on the test database: PostgreSQL in the PostgreSQL half of the suite.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation
from conftest import push_through_service
from sqlalchemy import delete

from jobapi import create_app, openapi
from jobapi.extensions import db
from jobapi.storage.engines import write_connection
from jobapi.jobs import pages, service
from jobapi.models import ApiToken
from jobapi.tokens import create_token

pytestmark = pytest.mark.e2e

# Examples per operation for the fuzzing phase (the coverage phase adds its boundary cases).
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "100"))
TOKEN_NAMES = ("fuzz-operator", "fuzz-runner")
FUZZ_TASK = "fuzz"

# The states a fresh job is put in before a request names it, in turn: most are
# live, so pushes are accepted as often as they are refused as finished.
STATES = itertools.cycle(["waiting", "running", "waiting", "running", "complete", "error", "cancelled"])
PUSH_TO = {
    "running": [("running", None)],
    "complete": [("running", None), ("complete", None)],
    "error": [("error", "fuzz")],
    "cancelled": [("cancelled", None)],
}


def _negative(case, location: ParameterLocation) -> bool:
    """Whether schemathesis made this part of the case invalid on purpose."""
    return case.meta is not None and case.meta.is_negative_at(location)


def _negated_authorization(case) -> bool:
    """Whether schemathesis left out or spoiled the Authorization header on purpose."""
    if not _negative(case, ParameterLocation.HEADER):
        return False
    if not any(name.lower() == "authorization" for name in case.headers or {}):
        return True
    data = case.meta.phase.data
    negated = [data.parameter, *(mutation.parameter for mutation in data.mutations)]
    return any(name and name.lower() == "authorization" for name in negated)


def basic(job_id: str, key: str) -> str:
    return "Basic " + base64.b64encode(f"job-{job_id}:{key}".encode()).decode()


@dataclass
class Credentials:
    """Real credentials for every request: fresh jobs, an operator's and a runner's token."""

    app: object
    tokens: dict[str, str]
    turn: Iterator[int] = field(default_factory=itertools.count)

    def fresh_job(self, state: str | None = None) -> tuple[str, str]:
        """A new job, in this state or the next of the cycle; its id and key."""
        state = state or next(STATES)
        with self.app.app_context():
            new = service.create_job(write_connection(db.session), task=FUZZ_TASK, user="fuzzer", args={"n": 1})
            db.session.commit()
            for pushed, error in PUSH_TO.get(state, []):
                push_through_service(self.app, new.job.id, pushed, "fuzz", 50, error)
            return new.job.id, new.key

    def prepare(self, case) -> dict[str, str]:
        """Put real values where the case has valid ones; answer the headers that authenticate it.

        A valid job id becomes a fresh job's, and a valid page cursor one the service
        makes (any other string is 422, as documented); invalid ones are left alone, and
        so is an Authorization header schemathesis left out or spoiled on purpose.
        """
        if "cursor" in (case.query or {}) and not _negative(case, ParameterLocation.QUERY):
            position = SimpleNamespace(created_at=datetime.now(UTC), id="zzzzzzzz")
            case.query = {**case.query, "cursor": pages.encode_cursor(position)}
        body = case.body
        if case.path == "/api/jobs/claim" and isinstance(body, dict) and not _negative(case, ParameterLocation.BODY):
            # A waiting job of a task it lists, so that a valid claim may get one (200), not
            # only nothing (204): the job fits any valid claim (1 core, 1 GiB).
            if len(body.get("tasks", [])) < 100:
                self.fresh_job("waiting")
                case.body = {**body, "tasks": [*body.get("tasks", []), FUZZ_TASK]}
        security = case.operation.definition.raw.get("security")
        if not security or _negated_authorization(case):
            # No credentials, or the case's own (none, or invalid): the answer must be 401.
            return {}
        requirement = security[next(self.turn) % len(security)]
        (scheme, roles), = requirement.items()
        job = None
        if "job_id" in (case.path_parameters or {}) and not _negative(case, ParameterLocation.PATH):
            job = self.fresh_job()
            case.path_parameters = {**case.path_parameters, "job_id": job[0]}
        if scheme == "jobKey":
            job_id, key = job or self.fresh_job()
            return {"Authorization": basic(job_id, key)}
        return {"Authorization": f"Bearer {self.tokens[roles[0]]}"}


@pytest.fixture(scope="module")
def credentials(app) -> Iterator[Credentials]:
    with app.app_context():
        tokens = {
            role: create_token(db.session, name=name, role=role).secret
            for name, role in zip(TOKEN_NAMES, ("operator", "runner"))
        }
        db.session.commit()
    yield Credentials(app=app, tokens=tokens)
    with app.app_context():
        db.session.execute(delete(ApiToken).where(ApiToken.name.in_(TOKEN_NAMES)))
        db.session.commit()


def _document() -> dict:
    """The document the app serves at /api/openapi.json (test_served_document_is_the_one_fuzzed).

    It is read from an app made here, at import, because schemathesis's pytest
    integration parametrizes at collection: its fixture-based loader
    (``schemathesis.pytest.from_fixture``) fails on pytest 9.2 (it sets
    ``Node._nodeid``, which pytest 9.2 no longer has).
    """
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": "sqlite://"})
    return json.loads(app.extensions[openapi.EXTENSION])


DOCUMENT = _document()
schema = schemathesis.openapi.from_dict(DOCUMENT)
schema.config.generation.update(max_examples=MAX_EXAMPLES)


def test_served_document_is_the_one_fuzzed(live_server):
    response = requests.get(live_server.url + "/api/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.json() == DOCUMENT


@schema.parametrize()
@settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_fuzz(case, credentials, live_server):
    headers = credentials.prepare(case)
    case.call_and_validate(base_url=live_server.url, headers=headers, timeout=30)
