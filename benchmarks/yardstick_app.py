"""The yardstick: jobapi's two job routes written as directly as Flask and psycopg 3 allow.

``GET /api/jobs/<id>`` and ``POST /api/jobs/<id>/status`` with the service's
rules and answers (SPEC 1-4, 7, 8): the body read within its limit first,
HTTP Basic job auth in the contract's order, the push validated field by
field (Virtool's states, error objects and step fields included) before
anything touches the database, the state machine and the history cap
checked under the job's row lock, Idempotency-Key replays, the record
appended and the job's current state updated in one transaction, the same
documents and error envelopes. Plain Flask views and one psycopg connection
per thread with prepared statements; no ORM, no marshmallow, no request
logs, no metrics. The benchmark reports the service's figures as ratios to
this one's, served by the same gunicorn with the same gunicorn.conf.py, on
the same database:

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
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from flask import Flask, request
from psycopg.types.json import Json
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

# The contract (SPEC 1.2, 4, 7.3): tests/test_yardstick.py checks these against the service's.
STATES = ("waiting", "preparing", "running", "complete", "cancelled", "error", "terminated", "timeout")
PUSHABLE_STATES = tuple(state for state in STATES if state != "timeout")
FINAL_STATES = frozenset({"complete", "cancelled", "error", "terminated", "timeout"})
TRANSITIONS = {
    "waiting": frozenset({"waiting", "preparing", "running", "error", "cancelled", "terminated"}),
    "preparing": frozenset({"preparing", "running", "error", "cancelled", "terminated"}),
    "running": frozenset({"running", "complete", "error", "cancelled", "terminated"}),
}
ERROR_REQUIRED = frozenset({"error"})
ERROR_ALLOWED = frozenset({"error", "terminated"})
FINISHED_MESSAGES = {
    "complete": "Job is complete",
    "cancelled": "Job is cancelled",
    "error": "Job has errored",
    "terminated": "Job was terminated",
    "timeout": "Job timed out",
}
PUSH_FIELDS = frozenset({"state", "stage", "progress", "error", "step_name", "step_description"})
MAX_STAGE = 256
MAX_STEP_NAME = 256
MAX_STEP_DESCRIPTION = 1024
MAX_ERROR_CHARACTERS = 16384
MAX_ERROR_BYTES = 16 * 1024
MAX_BODY = 64 * 1024
MAX_DEPTH = 32
JOB_ID = re.compile(r"[a-z0-9]{8}")
DIGITS = re.compile(r"[0-9]+")
IDEMPOTENCY_HEADER = "Idempotency-Key"
BASIC_CHALLENGE = 'Basic realm="jobs"'

# The columns this app reads and writes: the only place that names them, so
# that columns added to the tables later (nullable, or with defaults) change
# nothing here.
JOB_AUTH_COLUMNS = ("key_digest", "replaced_key_digest", "state", "updated_at")
JOB_DOCUMENT_COLUMNS = ("number", "task", "args", "proc", "mem", "user_id", "stage", "progress", "created_at",
                        "claimed_at", "pinged_at", "claim")
RECORD_COLUMNS = ("state", "stage", "error", "progress", "timestamp", "step_name", "step_description")
RECORD_INSERT_COLUMNS = ("job_id", "seq", *RECORD_COLUMNS, "idempotency_key", "request_digest")
JOB_CURRENT_COLUMNS = ("state", "stage", "progress", "updated_at", "status_count")


def _list(prefix: str, columns: tuple[str, ...]) -> str:
    return ", ".join(f"{prefix}.{name}" for name in columns)


# A job's document in one statement: its records in order, the job's own
# columns on the first row only (every job's first record has seq 1), so a
# long history does not carry them along on every row.
READ_JOB = (
    "SELECT "
    + ", ".join(f"CASE WHEN COALESCE(s.seq, 1) = 1 THEN j.{name} END"
                for name in JOB_AUTH_COLUMNS + JOB_DOCUMENT_COLUMNS)
    + f", {_list('s', RECORD_COLUMNS)}"
    " FROM jobs j LEFT JOIN job_status s ON s.job_id = j.id WHERE j.id = %s ORDER BY s.seq"
)
_DOCUMENT_AT = len(JOB_AUTH_COLUMNS)
_RECORDS_AT = len(JOB_AUTH_COLUMNS) + len(JOB_DOCUMENT_COLUMNS)
# Authentication alone, without a lock: a push refused for its body or its Idempotency-Key header.
READ_JOB_AUTH = f"SELECT {_list('j', JOB_AUTH_COLUMNS)} FROM jobs j WHERE j.id = %s"
# The job's row locked for the push, and (with an Idempotency-Key) the record that key stored.
LOCK_JOB = f"SELECT {_list('j', JOB_AUTH_COLUMNS)}, j.status_count FROM jobs j WHERE j.id = %s FOR UPDATE"
LOCK_JOB_WITH_REPLAY = (
    f"SELECT {_list('j', JOB_AUTH_COLUMNS)}, j.status_count, {_list('s', RECORD_COLUMNS)}, s.request_digest"
    " FROM jobs j LEFT JOIN job_status s ON s.job_id = j.id AND s.idempotency_key = %s"
    " WHERE j.id = %s FOR UPDATE OF j"
)
_REPLAY_AT = len(JOB_AUTH_COLUMNS) + 1
FIND_REPLAY = (f"SELECT {', '.join(RECORD_COLUMNS)}, request_digest FROM job_status"
               " WHERE job_id = %s AND idempotency_key = %s")
# The record and the job's current state in one statement (one round trip).
# A keyed push that lost a race to its own retry inserts nothing and updates nothing.
APPEND_STATUS = (
    f"WITH record AS (INSERT INTO job_status ({', '.join(RECORD_INSERT_COLUMNS)})"
    f" VALUES ({', '.join(['%s'] * len(RECORD_INSERT_COLUMNS))})"
    " ON CONFLICT (job_id, idempotency_key) DO NOTHING RETURNING seq)"
    f" UPDATE jobs SET {', '.join(f'{name} = %s' for name in JOB_CURRENT_COLUMNS)}"
    " FROM record WHERE jobs.id = %s"
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

    def about(self, state: str) -> Refusal:
        """The refusal, telling the job's current state in ``Job-State``."""
        self.headers["Job-State"] = state
        return self


