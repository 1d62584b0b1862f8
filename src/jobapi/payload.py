"""Reading a request's JSON body: its media type, its syntax, its shape."""

from __future__ import annotations

import json
import math
from typing import Any

from flask import request

from .errors import BadRequest, UnsupportedMediaType


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, whatever Python's parser allows.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # 1e400 is valid JSON syntax, but overflows to an infinity that JSON cannot write back.
        raise ValueError(f"{text} is out of range")
    return value


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON, refusing NaN, Infinity, numbers out of a float's range and lone surrogates;
    ``ValueError`` when it is not JSON."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
        # An escaped lone surrogate ("\ud800") parses, but is no Unicode text: it cannot be
        # encoded, so no database could store it (UnicodeEncodeError is a ValueError).
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return value


def json_object() -> dict[str, Any]:
    """The request body as a JSON object: 415 if not JSON by type, 400 if malformed."""
    if not request.is_json:
        raise UnsupportedMediaType()
    # Reading the body enforces MAX_CONTENT_LENGTH (413).
    raw = request.get_data(cache=True)
    try:
        body = loads_strict(raw)
    except ValueError:  # UnicodeDecodeError is one
        raise BadRequest("Malformed JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("Malformed JSON: expected a JSON object")
    return body
