"""A job's status history as the job page shows it: records with the time between them,
stages by duration, and errors made readable. Plain data in, plain data out: no database."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any


@dataclass(frozen=True)
class ErrorView:
    """An error as the page shows it: a text, or Virtool's object (type, traceback, details)."""

    message: str | None = None
    type: str | None = None
    traceback: str | None = None
    details: list[str] = field(default_factory=list)
    # Keys of an object error that fit no known form, as indented JSON.
    other: str | None = None


def describe_error(error: Any) -> ErrorView | None:
    """Any stored ``error`` (None, a string, or an object) as something readable."""
    if error is None or error == "":
        return None
    if isinstance(error, str):
        return ErrorView(message=error)
    if not isinstance(error, dict):
        return ErrorView(other=json.dumps(error, indent=2, ensure_ascii=False))
    known = {"message", "type", "traceback", "details"}
    message = error.get("message")
    traceback = error.get("traceback")
    details = error.get("details")
    rest = {key: value for key, value in error.items() if key not in known}
    return ErrorView(
        message=message if isinstance(message, str) else _json_or_none(message),
        type=str(error["type"]) if error.get("type") is not None else None,
        traceback=_lines(traceback),
        details=[str(item) for item in details] if isinstance(details, list) else (
            [str(details)] if details is not None else []
        ),
        other=json.dumps(rest, indent=2, ensure_ascii=False) if rest else None,
    )


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False)


def _lines(traceback: Any) -> str | None:
    """A traceback given as a list of lines (Virtool's form) or as one text."""
    if traceback is None:
        return None
    if isinstance(traceback, list):
        # Python's formatted lines end with their own newline; others may not.
        return "".join(line if str(line).endswith("\n") else f"{line}\n" for line in map(str, traceback)).rstrip("\n")
    return str(traceback)


@dataclass(frozen=True)
class Entry:
    """One status record, and the time since the record before it."""

    number: int
    state: str
    stage: str | None
    progress: int
    timestamp: datetime
    since_previous: timedelta | None
    error: ErrorView | None
    step_name: str | None
    step_description: str | None


def entries(records: Sequence[Any]) -> list[Entry]:
    """The records (rows or objects with state, stage, progress, error, timestamp), oldest first."""
    made: list[Entry] = []
    previous: datetime | None = None
    for number, record in enumerate(records, start=1):
        made.append(
            Entry(
                number=number,
                state=record.state,
                stage=record.stage,
                progress=record.progress,
                timestamp=record.timestamp,
                since_previous=None if previous is None else record.timestamp - previous,
                error=describe_error(getattr(record, "error", None)),
                # Records carry these once workers send them; older ones have neither.
                step_name=getattr(record, "step_name", None),
                step_description=getattr(record, "step_description", None),
            )
        )
        previous = record.timestamp
    return made


@dataclass(frozen=True)
class Segment:
    """A stretch of the job spent in one stage: where it starts on the bar and how long it lasted."""

    label: str
    state: str
    started: datetime
    duration: timedelta
    # Position and width on the bar, in percent of the whole.
    offset: float
    width: float


# A segment too short to see still gets this much of the bar, in percent.
MIN_WIDTH = 0.6


def segments(timeline: Sequence[Entry], *, finished: bool, now: datetime) -> list[Segment]:
    """Consecutive records of one stage merged, each lasting until the next stage began.

    The last stage of a job still active lasts until ``now``; the final
    record of a finished job is an instant and takes no room.
    """
    if not timeline:
        return []
    spans: list[tuple[str, str, datetime]] = []
    for entry in timeline:
        label = entry.stage or entry.state
        if not spans or spans[-1][0] != label:
            spans.append((label, entry.state, entry.timestamp))
    end = timeline[-1].timestamp if finished else max(now, timeline[-1].timestamp)
    if finished and len(spans) > 1 and spans[-1][2] == end:
        spans.pop()  # the final record alone: no time was spent in it
    durations = [
        (spans[index + 1][2] if index + 1 < len(spans) else end) - started
        for index, (_, _, started) in enumerate(spans)
    ]
    total = sum((d.total_seconds() for d in durations), 0.0)
    widths = [
        max(MIN_WIDTH, 100.0 * d.total_seconds() / total) if total > 0 else 100.0 / len(spans)
        for d in durations
    ]
    # Minimum widths may overflow the bar: scale everything back into it.
    scale = 100.0 / sum(widths)
    made = []
    offset = 0.0
    for (label, state, started), duration, width in zip(spans, durations, widths):
        made.append(Segment(label, state, started, duration, round(offset, 3), round(width * scale, 3)))
        offset += width * scale
    return made


def format_duration(value: timedelta | None) -> str:
    """A duration people read at a glance: ``0.4 s``, ``12 s``, ``3 min 5 s``, ``2 h 1 min``."""
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 10:
        return f"{max(seconds, 0):.1f} s"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"
