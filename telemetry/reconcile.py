"""Reconciliation: a run's event log (what ran) against the spans the app exported for it.

The event log is the truth of what ran; the app's own spans are what its tracing saw. Where they
disagree the instrumentation has a gap: spans dropped by a sampler or an overloaded exporter, a
process that died before its batch went out, or spans sent to another backend. Per run:

- ``step_not_exported``: the log has attempts of a step, the app sent no span for any of them
  (never exported, or exported elsewhere);
- ``attempts_differ``: the log and the app's spans count a different number of attempts of a step;
- ``step_not_in_log``: the app sent spans of a step the run's log does not have;
- ``run_not_exported``: the run ran, but none of its ``WORKFLOW`` spans arrived.

A run whose app spans are not expected is *not instrumented*, not a gap: it stored no traceparent
(the app that started it had no OpenTelemetry) and no app span of it arrived.

**Grace.** Spans arrive after the events they describe (an exporter batches for seconds), and a
collector's copy of the log trails the world. So only what ended at least ``grace_ns`` before
``now_ns`` is judged: an attempt counts once its end event is that old, an app span once its end
is. Younger items are counted in ``pending``, not as gaps. With ``now_ns=None`` everything is judged.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from .runfacts import AppSpan, LogEvent, Roles
from .runtrace import short_name
from .semconv import STEP_ID

__all__ = ["DEFAULT_GRACE_NS", "Gap", "GapKinds", "Reconciliation", "reconcile"]

#: how long after an attempt or span ended its counterpart may still be on its way (OTel's batch
#: processor exports every 5 s by default and retries for up to 30 s)
DEFAULT_GRACE_NS: Final = 30_000_000_000

_ENDS_ATTEMPT: Final = frozenset({"step_retrying", "step_completed", "step_failed"})
_TERMINAL: Final = frozenset({"run_completed", "run_failed", "run_cancelled"})


class GapKinds:
    """Values of ``Gap.kind``."""

    STEP_NOT_EXPORTED: Final = "step_not_exported"
    ATTEMPTS_DIFFER: Final = "attempts_differ"
    STEP_NOT_IN_LOG: Final = "step_not_in_log"
    RUN_NOT_EXPORTED: Final = "run_not_exported"
    ALL: Final = (STEP_NOT_EXPORTED, ATTEMPTS_DIFFER, STEP_NOT_IN_LOG, RUN_NOT_EXPORTED)


@dataclass(frozen=True, slots=True)
class Gap:
    """One disagreement between the log and the app's spans (``step_id`` is None for the run's)."""

    kind: str
    step_id: str | None = None
    step_name: str | None = None
    log_attempts: int = 0
    app_attempts: int = 0
    span_ids: tuple[str, ...] = ()

    @property
    def message(self) -> str:
        step = f"step {short_name(self.step_name or '?')} ({self.step_id})"
        if self.kind == GapKinds.STEP_NOT_EXPORTED:
            return (
                f"{step}: {_count(self.log_attempts, 'attempt')} in the event log, no app span"
                " (never exported, or exported elsewhere)"
            )
        if self.kind == GapKinds.ATTEMPTS_DIFFER:
            return (
                f"{step}: {_count(self.log_attempts, 'attempt')} in the event log,"
                f" {self.app_attempts} in the app's spans"
            )
        if self.kind == GapKinds.STEP_NOT_IN_LOG:
            return f"{step}: {_count(len(self.span_ids), 'app span')}, but the step is not in the run's event log"
        return "the run ran, but none of its WORKFLOW spans arrived (never exported, or exported elsewhere)"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.step_id is not None:
            out.update(
                stepId=self.step_id,
                stepName=self.step_name,
                logAttempts=self.log_attempts,
                appAttempts=self.app_attempts,
            )
        if self.span_ids:
            out["spanIds"] = list(self.span_ids)
        return out


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """What the comparison found for one run."""

    run_id: str
    instrumented: bool
    steps: int = 0  # steps in the log
    log_attempts: int = 0  # step_started events
    app_attempts: int = 0  # step deliveries that started an attempt, of the log's steps
    workflow_spans: int = 0
    gaps: tuple[Gap, ...] = ()
    pending: int = 0  # items too recent to judge (see the module's "Grace")

    @property
    def clean(self) -> bool:
        return not self.gaps

    def to_json(self) -> dict[str, Any]:
        return {
            "instrumented": self.instrumented,
            "clean": self.clean,
            "steps": self.steps,
            "logAttempts": self.log_attempts,
            "appAttempts": self.app_attempts,
            "workflowSpans": self.workflow_spans,
            "pending": self.pending,
            "gaps": [gap.to_json() for gap in self.gaps],
        }


@dataclass
class _Step:
    name: str | None = None
    ended: list[int] = field(default_factory=list)  # end times of the attempts that ended
    open: int | None = None  # start of the attempt in flight
    attempts: int = 0


def _log_steps(events: Iterable[LogEvent]) -> tuple[dict[str, _Step], int | None, int | None]:
    """The log's steps in order of appearance, when the run started and when it ended."""
    steps: dict[str, _Step] = {}
    started: int | None = None
    ended: int | None = None
    for event in events:
        kind = event.event_type
        if kind == "run_started":
            started = event.at_ns if started is None else min(started, event.at_ns)
        elif kind in _TERMINAL and ended is None:
            ended = event.at_ns
        if not kind.startswith("step_") or event.correlation_id is None:
            continue
        step = steps.setdefault(event.correlation_id, _Step())
        step.name = step.name or event.step_name
        if kind == "step_started":
            if step.open is not None:  # a start while the previous attempt never ended: it ended here
                step.ended.append(event.at_ns)
            step.open = event.at_ns
            step.attempts += 1
        elif kind in _ENDS_ATTEMPT and step.open is not None:
            step.ended.append(event.at_ns)
            step.open = None
    if ended is not None:  # what the run's end found in flight ended with it
        for step in steps.values():
            if step.open is not None:
                step.ended.append(ended)
                step.open = None
    return steps, started, ended


