"""The push's rules: one table (``jobapi.jobs.rules``), checked four ways that must agree.

- The direct check (``direct_check``, which ``StatusInSchema.load`` tries first) answers as
  the schema does, field for field and message for message, for pushes generated around
  every bound of the table (hypothesis, with an ``@example`` at each bound).
- Both answer as the contract says (SPEC 1.2, 7.3), written here with its own numbers.
- The migrated database's CHECKs and column lengths are the table's.
- Over HTTP, on SQLite and PostgreSQL, no push reaches the database's CHECKs: every
  generated push is stored (200), refused (422) or refused by the job's state (409), never 500.
"""

from __future__ import annotations

import re

import pytest
from conftest import basic_auth
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError
from sqlalchemy import inspect, text

from jobapi.extensions import db
from jobapi.jobs import service
from jobapi.jobs.rules import CHOICE, ERROR, PERCENT, PUSH_RULES, TEXT
from jobapi.jobs.schemas import direct_check, status_in_schema
from jobapi.jobs.states import STATES
from jobapi.storage.engines import write_connection

EXTRA_KEYS = ("worker", "timestamp", "")
VIRTOOL_ERROR = {"type": "E", "traceback": ["t"], "details": []}


def _text_of(length: int) -> str:
    return "x" * max(length, 0)


def _error_object_of(size: int) -> dict:
    """A message error object of exactly ``size`` bytes as compact JSON."""
    return {"message": "m" * (size - len('{"message":""}'))}


def boundary_values(rule) -> list:
    """Each bound of a rule, one below it and one above it, and the wrong types."""
    if rule.kind == TEXT:
        lengths = {rule.min_length - 1, rule.min_length, rule.min_length + 1,
                   rule.max_length - 1, rule.max_length, rule.max_length + 1}
        return [_text_of(n) for n in sorted(lengths) if n >= 0] + ["a\x00", None, 5, True, ["x"], {"x": 1}]
    if rule.kind == PERCENT:
        numbers = [rule.minimum - 1, rule.minimum, rule.minimum + 1, rule.maximum - 1, rule.maximum, rule.maximum + 1]
        return (numbers + [float(n) for n in numbers] + [str(n) for n in numbers]
                + ["0" * 10 + "1", "0" * 9 + "1", "4 0", "", 4.5, True, None, [40], 2**40])
    if rule.kind == ERROR:
        return [_text_of(rule.min_length - 1), _text_of(rule.min_length), _text_of(rule.max_length),
                _text_of(rule.max_length + 1), _error_object_of(rule.max_bytes), _error_object_of(rule.max_bytes + 1),
                VIRTOOL_ERROR, {**VIRTOOL_ERROR, "x": 1}, {"message": 1}, {"message": "a\x00"}, "a\x00",
                None, 5, [], {}]
    if rule.kind == CHOICE:
        return [*STATES, "bogus", "", None, 1, ["running"]]
    raise AssertionError(f"no boundaries for {rule.kind}")


def valid_value(rule, state: str):
    """A value the rule takes for a push of ``state``."""
    if rule.kind == TEXT:
        return "bowtie_build"
    if rule.kind == PERCENT:
        return 40
    if rule.kind == ERROR:
        return "Exited with status 1" if rule.required_in and state in rule.required_in else None
    raise AssertionError(rule.kind)


BASE = {"state": "running", "stage": "bowtie_build", "progress": 40}
# A push at each bound of each field (and the wrong types), in each state that matters.
BOUNDARY_BODIES = [
    {**BASE, "state": state, "error": "boom" if state == "error" else None, rule.name: value}
    for rule in PUSH_RULES
    for value in boundary_values(rule)
    for state in (("running", "error", "terminated") if rule.kind == ERROR else ("running",))
] + [
    {key: value for key, value in BASE.items() if key != missing} for missing in BASE
] + [{**BASE, extra: 1} for extra in EXTRA_KEYS]


@st.composite
def pushes(draw) -> dict:
    """Mostly valid pushes: a valid one for a state, then a few fields moved to a bound or
    beyond it, dropped, or joined by a field that does not exist."""
    state = draw(st.sampled_from(STATES))
    body: dict = {}
    for rule in PUSH_RULES:
        if rule.name == "state":
            body["state"] = state
        elif rule.required or draw(st.booleans()):
            body[rule.name] = valid_value(rule, state)
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        change = draw(st.sampled_from(["bound", "bound", "bound", "drop", "extra"]))
        if change == "bound":
            rule = draw(st.sampled_from(PUSH_RULES))
            body[rule.name] = draw(st.sampled_from(boundary_values(rule)))
        elif change == "drop" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        else:
            body[draw(st.sampled_from(EXTRA_KEYS))] = draw(st.sampled_from([None, 1, "x"]))
    return body


def answer(load, body):
    try:
        return ("stored", load(body))
    except ValidationError as error:
        return ("refused", error.messages)


def _with_examples(test):
    for body in BOUNDARY_BODIES:
        test = example(body)(test)
    return test


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pushes())
@_with_examples
def test_the_direct_check_answers_as_the_schema(body):
    by_schema = answer(status_in_schema.load_by_schema, body)
    assert answer(status_in_schema.load, body) == by_schema
    if by_schema[0] == "stored" and direct_check(body) is None:
        # Only pushes with an error, or a progress that is not a plain integer, are
        # left to the schema: the common push must stay on the direct path.
        fields = by_schema[1]
        assert fields["error"] is not None or type(body.get("progress")) is not int, body


