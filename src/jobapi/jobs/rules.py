"""The fields a job pushes in a status record and their rules (SPEC 1.2 and 7.3), in one table.

``PUSH_RULES`` is the only place a rule is written. From it are built the
push's marshmallow schema and its direct check (``jobs.schemas``), hence the
OpenAPI document; the models' column lengths and CHECKs (``models``), hence
the migrations, which ``tests/test_push_rules.py`` compares with this table;
the SQL's column lists and a record's document (``jobs.statements``,
``jobs.documents``); and the digest that tells a retried push from another
(``request_digest``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .states import ERROR_ALLOWED, ERROR_REQUIRED, PUSHABLE_STATES

# The kinds of value a field takes.
CHOICE = "choice"  # one of ``choices``
TEXT = "text"  # a string of ``min_length`` to ``max_length`` characters, no NUL
PERCENT = "percent"  # an integer (or a string of at most 10 digits) from ``minimum`` to ``maximum``
ERROR = "error"  # a text (``min_length`` to ``max_length``), or an error object of at most ``max_bytes`` as JSON


@dataclass(frozen=True)
class FieldRule:
    """One field of a pushed status record and what it must be."""

    name: str
    kind: str
    # Must be sent (and not null); a field that need not be sent is null when it is not.
    required: bool = False
    choices: tuple[str, ...] = ()
    min_length: int | None = None
    max_length: int | None = None
    minimum: int | None = None
    maximum: int | None = None
    max_bytes: int | None = None
    # The states whose records must carry it (not null), and those that may; None: any state may.
    required_in: frozenset[str] | None = None
    allowed_in: frozenset[str] | None = None
    # Shown in a record's document only when not null (Virtool's additions to the seed's five keys).
    shown_when_given: bool = False

    def check_constraint(self) -> str:
        """The SQL CHECK that holds the column to this rule's bounds (a number's range)."""
        return f"{self.name} >= {self.minimum} AND {self.name} <= {self.maximum}"


PUSH_RULES: tuple[FieldRule, ...] = (
    FieldRule("state", CHOICE, required=True, choices=PUSHABLE_STATES),
    FieldRule("stage", TEXT, required=True, min_length=0, max_length=256),
    FieldRule("progress", PERCENT, required=True, minimum=0, maximum=100),
    FieldRule(
        "error", ERROR, min_length=1, max_length=16384, max_bytes=16 * 1024,
        required_in=ERROR_REQUIRED, allowed_in=ERROR_ALLOWED,
    ),
    FieldRule("step_name", TEXT, min_length=0, max_length=256, shown_when_given=True),
    FieldRule("step_description", TEXT, min_length=0, max_length=1024, shown_when_given=True),
)

RULES = {rule.name: rule for rule in PUSH_RULES}
FIELD_NAMES = tuple(RULES)
STAGE, PROGRESS, ERROR_RULE = RULES["stage"], RULES["progress"], RULES["error"]
# The keys a record's document shows only when its push gave them.
SHOWN_WHEN_GIVEN = tuple(rule.name for rule in PUSH_RULES if rule.shown_when_given)
# A record's keys in every document, in order: the seed's five (the fields above follow, when given).
SEED_RECORD_KEYS = ("state", "stage", "error", "progress", "timestamp")
DOCUMENT_KEYS = (*SEED_RECORD_KEYS, *SHOWN_WHEN_GIVEN)

# A digest covers the fields in the table's order; trailing nulls past these are left out,
# so that a field added later leaves the digests of pushes without it as they were.
_DIGESTED_ALWAYS = ("state", "stage", "progress", "error")
_DIGESTED_TOGETHER = ("step_name", "step_description")


def request_digest(push: Mapping[str, Any]) -> str:
    """A digest of a push's content, to tell a retry from a reuse of its Idempotency-Key.

    A push without step fields digests as records stored before they existed
    did, and the two step fields go together (as they did before any later
    field existed).
    """
    values = [push.get(name) for name in FIELD_NAMES]
    keep = len(_DIGESTED_ALWAYS)
    for index, value in enumerate(values):
        if value is not None:
            keep = max(keep, index + 1)
    if keep > len(_DIGESTED_ALWAYS):
        keep = max(keep, len(_DIGESTED_ALWAYS) + len(_DIGESTED_TOGETHER))
    canonical = json.dumps(values[:keep], separators=(",", ":"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()
