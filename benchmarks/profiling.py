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
    stacks: Counter[str] = Counter()
    for path in paths:
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] += int(count)
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


if __name__ == "__main__":
    print(summarize([Path(p) for p in sys.argv[1:]], "py-spy samples"))
