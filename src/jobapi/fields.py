"""The marshmallow fields and checks that every subject's schemas share: strict integers and
booleans, query-string integers, times written as documents show them, and no NUL."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from marshmallow import ValidationError, fields

MAX_INT32 = 2**31 - 1
NO_NUL_MESSAGE = "Must not contain NUL characters."

_QUERY_INTEGER = re.compile(r"-?[0-9]+")


def format_timestamp(value: datetime) -> str:
    """ISO 8601 in UTC with microseconds and ``Z``: ``2018-02-06T22:16:15.637000Z``."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # isoformat is several times cheaper than strftime, and a long history
    # formats one timestamp per record.
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def no_nul(value: str) -> None:
    """Validator: a string without NUL characters (PostgreSQL cannot store them)."""
    if "\x00" in value:
        raise ValidationError(NO_NUL_MESSAGE)


def contains_nul(value: Any) -> bool:
    """Whether a JSON value holds a NUL character in any string or object key."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(contains_nul(k) or contains_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(contains_nul(v) for v in value)
    return False


def json_integer(value: Any) -> int | None:
    """A JSON number that is an integer, as an int: ``40`` and ``40.0`` alike (JSON and JSON
    Schema do not tell them apart); None for a fraction, a boolean or anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


class StrictInteger(fields.Integer):
    """A JSON integer (``4`` or ``4.0``): no booleans, fractions or numeric strings."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr, data, **kwargs) -> int:
        number = json_integer(value)
        if number is None:
            raise self.make_error("invalid")
        return super()._deserialize(number, attr, data, **kwargs)


class StrictBoolean(fields.Boolean):
    """A JSON ``true`` or ``false``, nothing that merely equals one (``1``, ``"true"``)."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class QueryInteger(fields.Integer):
    """An integer in a query string: ASCII digits, maybe after a minus sign, and nothing else
    (``int()`` would also take `` 5 ``, ``1_0`` and other scripts' digits)."""

    def _deserialize(self, value: Any, attr, data, **kwargs) -> int:
        if isinstance(value, str) and not _QUERY_INTEGER.fullmatch(value):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class Timestamp(fields.Field):
    """A server-made time, written as ``2018-02-06T22:16:15.637000Z`` (SPEC 1.3)."""

    def _serialize(self, value: datetime | None, attr, obj, **kwargs) -> str | None:
        return None if value is None else format_timestamp(value)
