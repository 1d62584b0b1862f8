"""The SQL each worker request costs, counted as the database driver sends it: a GET costs at
most 2 statements (1 on PostgreSQL), a push at most 3 (2 on PostgreSQL), the row lock and
authentication included, however long the history; an acquire 3.

The hot paths run their statements on the driver directly (jobapi.jobs.statements), so
they are counted there: psycopg's cursor (which SQLAlchemy uses too) on PostgreSQL, and
SQLite's trace callback, which sees every statement its connection runs (the connection
the thread keeps for a job's requests, and the pool's).
"""

from __future__ import annotations

from contextlib import contextmanager

import psycopg
import pytest
from conftest import basic_auth, push
from sqlalchemy import event

from jobapi.extensions import db
from jobapi.storage.connections import held_connection

# Transaction control is not a statement of the request's own.
CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA")


@pytest.fixture
def count_statements(app, monkeypatch, is_postgresql):
    with app.app_context():
        engine = db.engine

    @contextmanager
    def counting():
        statements: list[str] = []

        def record(statement) -> None:
            text = statement.decode() if isinstance(statement, bytes) else str(statement)
            if not text.lstrip().upper().startswith(CONTROL):
                statements.append(text)

        if is_postgresql:
            execute = psycopg.Cursor.execute

            def counted(self, query, *args, **kwargs):
                record(query if isinstance(query, (str, bytes)) else query.as_string(self))
                return execute(self, query, *args, **kwargs)

            monkeypatch.setattr(psycopg.Cursor, "execute", counted)
            try:
                yield statements
            finally:
                monkeypatch.setattr(psycopg.Cursor, "execute", execute)
            return

        # SQLite: trace the connection this thread keeps for a job's requests, and
        # every connection the pool hands out from now on (the session's).
        def trace(dbapi_connection, _record):
            dbapi_connection.set_trace_callback(record)

        engine.pool.dispose()
        event.listen(engine, "connect", trace)
        with app.app_context():
            held = held_connection(engine)
        held.driver.set_trace_callback(record)
        try:
            yield statements
        finally:
            held.driver.set_trace_callback(None)
            event.remove(engine, "connect", trace)
            engine.pool.dispose()

    return counting


@pytest.mark.parametrize("records", [1, 5, 60])
def test_get_costs_one_statement_on_postgresql_whatever_the_history(client, job, count_statements, records, is_postgresql):
    for i in range(records - 1):
        assert push(client, job, "running", "work", i).status_code == 200
    with count_statements() as statements:
        response = client.get(f"/api/jobs/{job.id}", headers=job.auth)
    assert response.status_code == 200
    assert len(response.json["status"]) == records
    assert len(statements) == (1 if is_postgresql else 2), statements


@pytest.mark.parametrize("history", [0, 60])
def test_push_costs_two_statements_with_the_lock(client, job, count_statements, is_postgresql, history):
    for i in range(history):
        push(client, job, "running", "work", i)
    with count_statements() as statements:
        response = push(client, job, "running", "work", 50)
    assert response.status_code == 200
    if is_postgresql:
        # The row lock, then the record and the job's current state in one statement.
        assert len(statements) == 2, statements
        assert "FOR UPDATE" in statements[0].upper()
    else:
        # The write transaction (BEGIN IMMEDIATE) is the lock: read, insert, update.
        assert len(statements) == 3, statements


def test_push_with_idempotency_key_costs_the_same_and_replay_one(client, job, count_statements, is_postgresql):
    with count_statements() as first:
        assert push(client, job, "running", "work", 10, headers={"Idempotency-Key": "k"}).status_code == 200
    with count_statements() as replay:
        assert push(client, job, "running", "work", 10, headers={"Idempotency-Key": "k"}).status_code == 200
    # On SQLite the replay is looked up by a statement of its own.
    assert len(first) == (2 if is_postgresql else 4), first
    assert len(replay) == (1 if is_postgresql else 2), replay


def test_ping_costs_two(client, job, count_statements):
    with count_statements() as statements:
        assert client.put(f"/api/jobs/{job.id}/ping", headers=job.auth).status_code == 200
    assert len(statements) == 2, statements


def test_acquire_costs_three(app, client, job, count_statements, monkeypatch):
    # The hook locks the job, the service writes the new key, the answer reads the history.
    monkeypatch.setitem(app.config, "JOB_ACQUIRE", "open")
    with count_statements() as statements:
        response = client.patch(f"/api/jobs/{job.id}", json={"acquired": True})
    assert response.status_code == 200
    assert len(statements) <= 3, statements


# Virtool's 42.x dialect: an idle fleet polls the claim every 2 s, and a worker pings every 5 s.

V42_CLAIM = {
    "runnerId": "pod-1", "mem": 4, "cpu": 2, "image": "img", "runtimeVersion": "42.12.0", "workflowVersion": "1",
    "steps": [{"id": "work", "name": "Work", "description": "Do the work."}],
}


def test_an_empty_42x_claim_costs_one_read_and_begins_no_write(app, client, count_statements, monkeypatch, make_job):
    from jobapi.virtool42 import views

    monkeypatch.setitem(app.config, "JOB_ACQUIRE", "open")
    make_job(task="nuvs")

    def no_write(*_args, **_kwargs):
        raise AssertionError("an empty claim began a writing transaction")

    monkeypatch.setattr(views, "write_connection", no_write)
    with count_statements() as statements:
        response = client.post("/virtool42/jobs/claim?workflow=create_sample", json=V42_CLAIM)
    assert response.status_code == 404
    assert len(statements) == 1 and statements[0].lstrip().upper().startswith("SELECT"), statements


def test_a_42x_get_costs_one_statement_and_a_ping_two(app, client, count_statements, monkeypatch, make_job):
    monkeypatch.setitem(app.config, "JOB_ACQUIRE", "open")
    make_job()
    claimed = client.post("/virtool42/jobs/claim?workflow=create_subtraction", json=V42_CLAIM).get_json()
    auth = basic_auth(f"job-{claimed['id']}", claimed["key"])
    with count_statements() as read:
        assert client.get(f"/virtool42/jobs/{claimed['id']}", headers=auth).status_code == 200
    with count_statements() as ping:
        assert client.put(f"/virtool42/jobs/{claimed['id']}/ping", headers=auth).status_code == 200
    assert len(read) == 1, read
    assert len(ping) == 2, ping
