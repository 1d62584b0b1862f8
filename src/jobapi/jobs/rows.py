"""One typed row per table for the SQL of jobs: ``JobRow`` (``jobs``) and ``StatusRow`` (``job_status``).

Each is a named tuple whose fields are its table's columns, in the table's
order, taken from the models' SQLAlchemy tables: a column added to a model is
a field of its row, selected, inserted and read by name, with nothing else to
edit. The statements (``jobs.statements``) select these fields by name and
``row_maker`` reads each value by its column's name; writes pass the rows'
fields as named parameters. Rows are values: a change is a new row
(``row._replace(state=...)``).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Table

from ..models import Job, JobFacts, JobStatus


def _columns_of(table: Table) -> tuple[str, ...]:
    return tuple(column.key for column in table.columns)


def _row_type(name: str, table: Table) -> type:
    # Every field defaults to None: a nullable column added later needs no change where rows are made.
    columns = _columns_of(table)
    return namedtuple(name, columns, defaults=(None,) * len(columns))


class JobRow(_row_type("JobRow", Job.__table__), JobFacts):
    """A job as its requests read it: every column of ``jobs`` by name (see ``models.Job``),
    and what follows from them (``finished``, ``acquired``, ``last_heartbeat``)."""

    __slots__ = ()


class StatusRow(_row_type("StatusRow", JobStatus.__table__)):
    """A status record as its requests read and write it: every column of ``job_status`` by name
    (see ``models.JobStatus``)."""

    __slots__ = ()


def new_record(job_id: str, seq: int, timestamp: Any, fields: dict[str, Any], **columns: Any) -> StatusRow:
    """A record of a job: its place and time, the pushed ``fields`` by name, any other columns."""
    return StatusRow(job_id=job_id, seq=seq, timestamp=timestamp, **fields, **columns)


def row_maker(
    row_type: type, names: tuple[str, ...], prefix: str = "",
    decoders: tuple[tuple[str, Callable[[Any], Any]], ...] = (),
) -> Callable[[Sequence[Any]], Any]:
    """A function making a ``row_type`` from the values of a result whose columns are ``names``:
    each field read from the column of its name (with ``prefix``, for a join's second table), the
    columns ``decoders`` names decoded first (text from SQLite). Made once per statement, as it
    checks the names."""
    try:
        positions = tuple(names.index(prefix + field) for field in row_type._fields)
    except ValueError:
        missing = [field for field in row_type._fields if prefix + field not in names]
        raise LookupError(f"{row_type.__name__}: the statement selects no {', '.join(missing)}") from None
    decoding = dict(decoders)
    steps = tuple((position, decoding.get(field)) for position, field in zip(positions, row_type._fields))
    make = row_type._make
    if not decoding:
        return lambda values: make([values[position] for position in positions])

    def made(values: Sequence[Any]) -> Any:
        return make([
            value if decode is None or value is None else decode(value)
            for value, decode in ((values[position], decode) for position, decode in steps)
        ])

    return made


def column_list(row_type: type, table: str = "", prefix: str = "") -> str:
    """The row's columns for a SELECT, by name: ``j.id, j.task, ...`` (``AS <prefix>id`` with a prefix)."""
    qualified = f"{table}." if table else ""
    if prefix:
        return ", ".join(f'{qualified}{name} AS "{prefix}{name}"' for name in row_type._fields)
    return ", ".join(f"{qualified}{name}" for name in row_type._fields)


def names_of(description: Iterable[Any]) -> tuple[str, ...]:
    """The column names of a DB-API cursor's ``description``."""
    return tuple(column[0] for column in description)
