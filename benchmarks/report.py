"""The benchmark's report: the table of rows with their ratios, the targets, memory, and the concurrency curve."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from processes import WrkResult

# The rows every other row is a ratio to: the framework's ceiling and the stack's limit.
REFERENCE = "reference"
YARDSTICK = {"get": "yardstick_get5", "post": "yardstick_post_spread"}


@dataclass
class Row:
    """A scenario's results: the warm-up and every measured round."""

    key: str
    label: str
    group: str
    kind: str  # "get", "post" or "claim" (no yardstick twin)
    server: str = "jobapi"  # "jobapi", "yardstick" or "reference"
    path: str = "direct"  # "direct" or "nginx"
    connections: int = 16
    rounds: list[WrkResult] = field(default_factory=list)
    warmup: WrkResult | None = None
    note: str = ""
    # Rows measured in one Bench.measure call have alternating rounds (round i of each close in time).
    batch: int = 0

    @property
    def rps(self) -> float:
        return statistics.median(r.rps for r in self.rounds)

    @property
    def p50_ms(self) -> float:
        return statistics.median(r.p50_us for r in self.rounds) / 1000

    @property
    def p99_ms(self) -> float:
        return statistics.median(r.p99_us for r in self.rounds) / 1000

    @property
    def non2xx(self) -> int:
        return sum(r.non2xx for r in self.rounds)

    @property
    def socket_errors(self) -> int:
        return sum(r.socket_errors for r in self.rounds)

    @property
    def shared(self) -> int:
        return sum(r.shared for r in self.rounds)

    @property
    def clean(self) -> bool:
        """No non-2xx answer and no socket error, warm-up included."""
        results = self.rounds + ([self.warmup] if self.warmup else [])
        return not any(r.non2xx or r.socket_errors for r in results)


@dataclass(frozen=True)
class Target:
    """A ratio of two rows that must reach a bound: throughput at least ``limit``, or p99 at most ``limit``."""

    text: str
    numerator: str
    denominator: str
    limit: float
    measure: str = "rps"


def targets(history_jobs: int) -> list[Target]:
    """The performance targets, evaluated under the table."""
    return [
        Target("GET 5-record / bare Flask", "get5", REFERENCE, 0.30),
        Target("GET 5-record / yardstick", "get5", YARDSTICK["get"], 0.90),
        Target("POST spread over 64 jobs / bare Flask", "post_spread", REFERENCE, 0.22),
        Target("POST spread over 64 jobs / yardstick", "post_spread", YARDSTICK["post"], 0.90),
        Target("GET 5-record p99 / yardstick's p99", "get5", YARDSTICK["get"], 1.5, "p99"),
        Target("POST spread p99 / yardstick's p99", "post_spread", YARDSTICK["post"], 1.5, "p99"),
        Target("POST 10,000-record / POST 1-record", "post_10000", "post_1", 0.90),
        Target("GET 1,000-record / GET 1-record", "get_1000", "get_1", 0.10),
        Target(f"GET, {history_jobs:,} jobs / 10 jobs", "get_100k", "get_10", 0.90),
        Target(f"POST, {history_jobs:,} jobs / 10 jobs", "post_100k", "post_10", 0.90),
        Target("SQLite: GET 5-record / bare Flask", "sqlite_get5", REFERENCE, 0.40),
        # An idle fleet of Virtool 42.x pods polls every 2 s: an empty claim should cost about a GET.
        Target("42.x empty claim / GET 5-record", "v42_claim_empty", "get5", 0.80),
    ]


# Ratios shown under the targets for what they tell, with no bound.
INFORMATION = [
    ("yardstick GET 5-record / bare Flask", "yardstick_get5", REFERENCE),
    ("yardstick POST spread / bare Flask", "yardstick_post_spread", REFERENCE),
    ("SQLite: POST spread / bare Flask", "sqlite_post_spread", REFERENCE),
    ("GET 5-record through PgBouncer / direct", "pgbouncer_get5", "direct_get5"),
    ("GET 5-record direct unprepared / prepared", "unprepared_get5", "direct_get5"),
    ("POST spread through PgBouncer / direct", "pgbouncer_post", "direct_post"),
    ("POST spread direct unprepared / prepared", "unprepared_post", "direct_post"),
]


def _value(result: WrkResult, measure: str) -> float:
    return result.rps if measure == "rps" else float(result.p99_us)


def paired_ratio(top: Row, bottom: Row, measure: str = "rps") -> tuple[float, str]:
    """top / bottom: the median of round-by-round ratios when their rounds alternated, else of the medians."""
    medians = (top.rps / bottom.rps) if measure == "rps" else (top.p99_ms / bottom.p99_ms)
    if top.batch == bottom.batch and len(top.rounds) == len(bottom.rounds) and top.rounds:
        ratios = [_value(a, measure) / _value(b, measure) for a, b in zip(top.rounds, bottom.rounds)
                  if _value(b, measure)]
        if ratios:
            return statistics.median(ratios), (
                f"median of {len(ratios)} paired rounds: {min(ratios):.2f}..{max(ratios):.2f}; "
                f"ratio of medians {medians:.2f}")
    return medians, "ratio of medians, measured apart"