def unauthorized(message: str) -> Refusal:
    """401 with the Basic challenge."""
    refusal = Refusal(401, "unauthorized", message)
    refusal.headers["WWW-Authenticate"] = BASIC_CHALLENGE
    return refusal


def not_found() -> Refusal:
    """404: no such job."""
    return Refusal(404, "not_found", "Not found")


def invalid(errors: dict[str, list[str]]) -> Refusal:
    """422 naming the fields (or headers) at fault."""
    return Refusal(422, "invalid_input", "Invalid input", errors=errors)


def conflict(message: str, state: str) -> Refusal:
    """409 telling the worker the job's state."""
    return Refusal(409, "conflict", message, state=state)


def finished(state: str) -> Refusal:
    """409 for any change to a finished job."""
    return conflict(FINISHED_MESSAGES[state], state)


def key_reused() -> Refusal:
    """422: the Idempotency-Key stored another status of this job."""
    return invalid({IDEMPOTENCY_HEADER: ["Already used for a different status of this job."]})


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
        raise unauthorized("Missing credentials")
    scheme, _, parameter = header.strip().partition(" ")
    scheme = scheme.lower()
    if scheme == "bearer":
        secret = parameter.strip()
        raise unauthorized("Invalid or revoked token" if secret and secret.isascii() else "Malformed credentials")
    if scheme != "basic":
        raise unauthorized("Malformed credentials")
    try:
        text = base64.b64decode(parameter.strip().encode("ascii"), validate=True).decode("utf-8")
    except (ValueError, binascii.Error):  # UnicodeError is a ValueError
        raise unauthorized("Malformed credentials") from None
    username, colon, key = text.partition(":")
    if not colon or not username.startswith("job-") or len(username) == 4:
        raise unauthorized("Malformed credentials")
    if username[4:] != job_id:
        raise Refusal(403, "insufficient_rights", "Insufficient rights")
    return key


