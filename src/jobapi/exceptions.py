"""What the rules of jobs and tokens refuse, said in the domain's words.

The service modules raise these; they know nothing of HTTP. ``errors.py``
maps each to its status and envelope in one table, and the command line
prints its message on one line.
"""

from __future__ import annotations

# A final state -> how a refusal names it (SPEC 4 and 7.3).
FINISHED_MESSAGES = {
    "complete": "Job is complete",
    "cancelled": "Job is cancelled",
    "error": "Job has errored",
    "terminated": "Job was terminated",
    "timeout": "Job timed out",
}


class DomainError(Exception):
    """A request the rules refuse; ``message`` is a sentence a person can read."""

    message = "Refused"

    def __init__(self, message: str | None = None) -> None:
        if message is not None:
            self.message = message
        super().__init__(self.message)


class JobNotFound(DomainError):
    """No job has this id (never made, or removed)."""

    message = "Not found"

    def __init__(self, job_id: str | None = None, message: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobStateError(DomainError):
    """The job's state refuses the change; ``state`` is the job's current state."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


class JobFinished(JobStateError):
    """The job has reached a final state: nothing changes it any more."""

    def __init__(self, state: str) -> None:
        super().__init__(FINISHED_MESSAGES.get(state, f"Job is {state}"), state)


class TransitionRefused(JobStateError):
    """The state machine has no move from the job's state to the pushed one."""

    def __init__(self, current: str, new: str) -> None:
        super().__init__(f"Cannot move a job from {current} to {new}", current)
        self.new = new


class JobStillActive(JobStateError):
    """Removing a job that is not finished needs force."""

    def __init__(self, state: str) -> None:
        super().__init__(
            f"Job is {state}: only a finished job is removed without force", state
        )


class JobNotWaiting(JobStateError):
    """Only a waiting job can be acquired."""

    def __init__(self, state: str) -> None:
        super().__init__(f"Job is {state}: only a waiting job can be acquired", state)


class AlreadyAcquired(DomainError):
    """The job was acquired (or claimed) before; its key went to whoever did."""

    message = "Job already acquired"


class StepNotFound(DomainError):
    """The job's claim declared no step with this id."""

    message = "Step not found"

    def __init__(self, step_id: str) -> None:
        super().__init__()
        self.step_id = step_id


class StepAlreadyStarted(DomainError):
    """The step was started before another one was: starting it again would move the job back."""

    message = "Step already started"

    def __init__(self, step_id: str) -> None:
        super().__init__()
        self.step_id = step_id


class TooManyRecords(JobStateError):
    """The job holds as many status records as a job may."""

    def __init__(self, state: str, limit: int) -> None:
        super().__init__("Job has too many status records", state)
        self.limit = limit


class IdempotencyKeyReused(DomainError):
    """An Idempotency-Key already stored a different status of this job."""

    message = "Already used for a different status of this job."


class InvalidCursor(DomainError):
    """A page cursor this service did not make."""

    message = "Not a cursor this service made."


class TokenExists(DomainError):
    """Token names are unique, revoked tokens' included."""

    def __init__(self, name: str) -> None:
        super().__init__(f"A token named {name!r} already exists")
        self.name = name


class TokenNotFound(DomainError):
    """No token has this name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"No token named {name!r}")
        self.name = name
