"""The yardstick: jobapi's two job routes written as directly as Flask and psycopg 3 allow.

``GET /api/jobs/<id>`` and ``POST /api/jobs/<id>/status`` with the service's
rules and answers (SPEC 1-4): HTTP Basic job auth in the contract's order,
the push validated field by field, the state machine checked under the
job's row lock, Idempotency-Key replays, the record appended and the job's
current state updated in one transaction, the same documents and error
envelopes. Plain Flask views and one psycopg connection per thread with
prepared statements; no ORM, no marshmallow, no request logs, no metrics.
The benchmark reports the service's figures as ratios to this one's, served
by the same gunicorn with the same gunicorn.conf.py, on the same database:

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/jobapi_bench \\
        gunicorn -c gunicorn.conf.py --pythonpath benchmarks yardstick_app:app

tests/test_yardstick.py checks that it answers as the service does.
Operators' bearer tokens are not part of it: every token is refused as unknown.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import re
import threading
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import psycopg
from flask import Flask, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

# The contract (SPEC 1.2, 4): tests/test_yardstick.py checks these against the service's.
STATES = ("waiting", "running", "complete", "cancelled", "error")
FINAL_STATES = frozenset({"complete", "cancelled", "error"})
TRANSITIONS = {
    "waiting": frozenset({"waiting", "running", "error", "cancelled"}),
    "running": frozenset({"running", "complete", "error", "cancelled"}),
}
FINISHED_MESSAGES = {
    "complete": "Job is complete",
    "cancelled": "Job is cancelled",
    "error": "Job has errored",
}
PUSH_FIELDS = frozenset({"state", "stage", "progress", "error"})
MAX_STAGE = 256
MAX_ERROR = 16384
JOB_ID = re.compile(r"[a-z0-9]{8}")
DIGITS = re.compile(r"[0-9]+")
IDEMPOTENCY_HEADER = "Idempotency-Key"
BASIC_CHALLENGE = 'Basic realm="jobs"'

# The columns this app reads and writes: the only place that names them, so
# that columns added to the tables later (nullable, or with defaults) change
# nothing here.
JOB_AUTH_COLUMNS = ("key_digest", "state", "updated_at")
JOB_DOCUMENT_COLUMNS = ("task", "args", "proc", "mem", "user_id")
RECORD_COLUMNS = ("state", "stage", "error", "progress", "timestamp")
RECORD_INSERT_COLUMNS = ("job_id", "seq", *RECORD_COLUMNS, "idempotency_key", "request_digest")
JOB_CURRENT_COLUMNS = ("state", "stage", "progress", "updated_at", "status_count")


def _list(prefix: str, columns: tuple[str, ...]) -> str:
    return ", ".join(f"{prefix}.{name}" for name in columns)


# A job's document in one statement: its records in order, the job's own
# columns on the first row only (every job's first record has seq 1), so a
# long history does not carry the arguments along on every row.
READ_JOB = (
    "SELECT "
    + ", ".join(f"CASE WHEN COALESCE(s.seq, 1) = 1 THEN j.{name} END"
                for name in JOB_AUTH_COLUMNS + JOB_DOCUMENT_COLUMNS)
    + f", {_list('s', RECORD_COLUMNS)}"
    " FROM jobs j LEFT JOIN job_status s ON s.job_id = j.id WHERE j.id = %s ORDER BY s.seq"
)
# Authentication alone, without a lock: a push refused for its body.
READ_JOB_AUTH = f"SELECT {_list('j', JOB_AUTH_COLUMNS)} FROM jobs j WHERE j.id = %s"
# The job's row locked for the push, and (with an Idempotency-Key) the record that key stored.
LOCK_JOB = f"SELECT {_list('j', JOB_AUTH_COLUMNS)}, j.status_count FROM jobs j WHERE j.id = %s FOR UPDATE"
LOCK_JOB_WITH_REPLAY = (
    f"SELECT {_list('j', JOB_AUTH_COLUMNS)}, j.status_count, {_list('s', RECORD_COLUMNS)}, s.request_digest"
    " FROM jobs j LEFT JOIN job_status s ON s.job_id = j.id AND s.idempotency_key = %s"
    " WHERE j.id = %s FOR UPDATE OF j"
)
# The record and the job's current state in one statement (one round trip).
APPEND_STATUS = (
    f"WITH record AS (INSERT INTO job_status ({', '.join(RECORD_INSERT_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(RECORD_INSERT_COLUMNS))}))"
    f" UPDATE jobs SET {', '.join(f'{name} = %s' for name in JOB_CURRENT_COLUMNS)} WHERE id = %s"
)


def _setting(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


# The service's settings, from the same environment variables.
KEY_GRACE = timedelta(seconds=_setting("JOB_KEY_GRACE_SECONDS", 600))
MAX_STATUS_RECORDS = int(_setting("JOB_MAX_STATUS_RECORDS", 10_000))
CONNECT_TIMEOUT = int(_setting("DB_CONNECT_TIMEOUT", 2))
STATEMENT_TIMEOUT_MS = int(_setting("DB_STATEMENT_TIMEOUT_MS", 2500))
RETRY_AFTER = str(int(_setting("RETRY_AFTER_SECONDS", 5)))


class Refusal(Exception):
    """An answer in the error envelope (SPEC 3)."""

    def __init__(self, status: int, error_id: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.error_id, self.message, self.extra = status, error_id, message, extra
        self.headers: dict[str, str] = {}


def unauthorized(message: str = "Invalid authorization header") -> Refusal:
    """401 with the Basic challenge."""
    refusal = Refusal(401, "unauthorized", message)
    refusal.headers["WWW-Authenticate"] = BASIC_CHALLENGE
    return refusal


def not_found() -> Refusal:
    """404: no such job."""
    return Refusal(404, "not_found", "Not found")


def invalid(errors: dict[str, list[str]]) -> Refusal:
    """422 naming the fields at fault."""
    return Refusal(422, "invalid_input", "Invalid input", errors=errors)


def conflict(message: str, state: str) -> Refusal:
    """409 telling the worker the job's state."""
    return Refusal(409, "conflict", message, state=state)


