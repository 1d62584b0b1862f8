"""The deadline on PostgreSQL's answers, and the gate on connection attempts while it does not answer."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from sqlalchemy.engine import make_url

from jobapi.deadline import ConnectionGate, DeadlineConnection, NoAnswer, NotTried, without_response_deadline
from jobapi.extensions import db


@pytest.fixture
def connect(database_url):
    """Open DeadlineConnections to the test database (PostgreSQL only), closed after."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        pytest.skip("runs in the PostgreSQL half of the suite")
    opened: list[DeadlineConnection] = []

    def open_one(response_timeout: float) -> DeadlineConnection:
        connection = DeadlineConnection.connect(
            host=url.host, port=url.port or 5432, user=url.username, dbname=url.database,
            password=url.password or None, autocommit=True,
        )
        connection.response_timeout = response_timeout
        opened.append(connection)
        return connection

    yield open_one
    for connection in opened:
        connection.close()


def test_an_answer_past_the_deadline_fails_the_wait_and_breaks_the_connection(connect):
    connection = connect(0.5)
    started = time.monotonic()
    with pytest.raises(NoAnswer, match="within 0.5 s"):
        connection.execute("SELECT pg_sleep(3)")
    assert 0.5 <= time.monotonic() - started < 2
    # SQLAlchemy takes a broken connection for a lost one, and drops it.
    assert connection.broken


def test_answers_within_the_deadline_leave_the_connection_alone(connect):
    connection = connect(1.0)
    for _ in range(2):
        assert connection.execute("SELECT 1").fetchone() == (1,)
        time.sleep(1.2)  # past the deadline of the wait that ended
    assert connection.execute("SELECT 2").fetchone() == (2,)
    assert not connection.broken


def test_without_response_deadline_statements_run_as_long_as_they_need(app, is_postgresql):
    if not is_postgresql:
        pytest.skip("runs in the PostgreSQL half of the suite")
    with app.app_context(), db.engine.connect() as connection:
        raw = connection.connection.driver_connection
        raw.response_timeout = 0.3
        try:
            with without_response_deadline(connection):
                connection.exec_driver_sql("SELECT pg_sleep(0.6)")
            assert raw.response_timeout == 0.3
        finally:
            raw.response_timeout = app.config["DB_RESPONSE_TIMEOUT"]


class Attempts:
    """Connection attempts that take ``seconds`` and then time out, or succeed."""

    def __init__(self, seconds: float, succeed: bool) -> None:
        self.seconds, self.succeed = seconds, succeed
        self.made = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.made += 1
        time.sleep(self.seconds)
        if not self.succeed:
            raise psycopg.errors.ConnectionTimeout("connection timeout expired")
        return object()


def _outcomes(gate: ConnectionGate, make, count: int) -> list[str]:
    def one(_):
        try:
            gate.connect(make)
            return "connected"
        except NotTried:
            return "not tried"
        except psycopg.errors.ConnectionTimeout:
            return "timed out"

    with ThreadPoolExecutor(count) as pool:
        return sorted(pool.map(one, range(count)))


def test_while_the_server_answers_connections_are_made_side_by_side():
    gate = ConnectionGate(connect_timeout=2)
    attempts = Attempts(0.5, succeed=True)
    started = time.monotonic()
    assert _outcomes(gate, attempts, 4) == ["connected"] * 4
    assert time.monotonic() - started < 1.5  # one after another would take 2 s
    assert attempts.made == 4


def test_after_a_missed_deadline_one_attempt_is_made_and_its_failure_shared():
    gate = ConnectionGate(connect_timeout=2, quiet=1.0)
    gate.not_answering()
    time.sleep(1.0)  # the quiet second has passed: one attempt may be made
    attempts = Attempts(0.3, succeed=False)
    assert _outcomes(gate, attempts, 4) == ["not tried"] * 3 + ["timed out"]
    assert attempts.made == 1
    # For the quiet second after, nothing is tried.
    assert _outcomes(gate, attempts, 4) == ["not tried"] * 4
    assert attempts.made == 1


def test_the_first_connection_made_ends_the_gating():
    gate = ConnectionGate(connect_timeout=2, quiet=0.2)
    gate.not_answering()
    time.sleep(0.2)
    attempts = Attempts(0.3, succeed=True)
    # Those that waited on the attempt go on to connect once it succeeded.
    assert _outcomes(gate, attempts, 4) == ["connected"] * 4
    assert attempts.made == 4
