"""Logs: one line per request (method, route, status, duration, job id, request id), text or JSON,
with gunicorn's own lines in the same format."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterator

import pytest
import requests
from conftest import ROOT, LiveServer, start_gunicorn, stop_gunicorn
from flask import g
from sqlalchemy import event

from jobapi import observability
from jobapi.config import from_environment
from jobapi.extensions import db
from jobapi.jobs import service
from jobapi.storage.engines import write_connection
from jobapi.logs import FIELDS_ATTRIBUTE, JSONFormatter, TextFormatter, logging_config

REQUEST_LOGGER = "jobapi.request"
README = ROOT / "README.rst"
TEXT_PREFIX = r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4}\] \[\d+\] \[(?:INFO|WARNING|ERROR|CRITICAL|DEBUG)\] "


def request_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == REQUEST_LOGGER]


def fields(record: logging.LogRecord) -> dict:
    return getattr(record, FIELDS_ATTRIBUTE)


# The request line, through the test client


def test_one_line_per_request_with_its_facts(client, job, caplog):
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)

    response = client.get(f"/api/jobs/{job.id}", headers={**job.auth, "X-Request-ID": "req-123"})

    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "req-123"
    [record] = request_records(caplog)
    assert record.levelname == "INFO"
    logged = fields(record)
    assert {k: logged[k] for k in ("method", "route", "status", "job_id", "request_id")} == {
        "method": "GET",
        "route": "/api/jobs/<job_id>",
        "status": 200,
        "job_id": job.id,
        "request_id": "req-123",
    }
    assert isinstance(logged["duration_ms"], float) and logged["duration_ms"] >= 0
    assert record.getMessage().startswith("GET /api/jobs/<job_id> 200 ")


def test_a_refused_push_is_logged_with_its_status(client, job, caplog):
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)

    response = client.post(
        f"/api/jobs/{job.id}/status", json={"state": "running", "stage": "x", "progress": 101},
        headers=job.auth,
    )

    assert response.status_code == 422
    [record] = request_records(caplog)
    assert fields(record)["route"] == "/api/jobs/<job_id>/status"
    assert fields(record)["method"] == "POST"
    assert fields(record)["status"] == 422
    assert fields(record)["job_id"] == job.id


def test_made_request_id_is_logged_and_echoed(client, caplog):
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)

    response = client.get("/nowhere")

    assert response.status_code == 404
    [record] = request_records(caplog)
    assert fields(record)["route"] is None
    assert fields(record)["job_id"] is None
    assert fields(record)["request_id"] == response.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", fields(record)["request_id"])


def test_job_id_of_an_unauthenticated_request_comes_from_the_path(client, job, caplog):
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)

    assert client.get(f"/api/jobs/{job.id}").status_code == 401
    assert client.get("/api/jobs/not%0Aan-id", headers=job.auth).status_code == 403

    first, second = request_records(caplog)
    assert fields(first)["job_id"] == job.id
    # A path segment that is no job id stays out of the logs.
    assert fields(second)["job_id"] is None


# The two formats


def formatted_line(client, job, caplog, formatter: logging.Formatter) -> str:
    caplog.set_level(logging.INFO, logger=REQUEST_LOGGER)
    client.get(f"/api/jobs/{job.id}", headers={**job.auth, "X-Request-ID": "req-fmt"})
    [record] = request_records(caplog)
    return formatter.format(record)


def test_text_line(client, job, caplog):
    line = formatted_line(client, job, caplog, TextFormatter())
    assert re.fullmatch(
        TEXT_PREFIX + rf"GET /api/jobs/<job_id> 200 \d+\.\dms job_id={job.id} request_id=req-fmt client=127\.0\.0\.1", line
    ), line


def test_json_line(client, job, caplog):
    line = formatted_line(client, job, caplog, JSONFormatter())
    assert "\n" not in line
    document = json.loads(line)
    assert document["level"] == "INFO"
    assert document["logger"] == REQUEST_LOGGER
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", document["time"])
    assert isinstance(document["pid"], int)
    assert {k: document[k] for k in ("method", "route", "status", "job_id", "request_id", "client")} == {
        "method": "GET", "route": "/api/jobs/<job_id>", "status": 200, "job_id": job.id,
        "request_id": "req-fmt", "client": "127.0.0.1",
    }
    assert isinstance(document["duration_ms"], float)


def test_exceptions_stay_on_one_json_line():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("jobapi.test").makeRecord(
            "jobapi.test", logging.ERROR, __file__, 1, "failed", (), exc_info=sys.exc_info()
        )
    line = JSONFormatter().format(record)
    assert "\n" not in line
    assert "ValueError: boom" in json.loads(line)["exception"]


def test_log_format_comes_from_the_environment():
    assert from_environment({"LOG_FORMAT": "JSON"})["LOG_FORMAT"] == "json"
    assert from_environment({"LOG_FORMAT": "text"})["LOG_FORMAT"] == "text"
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        from_environment({"LOG_FORMAT": "xml"})


def test_gunicorn_access_log_only_when_asked_for():
    off = logging_config("text")
    assert off["loggers"]["gunicorn.access"]["level"] == "CRITICAL"
    on = logging_config("json", "info", "/var/log/access.log")
    assert on["loggers"]["gunicorn.access"] == {"level": "INFO", "handlers": ["access"], "propagate": False}
    assert on["handlers"]["access"]["filename"] == "/var/log/access.log"
    assert on["formatters"]["jobapi"]["()"].endswith("JSONFormatter")


# A real gunicorn: every line it writes, its own included


def lines_naming(server: LiveServer, request_id: str) -> list[str]:
    return [line for line in server.log().splitlines() if request_id in line]


def wait_for_line(server: LiveServer, request_id: str) -> list[str]:
    # The line is written before the answer is sent, but give the file a moment.
    for _ in range(50):
        found = lines_naming(server, request_id)
        if found:
            return found
        time.sleep(0.05)
    return []


def test_gunicorn_text_log(live_server, job):
    response = requests.get(
        f"{live_server.url}/api/jobs/{job.id}", auth=job.requests_auth,
        headers={"X-Request-ID": "text-log-1"}, timeout=10,
    )
    assert response.headers["X-Request-ID"] == "text-log-1"

    [line] = wait_for_line(live_server, "text-log-1")
    assert re.fullmatch(
        TEXT_PREFIX + rf"GET /api/jobs/<job_id> 200 \d+\.\dms job_id={job.id} request_id=text-log-1 client=127\.0\.0\.1",
        line,
    ), line
    log = live_server.log().splitlines()
    # gunicorn's own lines share the format...
    booting = [line for line in log if "Booting worker with pid" in line]
    assert booting and all(re.match(TEXT_PREFIX, line) for line in booting)
    # ...and its access log, which would repeat each request, is off.
    assert not [line for line in log if '"GET /api/jobs/' in line]


@pytest.fixture(scope="module")
def json_server(app, database_url, tmp_path_factory) -> Iterator[LiveServer]:
    """A gunicorn of its own, logging JSON."""
    server = start_gunicorn(
        database_url, tmp_path_factory.mktemp("json-log") / "gunicorn.log",
        workers=1, threads=2, extra_env={"LOG_FORMAT": "json"},
    )
    yield server
    stop_gunicorn(server.process)


def test_gunicorn_json_log(json_server, job):
    requests.get(
        f"{json_server.url}/api/jobs/{job.id}", auth=job.requests_auth,
        headers={"X-Request-ID": "json-log-1"}, timeout=10,
    )
    requests.get(f"{json_server.url}/nowhere", headers={"X-Request-ID": "json-log-2"}, timeout=10)
    assert wait_for_line(json_server, "json-log-2")

    lines = [line for line in json_server.log().splitlines() if line.strip()]
    documents = [json.loads(line) for line in lines]  # every line, gunicorn's too, is JSON
    assert any(
        d["logger"] == "gunicorn.error" and d["message"].startswith("Booting worker") for d in documents
    )
    [read] = [d for d in documents if d.get("request_id") == "json-log-1"]
    assert {k: read[k] for k in ("logger", "method", "route", "status", "job_id", "client")} == {
        "logger": REQUEST_LOGGER, "method": "GET", "route": "/api/jobs/<job_id>", "status": 200,
        "job_id": job.id, "client": "127.0.0.1",
    }
    [missing] = [d for d in documents if d.get("request_id") == "json-log-2"]
    assert (missing["route"], missing["status"], missing["job_id"]) == (None, 404, None)
    assert not [d for d in documents if d["logger"] == "gunicorn.access"]
    # The README's example line has every key of a real one, in its order ("path" null
    # when a route matched).
    example = json.loads(re.search(r'^    (\{"time": .*"logger": "jobapi.request".*\})$', README.read_text(), re.MULTILINE).group(1))
    assert list(example) == list(read) and read["path"] is None and example["path"] is None
    assert missing["path"] == "/nowhere"



def test_job_id_is_read_without_a_query_after_a_rollback(app, job):
    # A request whose database failed is rolled back (503); its log line must
    # not go back to the database for the job's id.
    statements: list[str] = []

    def record(connection, cursor, statement, *args) -> None:
        statements.append(statement)

    with app.test_request_context(f"/api/jobs/{job.id}"):
        g.job = service.lock_job(write_connection(db.session), job.id).job
        db.session.rollback()
        event.listen(db.engine, "before_cursor_execute", record)
        try:
            assert observability._job_id(g) == job.id
        finally:
            event.remove(db.engine, "before_cursor_execute", record)
    assert statements == []


def test_a_404_line_names_the_path_percent_encoded(client, caplog):
    client.get("/api/no where job_id=zzzzzzzz")
    [line] = [r for r in caplog.records if r.name == "jobapi.request"]
    assert line.getMessage().startswith("GET /api/no%20where%20job_id%3Dzzzzzzzz 404 ")
    assert line.fields["route"] is None and line.fields["path"] == "/api/no%20where%20job_id%3Dzzzzzzzz"


def test_a_405_is_counted_and_logged_under_its_route(client, caplog):
    response = client.put("/api/jobs/abcdefgh/status")
    assert response.status_code == 405
    [line] = [r for r in caplog.records if r.name == "jobapi.request"]
    assert line.fields["route"] == "/api/jobs/<job_id>/status"
    scraped = client.get("/metrics").get_data(as_text=True)
    assert 'jobapi_http_requests_total{method="PUT",route="/api/jobs/<job_id>/status",status="405"}' in scraped