# ---------------------------------------------------------------------------
# The database: one connection per gunicorn thread, made on its first request.


def conninfo(url: str) -> str:
    """libpq's form of a SQLAlchemy-style URL (``postgresql+psycopg://`` -> ``postgresql://``)."""
    return re.sub(r"^postgres(?:ql)?(?:\+\w+)?://", "postgresql://", url)


_local = threading.local()


def connection() -> psycopg.Connection:
    """This thread's connection: autocommit (reads need no transaction), every statement prepared."""
    conn = getattr(_local, "connection", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(
            conninfo(os.environ["DATABASE_URL"]),
            autocommit=True,
            prepare_threshold=0,
            connect_timeout=CONNECT_TIMEOUT,
            application_name="jobapi-yardstick",
            # UTC timestamps come back as datetime.timezone.utc, ready to format.
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS} -c TimeZone=UTC",
        )
        _local.connection = conn
    return conn


def _drop_connection() -> None:
    conn = getattr(_local, "connection", None)
    _local.connection = None
    if conn is not None:
        conn.close()


# ---------------------------------------------------------------------------
# Authentication (SPEC 2)


def credentials(job_id: str) -> str:
    """The key of the request's ``job-<id>`` Basic credentials: 401 without them, 403 for another job."""
    header = request.headers.get("Authorization")
    if not header:
        raise unauthorized()
    scheme, _, rest = header.partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        raise unauthorized("Invalid or revoked token")
    if scheme != "basic":
        raise unauthorized()
    try:
        username, _, key = base64.b64decode(rest.strip(" \t"), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeError):
        raise unauthorized() from None
    if not username.startswith("job-") or len(username) == 4:
        raise unauthorized()
    if username[4:] != job_id:
        raise Refusal(403, "insufficient_rights", "Insufficient rights")
    return key


def check_key(key_digest: str, state: str, updated_at: datetime, key: str) -> None:
    """401 unless the key's SHA-256 digest is the stored one and a finished job's key is still in its grace."""
    if not hmac.compare_digest(key_digest, hashlib.sha256(key.encode()).hexdigest()):
        raise unauthorized()
    if state in FINAL_STATES and datetime.now(UTC) - updated_at > KEY_GRACE:
        raise unauthorized("Job is no longer active")


# ---------------------------------------------------------------------------
# Documents (SPEC 1)


def timestamp(value: datetime) -> str:
    """``2018-02-06T22:16:15.637000Z``."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def record_document(state: str, stage: str | None, error: str | None, progress: int, at: datetime) -> dict[str, Any]:
    """A status record as the API shows it."""
    return {"state": state, "stage": stage, "error": error, "progress": progress, "timestamp": timestamp(at)}


# ---------------------------------------------------------------------------
# The push's body (SPEC 1.2)


class Push(NamedTuple):
    """A validated push."""

    state: str
    stage: str
    progress: int
    error: str | None
    idempotency_key: str | None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def _progress(value: Any) -> int | None:
    """An integer percentage from a JSON integer (``40`` or ``40.0``) or a string of ASCII digits."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and len(value) <= 10 and DIGITS.fullmatch(value):
        return int(value)
    return None


