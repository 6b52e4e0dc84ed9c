"""Sentry without benign workflow-conflict noise: one rule list for the in-process
``before_send``, the collector's relay and ``wft sentry dry-run`` alike.

Noise is a post-completion conflict, wherever it surfaces (seed issue #1949: world-vercel's
stream 409 arriving as an unhandled rejection). Everything else is kept, including a 409 on an
operation that is not a post-completion write, and any 5xx. Exceptions still in hand (in-process)
are judged by ``telemetry.tracing.is_benign_conflict`` itself.

The rules know both SDKs' spellings: the TypeScript SDK's (``@sentry/node`` events) and the Python
SDK's, ``vercel-workflow`` (PyPI), whose World classes raise its own ``EntityConflictError`` /
``RunExpiredError`` / ``WorkflowWorldError`` and whose runtime reports step failures and handled races
through the ``vercel.workflow`` logger (sentry-sdk's logging integration makes those events). In a
vercel-workflow app ``before_send`` runs inside the step or run being reported, so it asks
vercel-workflow which workflow and step that is, and fingerprints a step's failures by
(workflow, step, error type): every retry of one step lands in one issue.
"""

from __future__ import annotations

import re
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypedDict

from .semconv import STEP_ID, STEP_NAME, WORKFLOW_CONFLICT, WORKFLOW_NAME, WORKFLOW_RUN_ID
from .tracing import is_benign_conflict, was_recorded_benign

__all__ = [
    "RULES",
    "Rule",
    "BeforeSend",
    "EventFacts",
    "ExceptionFacts",
    "SentryEvent",
    "before_send",
    "classify",
    "drop_counts",
    "exception_of",
    "init",
    "make_before_send",
    "vercel_workflow_tags",
    "workflow_ids",
]

_RUN_ID = re.compile(r"\bwrun_[0-9A-Za-z]{26}\b")
_STEP_ID = re.compile(r"\bstep_[0-9A-Za-z]{26}\b")
_STREAM_FUNCTIONS = re.compile(
    r"(writeToStream(Multi)?|closeStream|flushablestream|streams?\.(write|writeMulti|close)|StreamWriter\.(write|write_many|close)"
    r"|\bstreams_(write|write_multi|close)\b)",  # vercel-workflow's World methods
    re.I,
)
_STEP_RACES = ("Tried completing step, but step has already finished", "Cannot transition run from terminal state")
#: vercel-workflow's runtime, when its ``run_completed`` / ``run_failed`` lost the race to the run's end
#: (it catches the ``EntityConflictError`` and logs this WARNING; the run's outcome is already recorded)
_PY_RUN_RACE = re.compile(r"Workflow run wrun_[0-9A-Za-z]{26} was already completed")
#: vercel-workflow's Vercel world on a stream PUT answered 409/410 (``_stream_http_error``): unlike the TS
#: SDK's message, it carries no response body, only the request and the ``x-vercel-*`` headers
_PY_STREAM_CONFLICT = re.compile(
    r"Stream (?:write|close) failed: HTTP (?:409|410) \(PUT /v2/runs/wrun_[0-9A-Za-z]{26}/stream/[^\s;()]+"
    r"(?:; x-vercel-[a-z-]+=[^;()]*)*\)"
)
_PY_STREAM_TYPES = ("WorkflowWorldError", "RunExpiredError")
_FLUSH = "Background flush of step stream ops failed"
_CONFLICT_TYPES = ("EntityConflictError", "RunExpiredError")

#: A Sentry event or hint as ``before_send`` sees it: the SDK's JSON-like dict.
SentryEvent = dict[str, Any]
#: ``sentry_sdk.init(before_send=…)``'s shape: the event (changed) or None to drop it.
BeforeSend = Callable[[SentryEvent, SentryEvent], SentryEvent | None]


class ExceptionFacts(TypedDict):
    """One entry of an event's ``exception.values``, flattened to what the rules match on."""

    type: str
    value: str
    mechanism: str
    #: ``module.function filename`` of every frame, space-separated
    functions: str


