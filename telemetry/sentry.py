"""Sentry without benign workflow-conflict noise: one rule list for the in-process
``before_send``, the collector's relay and ``wft sentry dry-run`` alike.

Noise is a post-completion conflict, wherever it surfaces (seed issue #1949: world-vercel's
stream 409 arriving as an unhandled rejection). Everything else is kept, including a 409 on an
operation that is not a post-completion write, and any 5xx. Exceptions still in hand (in-process)
are judged by ``telemetry.tracing.is_benign_conflict`` itself.
"""

from __future__ import annotations

import re
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .tracing import is_benign_conflict, was_recorded_benign

__all__ = [
    "RULES",
    "Rule",
    "EventFacts",
    "before_send",
    "classify",
    "drop_counts",
    "init",
    "make_before_send",
    "workflow_ids",
]

_RUN_ID = re.compile(r"\bwrun_[0-9A-Za-z]{26}\b")
_STEP_ID = re.compile(r"\bstep_[0-9A-Za-z]{26}\b")
_STREAM_FUNCTIONS = re.compile(
    r"(writeToStream(Multi)?|closeStream|flushablestream|streams?\.(write|writeMulti|close)|StreamWriter\.(write|write_many|close))",
    re.I,
)
_STEP_RACES = ("Tried completing step, but step has already finished", "Cannot transition run from terminal state")
_FLUSH = "Background flush of step stream ops failed"
_CONFLICT_TYPES = ("EntityConflictError", "RunExpiredError")


@dataclass
class EventFacts:
    """What the rules look at, from a Sentry event (and, in-process, the exception itself)."""

    exceptions: list[dict[str, Any]] = field(default_factory=list)  # {type, value, mechanism, functions}
    message: str = ""
    extra_text: str = ""
    tags: dict[str, Any] = field(default_factory=dict)
    exc: BaseException | None = None

    @classmethod
    def of(cls, event: Mapping[str, Any], hint: Mapping[str, Any] | None = None) -> EventFacts:
        values = ((event.get("exception") or {}).get("values")) or []
        exceptions = []
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
        exc = None
        if hint and hint.get("exc_info"):
            exc = hint["exc_info"][1]
        return cls(exceptions, message, extra, dict(tags), exc)

    def text(self) -> str:
        return " ".join([self.message, *(e["value"] for e in self.exceptions), self.extra_text])


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


def _conflict_in_stream_write(facts: EventFacts) -> bool:
    return any(e["type"] in _CONFLICT_TYPES and _STREAM_FUNCTIONS.search(e["functions"]) for e in facts.exceptions)


def _racing_completion(facts: EventFacts) -> bool:
    texts = [e["value"] for e in facts.exceptions if e["type"] in _CONFLICT_TYPES] + [facts.message]
    return any(race in text for text in texts for race in _STEP_RACES)


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
    if facts.tags.get("workflow.conflict") == "benign":
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
        'world-vercel stream write to a finished run: "Stream write failed: HTTP 409 … is already completed" (also as an unhandled rejection)',
        _stream_409,
    ),
    Rule(
        "conflict-in-stream-write",
        "EntityConflictError/RunExpiredError raised inside a stream or telemetry write",
        _conflict_in_stream_write,
    ),
    Rule(
        "racing-completion",
        'a completion that lost a race with another: "Tried completing step, but step has already finished", "Cannot transition run from terminal state"',
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
    run_id = facts.tags.get("workflow.run.id") or (getattr(exc, "run_id", None) if exc is not None else None)
    step_id = facts.tags.get("step.id") or (getattr(exc, "step_id", None) if exc is not None else None)
    text = facts.text()
    if not run_id:
        match = _RUN_ID.search(text)
        run_id = match.group(0) if match else None
    if not step_id:
        match = _STEP_ID.search(text)
        step_id = match.group(0) if match else None
    return run_id, step_id


def annotate(
    event: dict[str, Any], exc: BaseException | None = None, *, dashboard_url: str | None = None
) -> dict[str, Any]:
    """Tags ``workflow.run.id`` / ``step.id``, a link to the run's page, and one issue per
    (workflow, step, error type) for step failures instead of one per retry."""
    run_id, step_id = workflow_ids(event, exc)
    tags = event.setdefault("tags", {})
    if isinstance(tags, list):
        tags = event["tags"] = {k: v for k, v in tags}
    if run_id:
        tags.setdefault("workflow.run.id", run_id)
    if step_id:
        tags.setdefault("step.id", step_id)
    if run_id and dashboard_url:
        link = f"{dashboard_url.rstrip('/')}/runs/{run_id}"
        event.setdefault("contexts", {}).setdefault("workflow", {})["run_url"] = link
        tags.setdefault("workflow.run.url", link[:200])
    workflow = tags.get("workflow.name") or (getattr(exc, "workflow_name", None) if exc is not None else None)
    step = tags.get("step.name") or (getattr(exc, "step_name", None) if exc is not None else None)
    values = ((event.get("exception") or {}).get("values")) or []
    error_type = values[-1].get("type") if values else (type(exc).__name__ if exc is not None else None)
    if workflow and step and error_type:
        event["fingerprint"] = ["workflow-step", str(workflow), str(step), str(error_type)]
    return event


def make_before_send(
    user_before_send: Callable | None = None,
    *,
    dashboard_url: str | None = None,
    on_drop: Callable[[Rule, dict], None] | None = None,
):
    """A ``before_send`` that runs the user's own first, then drops noise and annotates the rest."""

    def hook(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
        if user_before_send is not None:
            event = user_before_send(event, hint)
            if event is None:
                return None
        rule = classify(event, hint)
        if rule is not None:
            with _drops_lock:
                _drops[rule.id] += 1
            if on_drop is not None:
                on_drop(rule, event)
            return None
        exc = hint.get("exc_info")[1] if hint and hint.get("exc_info") else None
        return annotate(event, exc, dashboard_url=dashboard_url)

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
