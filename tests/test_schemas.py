"""The push's direct check (``schemas.load_push``) gives exactly what ``StatusInSchema`` gives,
and refuses exactly what it refuses, whatever the body."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from jobapi.jobs.states import STATES
from jobapi.schemas import load_push, status_in_schema

FIELDS = ("state", "stage", "progress", "error", "step_name", "step_description")

texts = st.one_of(
    st.text(max_size=8),
    st.text(alphabet="a\x00", max_size=4),
    st.just("x" * 256), st.just("x" * 257), st.just("x" * 1024), st.just("x" * 1025),
)
values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-5, max_value=105), st.just(2**40),
    st.floats(allow_nan=False, allow_infinity=False), st.just(40.0), texts,
    st.sampled_from(STATES), st.sampled_from(["40", "007", "101", "4 0"]),
    st.just({"message": "boom"}), st.just({"type": "E", "traceback": [], "details": []}),
    st.lists(st.integers(), max_size=2),
)
bodies = st.dictionaries(
    st.one_of(st.sampled_from(FIELDS), st.sampled_from(["worker", "timestamp"])), values, max_size=7
)


def schema_answer(body):
    try:
        return ("fields", status_in_schema.load(body))
    except ValidationError as error:
        return ("refused", error.messages)


def direct_answer(body):
    try:
        return ("fields", load_push(body))
    except ValidationError as error:
        return ("refused", error.messages)


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies)
def test_the_direct_check_answers_as_the_schema(body):
    assert direct_answer(body) == schema_answer(body)


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
    expected = status_in_schema.load(body)
    # Checked without the schema: loading it now would fail the test.
    monkeypatch.setattr(status_in_schema, "load", lambda raw: pytest.fail("went to the schema"))
    assert load_push(body) == expected
    assert list(load_push(body)) == list(expected)  # the same fields, in the same order
