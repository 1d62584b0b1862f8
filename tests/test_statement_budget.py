"""The SQL each worker request costs, counted with SQLAlchemy events: GET at most 2 statements,
an acquire 3,
and a push at most 3, authentication and the row lock included, however long the history."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
from conftest import push
from sqlalchemy import event

from jobapi.extensions import db

# Transaction control is not a statement of the request's own.
CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE", "PRAGMA")


@pytest.fixture
def count_statements(app):
    @contextmanager
    def counting():
        statements: list[str] = []

        def record(conn, cursor, statement, parameters, context, executemany):
            if not statement.lstrip().upper().startswith(CONTROL):
                statements.append(statement)

        with app.app_context():
            engine = db.engine
        event.listen(engine, "before_cursor_execute", record)
        try:
            yield statements
        finally:
            event.remove(engine, "before_cursor_execute", record)

    return counting


@pytest.mark.parametrize("records", [1, 5, 60])
def test_get_costs_two_statements_whatever_the_history(client, job, count_statements, records):
    for i in range(records - 1):
        assert push(client, job, "running", "work", i).status_code == 200
    with count_statements() as statements:
        response = client.get(f"/api/jobs/{job.id}", headers=job.auth)
    assert response.status_code == 200
    assert len(response.json["status"]) == records
    assert len(statements) <= 2, statements


@pytest.mark.parametrize("history", [0, 60])
def test_push_costs_three_statements_with_the_lock(client, job, count_statements, is_postgresql, history):
    for i in range(history):
        push(client, job, "running", "work", i)
    with count_statements() as statements:
        response = push(client, job, "running", "work", 50)
    assert response.status_code == 200
    assert len(statements) <= 3, statements
    if is_postgresql:  # on SQLite the write transaction (BEGIN IMMEDIATE) is the lock
        assert "FOR UPDATE" in statements[0].upper()


def test_push_with_idempotency_key_costs_three_and_replay_one(client, job, count_statements):
    with count_statements() as first:
        assert push(client, job, "running", "work", 10, headers={"Idempotency-Key": "k"}).status_code == 200
    with count_statements() as replay:
        assert push(client, job, "running", "work", 10, headers={"Idempotency-Key": "k"}).status_code == 200
    assert len(first) <= 3, first
    assert len(replay) <= 1, replay


def test_ping_costs_two(client, job, count_statements):
    with count_statements() as statements:
        assert client.put(f"/api/jobs/{job.id}/ping", headers=job.auth).status_code == 200
    assert len(statements) <= 2, statements


def test_acquire_costs_three(app, client, job, count_statements, monkeypatch):
    # The hook locks the job, the service writes the new key, the answer reads the history.
    monkeypatch.setitem(app.config, "JOB_ACQUIRE", "open")
    with count_statements() as statements:
        response = client.patch(f"/api/jobs/{job.id}", json={"acquired": True})
    assert response.status_code == 200
    assert len(statements) <= 3, statements