def check_key(key_digest: str, replaced_digest: str | None, state: str, updated_at: datetime, key: str) -> None:
    """401 unless the key's SHA-256 digest is the stored one and a finished job's key is still in its grace."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    if not hmac.compare_digest(key_digest, digest):
        if replaced_digest and hmac.compare_digest(replaced_digest, digest):
            raise unauthorized("Key was replaced")
        raise unauthorized("Wrong key")
    if state in FINAL_STATES and datetime.now(UTC) - updated_at > KEY_GRACE:
        raise unauthorized("Job is no longer active")


# ---------------------------------------------------------------------------
# Documents (SPEC 1, 7.2)


def timestamp(value: datetime) -> str:
    """``2018-02-06T22:16:15.637000Z``."""
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def record_document(state: str, stage: str | None, error: Any, progress: int, at: datetime,
                    step_name: str | None, step_description: str | None) -> dict[str, Any]:
    """A status record as the API shows it: the step fields only when they were given."""
    document = {"state": state, "stage": stage, "error": error, "progress": progress, "timestamp": timestamp(at)}
    if step_name is not None:
        document["step_name"] = step_name
    if step_description is not None:
        document["step_description"] = step_description
    return document


# ---------------------------------------------------------------------------
# The push's body (SPEC 1.2, 7.3, 8)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def too_deep(raw: bytes) -> bool:
    """Whether arrays and objects nest deeper than MAX_DEPTH, counted without recursion."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_DEPTH:
        return False  # ordinary bodies stop here: depth never exceeds the openings
    depth = deepest = 0
    for byte in _STRINGS.sub(b"", raw).translate(None, _NOT_BRACKETS):
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest > MAX_DEPTH


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


def _text_errors(value: Any, high: int) -> list[str] | None:
    """The messages of a string field of 0 to ``high`` characters without NUL (None: no messages)."""
    if not isinstance(value, str):
        return ["Not a valid string."]
    messages = []
    if len(value) > high:
        messages.append(f"Length must be between 0 and {high}.")
    if "\x00" in value:
        messages.append("Must not contain NUL characters.")
    return messages or None


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _error_errors(value: Any) -> list[str] | None:
    """The message of an error that is neither a string nor one of Virtool's objects, or too long."""
    if isinstance(value, str):
        if not 1 <= len(value) <= MAX_ERROR_CHARACTERS:
            return [f"Length must be between 1 and {MAX_ERROR_CHARACTERS}."]
        return ["Must not contain NUL characters."] if "\x00" in value else None
    virtool = (isinstance(value, dict) and value.keys() == {"type", "traceback", "details"}
               and isinstance(value["type"], str) and _strings(value["traceback"]) and _strings(value["details"]))
    message = isinstance(value, dict) and value.keys() == {"message"} and isinstance(value["message"], str)
    if not (virtool or message):
        return ["Must be a string, an object of type, traceback and details, or an object of message."]
    if _has_nul(value):
        return ["Must not contain NUL characters."]
    if len(json.dumps(value, separators=(",", ":")).encode()) > MAX_ERROR_BYTES:
        return [f"Longer than {MAX_ERROR_BYTES} bytes as JSON."]
    return None


_MISSING = object()


def validate_push(body: dict[str, Any]) -> tuple[dict[str, list[str]], dict[str, Any] | None]:
    """The errors of a push's fields (the service's messages), and its fields when there are none."""
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
    elif state not in PUSHABLE_STATES:
        errors["state"] = [f"Must be one of: {', '.join(PUSHABLE_STATES)}."]

    stage = body.get("stage", _MISSING)
    if stage is _MISSING:
        errors["stage"] = ["Missing data for required field."]
    elif stage is None:
        errors["stage"] = ["Field may not be null."]
    elif messages := _text_errors(stage, MAX_STAGE):
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
    if error is not None and (messages := _error_errors(error)):
        errors["error"] = messages
    step_name = body.get("step_name")
    if step_name is not None and (messages := _text_errors(step_name, MAX_STEP_NAME)):
        errors["step_name"] = messages
    step_description = body.get("step_description")
    if step_description is not None and (messages := _text_errors(step_description, MAX_STEP_DESCRIPTION)):
        errors["step_description"] = messages

    if errors:
        return errors, None
    if state in ERROR_REQUIRED and error is None:
        return {"error": ["Required when state is error."]}, None
    if state not in ERROR_ALLOWED and error is not None:
        return {"error": ["Must be null unless state is error or terminated."]}, None
    return {}, {"state": state, "stage": stage, "progress": progress, "error": error,
                "step_name": step_name, "step_description": step_description}


