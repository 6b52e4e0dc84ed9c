"""How a failing world call is recorded: as an error, or as a benign post-completion conflict.

Every world call our code makes funnels its failure through :func:`throw_with_trace` (a real
error: ERROR status, ``error.type``, an ``exception`` event) or, when
:func:`is_benign_conflict` says so, through :func:`record_benign` (a handled error per the
OTel conventions: status left Unset, a DEBUG log line and a counter). Keeping the decision
in one function is what lets the span pipeline, the Sentry filter and the stream writer agree.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any, NoReturn

from opentelemetry.trace import Span, Status, StatusCode

from .errors import EntityConflictError, RunExpiredError, StreamError, WorkflowWorldError

__all__ = [
    "BENIGN_OPERATIONS",
    "benign_counts",
    "benign_operation",
    "error_type_of",
    "is_benign_conflict",
    "record_benign",
    "reset_benign_counts",
    "run_id_of",
    "throw_with_trace",
    "was_recorded_benign",
]

log = logging.getLogger("telemetry.conflicts")

#: Operations whose post-completion conflict is noise: the write lost a race with the run's end.
#: Canonical names: the SDK's span names without the ``world.`` prefix. ``benign_operation``
#: maps every other spelling the SDKs use onto these.
BENIGN_OPERATIONS = frozenset(
    {
        "streams.writeToStream",
        "streams.writeToStreamMulti",
        "streams.closeStream",
        "telemetry.write",
    }
)

#: The World's stream-write methods as the TS SDK names them (``world.streams.<method>`` spans).
_STREAM_WRITE_METHODS = frozenset({"writeToStream", "writeToStreamMulti", "closeStream"})
#: Other spellings of the same calls: 5.x ``workflow.stream.operation`` values and 5.x method
#: names (only under ``streams.``: a bare ``write`` or ``close`` says too little), and the
#: Python SDK's (vercel-workflow) World method names.
_NAMESPACED_ALIASES = {
    "write": "writeToStream",
    "writeMulti": "writeToStreamMulti",
    "write_multi": "writeToStreamMulti",
    "close": "closeStream",
}
_PYTHON_ALIASES = {
    "streams_write": "writeToStream",
    "streams_write_multi": "writeToStreamMulti",
    "streams_close": "closeStream",
    "write_to_stream": "writeToStream",
    "write_to_stream_multi": "writeToStreamMulti",
    "close_stream": "closeStream",
}
#: world-vercel's HTTP client span for a stream write: ``http PUT`` on ``…/runs/:id/stream/:name``,
#: given as the span name plus URL (``http PUT https://…/stream/…``) or as ``PUT /v2/runs/…/stream/…``.
_HTTP_STREAM_PUT = re.compile(r"^(?:http\s+)?PUT\s+\S*/stream/\S", re.IGNORECASE)


def benign_operation(operation: str) -> str | None:
    """The canonical stream/telemetry write (one of ``BENIGN_OPERATIONS``) ``operation`` names, if any.

    Accepts every spelling the SDKs use: ``writeToStream``, ``streams.writeToStream``,
    ``world.writeToStream``, ``world.streams.writeToStream``, the multi and close variants, the
    5.x ``streams.write``/``writeMulti``/``close``, the Python SDK's ``streams_write``…, and
    world-vercel's ``http PUT …/stream/…``.
    """
    name = operation.strip()
    if _HTTP_STREAM_PUT.match(name):
        return "streams.writeToStream"
    if name.startswith("world."):
        name = name[len("world.") :]
    if name == "telemetry.write":
        return name
    namespaced = name.startswith("streams.")
    if namespaced:
        name = name[len("streams.") :]
    method = name if name in _STREAM_WRITE_METHODS else _PYTHON_ALIASES.get(name)
    if method is None and namespaced:
        method = _NAMESPACED_ALIASES.get(name)
    return f"streams.{method}" if method else None


_CONFLICT_NAMES = frozenset({"EntityConflictError", "RunExpiredError"})
_RUN_ID = re.compile(r"wrun_[0-9A-Za-z]{26}")
#: world-vercel's stream 409, with or without the ``(PUT url; x-vercel-…)`` diagnostics of 4.3+.
_STREAM_409 = re.compile(
    r"Stream write failed: HTTP 409\b.*?Run \\?\"(wrun_[0-9A-Za-z]{26})\\?\" is already completed",
    re.DOTALL,
)
_ALREADY_COMPLETED = re.compile(r"Run \\?\"wrun_[0-9A-Za-z]{26}\\?\" is already completed")


def _facts(error: BaseException | Mapping[str, Any]) -> tuple[str, str, int | None]:
    """(type name, message, status) of an exception or of a serialized error mapping.

    Mappings (``{"type"|"name", "message"|"value", "status"}``) are what arrives from spans
    and Sentry events, where the error is no longer a Python object.
    """
    if isinstance(error, BaseException):
        return type(error).__name__, str(error), getattr(error, "status", None)
    name = str(error.get("type") or error.get("name") or "").rsplit(".", 1)[-1]
    message = str(error.get("message") or error.get("value") or "")
    status = error.get("status")
    return name, message, int(status) if isinstance(status, (int, str)) and str(status).isdigit() else None


def is_benign_conflict(error: BaseException | Mapping[str, Any], *, operation: str) -> bool:
    """True when ``error`` is a post-completion conflict on a stream or telemetry write.

    The same conflict on any other operation (a step completion, a run transition) is not
    decided here as benign: those carry state the user cares about.
    """
    if benign_operation(operation) is None:
        return False
    name, message, status = _facts(error)
    if isinstance(error, (EntityConflictError, RunExpiredError)) or name in _CONFLICT_NAMES:
        return True
    if status in (409, 410) and (
        isinstance(error, WorkflowWorldError) or name in ("WorkflowWorldError", "StreamError")
    ):
        return True
    if isinstance(error, StreamError) or name == "StreamError":
        return bool(_ALREADY_COMPLETED.search(message))
    return bool(_STREAM_409.search(message))


def run_id_of(error: BaseException | Mapping[str, Any]) -> str | None:
    """The run an error is about: its ``run_id`` attribute, else the first ``wrun_…`` in its text."""
    run_id = getattr(error, "run_id", None) if isinstance(error, BaseException) else error.get("run_id")
    if run_id:
        return str(run_id)
    match = _RUN_ID.search(_facts(error)[1])
    return match.group(0) if match else None


def error_type_of(error: BaseException, explicit: str | None = None) -> str:
    """``error.type``: explicit, else the error's code, else ``HTTP <status>``, else the class name."""
    if explicit:
        return explicit
    code = getattr(error, "code", None)
    if code:
        return str(code)
    status = getattr(error, "status", None)
    if status:
        return f"HTTP {status}"
    return type(error).__name__