@dataclass
class EventFacts:
    """What the rules look at, from a Sentry event (and, in-process, the exception itself)."""

    exceptions: list[ExceptionFacts] = field(default_factory=list)
    message: str = ""
    extra_text: str = ""
    tags: dict[str, Any] = field(default_factory=dict)
    #: in-process only: the exception of ``hint["exc_info"]``, else one a log record was given as an argument
    exc: BaseException | None = None

    @classmethod
    def of(cls, event: Mapping[str, Any], hint: Mapping[str, Any] | None = None) -> EventFacts:
        values = ((event.get("exception") or {}).get("values")) or []
        exceptions: list[ExceptionFacts] = []
        for value in values:
            frames = ((value.get("stacktrace") or {}).get("frames")) or []
            exceptions.append(
                {
                    "type": str(value.get("type") or ""),
                    "value": str(value.get("value") or ""),
                    "mechanism": str((value.get("mechanism") or {}).get("type") or ""),
                    "functions": " ".join(
                        f"{f.get('module') or ''}.{f.get('function') or ''} {f.get('filename') or ''}" for f in frames
                    ),
                }
            )
        logentry = event.get("logentry") or {}
        message = str(logentry.get("formatted") or logentry.get("message") or event.get("message") or "")
        extra = " ".join(_strings([event.get(k) for k in ("extra", "contexts", "breadcrumbs")]))
        tags = event.get("tags") or {}
        if isinstance(tags, list):  # the JSON form some SDKs send: [[key, value], ...]
            tags = {k: v for k, v in tags}
        return cls(exceptions, message, extra, dict(tags), exception_of(hint))

    def text(self) -> str:
        return " ".join([self.message, *(e["value"] for e in self.exceptions), self.extra_text])


def exception_of(hint: Mapping[str, Any] | None) -> BaseException | None:
    """The exception an in-process event is about: ``exc_info``'s, else (a log event made by sentry-sdk's
    logging integration) an exception passed to the log call as an argument, as vercel-workflow's
    "step has failed but will be retried" WARNING passes the step's error."""
    if not hint:
        return None
    exc_info = hint.get("exc_info")
    if exc_info and isinstance(exc_info[1], BaseException):
        return exc_info[1]
    args = getattr(hint.get("log_record"), "args", None)
    if isinstance(args, tuple):
        return next((arg for arg in args if isinstance(arg, BaseException)), None)
    return None