@dataclass(frozen=True)
class Body:
    """A push's body, read and checked before the database is touched: its fields, or its refusal."""

    push: dict[str, Any] | None = None
    refusal: Refusal | None = None
    # Whether it was a JSON object (a finished job answers any object with 409).
    is_object: bool = False


def check_push() -> Body:
    """The request's push, or the refusal its body earns (415, 400, 422), kept to be answered in turn."""
    if not request.is_json:
        return Body(refusal=Refusal(415, "unsupported_media_type", "Expected application/json"))
    raw = request.get_data(cache=True)
    deep = Body(refusal=invalid({"_schema": [f"Nested deeper than {MAX_DEPTH} levels."]}))
    malformed = Body(refusal=Refusal(400, "bad_request", "Malformed JSON"))
    nested = too_deep(raw)
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        return deep
    except ValueError:  # UnicodeDecodeError is one
        return malformed
    if nested:
        return deep
    if b"\\u" in raw:
        # An escaped lone surrogate parses but is no text a database can store.
        try:
            json.dumps(body, ensure_ascii=False).encode()
        except ValueError:
            return malformed
    if not isinstance(body, dict):
        return Body(refusal=Refusal(400, "bad_request", "Malformed JSON: expected a JSON object"))
    errors, push = validate_push(body)
    if errors:
        return Body(refusal=invalid(errors), is_object=True)
    return Body(push=push, is_object=True)


def valid_idempotency_key() -> str | None:
    """The request's Idempotency-Key if it is 1 to 128 printable ASCII characters, else None."""
    value = request.headers.get(IDEMPOTENCY_HEADER)
    if value is None or not 1 <= len(value) <= 128 or not all(" " <= ch <= "~" for ch in value):
        return None
    return value