def reconcile(
    run_id: str,
    events: Iterable[LogEvent],
    spans: Iterable[AppSpan],
    *,
    instrumented: bool = False,
    now_ns: int | None = None,
    grace_ns: int = DEFAULT_GRACE_NS,
) -> Reconciliation:
    """Compare a run's log (its events in log order) with the app's spans (any spans: only this
    run's step and workflow deliveries are read). ``instrumented``: the run stored a traceparent
    (``runfacts.carries_traceparent``); app spans are expected then, or when any arrived."""
    steps, run_started, _ = _log_steps(events)
    cutoff = None if now_ns is None else now_ns - grace_ns

    def settled(at: int) -> bool:
        return cutoff is None or at <= cutoff

    deliveries: dict[str, list[AppSpan]] = {}
    workflow_spans = 0
    for span in spans:
        role = span.role
        if role not in (Roles.STEP, Roles.WORKFLOW) or span.run_id != run_id:
            continue
        if role == Roles.WORKFLOW:
            workflow_spans += 1
        else:
            deliveries.setdefault(str(span.attributes.get(STEP_ID)), []).append(span)
    log_attempts = sum(step.attempts for step in steps.values())
    if not instrumented and not deliveries and not workflow_spans:
        return Reconciliation(run_id, False, steps=len(steps), log_attempts=log_attempts)

    gaps: list[Gap] = []
    pending = 0
    app_attempts = 0
    if run_started is not None and not workflow_spans:
        if settled(run_started):
            gaps.append(Gap(GapKinds.RUN_NOT_EXPORTED))
        else:
            pending += 1
    for step_id, step in steps.items():
        mine = deliveries.pop(step_id, [])
        app = sum(1 for span in mine if span.started_attempt)
        app_attempts += app
        judged = sum(1 for at in step.ended if settled(at))  # attempts whose span must have arrived by now
        if app < judged:
            kind = GapKinds.STEP_NOT_EXPORTED if app == 0 else GapKinds.ATTEMPTS_DIFFER
            gaps.append(Gap(kind, step_id, step.name, step.attempts, app))
        elif app > step.attempts:  # more attempts than the log has: judged once those spans are old enough
            if all(settled(span.end_ns) for span in mine):
                gaps.append(Gap(GapKinds.ATTEMPTS_DIFFER, step_id, step.name, step.attempts, app))
            else:
                pending += 1
        elif app < len(step.ended):
            pending += 1  # attempts that ended within the grace period, spans still on their way
    for step_id, mine in deliveries.items():  # steps the log does not have
        if all(settled(span.end_ns) for span in mine):
            name = next((s.name.removeprefix("STEP ") for s in mine if s.name.startswith("STEP ")), None)
            gaps.append(
                Gap(
                    GapKinds.STEP_NOT_IN_LOG,
                    step_id,
                    name,
                    0,
                    sum(1 for span in mine if span.started_attempt),
                    tuple(sorted(span.span_id for span in mine)),
                )
            )
        else:
            pending += 1
    return Reconciliation(
        run_id,
        True,
        steps=len(steps),
        log_attempts=log_attempts,
        app_attempts=app_attempts,
        workflow_spans=workflow_spans,
        gaps=tuple(gaps),
        pending=pending,
    )
