"""A job's states and the moves between them (SPEC 4 and 7.3), in one place."""

from __future__ import annotations

from ..exceptions import JobFinished, TransitionRefused

# Every state a record may carry, in the order a job usually passes them.
STATES = (
    "waiting",
    "preparing",
    "running",
    "complete",
    "cancelled",
    "error",
    "terminated",
    "timeout",
)

# No change leaves a final state.
FINAL_STATES = frozenset({"complete", "cancelled", "error", "terminated", "timeout"})

# A job in one of these is at work: it pings, and the reaper times it out when it falls silent.
ACTIVE_STATES = frozenset({"preparing", "running"})

# Written by the reaper only; a job never pushes it.
REAPER_STATES = frozenset({"timeout"})

# What a job may push.
PUSHABLE_STATES = tuple(state for state in STATES if state not in REAPER_STATES)

# state -> the states a push may move it to.
TRANSITIONS: dict[str, frozenset[str]] = {
    "waiting": frozenset({"waiting", "preparing", "running", "error", "cancelled", "terminated"}),
    "preparing": frozenset({"preparing", "running", "error", "cancelled", "terminated"}),
    "running": frozenset({"running", "complete", "error", "cancelled", "terminated"}),
}

# The pushed states whose record must carry an error, and those that may.
ERROR_REQUIRED = frozenset({"error"})
ERROR_ALLOWED = frozenset({"error", "terminated"})


def is_final(state: str) -> bool:
    """Whether nothing may follow a record in this state."""
    return state in FINAL_STATES


def check_transition(current: str, new: str) -> None:
    """Refuse a move the state machine does not allow: ``JobFinished`` or ``TransitionRefused``."""
    if current in FINAL_STATES:
        raise JobFinished(current)
    if new not in TRANSITIONS[current]:
        raise TransitionRefused(current, new)


def state_check_constraint() -> str:
    """The SQL CHECK that keeps a ``state`` column to the known states."""
    return "state IN (" + ", ".join(f"'{state}'" for state in STATES) + ")"
