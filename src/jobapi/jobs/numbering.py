"""Job numbers and user ids: the integers Virtool's 42.x dialect names jobs and users by.

A job's number is given when the job is made, from the ``job_number`` counter, which
only grows: a number is never given twice, even after its job is removed. A user's id
is given the first time a job names its handle, and kept.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

# The counter moves past the largest number a job holds, too, so rows written without it
# (a bulk load) never collide with the next job made. One statement: on PostgreSQL the
# counter's row stays locked until the transaction ends, so two jobs made at once are
# numbered in the order they commit.
_NEXT_NUMBER = {
    "postgresql": (
        "INSERT INTO counters (name, value) "
        "VALUES ('job_number', (SELECT COALESCE(MAX(number), 0) + 1 FROM jobs)) "
        "ON CONFLICT (name) DO UPDATE SET value = GREATEST(counters.value + 1, excluded.value) "
        "RETURNING value"
    ),
    "sqlite": (
        "INSERT INTO counters (name, value) "
        "VALUES ('job_number', (SELECT COALESCE(MAX(number), 0) + 1 FROM jobs)) "
        "ON CONFLICT (name) DO UPDATE SET value = MAX(counters.value + 1, excluded.value) "
        "RETURNING value"
    ),
}
_FIND_USER = text("SELECT id FROM users WHERE handle = :handle")
_ADD_USER = text("INSERT INTO users (handle) VALUES (:handle) ON CONFLICT (handle) DO NOTHING RETURNING id")


def next_job_number(connection: Connection) -> int:
    """The number of a job being made, in the writing transaction that makes it."""
    return connection.execute(text(_NEXT_NUMBER[connection.dialect.name])).scalar_one()


def user_id(connection: Connection, handle: str) -> int:
    """The integer id of a user handle, given now if no job has named it before."""
    found = connection.execute(_FIND_USER, {"handle": handle}).scalar_one_or_none()
    if found is not None:
        return found
    made = connection.execute(_ADD_USER, {"handle": handle}).scalar_one_or_none()
    if made is not None:
        return made
    # Another transaction gave it meanwhile (PostgreSQL waited for it to commit).
    return connection.execute(_FIND_USER, {"handle": handle}).scalar_one()
