"""Reading py-spy's raw (collapsed) stacks from gunicorn workers: where the time goes, by function and by library."""

from __future__ import annotations

import re
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

# "function (path/to/file.py:123)"
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

LIBRARIES = [
    ("jobapi", "jobapi"),
    ("marshmallow", "marshmallow"),
    ("flask_sqlalchemy", "Flask-SQLAlchemy"),
    ("sqlalchemy", "SQLAlchemy"),
    ("psycopg", "psycopg"),
    ("werkzeug", "Werkzeug"),
    ("flask", "Flask"),
    ("gunicorn", "gunicorn"),
    ("json", "json (stdlib)"),
    ("logging", "logging (stdlib)"),
]


def find_py_spy() -> str | None:
    """py-spy on PATH, or beside the running Python."""
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


def _parse(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame)
    if not match:
        return frame, ""
    return match.group("function"), match.group("file")


def library(file: str) -> str:
    """The package a source file belongs to."""
    path = file.replace("\\", "/")
    for needle, name in LIBRARIES:
        if f"/{needle}/" in f"/{path}" or path.startswith(f"{needle}/") or path == f"{needle}.py":
            return name
    return "other (stdlib, C, ...)"


def _short(frame: str) -> str:
    function, file = _parse(frame)
    if "site-packages/" in file:
        file = file.split("site-packages/", 1)[1]
    elif "/src/" in file:
        file = file.split("/src/", 1)[1]
    return f"{function} ({file})" if file else function


def summarize(paths: Sequence[Path], title: str, top: int = 25) -> str:
    """A text report: samples by library (self time), the hottest functions by self and by total time."""
    stacks = read_stacks(paths)
    total = sum(stacks.values())
    if not total:
        return f"{title}: no samples"
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    libraries: Counter[str] = Counter()
    for stack, count in stacks.items():
        frames = [f for f in stack.split(";") if f]
        leaf = frames[-1]
        own[_short(leaf)] += count
        libraries[library(_parse(leaf)[1])] += count
        for name in {_short(f) for f in frames}:
            inclusive[name] += count

    def pct(n: int) -> str:
        return f"{100 * n / total:5.1f} %"

    lines = [f"{title} ({total:,} samples from {len(paths)} workers)", "  by library (self time):"]
    lines += [f"    {pct(n)}  {name}" for name, n in libraries.most_common()]
    lines.append("  hottest functions, self time:")
    lines += [f"    {pct(n)}  {name}" for name, n in own.most_common(top)]
    lines.append("  hottest functions, total time (the function and what it calls):")
    lines += [f"    {pct(n)}  {name}" for name, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


# Where the time goes, in the categories the README's table uses. A sample
# belongs to the innermost frame of its stack that names a category: time in
# psycopg under the auth hook's query is psycopg's, time in hashlib under the
# key check is auth's (C code has no frame of its own).
CATEGORIES = [
    "Flask/werkzeug", "auth", "validation", "SQLAlchemy", "psycopg/network", "serialization",
    "logging", "metrics", "gunicorn", "other",
]
_STDLIB_JSON = re.compile(r"/python3\.\d+/json/")
_STDLIB_LOGGING = re.compile(r"/python3\.\d+/logging/")
_JOBAPI_SERIALIZERS = {"status_document", "job_document", "format_timestamp", "_serialize", "dump"}
_YARDSTICK = {
    "credentials": "auth", "check_key": "auth", "unauthorized": "auth",
    "read_push": "validation", "validate_push": "validation", "_progress": "validation",
    "_text_errors": "validation", "_finite_float": "validation", "_refuse_constant": "validation",
    "request_digest": "validation",
    "record_document": "serialization", "timestamp": "serialization",
}


def _frame_category(function: str, file: str, stack_loads: bool) -> str | None:
    """The category one frame names, "json" for the stdlib's json (its caller decides), or None."""
    path = "/" + file.replace("\\", "/")
    if "/psycopg/" in path or "/psycopg_binary/" in path or "/psycopg_c/" in path or "/psycopg_pool/" in path:
        return "psycopg/network"
    if "/sqlalchemy/" in path or "/flask_sqlalchemy/" in path:
        return "SQLAlchemy"
    if path.endswith(("/jobapi/models.py", "/jobapi/transaction.py")) or "/jobapi/storage/" in path:
        return "SQLAlchemy"  # the app's own layer over it: column types, sessions, commits
    if "/marshmallow/" in path:
        return "validation" if stack_loads else "serialization"
    if "/prometheus_client/" in path or path.endswith("/jobapi/metrics.py"):
        return "metrics"
    if _STDLIB_LOGGING.search(path) or path.endswith(("/jobapi/logs.py", "/jobapi/observability.py")):
        return "logging"
    if path.endswith("/jobapi/__init__.py") and function in ("_assign_request_id", "_echo_request_id"):
        return "logging"  # request ids exist for the logs
    if _STDLIB_JSON.search(path):
        return "json"
    if path.endswith(("/jobapi/auth.py", "/jobapi/admission.py", "/jobapi/keys.py", "/jobapi/tokens.py",
                      "/werkzeug/datastructures/auth.py")):
        return "auth"
    if path.endswith("/jobapi/payload.py"):
        return "validation"
    if path.endswith("/jobapi/jobs/documents.py"):
        return "serialization"
    if path.endswith(("/jobapi/jobs/schemas.py", "/jobapi/fields.py", "/jobapi/jobs/rules.py")):
        return "serialization" if function in _JOBAPI_SERIALIZERS else "validation"
    if path.endswith("/yardstick_app.py"):
        return _YARDSTICK.get(function, "other")
    if "/flask/json/" in path:
        return "serialization"
    if "/werkzeug/" in path or "/flask/" in path or "/flask_smorest/" in path:
        return "Flask/werkzeug"
    if "/gunicorn/" in path:
        return "gunicorn"
    if "/jobapi/" in path:
        return "other"
    return None


def categorize(frames: Sequence[str]) -> str:
    """The category of one sampled stack (frames from the root to the leaf)."""
    parsed = [_parse(frame) for frame in frames]
    stack_loads = any(function in ("load", "_do_load", "loads") and "/marshmallow/" in file
                      for function, file in parsed)
    in_json = False
    for function, file in reversed(parsed):
        found = _frame_category(function, file, stack_loads)
        if found == "json":
            in_json = True
            continue
        if found is None:
            continue
        if in_json and found in ("Flask/werkzeug", "other"):
            # The stdlib's json called by Flask writes an answer; called by the app, it depends on the app.
            return "serialization"
        return found
    return "other"


def read_stacks(paths: Sequence[Path]) -> Counter[str]:
    """py-spy's raw (collapsed) output: sample count per stack."""
    stacks: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] += int(count)
    return stacks