@pytest.mark.parametrize(
    "body",
    [
        {"state": "running", "stage": "bowtie_build", "progress": 40},
        {"error": None, "progress": 33, "stage": "second", "state": "running", "step_description": "", "step_name": "Second"},
        {"state": "complete", "stage": "", "progress": 100, "step_name": "", "step_description": ""},
        {"state": "terminated", "stage": "s", "progress": 0, "error": None},
        {"state": "waiting", "stage": "x" * 256, "progress": 0, "step_description": "d" * 1024},
    ],
)
def test_common_pushes_are_checked_directly_and_alike(body, monkeypatch):
    expected = status_in_schema.load_by_schema(body)
    # Checked without the schema: going to it now would fail the test.
    monkeypatch.setattr(status_in_schema, "load_by_schema", lambda *a, **k: pytest.fail("went to the schema"))
    assert status_in_schema.load(body) == expected
    assert list(status_in_schema.load(body)) == list(expected)  # the same fields, in the same order


# The contract, in its own numbers (SPEC 1.2 and 7.3): whatever the table says, these hold.
OK, REFUSED = "stored", "refused"
CONTRACT = [
    ({"progress": -1}, REFUSED), ({"progress": 0}, OK), ({"progress": 100}, OK), ({"progress": 101}, REFUSED),
    ({"progress": "100"}, OK), ({"progress": "101"}, REFUSED), ({"progress": "0000000040"}, OK),
    ({"progress": "00000000040"}, REFUSED), ({"progress": 40.5}, REFUSED), ({"progress": True}, REFUSED),
    ({"progress": None}, REFUSED),
    ({"stage": ""}, OK), ({"stage": "x" * 256}, OK), ({"stage": "x" * 257}, REFUSED), ({"stage": None}, REFUSED),
    ({"stage": "a\x00"}, REFUSED),
    ({"step_name": "x" * 256}, OK), ({"step_name": "x" * 257}, REFUSED), ({"step_name": None}, OK),
    ({"step_description": "x" * 1024}, OK), ({"step_description": "x" * 1025}, REFUSED),
    ({"state": "timeout"}, REFUSED), ({"state": "bogus"}, REFUSED), ({"worker": "w1"}, REFUSED),
    ({"error": "boom"}, REFUSED),
    ({"state": "error", "error": "x" * 16384}, OK), ({"state": "error", "error": "x" * 16385}, REFUSED),
    ({"state": "error", "error": ""}, REFUSED), ({"state": "error", "error": None}, REFUSED),
    ({"state": "error", "error": _error_object_of(16 * 1024)}, OK),
    ({"state": "error", "error": _error_object_of(16 * 1024 + 1)}, REFUSED),
    ({"state": "terminated", "error": None}, OK), ({"state": "terminated", "error": VIRTOOL_ERROR}, OK),
] + [({"state": state, "stage": None}, REFUSED) for state in STATES]


@pytest.mark.parametrize(("change", "outcome"), CONTRACT, ids=[repr(change)[:60] for change, _ in CONTRACT])
def test_the_contract_holds(change, outcome):
    body = {**BASE, **change}
    assert answer(status_in_schema.load, body)[0] == outcome
    assert answer(status_in_schema.load_by_schema, body)[0] == outcome


# The database, built by the migrations, holds the table's bounds.


def _check_constraints(connection, table: str) -> dict[str, str]:
    """The CHECK constraints of a table as the database keeps them: name -> its SQL."""
    if connection.dialect.name == "postgresql":
        rows = connection.execute(text(
            "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = CAST(:table AS regclass) AND contype = 'c'"
        ), {"table": table}).all()
        return dict(rows)
    (sql,) = connection.execute(text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :table"),
                                {"table": table}).one()
    return {name: check for name, check in re.findall(r"CONSTRAINT (\w+) CHECK \((.*?)\)(?:,|\s*\))", sql)}


@pytest.mark.parametrize("table", ["jobs", "job_status"])
def test_the_databases_checks_and_lengths_are_the_tables(app, table):
    with app.app_context():
        connection = db.session.connection()
        checks = _check_constraints(connection, table)
        columns = {column["name"]: column for column in inspect(connection).get_columns(table)}
        for rule in PUSH_RULES:
            if rule.kind == PERCENT:
                bounds = re.findall(rf"{rule.name}\)? >= \(?(-?\d+)\)?.*{rule.name}\)? <= \(?(-?\d+)", checks[f"ck_{table}_{rule.name}"])
                assert bounds == [(str(rule.minimum), str(rule.maximum))], checks
            if rule.kind == TEXT and rule.name in columns:
                assert columns[rule.name]["type"].length == rule.max_length, rule.name
            if rule.kind == CHOICE:
                allowed = set(re.findall(r"'(\w+)'", checks[f"ck_{table}_{rule.name}"]))
                assert set(rule.choices) <= allowed
        if table == "job_status":
            assert {rule.name for rule in PUSH_RULES} <= set(columns)


# Over HTTP: nothing the database would refuse ever reaches it.


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=pushes())
@example(body={**BASE, "progress": 101})
@example(body={**BASE, "stage": "x" * 257})
@example(body={**BASE, "step_name": "x" * 257})
@example(body={**BASE, "step_description": "x" * 1025})
@example(body={**BASE, "progress": -1})
def test_no_push_reaches_the_databases_checks(app, client, body):
    with app.app_context():
        new = service.create_job(write_connection(db.session), task="rules", user="hypothesis")
        db.session.commit()
    response = client.post(f"/api/jobs/{new.job.id}/status", json=body, headers=basic_auth(f"job-{new.job.id}", new.key))
    expected = answer(status_in_schema.load_by_schema, body)
    if expected[0] == "refused":
        assert response.status_code == 422, (body, response.json)
        assert response.json["errors"] == expected[1]
    else:
        # A waiting job takes any pushable state but complete.
        assert response.status_code == (409 if body["state"] == "complete" else 200), (body, response.json)
