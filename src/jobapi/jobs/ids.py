"""A job's id: its shape, a new one, and the converter that reads one from a path."""

from __future__ import annotations

import re
import secrets
import string

from werkzeug.routing import BaseConverter

from ..models import JOB_ID_PATTERN

ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 8
_JOB_ID = re.compile(JOB_ID_PATTERN)


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the shape of a job id (anything else names no job)."""
    return _JOB_ID.fullmatch(value) is not None


def new_job_id() -> str:
    """A random job id: 8 characters of a-z and 0-9."""
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(ID_LENGTH))


class JobIdConverter(BaseConverter):
    """A job id in a path: any segment but the fixed routes beside it (``/api/jobs/claim``),
    so that ``GET /api/jobs/claim`` is 405, not a read of a job named "claim".

    Any other segment matches, so that a malformed id is 404 after the
    credentials are checked (SPEC 2), not a routing 404 before them.
    """

    # Excluded in the pattern itself, so that every use of the URL map agrees
    # (matching, and the Allow header it computes for OPTIONS and 405).
    regex = r"(?!claim(?:/|$))[^/]+"
    # What a well-formed id looks like, for the OpenAPI document.
    shape = JOB_ID_PATTERN
