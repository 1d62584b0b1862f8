"""A worker's client for its own job: read it, push its status, send heartbeats.

::

    from jobapi.client import JobCancelled, JobClient

    client = JobClient("http://127.0.0.1:8000", job_id, key)   # or http://127.0.0.1:8000/api
    job = client.get()
    client.push("running", "bowtie_build", 40)
    client.ping()

Retries are urllib3's ``Retry`` mounted on a ``requests`` session: connection
errors, read errors, 502, 503 and 504 are tried again with exponential
backoff, honouring ``Retry-After``. Pushes are retried too: each carries a
fresh ``Idempotency-Key``, and a retry resends the same prepared request with
the same key, so the service stores the record once however often it is sent.
Answers the service refuses become the exceptions below.

The URL is the service's root (``http://host:8000``) or its API's, ending in
``/api`` (``http://host:8000/api``, as Virtool's workers take it); a URL that
leads elsewhere raises ``WrongURL``, saying what answered there.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

__all__ = [
    "JobAPIError",
    "MissingSetting",
    "Unauthorized",
    "InsufficientRights",
    "NotFound",
    "Conflict",
    "JobFinished",
    "JobCancelled",
    "JobTerminated",
    "JobTimedOut",
    "InvalidInput",
    "ServiceUnavailable",
    "WrongURL",
    "JobClient",
    "root_url",
]

IDEMPOTENCY_HEADER = "Idempotency-Key"
JOB_STATE_HEADER = "Job-State"
RETRY_STATUSES = frozenset({502, 503, 504})
# Every method the client sends may be retried: GET reads, PUT ping is a
# heartbeat, and each POST push carries its Idempotency-Key.
RETRY_METHODS = frozenset({"GET", "POST", "PUT"})
# A path every jobapi serves, and that its OpenAPI document (GET <root>/api/openapi.json) lists.
API_DOCUMENT = "/api/openapi.json"
JOB_PATH = "/api/jobs/{job_id}"
URL_FORMS = "the service's root URL (http://host:8000) or its API's (http://host:8000/api)"


class JobAPIError(Exception):
    """An answer the service refused, or no answer at all; the base of the client's errors."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_id: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_id = error_id
        self.body = body or {}


