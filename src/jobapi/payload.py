"""Reading a request's JSON body: its media type, its syntax, its shape."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from .errors import BadRequest, UnsupportedMediaType


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, whatever Python's parser allows.
    raise ValueError(f"{name} is not valid JSON")


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON, refusing NaN and Infinity; ``ValueError`` when it is not JSON."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


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