def _text_errors(value: str, low: int, high: int) -> list[str]:
    messages = []
    if not low <= len(value) <= high:
        messages.append(f"Length must be between {low} and {high}.")
    if "\x00" in value:
        messages.append("Must not contain NUL characters.")
    return messages


_MISSING = object()


def validate_push(body: dict[str, Any]) -> tuple[dict[str, list[str]], tuple[str, str, int, str | None]]:
    """The errors of a push's fields (the service's messages), and its values when there are none."""
    errors: dict[str, list[str]] = {}
    for name in body:
        if name not in PUSH_FIELDS:
            errors[name] = ["Unknown field."]

    state = body.get("state", _MISSING)
    if state is _MISSING:
        errors["state"] = ["Missing data for required field."]
    elif state is None:
        errors["state"] = ["Field may not be null."]
    elif not isinstance(state, str):
        errors["state"] = ["Not a valid string."]
    elif state not in STATES:
        errors["state"] = [f"Must be one of: {', '.join(STATES)}."]

    stage = body.get("stage", _MISSING)
    if stage is _MISSING:
        errors["stage"] = ["Missing data for required field."]
    elif stage is None:
        errors["stage"] = ["Field may not be null."]
    elif not isinstance(stage, str):
        errors["stage"] = ["Not a valid string."]
    else:
        messages = _text_errors(stage, 0, MAX_STAGE)
        if messages:
            errors["stage"] = messages

    raw_progress = body.get("progress", _MISSING)
    progress = None
    if raw_progress is _MISSING:
        errors["progress"] = ["Missing data for required field."]
    elif raw_progress is None:
        errors["progress"] = ["Field may not be null."]
    else:
        progress = _progress(raw_progress)
        if progress is None:
            errors["progress"] = ["Not a valid integer."]
        elif not 0 <= progress <= 100:
            errors["progress"] = ["Must be greater than or equal to 0 and less than or equal to 100."]

    error = body.get("error")
    if error is not None:
        if not isinstance(error, str):
            errors["error"] = ["Not a valid string."]
        else:
            messages = _text_errors(error, 1, MAX_ERROR)
            if messages:
                errors["error"] = messages

    if errors:
        return errors, None  # type: ignore[return-value]
    if state == "error" and not error:
        return {"error": ["Required when state is error."]}, None  # type: ignore[return-value]
    if state != "error" and error is not None:
        return {"error": ["Must be null unless state is error."]}, None  # type: ignore[return-value]
    return {}, (state, stage, progress, error)


def read_push() -> Push:
    """The request's push, or the refusal its headers or body earn (422, 415, 413, 400)."""
    idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
    if idempotency_key is not None and not (
        1 <= len(idempotency_key) <= 128 and all(" " <= ch <= "~" for ch in idempotency_key)
    ):
        raise invalid({IDEMPOTENCY_HEADER: ["Must be 1 to 128 printable ASCII characters."]})
    if not request.is_json:
        raise Refusal(415, "unsupported_media_type", "Expected application/json")
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise Refusal(413, "payload_too_large", "Payload too large") from None
    try:
        body = json.loads(raw.decode(), parse_constant=_refuse_constant, parse_float=_finite_float)
        if b"\\u" in raw:
            # An escaped lone surrogate parses but is no text a database can store.
            json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        raise Refusal(400, "bad_request", "Malformed JSON") from None
    if not isinstance(body, dict):
        raise Refusal(400, "bad_request", "Malformed JSON: expected a JSON object")
    errors, values = validate_push(body)
    if errors:
        raise invalid(errors)
    return Push(*values, idempotency_key)


