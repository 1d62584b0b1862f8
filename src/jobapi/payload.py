"""Reading a request's JSON body: its media type, its syntax, its shape."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from .errors import BadRequest, UnsupportedMediaType


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, whatever Python's parser allows.
    raise ValueError(f"{name} is not valid JSON")


def json_object() -> dict[str, Any]:
    """The request body as a JSON object: 415 if not JSON by type, 400 if malformed."""
    if not request.is_json:
        raise UnsupportedMediaType()
    # Reading the body enforces MAX_CONTENT_LENGTH (413).
    raw = request.get_data(cache=True)
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("Malformed JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("Malformed JSON: expected a JSON object")
    return body