def request_digest(push: dict[str, Any]) -> str:
    """The digest the service stores with a keyed push, to tell a retry from a reuse of its key."""
    values = [push["state"], push["stage"], push["progress"], push.get("error")]
    if push.get("step_name") is not None or push.get("step_description") is not None:
        values += [push.get("step_name"), push.get("step_description")]
    canonical = json.dumps(values, separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---------------------------------------------------------------------------
# The app

app = Flask(__name__)
app.json.sort_keys = False
app.config["MAX_CONTENT_LENGTH"] = MAX_BODY


@app.errorhandler(Refusal)
def _refusal(refusal: Refusal):
    return {"id": refusal.error_id, "message": refusal.message, **refusal.extra}, refusal.status, refusal.headers


@app.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    code = error.code or 500
    error_id = "_".join(error.name.lower().replace("-", " ").split())
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    message = {404: "Not found", 405: "Method not allowed"}.get(code, error.name)
    return {"id": error_id, "message": message}, code, headers


@app.errorhandler(psycopg.OperationalError)
def _database_unavailable(error: psycopg.OperationalError):
    _drop_connection()
    return ({"id": "service_unavailable", "message": "Database unavailable"}, 503,
            {"Retry-After": RETRY_AFTER})


@app.before_request
def read_body() -> None:
    """Every body is read whole, within the limit, before anything else (413 first of all)."""
    try:
        request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise Refusal(413, "payload_too_large", "Payload too large") from None


@app.get("/api/jobs/<job_id>")
def get_job(job_id: str):
    """The job's document with every status record, oldest first."""
    key = credentials(job_id)
    if not JOB_ID.fullmatch(job_id):
        raise not_found()
    rows = connection().execute(READ_JOB, (job_id,)).fetchall()
    if not rows:
        raise not_found()
    first = rows[0]
    state = first[2]
    check_key(*first[:_DOCUMENT_AT], key)
    (number, task, args, proc, mem, user_id, stage, progress, created_at, claimed_at, pinged_at,
     claim) = first[_DOCUMENT_AT:_RECORDS_AT]
    document = {
        "id": job_id,
        "number": number,
        "task": task,
        "args": args,
        "proc": proc,
        "mem": mem,
        "user": {"id": user_id, "handle": user_id},
        "status": [record_document(*row[_RECORDS_AT:]) for row in rows if row[_RECORDS_AT] is not None],
        "workflow": task,
        "state": state,
        "stage": stage,
        "progress": progress,
        "created_at": timestamp(created_at),
        "acquired": claimed_at is not None,
        "archived": False,
        "rights": {},
        "ping": None if pinged_at is None else {"pinged_at": timestamp(pinged_at)},
        "claim": claim,
    }
    return document, 200, {"Job-State": state}


@app.post("/api/jobs/<job_id>/status")
def push_status(job_id: str):
    """Append a status record if the job's state allows the move; replay a retried push."""
    key = credentials(job_id)
    body = check_push()
    if not JOB_ID.fullmatch(job_id):
        raise not_found()
    idempotency_key = valid_idempotency_key()
    bad_header = idempotency_key is None and IDEMPOTENCY_HEADER in request.headers
    if body.push is None or bad_header:
        _refuse(job_id, key, body, bad_header, idempotency_key)
    return _store(job_id, key, body.push, idempotency_key)


def _refuse(job_id: str, key: str, body: Body, bad_header: bool, idempotency_key: str | None) -> None:
    """Answer a push refused for its header or body, after the job's 404 and 401; nothing is locked."""
    conn = connection()
    row = conn.execute(READ_JOB_AUTH, (job_id,)).fetchone()
    if row is None:
        raise not_found()
    check_key(*row, key)
    state = row[2]
    if bad_header:
        raise invalid({IDEMPOTENCY_HEADER: ["Must be 1 to 128 printable ASCII characters."]}).about(state)
    if body.is_object and state in FINAL_STATES:
        # A finished job answers any JSON object with 409, but a retry's own refusal comes first.
        if idempotency_key is None or conn.execute(FIND_REPLAY, (job_id, idempotency_key)).fetchone() is None:
            raise finished(state).about(state)
    raise body.refusal.about(state)


def _replayed(stored: tuple, push: dict[str, Any], state: str):
    """The answer to a retry: the record it stored, if it sends the same content."""
    if stored[-1] != request_digest(push):
        raise key_reused().about(state)
    return record_document(*stored[:-1]), 200, {"Job-State": state}


def _store(job_id: str, key: str, push: dict[str, Any], idempotency_key: str | None):
    conn = connection()
    with conn.transaction():
        if idempotency_key is None:
            row = conn.execute(LOCK_JOB, (job_id,)).fetchone()
        else:
            row = conn.execute(LOCK_JOB_WITH_REPLAY, (idempotency_key, job_id)).fetchone()
        if row is None:
            raise not_found()
        check_key(*row[:4], key)
        state, updated_at, status_count = row[2], row[3], row[4]
        if idempotency_key is not None and row[_REPLAY_AT] is not None:
            return _replayed(row[_REPLAY_AT:], push, state)

        refusal = None
        if state in FINAL_STATES:
            refusal = finished(state)
        elif push["state"] not in TRANSITIONS[state]:
            refusal = conflict(f"Cannot move a job from {state} to {push['state']}", state)
        elif status_count >= MAX_STATUS_RECORDS:
            refusal = conflict("Job has too many status records", state)
        if refusal is not None:
            # The lock query's snapshot predates its wait for the lock: a retry
            # of this very push may have committed meanwhile.
            stored = conn.execute(FIND_REPLAY, (job_id, idempotency_key)).fetchone() if idempotency_key else None
            if stored is not None:
                return _replayed(stored, push, state)
            raise refusal.about(state)

        now = datetime.now(UTC)
        at = now if now > updated_at else updated_at  # never back in time within a job
        seq = status_count + 1
        error = push["error"]
        record = {
            "job_id": job_id, "seq": seq, "state": push["state"], "stage": push["stage"],
            "error": None if error is None else Json(error), "progress": push["progress"], "timestamp": at,
            "step_name": push["step_name"], "step_description": push["step_description"],
            "idempotency_key": idempotency_key,
            "request_digest": request_digest(push) if idempotency_key else None,
        }
        current = {"state": push["state"], "stage": push["stage"], "progress": push["progress"],
                   "updated_at": at, "status_count": seq}
        appended = conn.execute(APPEND_STATUS, [record[name] for name in RECORD_INSERT_COLUMNS]
                                + [current[name] for name in JOB_CURRENT_COLUMNS] + [job_id])
        if appended.rowcount == 0:
            # The insert met this key: a concurrent retry stored the record first.
            return _replayed(conn.execute(FIND_REPLAY, (job_id, idempotency_key)).fetchone(), push, state)
    document = record_document(push["state"], push["stage"], error, push["progress"], at,
                               push["step_name"], push["step_description"])
    return document, 200, {"Job-State": push["state"]}
