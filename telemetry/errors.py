"""Semantic world errors, named exactly as the Workflow SDK names them.

SDK users recognise ``EntityConflictError`` or ``RunExpiredError`` on sight; keeping the
names means a span's ``exception.type`` reads the same whether the SDK or we raised it.
``error_for_response`` is the one place an HTTP status becomes a semantic error, mirroring
world-vercel's ``errorForResponse``.
"""

from __future__ import annotations

import email.utils
import math
import re
import time

__all__ = [
    "WorkflowError",
    "WorkflowWorldError",
    "EntityConflictError",
    "RunExpiredError",
    "PreconditionFailedError",
    "TooEarlyError",
    "ThrottleError",
    "StreamError",
    "HookNotFoundError",
    "WorkflowRunNotFoundError",
    "UnreadableEventsError",
    "error_for_response",
    "parse_retry_after",
]


class WorkflowError(Exception):
    """Base of every SDK-named error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WorkflowWorldError(WorkflowError):
    """A world (storage backend) call failed; the catch-all the SDK calls ``WorkflowWorldError``."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        url: str | None = None,
        retry_after: int | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.url = url
        self.retry_after = retry_after
        self.run_id = run_id


class EntityConflictError(WorkflowWorldError):
    """409, or a local conflict: terminal-state transition, entity exists, duplicate event."""


class RunExpiredError(WorkflowWorldError):
    """410: the run is no longer available (completed, expired, cleaned up)."""


class PreconditionFailedError(WorkflowWorldError):
    """412: the ``stateUpdatedAt`` snapshot the caller sent is stale."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 412,
        code: str | None = None,
        url: str | None = None,
        retry_after: int | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, url=url, retry_after=retry_after, run_id=run_id)


class TooEarlyError(WorkflowWorldError):
    """425: a step was started before its ``retryAfter``."""


class ThrottleError(WorkflowWorldError):
    """429: rate limited; ``retry_after`` says for how long."""


class StreamError(WorkflowWorldError):
    """A stream write/read failed (5.x ``StreamError``, code ``STREAM_ERROR``)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = "STREAM_ERROR",
        url: str | None = None,
        retry_after: int | None = None,
        run_id: str | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code, url=url, retry_after=retry_after, run_id=run_id)


class HookNotFoundError(WorkflowError):
    def __init__(self, token: str) -> None:
        super().__init__("Hook not found")
        self.token = token


class WorkflowRunNotFoundError(WorkflowError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f'Workflow run "{run_id}" not found')
        self.run_id = run_id


class UnreadableEventsError(WorkflowWorldError):
    """A run's event log holds a record that stayed unreadable past the grace period.

    Readers of a live world stop at the first record they cannot read yet (a file being
    written), so no event is skipped and the next pass retries. Only once the record stays
    unreadable (truncated for good, not JSON, a FIFO or device, no permission) do they raise
    this, naming the path, so the caller marks that one run and goes on with the others.
    """

    def __init__(self, run_id: str, path: str, reason: str) -> None:
        super().__init__(
            f"run {run_id}: unreadable event record {path}: {reason}", code="UNREADABLE_EVENTS", run_id=run_id
        )
        self.path = path
        self.reason = reason


_MITIGATED_SUFFIX = "(x-vercel-mitigated=challenge)"


def error_for_response(
    status: int,
    message: str,
    *,
    retry_after: int | None = None,
    code: str | None = None,
    url: str | None = None,
    mitigated: str | None = None,
) -> WorkflowWorldError:
    """Map a non-2xx world response to its semantic error, exactly as world-vercel does."""
    if status == 409:
        return EntityConflictError(message)
    if status == 410:
        return RunExpiredError(message)
    if status == 412:
        return PreconditionFailedError(message, retry_after=retry_after)
    if status == 425:
        return TooEarlyError(message, retry_after=retry_after)
    if status == 429:
        if mitigated == "challenge":
            if _MITIGATED_SUFFIX not in message:
                message = f"{message} {_MITIGATED_SUFFIX}"
            return WorkflowWorldError(message, status=429, code="TRANSPORT", url=url, retry_after=retry_after)
        return ThrottleError(message, retry_after=retry_after)
    return WorkflowWorldError(message, status=status, code=code, url=url, retry_after=retry_after)


_DELTA_SECONDS = re.compile(r"^\s*(\d+)\s*$")


def parse_retry_after(value: str | None, *, now: float | None = None) -> int | None:
    """Seconds to wait from a ``Retry-After`` value: delta-seconds or an HTTP-date.

    The SDK parses only delta-seconds and drops dates; servers and proxies send both.
    A date in the past means "now" (0). Anything unparseable is None.
    """
    if value is None:
        return None
    match = _DELTA_SECONDS.match(value)
    if match:
        return int(match.group(1))
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    current = time.time() if now is None else now
    return max(0, math.ceil(when.timestamp() - current))