class MissingSetting(KeyError):
    """``JobClient.from_environment`` found variables unset; ``names`` lists them."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(names)
        self.names = names

    def __str__(self) -> str:
        return "Set " + ", ".join(self.names) + " in the environment (the service's URL, the job's id and key)"


class Unauthorized(JobAPIError):
    """401: the key is wrong, or the job finished long enough ago that its key has expired."""


class InsufficientRights(JobAPIError):
    """403: the credentials belong to another job than the one asked for."""


class NotFound(JobAPIError):
    """404: no such job (never made, or removed)."""


class Conflict(JobAPIError):
    """409: the job's state refuses the change; ``state`` names the job's state."""

    def __init__(self, message: str, *, state: str | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.state = state


class JobFinished(Conflict):
    """409: the job reached a final state (complete, error, cancelled, terminated, timeout);
    nothing more may be pushed."""


class JobCancelled(JobFinished):
    """409: an operator cancelled the job; the worker should stop its work."""


class JobTerminated(JobFinished):
    """409: the job was terminated (its worker was stopped by a signal)."""


class JobTimedOut(JobFinished):
    """409: the reaper timed the job out after it fell silent; its work is no longer wanted."""


class InvalidInput(JobAPIError):
    """422: a field breaks a rule; ``errors`` maps each field to its messages."""

    def __init__(self, message: str, *, errors: dict[str, list[str]] | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.errors = errors or {}

    def __str__(self) -> str:
        return f"{self.message}: {self.errors}" if self.errors else self.message


class ServiceUnavailable(JobAPIError):
    """503 (or 502, 504, no connection) once every retry is spent; try again later."""


class WrongURL(JobAPIError):
    """The URL leads to something that is not jobapi's API: a 404 (or 405) where jobapi's
    OpenAPI document is not found either, or an answer that is not JSON (a web page)."""


_ERRORS_BY_STATUS: dict[int, type[JobAPIError]] = {
    401: Unauthorized,
    403: InsufficientRights,
    404: NotFound,
    422: InvalidInput,
    502: ServiceUnavailable,
    503: ServiceUnavailable,
    504: ServiceUnavailable,
}

FINAL_STATES = frozenset({"complete", "error", "cancelled", "terminated", "timeout"})
# The final states that have an exception of their own; the others are JobFinished.
_FINISHED_BY_STATE: dict[str, type[JobFinished]] = {
    "cancelled": JobCancelled,
    "terminated": JobTerminated,
    "timeout": JobTimedOut,
}


# Told of each retry: the method, the path, and why (a status, or an error's text).
RetryListener = Callable[[str, str, str], None]


class ReportingRetry(Retry):
    """urllib3's Retry, telling a listener of each retry it is about to make."""

    def __init__(self, *args: Any, listener: RetryListener | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listener = listener

    def new(self, **kwargs: Any) -> ReportingRetry:
        retry = super().new(**kwargs)
        retry.listener = self.listener
        return retry

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        retry = super().increment(method, url, response, error, _pool, _stacktrace)
        if self.listener is not None:
            reason = f"HTTP {response.status}" if response is not None and error is None else failure(error)
            self.listener(method or "", url or "", reason)
        return retry


def failure(error: BaseException | None) -> str:
    """Why a connection failed, in a few words (``connection refused``), else the error's text."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, socket.gaierror):
            return "host not found"
        if isinstance(current, (TimeoutError, requests.Timeout)):
            return "timed out"
        if isinstance(current, ConnectionResetError):
            return "connection reset"
        pending += [current.__cause__, current.__context__, getattr(current, "reason", None)]
        pending += [arg for arg in current.args if isinstance(arg, BaseException)]
    return str(error)


def root_url(url: str) -> str:
    """The service's root URL, from it or from its API's (one ending in ``/api``)."""
    url = url.strip().rstrip("/")
    return url[: -len("/api")] if url.endswith("/api") else url


def default_retry(
    retries: int, backoff_factor: float, listener: RetryListener | None = None
) -> Retry:
    """The retry policy of a client: ``retries`` attempts after the first, backing off."""
    return ReportingRetry(
        listener=listener,
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        other=0,
        redirect=0,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=RETRY_METHODS,
        backoff_factor=backoff_factor,
        backoff_max=30,
        respect_retry_after_header=True,
        # The last answer is returned, and becomes a typed error below.
        raise_on_status=False,
    )


class JobClient:
    """One job's client: ``get()`` its document, ``push()`` status records, ``ping()``.

    ``state`` is the job's state as the service last reported it (the
    ``Job-State`` header of every answer), ``None`` before the first call.
    A worker checks it, or catches ``JobCancelled``, to learn that an
    operator cancelled its job.
    """

    def __init__(
        self,
        base_url: str,
        job_id: str,
        key: str,
        *,
        timeout: float = 10.0,
        retries: int = 8,
        backoff_factor: float = 0.5,
        on_retry: RetryListener | None = None,
    ) -> None:
        self.base_url = root_url(base_url)
        self.job_id = job_id
        self.timeout = timeout
        self.retries = retries
        self.state: str | None = None
        self._serves_the_api: bool | None = None
        self.session = requests.Session()
        self.session.auth = (f"job-{job_id}", key)
        self.session.headers["Accept"] = "application/json"
        adapter = HTTPAdapter(max_retries=default_retry(retries, backoff_factor, on_retry))
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @classmethod
    def from_environment(cls, **kwargs: Any) -> JobClient:
        """A client for ``JOBAPI_URL`` (the service's root URL or its API's), ``JOB_ID`` and
        ``JOB_KEY`` from the environment.

        Raises ``MissingSetting`` naming every one of them that is unset or empty.
        """
        names = ("JOBAPI_URL", "JOB_ID", "JOB_KEY")
        missing = [name for name in names if not os.environ.get(name, "").strip()]
        if missing:
            raise MissingSetting(missing)
        url, job_id, key = (os.environ[name].strip() for name in names)
        return cls(url, job_id, key, **kwargs)

    def get(self) -> dict[str, Any]:
        """The job's document: task, args, proc, mem, user and every status record."""
        return self._request("GET", f"/api/jobs/{self.job_id}")

    def push(
        self,
        state: str,
        stage: str,
        progress: int,
        error: str | dict[str, Any] | None = None,
        *,
        step_name: str | None = None,
        step_description: str | None = None,
    ) -> dict[str, Any]:
        """Append a status record and return it as stored; raises ``JobFinished`` (``JobCancelled``,
        ``JobTerminated``, ``JobTimedOut``) once the job is finished.

        ``error`` is a message, or an object such as ``{"type", "traceback", "details"}``.
        """
        body: dict[str, Any] = {"state": state, "stage": stage, "progress": progress}
        if error is not None:
            body["error"] = error
        if step_name is not None:
            body["step_name"] = step_name
        if step_description is not None:
            body["step_description"] = step_description
        # One key per push, sent again unchanged by every retry of it.
        headers = {IDEMPOTENCY_HEADER: str(uuid.uuid4())}
        return self._request("POST", f"/api/jobs/{self.job_id}/status", json=body, headers=headers)

    def ping(self) -> dict[str, Any]:
        """Tell the service the job is still alive (a heartbeat); raises ``JobCancelled`` once cancelled."""
        return self._request("PUT", f"/api/jobs/{self.job_id}/ping")

    def close(self) -> None:
        """Close the client's pooled connections."""
        self.session.close()

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self.session.request(
                method, self.base_url + path, timeout=self.timeout, **kwargs
            )
        except (requests.ConnectionError, requests.Timeout) as error:
            tries = f" after {self.retries} retries" if self.retries else ""
            raise ServiceUnavailable(
                f"No answer from {self.base_url} ({failure(error)}{tries}): is jobapi running there? "
                f"Give {URL_FORMS}."
            ) from error
        if response.status_code in (404, 405) and not self._serves_api():
            raise WrongURL(
                f"{self.base_url} does not serve jobapi's API: {method} {path} answered {response.status_code}, "
                f"and GET {API_DOCUMENT} is not jobapi's API document. Give {URL_FORMS}.",
                status=response.status_code,
            )
        # jobapi's API answers in JSON, but for a proxy's 5xx in front of it.
        if response.status_code < 500 and not _is_json(response):
            kind = response.headers.get("Content-Type") or "no Content-Type"
            raise WrongURL(
                f"{self.base_url} does not serve jobapi's API: {method} {path} answered {response.status_code} "
                f"with {kind}, not JSON (a web page?). Give {URL_FORMS}.",
                status=response.status_code,
            )
        self.state = response.headers.get(JOB_STATE_HEADER, self.state)
        if response.ok:
            return response.json()
        raise _error_for(response)

    def _serves_api(self) -> bool:
        """Whether the root URL serves jobapi's API: its OpenAPI document lists the job's route.
        Asked once, when an answer is 404 (no such job, or no such API) or 405."""
        if self._serves_the_api is None:
            try:
                answer = self.session.get(self.base_url + API_DOCUMENT, timeout=self.timeout)
                document = answer.json() if answer.ok and _is_json(answer) else {}
            except (requests.RequestException, ValueError):
                return True  # no answer to the question: the 404 speaks for itself
            paths = document.get("paths") if isinstance(document, dict) else None
            self._serves_the_api = isinstance(paths, dict) and JOB_PATH in paths
        return self._serves_the_api


def _is_json(response: requests.Response) -> bool:
    media_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _error_for(response: requests.Response) -> JobAPIError:
    """The typed error for a refused answer."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or response.reason or f"HTTP {response.status_code}")
    common = {"status": response.status_code, "error_id": body.get("id"), "body": body}
    if response.status_code == 409:
        state = body.get("state") or response.headers.get(JOB_STATE_HEADER)
        if state in FINAL_STATES:
            return _FINISHED_BY_STATE.get(state, JobFinished)(message, state=state, **common)
        return Conflict(message, state=state, **common)
    if response.status_code == 422:
        return InvalidInput(message, errors=body.get("errors"), **common)
    return _ERRORS_BY_STATUS.get(response.status_code, JobAPIError)(message, **common)
