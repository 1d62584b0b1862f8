"""Reading a request's body: its size, its media type, its JSON syntax and depth, its shape.

The body is read whole, within the size limit, before anything touches the
database (SPEC 8); what it says is checked then too, but a refusal waits in
a ``Body`` until authentication has answered, so the errors keep their order.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import current_app, g, request
from marshmallow import ValidationError
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream

from .errors import BadRequest, UnsupportedMediaType

# JSON deeper than this is refused (SPEC 8), before Python's parser could recurse on it.
MAX_DEPTH = 32
READ_CHUNK = 16 * 1024

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class TooDeep(ValueError):
    """JSON nested deeper than ``MAX_DEPTH``."""


def read_body() -> None:
    """Before every request: read the whole body into ``g.body_bytes``; over the limit is 413.

    However the body is sent (Content-Length or chunked), and whether the
    route reads it or not, nothing over ``MAX_CONTENT_LENGTH`` is taken.
    """
    incoming = request._get_current_object()  # the proxy's documented way to its object
    environ = incoming.environ
    declared = environ.get("CONTENT_LENGTH")
    chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
    if not declared and not chunked:
        g.body_bytes = b""  # most requests (GET, ping): nothing to read
        return
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    length = incoming.content_length
    if length is not None and length > limit:
        raise RequestEntityTooLarge()
    if length is not None:
        # The server's input ends where the declared length does (PEP 3333
        # allows no more); werkzeug's LimitedStream stops there for a server
        # that does not end it, and says so if the client sent less.
        stream = environ["wsgi.input"]
        if not environ.get("wsgi.input_terminated"):
            stream = LimitedStream(stream, length)
        body = stream.read(length) if length else b""
    elif environ.get("wsgi.input_terminated"):
        # Chunked: the server ends the stream; read one byte past the limit to see it.
        body = _read_until(environ["wsgi.input"], limit)
    else:
        body = b""
    g.body_bytes = body
    # The body, read, is the WSGI input from now on: werkzeug's readers
    # (get_data, get_json, form parsing) read it from there, whole.
    environ["wsgi.input"] = io.BytesIO(body)
    environ["wsgi.input_terminated"] = True


def _read_until(stream, limit: int) -> bytes:
    """All of a stream, or 413 once it passes ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = stream.read(min(READ_CHUNK, limit + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise RequestEntityTooLarge()


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON, whatever Python's parser allows.
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        # 1e400 is valid JSON syntax, but overflows to an infinity that JSON cannot write back.
        raise ValueError(f"{text} is out of range")
    return value


def nesting_depth(raw: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text, counted without recursion."""
    brackets = _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS)
    openings = brackets.count(b"[") + brackets.count(b"{")
    if openings <= MAX_DEPTH:
        return openings  # ordinary bodies stop here: depth never exceeds the openings
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def loads_strict(text: str | bytes) -> Any:
    """Parse JSON, refusing NaN, Infinity, numbers out of a float's range and lone surrogates.

    ``TooDeep`` past ``MAX_DEPTH`` levels of valid JSON; ``ValueError`` when it is not JSON.
    """
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    too_deep = nesting_depth(raw) > MAX_DEPTH
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        value = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise TooDeep(f"nested deeper than {MAX_DEPTH} levels") from None
    if too_deep:
        # Only now, so that malformed JSON is called malformed however deep it looks.
        raise TooDeep(f"nested deeper than {MAX_DEPTH} levels")
    if b"\\u" in raw:
        # An escaped lone surrogate ("\ud800") parses, but is no Unicode text: it cannot be
        # encoded, so no database could store it (UnicodeEncodeError is a ValueError).
        # Only an escape makes one: the raw bytes decoded as UTF-8.
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    return value


def depth_error() -> ValidationError:
    """The 422 of a body nested too deeply."""
    return ValidationError({"_schema": [f"Nested deeper than {MAX_DEPTH} levels."]})


def json_object() -> dict[str, Any]:
    """The request body as a JSON object: 415 if not JSON by type, 400 if malformed, 422 if too deep."""
    if not request.is_json:
        raise UnsupportedMediaType()
    raw = g.body_bytes if "body_bytes" in g else request.get_data(cache=True)
    try:
        body = loads_strict(raw)
    except TooDeep:
        raise depth_error() from None
    except ValueError:  # UnicodeDecodeError is one
        raise BadRequest("Malformed JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("Malformed JSON: expected a JSON object")
    return body


@dataclass(frozen=True)
class Body:
    """A request body, read and checked: its fields, or why it was refused.

    ``load()`` gives the fields or raises the refusal, so whoever handles the
    request decides when a bad body is answered (after authentication; for a
    push, after the job's own refusals).
    """

    fields: dict[str, Any] | None = None
    refusal: Exception | None = None
    # The parsed JSON object even when its fields were refused, when it was one.
    raw: dict[str, Any] | None = None

    def load(self) -> dict[str, Any]:
        if self.refusal is not None:
            raise self.refusal
        assert self.fields is not None
        return self.fields

    @property
    def is_object(self) -> bool:
        """Whether the body was a JSON object (its fields may still be refused)."""
        return self.raw is not None


def check_body(load: Callable[[dict[str, Any]], dict[str, Any]]) -> Body:
    """Parse the body as a JSON object and ``load`` its fields (a schema's ``load``); any
    refusal is kept, not raised."""
    try:
        raw = json_object()
    except (BadRequest, UnsupportedMediaType, ValidationError) as refusal:
        return Body(refusal=refusal)
    try:
        return Body(fields=load(raw), raw=raw)
    except ValidationError as refusal:
        return Body(refusal=refusal, raw=raw)