def request_digest(state: str, stage: str, progress: int, error: str | None) -> str:
    """The digest the service stores with a keyed push, to tell a retry from a reuse of its key."""
    canonical = json.dumps([state, stage, progress, error], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---------------------------------------------------------------------------
# The app

app = Flask(__name__)
app.json.sort_keys = False
app.config["MAX_CONTENT_LENGTH"] = 64 * 1024


@app.errorhandler(Refusal)
def _refusal(refusal: Refusal):
    return {"id": refusal.error_id, "message": refusal.message, **refusal.extra}, refusal.status, refusal.headers


@app.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    code = error.code or 500
    error_id = "_".join(error.name.lower().replace("-", " ").split())
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    message = {404: "Not found", 405: "Method not allowed", 413: "Payload too large"}.get(code, error.name)
    return {"id": error_id, "message": message}, code, headers


@app.errorhandler(psycopg.OperationalError)
def _database_unavailable(error: psycopg.OperationalError):
    _drop_connection()
    return ({"id": "service_unavailable", "message": "Database unavailable"}, 503,
            {"Retry-After": RETRY_AFTER})


@app.get("/api/jobs/<job_id>")
def get_job(job_id: str):
    """The job's document with every status record, oldest first."""
    key = credentials(job_id)
    if not JOB_ID.fullmatch(job_id):
        raise not_found()
    rows = connection().execute(READ_JOB, (job_id,)).fetchall()
    if not rows:
        raise not_found()
    key_digest, state, updated_at, task, args, proc, mem, user_id = rows[0][:8]
    check_key(key_digest, state, updated_at, key)
    document = {
        "id": job_id,
        "task": task,
        "args": args,
        "proc": proc,
        "mem": mem,
        "user": {"id": user_id},
        "status": [record_document(*row[8:]) for row in rows if row[8] is not None],
    }
    return document, 200, {"Job-State": state}


@app.post("/api/jobs/<job_id>/status")
def push_status(job_id: str):
    """Append a status record if the job's state allows the move; replay a retried push."""
    key = credentials(job_id)
    if not JOB_ID.fullmatch(job_id):
        raise not_found()
    try:
        push = read_push()
    except Refusal as refusal:
        # Nothing is locked for a body that is refused; the contract still
        # answers an unknown job (404) and a wrong key (401) first.
        row = connection().execute(READ_JOB_AUTH, (job_id,)).fetchone()
        if row is None:
            raise not_found() from None
        check_key(*row, key)
        refusal.headers["Job-State"] = row[1]
        raise
    try:
        return _store(job_id, key, push)
    except psycopg.errors.UniqueViolation:
        if push.idempotency_key is None:
            raise
        # A concurrent retry stored the record after this transaction's
        # snapshot was taken: a new transaction sees it and replays it.
        return _store(job_id, key, push)


def _store(job_id: str, key: str, push: Push):
    conn = connection()
    with conn.transaction():
        if push.idempotency_key is None:
            row = conn.execute(LOCK_JOB, (job_id,)).fetchone()
        else:
            row = conn.execute(LOCK_JOB_WITH_REPLAY, (push.idempotency_key, job_id)).fetchone()
        if row is None:
            raise not_found()
        key_digest, state, updated_at, status_count = row[:4]
        check_key(key_digest, state, updated_at, key)
        digest = None
        if push.idempotency_key is not None:
            digest = request_digest(push.state, push.stage, push.progress, push.error)
            if row[4] is not None:
                if row[9] != digest:
                    refusal = invalid({IDEMPOTENCY_HEADER: ["Already used for a different status of this job."]})
                    refusal.headers["Job-State"] = state
                    raise refusal
                return record_document(*row[4:9]), 200, {"Job-State": state}
        if state in FINAL_STATES or push.state not in TRANSITIONS[state]:
            message = FINISHED_MESSAGES.get(state) or f"Cannot move a job from {state} to {push.state}"
            refusal = conflict(message, state)
            refusal.headers["Job-State"] = state
            raise refusal
        if status_count >= MAX_STATUS_RECORDS:
            refusal = conflict("Job has too many status records", state)
            refusal.headers["Job-State"] = state
            raise refusal
        now = datetime.now(UTC)
        at = now if now > updated_at else updated_at  # never back in time within a job
        seq = status_count + 1
        record = {
            "job_id": job_id, "seq": seq, "state": push.state, "stage": push.stage, "error": push.error,
            "progress": push.progress, "timestamp": at, "idempotency_key": push.idempotency_key,
            "request_digest": digest,
        }
        current = {"state": push.state, "stage": push.stage, "progress": push.progress, "updated_at": at,
                   "status_count": seq}
        conn.execute(APPEND_STATUS, [record[name] for name in RECORD_INSERT_COLUMNS]
                     + [current[name] for name in JOB_CURRENT_COLUMNS] + [job_id])
    return record_document(push.state, push.stage, push.error, push.progress, at), 200, {"Job-State": push.state}