ORDER = ["reference", "yardstick_get5", "get5", "yardstick_post_spread", "post_spread", "post_one", "v42_claim_empty",
         "direct_get5", "unprepared_get5", "pgbouncer_get5", "direct_post", "unprepared_post", "pgbouncer_post",
         "get_1", "get_100", "get_1000", "post_1", "post_10000", "get_10", "post_10", "get_100k", "post_100k",
         "sqlite_get5", "sqlite_post_spread"]


def _problems(rows: Sequence[Row]) -> list[str]:
    problems = []
    for row in rows:
        for i, result in enumerate(([row.warmup] if row.warmup else []) + row.rounds):
            if result.non2xx or result.socket_errors:
                where = "warm-up" if (row.warmup and i == 0) else "round"
                problems.append(f"  {row.label} ({where}): {result.non2xx} non-2xx ({result.codes}), "
                                f"{result.socket_errors} socket errors; first: {result.first_error[:160]}")
    return problems


def render_table(rows: dict[str, Row], *, rounds: int, seconds: int, warmup_seconds: int, connections: int,
                 load_average: float, cpus: int, history_jobs: int) -> str:
    """The main table: every row's rate and latency, as ratios to bare Flask and to the yardstick; the targets."""
    table_rows = [rows[key] for key in ORDER + [k for k in rows if k not in ORDER]
                  if key in rows and rows[key].group != "curve"]
    if not table_rows:
        return ""
    reference = rows.get(REFERENCE)
    width = max([len(r.label) for r in table_rows] + [8])
    header = (f"{'scenario':<{width}}  {'req/s':>8}  {'p50 ms':>7}  {'p99 ms':>7}  {'x flask':>7}  "
              f"{'x ystick':>8}  {'non-2xx':>7}")
    lines = [f"Requests/s (median of {rounds} x {seconds} s after a {warmup_seconds} s warm-up, {connections} "
             "connections), p50/p99 latency (median of rounds), non-2xx over all rounds; x flask: ratio to bare "
             "Flask, x ystick: ratio to the yardstick's row of the same method (ratios of medians)", "",
             f"Machine: {cpus} CPUs; 5-minute load average before the run {load_average:.1f} "
             "(work other than this benchmark skews every figure)",
             "", header, "-" * len(header)]
    for row in table_rows:
        flask = f"{row.rps / reference.rps:7.2f}" if reference and reference.rps else f"{'-':>7}"
        twin = rows.get(YARDSTICK.get(row.kind, "")) if row.server != "reference" else None
        ystick = f"{row.rps / twin.rps:8.2f}" if twin and twin.rps else f"{'-':>8}"
        bad = f"{row.non2xx}" + (f"+{row.socket_errors}s" if row.socket_errors else "")
        lines.append(f"{row.label:<{width}}  {row.rps:8.1f}  {row.p50_ms:7.1f}  {row.p99_ms:7.1f}  {flask}  "
                     f"{ystick}  {bad:>7}")
    notes = [f"  {row.label}: {row.note}" for row in table_rows if row.note]
    if notes:
        lines += ["", "Notes:"] + notes
    problems = _problems(table_rows)
    if problems:
        lines += ["", "NON-2XX RESPONSES OR SOCKET ERRORS (rates of these rows are not to be trusted):"] + problems

    lines += ["", "Targets:"]
    for target in targets(history_jobs):
        top, bottom = rows.get(target.numerator), rows.get(target.denominator)
        if not top or not bottom:
            lines.append(f"  {target.text}: not measured")
            continue
        ratio, how = paired_ratio(top, bottom, target.measure)
        if target.measure == "rps":
            met, bound = ratio >= target.limit, f">= {target.limit:.2f}"
        else:
            met, bound = ratio <= target.limit, f"<= {target.limit:.2f}"
        verdict = "OK" if met else "MISSED"
        if not (top.clean and bottom.clean):
            verdict += " (but non-2xx responses or socket errors: not valid)"
        lines.append(f"  {target.text} = {ratio:.2f} (target {bound}) {verdict}  [{how}]")
    for text, numerator, denominator in INFORMATION:
        if numerator in rows and denominator in rows:
            ratio, how = paired_ratio(rows[numerator], rows[denominator])
            lines.append(f"  {text} = {ratio:.2f} (no target)  [{how}]")
    return "\n".join(lines)


def render_memory(memory: dict[str, object]) -> str:
    """Each worker's VmRSS after the early and the late count of requests, and the verdict."""
    early, late = memory["early"], memory["late"]
    lines = [f"Memory: VmRSS of each gunicorn worker after {early:,} and {late:,} requests "
             f"(served {memory['served']:,}, non-2xx/errors {memory['non2xx']}, {memory['seconds']:.0f} s)"]
    worst = 0.0
    for pid, values in memory["rss_kib"].items():
        if len(values) < 2:
            lines.append(f"  worker {pid}: {values[0] / 1024:.1f} MiB, then gone (replaced?)")
            continue
        ratio = values[1] / values[0]
        worst = max(worst, abs(ratio - 1))
        lines.append(f"  worker {pid}: {values[0] / 1024:6.1f} MiB -> {values[1] / 1024:6.1f} MiB  (x{ratio:.3f})")
    verdict = "OK" if worst <= 0.10 else "MISSED"
    scope = "" if late >= 50_000 else f" (only {late:,} requests: --quick; the target is for 50,000)"
    lines.append(f"  largest change {worst * 100:.1f} % (target within 10 %) {verdict}{scope}")
    return "\n".join(lines)