def categories(paths: Sequence[Path]) -> Counter[str]:
    """Samples per category (CATEGORIES) in py-spy raw files."""
    counts: Counter[str] = Counter()
    for stack, count in read_stacks(paths).items():
        counts[categorize([f for f in stack.split(";") if f])] += count
    return counts


def category_table(columns: dict[str, Counter[str]]) -> str:
    """A table of categories (rows) by profiled route (columns), in % of each route's samples."""
    names = list(columns)
    width = max([len(c) for c in CATEGORIES] + [8])
    cells = [max(len(name), 8) for name in names]
    lines = [f"{'category':<{width}}  " + "  ".join(f"{name:>{w}}" for name, w in zip(names, cells))]
    lines.append("-" * len(lines[0]))
    totals = {name: sum(counts.values()) for name, counts in columns.items()}
    for category in CATEGORIES:
        row = []
        for name, w in zip(names, cells):
            total = totals[name]
            row.append(f"{100 * columns[name][category] / total:>{w - 2}.1f} %" if total else f"{'-':>{w}}")
        lines.append(f"{category:<{width}}  " + "  ".join(row))
    lines.append(f"{'samples':<{width}}  " + "  ".join(f"{totals[n]:>{w},}" for n, w in zip(names, cells)))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``profiling.py [--categories] RAW...``: the report of summarize(), or the category table."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--categories", action="store_true",
                        help="print the table of categories (Flask/werkzeug, auth, validation, ...) instead")
    parser.add_argument("raw", nargs="+", type=Path, help="py-spy record --format raw output files")
    args = parser.parse_args(argv)
    if args.categories:
        print(category_table({"samples": categories(args.raw)}))
    else:
        print(summarize(args.raw, "py-spy samples"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
