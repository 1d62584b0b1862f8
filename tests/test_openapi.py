"""The OpenAPI document: it describes every route, validates as OpenAPI 3.1, is served without
credentials, and says what the marshmallow schemas accept (the fuzzer checks the rest live)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from marshmallow import ValidationError
from openapi_spec_validator import OpenAPIV31SpecValidator

from jobapi import create_app, openapi
from jobapi.extensions import db
from jobapi.jobs.schemas import claim_schema, job_create_schema, status_in_schema

IGNORED_METHODS = {"HEAD", "OPTIONS"}


@pytest.fixture(scope="module")
def document(app) -> dict[str, Any]:
    return json.loads(app.extensions[openapi.EXTENSION])


def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^<>:]+:)?([^<>]+)>", r"{\1}", rule)


def test_every_route_and_method_is_described(app, document):
    missing = []
    for rule in app.url_map.iter_rules():
        if not openapi.part_of_the_api(rule.endpoint):
            continue
        item = document["paths"].get(_openapi_path(rule.rule), {})
        for method in sorted((rule.methods or set()) - IGNORED_METHODS):
            if method.lower() not in item:
                missing.append(f"{method} {rule.rule} ({rule.endpoint})")
    assert not missing, "routes the OpenAPI document does not describe: " + ", ".join(missing)


def test_the_probes_and_metrics_are_described_when_they_exist(app, document):
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    for endpoint, path in [("probes.healthz", "/healthz"), ("probes.readyz", "/readyz"), ("metrics.metrics", "/metrics")]:
        if endpoint in endpoints:
            assert "get" in document["paths"][path]


def test_the_document_describes_no_route_that_does_not_exist(app, document):
    routes = {
        (_openapi_path(rule.rule), method.lower())
        for rule in app.url_map.iter_rules()
        for method in rule.methods or ()
    }
    described = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert described <= routes


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"] == "3.1.0"
    OpenAPIV31SpecValidator(document).validate()


def test_served_without_credentials_as_built_at_start_up(client, app, document, monkeypatch):
    # Built once, when the app was made: serving it builds nothing.
    monkeypatch.setattr(openapi, "freeze_document", lambda *args: pytest.fail("built per request"))
    monkeypatch.setattr(openapi.Api, "spec", property(lambda self: pytest.fail("built per request")), raising=False)
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == document
    assert "Job-State" not in response.headers


def _operations(document):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method != "parameters":
                yield path, method, operation


def test_security_follows_the_readme_matrix(document):
    expected = {
        ("/api/jobs/{job_id}", "get"): [{"jobKey": []}, {"bearerToken": ["operator"]}],
        ("/api/jobs/{job_id}/status", "post"): [{"jobKey": []}],
        ("/api/jobs/{job_id}/ping", "put"): [{"jobKey": []}],
        ("/api/jobs", "post"): [{"bearerToken": ["operator"]}],
        ("/api/jobs", "get"): [{"bearerToken": ["operator"]}],
        ("/api/jobs/{job_id}/cancel", "post"): [{"bearerToken": ["operator"]}],
        ("/api/jobs/{job_id}", "delete"): [{"bearerToken": ["operator"]}],
        ("/api/jobs/claim", "post"): [{"bearerToken": ["runner"]}],
        # JOB_ACQUIRE=runner, the default; "open" adds {} (anyone).
        ("/api/jobs/{job_id}", "patch"): [{"bearerToken": ["runner"]}],
    }
    schemes = document["components"]["securitySchemes"]
    assert schemes["jobKey"] == {"type": "http", "scheme": "basic", "description": schemes["jobKey"]["description"]}
    assert schemes["bearerToken"]["scheme"] == "bearer"
    for path, method, operation in _operations(document):
        assert operation.get("security") == expected.get((path, method)), (method, path)


def test_every_error_answers_the_envelope_and_401_names_its_challenge(document):
    for path, method, operation in _operations(document):
        responses = operation["responses"]
        assert "500" in responses
        for status, response in responses.items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]["$ref"]
                assert schema in ("#/components/schemas/Error", "#/components/schemas/NotReady")
        if "401" in responses:
            challenge = responses["401"]["headers"]["WWW-Authenticate"]["$ref"]
            job_route = {"jobKey": []} in operation["security"]
            assert challenge.endswith("BasicChallenge" if job_route else "BearerChallenge")
        if "503" in responses:
            assert "Retry-After" in responses["503"]["headers"]
    created = document["paths"]["/api/jobs"]["post"]["responses"]
    assert set(created) == {"201", "400", "401", "403", "413", "415", "422", "500", "503"}
    claim = document["paths"]["/api/jobs/claim"]["post"]["responses"]
    assert {"200", "204"} <= set(claim)
    assert "204" in document["paths"]["/api/jobs/{job_id}"]["delete"]["responses"]
    push = document["paths"]["/api/jobs/{job_id}/status"]["post"]["responses"]
    assert {"200", "400", "401", "403", "404", "409", "413", "415", "422", "500", "503"} == set(push)
    assert "Job-State" in push["409"]["headers"]


def test_list_query_parameters(document):
    parameters = {p["name"]: p for p in document["paths"]["/api/jobs"]["get"]["parameters"]}
    assert set(parameters) == {"state", "task", "user", "limit", "cursor"}
    assert parameters["limit"]["schema"]["minimum"] == 1
    assert parameters["limit"]["schema"]["maximum"] == 100
    force = document["paths"]["/api/jobs/{job_id}"]["delete"]["parameters"][0]
    assert force["name"] == "force" and {"true", "false"} <= set(force["schema"]["enum"])


# The document's schemas accept what the marshmallow schemas accept, and refuse what they refuse.


def _validator(document, name: str):
    # The validator schemathesis judges with: ECMA-262 patterns, where `$` is the very end.
    return jsonschema_rs.Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    )


def _loads(schema, value) -> bool:
    try:
        schema.load(value)
    except ValidationError:
        return False
    return True


STATUS_BODIES = [
    {"state": "running", "stage": "build", "progress": 40},
    {"state": "running", "stage": "build", "progress": "40"},
    {"state": "running", "stage": "build", "progress": "0000000100"},
    {"state": "running", "stage": "", "progress": 0, "error": None},
    {"state": "error", "stage": "x", "progress": 5, "error": "boom"},
    {"state": "running", "stage": "build", "progress": "101"},
    {"state": "running", "stage": "build", "progress": "00000000100"},
    {"state": "running", "stage": "build", "progress": 101},
    {"state": "running", "stage": "build", "progress": True},
    {"state": "running", "stage": "build", "progress": " 4"},
    {"state": "running", "stage": "build", "progress": "4\n"},
    {"state": "running", "stage": "build", "progress": None},
    {"state": "error", "stage": "x", "progress": 5},
    {"state": "error", "stage": "x", "progress": 5, "error": None},
    {"state": "error", "stage": "x", "progress": 5, "error": ""},
    {"state": "running", "stage": "x", "progress": 5, "error": "boom"},
    {"state": "running", "stage": "a\x00b", "progress": 5},
    {"state": "error", "stage": "x", "progress": 5, "error": "a\x00b"},
    {"state": "running", "stage": "x" * 257, "progress": 5},
    {"state": "running", "stage": "x", "progress": 5, "extra": 1},
    {"state": "paused", "stage": "x", "progress": 5},
    {"stage": "x", "progress": 5},
]

CREATE_BODIES = [
    {"task": "bowtie_build", "user": "igboyes"},
    {"task": "bowtie_build", "user": {"id": "igboyes"}, "args": {"a": [1, None, {"b": "c"}]}, "proc": 4, "mem": 16},
    {"task": "Bowtie", "user": "igboyes"},
    {"task": "bowtie\n", "user": "igboyes"},
    {"task": "x" * 65, "user": "igboyes"},
    {"task": "t", "user": ""},
    {"task": "t", "user": {"id": ""}},
    {"task": "t", "user": {"id": "a", "name": "b"}},
    {"task": "t", "user": "u" * 65},
    {"task": "t", "user": "a\x00"},
    {"task": "t", "user": "u", "args": {"k": ["a\x00"]}},
    {"task": "t", "user": "u", "args": {"k\x00": 1}},
    {"task": "t", "user": "u", "args": []},
    {"task": "t", "user": "u", "proc": 0},
    {"task": "t", "user": "u", "proc": 2**31},
    {"task": "t", "user": "u", "mem": True},
    {"task": "t", "user": "u", "mem": "4"},
]

CLAIM_BODIES = [
    {"tasks": ["a"], "proc": 1, "mem": 1},
    {"tasks": [], "proc": 1, "mem": 1},
    {"tasks": ["A"], "proc": 1, "mem": 1},
    {"tasks": ["a"] * 101, "proc": 1, "mem": 1},
    {"tasks": ["a"], "proc": 0, "mem": 1},
    {"tasks": ["a"], "proc": 1},
]


@pytest.mark.parametrize(
    ("component", "schema", "body"),
    [("StatusIn", status_in_schema, body) for body in STATUS_BODIES]
    + [("JobCreate", job_create_schema, body) for body in CREATE_BODIES]
    + [("Claim", claim_schema, body) for body in CLAIM_BODIES],
)
def test_document_and_marshmallow_agree_on_bodies(document, component, schema, body):
    assert _validator(document, component).is_valid(body) == _loads(schema, body)


def test_open_acquire_is_documented_as_open(database_url):
    opened = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "JOB_ACQUIRE": "open"})
    document = json.loads(opened.extensions[openapi.EXTENSION])
    assert document["paths"]["/api/jobs/{job_id}"]["patch"]["security"] == [{"bearerToken": ["runner"]}, {}]
    with opened.app_context():
        db.engine.dispose()


def test_openapi_py_holds_no_table_of_operations():
    # Operations are described beside their views, not in a table keyed by endpoint names.
    source = Path(openapi.__file__).read_text()
    assert "OPERATIONS" not in source and "jobs.push_status" not in source