def _strings(value: Any) -> list[str]:
    """Every string inside a JSON-like value (causes hide in ``extra`` and ``contexts``)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


@dataclass(frozen=True)
class Rule:
    id: str
    reason: str
    matches: Callable[[EventFacts], bool]


def _stream_409(facts: EventFacts) -> bool:
    return any(
        is_benign_conflict({"type": e["type"], "message": e["value"]}, operation="streams.writeToStream")
        and "Stream write failed" in e["value"]
        for e in facts.exceptions
    )


def _stream_error_409(facts: EventFacts) -> bool:
    return any(
        e["type"] == "StreamError"
        and is_benign_conflict(
            {"type": "StreamError", "message": e["value"], "status": 409 if "HTTP 409" in e["value"] else None},
            operation="streams.write",
        )
        for e in facts.exceptions
    )


def _py_stream_conflict(facts: EventFacts) -> bool:
    if any(e["type"] in _PY_STREAM_TYPES and _PY_STREAM_CONFLICT.fullmatch(e["value"]) for e in facts.exceptions):
        return True
    # the runtime's own report of the failed write ("... executing step 's' (attempt 1): Stream write failed: …")
    return bool(_PY_STREAM_CONFLICT.search(facts.message))


def _conflict_in_stream_write(facts: EventFacts) -> bool:
    return any(e["type"] in _CONFLICT_TYPES and _STREAM_FUNCTIONS.search(e["functions"]) for e in facts.exceptions)


def _racing_completion(facts: EventFacts) -> bool:
    texts = [e["value"] for e in facts.exceptions if e["type"] in _CONFLICT_TYPES] + [facts.message]
    return any(race in text for text in texts for race in _STEP_RACES) or bool(_PY_RUN_RACE.fullmatch(facts.message))


def _flush_of_409(facts: EventFacts) -> bool:
    if _FLUSH not in facts.message and not any(_FLUSH in e["value"] for e in facts.exceptions):
        return False
    cause = facts.extra_text + " " + " ".join(e["value"] for e in facts.exceptions)
    if "Stream write failed: HTTP 409" in cause and is_benign_conflict(
        {"type": "Error", "message": cause}, operation="streams.writeToStream"
    ):
        return True
    return "StreamError" in cause and "HTTP 409" in cause and "is already completed" in cause


def _recorded_benign(facts: EventFacts) -> bool:
    if facts.tags.get(WORKFLOW_CONFLICT) == "benign":
        return True
    return facts.exc is not None and was_recorded_benign(facts.exc)


def _in_process_benign(facts: EventFacts) -> bool:
    exc = facts.exc
    if exc is None:
        return False
    if "Stream write failed" in str(exc) and is_benign_conflict(exc, operation="streams.writeToStream"):
        return True
    if type(exc).__name__ in _CONFLICT_TYPES or getattr(exc, "status", None) in (409, 410):
        functions = " ".join(f"{f.filename} {f.name}" for f in traceback.extract_tb(exc.__traceback__))
        if _STREAM_FUNCTIONS.search(functions) or "/telemetry/streams.py" in functions:
            return is_benign_conflict(exc, operation="streams.writeToStream")
    return False


#: The rules, in the order they are tried. Data: the filter, the relay and the dry-run share them.
RULES: tuple[Rule, ...] = (
    Rule(
        "wft-benign",
        "recorded as a benign post-completion conflict by workflow-telemetry's own wrappers",
        _recorded_benign,
    ),
    Rule(
        "in-process-benign",
        "an exception from a stream/telemetry write that telemetry.tracing.is_benign_conflict calls benign",
        _in_process_benign,
    ),
    Rule("stream-error-409", "5.x StreamError carrying the post-completion 409", _stream_error_409),
    Rule(
        "vercel-stream-409",
        'world-vercel stream write to a finished run: "Stream write failed: HTTP 409 … is already completed"'
        " (also as an unhandled rejection)",
        _stream_409,
    ),
    Rule(
        "py-stream-409",
        'vercel-workflow (Python) stream write/close to a finished run: WorkflowWorldError "Stream write failed:'
        ' HTTP 409 (PUT /v2/runs/<run>/stream/<name>…)", which carries no response body',
        _py_stream_conflict,
    ),
    Rule(
        "conflict-in-stream-write",
        "EntityConflictError/RunExpiredError raised inside a stream or telemetry write",
        _conflict_in_stream_write,
    ),
    Rule(
        "racing-completion",
        'a completion that lost a race with another: "Tried completing step, but step has already finished",'
        ' "Cannot transition run from terminal state", vercel-workflow\'s "Workflow run <run> was already completed"',
        _racing_completion,
    ),
    Rule(
        "background-flush-409",
        '"Background flush of step stream ops failed" whose cause is the post-completion 409',
        _flush_of_409,
    ),
)


def classify(event: Mapping[str, Any], hint: Mapping[str, Any] | None = None) -> Rule | None:
    """The rule that calls ``event`` noise, or None when it is kept."""
    facts = EventFacts.of(event, hint)
    for rule in RULES:
        if rule.matches(facts):
            return rule
    return None


_drops: Counter[str] = Counter()
_drops_lock = threading.Lock()


def drop_counts() -> dict[str, int]:
    """Events dropped by this process's filter, per rule id."""
    with _drops_lock:
        return dict(_drops)


def workflow_ids(event: Mapping[str, Any], exc: BaseException | None = None) -> tuple[str | None, str | None]:
    """(run id, step id) an event is about: its tags, else the exception's attributes, else ids in its text."""
    facts = EventFacts.of(event)
    run_id = facts.tags.get(WORKFLOW_RUN_ID) or (getattr(exc, "run_id", None) if exc is not None else None)
    step_id = facts.tags.get(STEP_ID) or (getattr(exc, "step_id", None) if exc is not None else None)
    text = facts.text()
    if not run_id:
        match = _RUN_ID.search(text)
        run_id = match.group(0) if match else None
    if not step_id:
        match = _STEP_ID.search(text)
        step_id = match.group(0) if match else None
    return run_id, step_id


#: vercel-workflow's public metadata getters, and which of their fields become which tag
_VERCEL_WORKFLOW_METADATA: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = (
    ("get_step_metadata", (("run_id", WORKFLOW_RUN_ID), ("step_id", STEP_ID), ("step_name", STEP_NAME))),
    ("get_workflow_metadata", (("run_id", WORKFLOW_RUN_ID), ("workflow_name", WORKFLOW_NAME))),
)


