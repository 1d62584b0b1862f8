"""Log formats: readable text or one JSON object a line (``LOG_FORMAT``), for the app and gunicorn.

Text lines look like gunicorn's own::

    [2025-05-01 12:00:00 +0000] [4242] [INFO] GET /api/jobs/<job_id> 200 3.1ms job_id=zzpugkyt request_id=9f1c... client=203.0.113.7

JSON lines carry the same facts as fields::

    {"time": "2025-05-01T12:00:00.123456Z", "level": "INFO", "logger": "jobapi.request", "pid": 4242,
     "message": "GET /api/jobs/<job_id> 200 3.1ms", "method": "GET", "route": "/api/jobs/<job_id>",
     "status": 200, "duration_ms": 3.1, "job_id": "zzpugkyt", "request_id": "9f1c...",
     "client": "203.0.113.7"}

Any line logged while a request is served names its request id.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from flask import Flask, g, has_request_context
from flask.logging import has_level_handler

from .config import log_format as checked_log_format

# The attribute of a log record that holds its structured fields.
FIELDS_ATTRIBUTE = "fields"
# The same shape as gunicorn's default lines, so both read alike.
TEXT_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
TEXT_DATE_FORMAT = "%Y-%m-%d %H:%M:%S %z"


def _current_request_id() -> str | None:
    if has_request_context():
        return g.get("request_id")
    return None


class TextFormatter(logging.Formatter):
    """gunicorn's line format, then ``job_id=``, ``request_id=`` and ``client=`` when the record has them."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT, TEXT_DATE_FORMAT)
        self._written: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # The line shows whole seconds: write each second once, not once a line
        # (one tuple, so threads never pair a second with another's text).
        second = int(record.created)
        written = self._written
        if written[0] != second:
            written = (second, super().formatTime(record, datefmt))
            self._written = written
        return written[1]

    def formatMessage(self, record: logging.LogRecord) -> str:
        # Before any traceback, which format() appends below the line.
        line = super().formatMessage(record)
        fields = getattr(record, FIELDS_ATTRIBUTE, None) or {}
        if "job_id" in fields:
            line += f" job_id={fields['job_id'] or '-'}"
        request_id = fields.get("request_id") or _current_request_id()
        if request_id:
            line += f" request_id={request_id}"
        if "client" in fields:
            line += f" client={fields['client']}"
        return line


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, pid, message, and the record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        document.update(getattr(record, FIELDS_ATTRIBUTE, None) or {})
        if not document.get("request_id") and (request_id := _current_request_id()):
            document["request_id"] = request_id
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str)


def make_formatter(log_format: str | None) -> logging.Formatter:
    """The formatter of a ``LOG_FORMAT`` value: ``json``, else text."""
    return JSONFormatter() if (log_format or "").strip().lower() == "json" else TextFormatter()


def logging_config(
    log_format: str | None, level: str = "info", access_log: str | None = None
) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for gunicorn (its ``logconfig_dict``).

    Everything, the app's lines and gunicorn's own, goes to stderr in one
    format. gunicorn's access log is off unless ``access_log`` names a file
    (or ``-`` for stdout): the app already logs every request.
    """
    formatter_class = JSONFormatter if checked_log_format(log_format or "text") == "json" else TextFormatter
    level = level.upper()
    handlers: dict[str, Any] = {
        "stderr": {
            "class": "logging.StreamHandler",
            "formatter": "jobapi",
            "stream": "ext://sys.stderr",
        },
    }
    access: dict[str, Any] = {"level": "CRITICAL", "handlers": [], "propagate": False}
    if access_log:
        handlers["access"] = (
            {"class": "logging.StreamHandler", "formatter": "jobapi", "stream": "ext://sys.stdout"}
            if access_log == "-"
            else {"class": "logging.FileHandler", "formatter": "jobapi", "filename": access_log}
        )
        access = {"level": "INFO", "handlers": ["access"], "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"jobapi": {"()": f"{__name__}.{formatter_class.__name__}"}},
        "handlers": handlers,
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": [], "propagate": True},
            "gunicorn.access": access,
            # The app's request lines are INFO, whatever gunicorn's level.
            "jobapi": {"level": "DEBUG" if level == "DEBUG" else "INFO", "handlers": [], "propagate": True},
        },
    }


def init_app_logging(app: Flask) -> None:
    """Let the app's INFO lines reach stderr in ``LOG_FORMAT``.

    Under gunicorn the root logger already does (``logging_config``), as
    does pytest's capture in tests; elsewhere (``flask run``) the app's
    logger gets a stderr handler of its own, once.
    """
    logger = logging.getLogger(app.import_name)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not has_level_handler(logger):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(make_formatter(app.config.get("LOG_FORMAT")))
        logger.addHandler(handler)