def throw_with_trace(span: Span, error: BaseException, *, error_type: str | None = None) -> NoReturn:
    """Record ``error`` on ``span`` as a real failure and raise it."""
    kind = error_type_of(error, error_type)
    span.set_attribute("error.type", kind)
    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    raise error


_counts: Counter[str] = Counter()
_counts_lock = threading.Lock()
_RECORDED = "_wft_benign_recorded"


def was_recorded_benign(error: BaseException) -> bool:
    """Whether ``record_benign`` already handled this error object (so a filter downstream drops it)."""
    return bool(getattr(error, _RECORDED, False))


def record_benign(span: Span, error: BaseException, *, logger: logging.Logger | None = None) -> None:
    """Record a handled post-completion conflict: status stays Unset, no exception event.

    The span gets ``error.type`` and ``workflow.conflict="benign"``; the process logs one
    DEBUG line and counts it once per error object, so a conflict seen by both a traced world
    and the stream writer above it is counted once.
    """
    kind = error_type_of(error)
    run_id = run_id_of(error)
    span.set_attribute("error.type", kind)
    span.set_attribute("workflow.conflict", "benign")
    if run_id:
        span.set_attribute("workflow.run.id", run_id)
    if was_recorded_benign(error):
        return
    try:
        setattr(error, _RECORDED, True)
    except AttributeError:  # an exception type with __slots__: count it anyway
        pass
    with _counts_lock:
        _counts[kind] += 1
    (logger or log).debug(
        "benign post-completion conflict on run %s: %s",
        run_id or "?",
        error,
        exc_info=error,
        extra={"workflow_run_id": run_id, "error_type": kind},
    )


def benign_counts() -> dict[str, int]:
    """Benign conflicts recorded by this process, per ``error.type``."""
    with _counts_lock:
        return dict(_counts)


def reset_benign_counts() -> None:
    with _counts_lock:
        _counts.clear()