SERVER_NAMES = {"reference": "bare Flask", "yardstick": "yardstick", "jobapi": "jobapi"}
# Throughput that grows by less than this from one level to the next has flattened.
FLAT_GAIN = 1.10


def _flattens(levels: Sequence[int], rates: dict[int, float]) -> str:
    steps = [f"x{rates[b] / rates[a]:.2f} {a}->{b}" for a, b in zip(levels, levels[1:]) if rates.get(a) and rates.get(b)]
    flat_from = None
    for i, level in enumerate(levels):
        if level in rates and all(rates.get(later, 0) < rates[level] * FLAT_GAIN for later in levels[i + 1:]):
            flat_from = level
            break
    if flat_from is None or flat_from == levels[-1]:
        verdict = f"still rising at {levels[-1]} connections"
    else:
        verdict = f"flat from {flat_from} connections (no later level {FLAT_GAIN:.2f}x higher)"
    return f"{', '.join(steps)}: {verdict}"


def render_curve(rows: dict[str, Row], levels: Sequence[int], *, rounds: int, seconds: int,
                 warmup_seconds: int, nginx_note: str) -> str:
    """The concurrency curve: per level, each server direct and through nginx; where it flattens; errors at the top."""
    curve = [r for r in rows.values() if r.group == "curve"]
    if not curve:
        return ""
    by = {(r.kind, r.server, r.path, r.connections): r for r in curve}
    lines = [f"Concurrency curve: median of {rounds} round(s) of {seconds} s after a {warmup_seconds} s warm-up; "
             "GET of a 5-record job (every connection on it), POST spread over 4 jobs per connection (none shared); "
             "rounds of one level and method alternate between the servers and paths",
             nginx_note]
    for kind in ("get", "post"):
        servers = [s for s in ("reference", "yardstick", "jobapi") if any(k[0] == kind and k[1] == s for k in by)]
        if not servers:
            continue
        header = (f"{kind.upper():<5} {'conns':>5}  {'server':<10}  {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}  "
                  f"{'nginx req/s':>11} {'p50 ms':>7} {'p99 ms':>7}  {'ngx/dir':>7}  {'x ystick':>8}  errors")
        lines += ["", header, "-" * len(header)]
        for level in levels:
            for server in servers:
                direct, proxied = by.get((kind, server, "direct", level)), by.get((kind, server, "nginx", level))
                if not direct and not proxied:
                    continue
                twin = by.get((kind, "yardstick", "direct", level))

                def cells(row: Row | None) -> str:
                    if row is None:
                        return f"{'-':>8} {'-':>7} {'-':>7}"
                    return f"{row.rps:8.1f} {row.p50_ms:7.1f} {row.p99_ms:7.1f}"

                cost = f"{proxied.rps / direct.rps:7.2f}" if direct and proxied and direct.rps else f"{'-':>7}"
                ystick = (f"{direct.rps / twin.rps:8.2f}" if direct and twin and twin.rps and server != "reference"
                          else f"{'-':>8}")
                errors = []
                for row in (direct, proxied):
                    if row and not row.clean:
                        errors.append(f"{row.path}: {row.non2xx} non-2xx, {row.socket_errors} socket")
                lines.append(f"{'':<5} {level:>5}  {SERVER_NAMES[server]:<10}  {cells(direct)}  "
                             f"{'':>3}{cells(proxied)}  {cost}  {ystick}  {'; '.join(errors) or '-'}")
        lines.append("")
        for server in servers:
            for path in ("direct", "nginx"):
                rates = {lv: by[(kind, server, path, lv)].rps for lv in levels if (kind, server, path, lv) in by}
                if len(rates) > 1:
                    lines.append(f"  {kind.upper()} {SERVER_NAMES[server]} {path}: {_flattens(levels, rates)}")
    top = levels[-1]
    at_top = [r for r in curve if r.connections == top]
    failed = [r for r in at_top if not r.clean]
    lines.append("")
    if at_top:
        verdict = "OK" if not failed else "FAILED: " + "; ".join(
            f"{r.label}: {r.non2xx} non-2xx ({','.join(sorted({x.codes for x in r.rounds}))}), "
            f"{r.socket_errors} socket errors" for r in failed)
        lines.append(f"At {top} connections, no non-2xx answer and no socket error in {len(at_top)} rows "
                     f"(warm-ups included): {verdict}")
    shared = sum(r.shared for r in curve)
    if shared:
        lines.append(f"Note: {shared} POST requests found no free job of their own and shared one (see wrk/common.lua)")
    problems = _problems(curve)
    if problems:
        lines += ["", "NON-2XX RESPONSES OR SOCKET ERRORS:"] + problems
    return "\n".join(lines)