def vercel_workflow_tags() -> dict[str, str]:
    """The run, step and workflow vercel-workflow says are executing here, as tags; empty elsewhere.

    vercel-workflow logs a step's failure from inside the step's context, and sentry-sdk calls
    ``before_send`` synchronously from that log call, so ``get_step_metadata()`` answers there (and
    ``get_workflow_metadata()`` in a step and in a workflow replay). Read only when the app has
    imported vercel-workflow already: this module never imports it.
    """
    sdk = sys.modules.get("vercel.workflow")
    if sdk is None:
        return {}
    tags: dict[str, str] = {}
    for getter, fields in _VERCEL_WORKFLOW_METADATA:
        try:
            info = getattr(sdk, getter)()
        except Exception:  # RuntimeError outside a step or workflow; any other failure means "unknown" too
            continue
        for attribute, tag in fields:
            value = getattr(info, attribute, None)
            if isinstance(value, str) and value:
                tags.setdefault(tag, value)
    return tags


def annotate(
    event: dict[str, Any],
    exc: BaseException | None = None,
    *,
    dashboard_url: str | None = None,
    context: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Tags ``workflow.run.id`` / ``step.id`` (and, from ``context``, the workflow and step names), a link
    to the run's page, and one issue per (workflow, step, error type) for step failures instead of one
    per retry. Tags the event or the user already set win over ``context``."""
    tags = event.setdefault("tags", {})
    if isinstance(tags, list):
        tags = event["tags"] = {k: v for k, v in tags}
    for key, value in (context or {}).items():
        tags.setdefault(key, value)
    run_id, step_id = workflow_ids(event, exc)
    if run_id:
        tags.setdefault(WORKFLOW_RUN_ID, run_id)
    if step_id:
        tags.setdefault(STEP_ID, step_id)
    if run_id and dashboard_url:
        link = f"{dashboard_url.rstrip('/')}/runs/{run_id}"
        event.setdefault("contexts", {}).setdefault("workflow", {})["run_url"] = link
        tags.setdefault("workflow.run.url", link[:200])
    workflow = tags.get(WORKFLOW_NAME) or (getattr(exc, "workflow_name", None) if exc is not None else None)
    step = tags.get(STEP_NAME) or (getattr(exc, "step_name", None) if exc is not None else None)
    values = ((event.get("exception") or {}).get("values")) or []
    error_type = values[-1].get("type") if values else (type(exc).__name__ if exc is not None else None)
    if workflow and step and error_type:
        event["fingerprint"] = ["workflow-step", str(workflow), str(step), str(error_type)]
    return event


def make_before_send(
    user_before_send: BeforeSend | None = None,
    *,
    dashboard_url: str | None = None,
    on_drop: Callable[[Rule, SentryEvent], None] | None = None,
) -> BeforeSend:
    """A ``before_send`` that runs the user's own first, then drops noise and annotates the rest."""

    def hook(event: SentryEvent, hint: SentryEvent) -> SentryEvent | None:
        if user_before_send is not None:
            changed = user_before_send(event, hint)
            if changed is None:
                return None
            event = changed
        rule = classify(event, hint)
        if rule is not None:
            with _drops_lock:
                _drops[rule.id] += 1
            if on_drop is not None:
                on_drop(rule, event)
            return None
        return annotate(event, exception_of(hint), dashboard_url=dashboard_url, context=vercel_workflow_tags())

    return hook


#: The filter with no user hook and no dashboard link, for ``sentry_sdk.init(before_send=…)``.
before_send = make_before_send()


def init(dsn: str | None = None, *, dashboard_url: str | None = None, **options: Any) -> Any:
    """``sentry_sdk.init`` with the filter installed after the user's own ``before_send``.
    ``dsn`` defaults to ``SENTRY_DSN``; ``dashboard_url`` (or ``WFT_DASHBOARD_URL``) adds run links."""
    import os

    import sentry_sdk

    options["before_send"] = make_before_send(
        options.get("before_send"), dashboard_url=dashboard_url or os.environ.get("WFT_DASHBOARD_URL")
    )
    if dsn is not None:
        options["dsn"] = dsn
    return sentry_sdk.init(**options)
