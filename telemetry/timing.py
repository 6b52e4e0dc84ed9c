"""Where a run's time went: its wall time split into queueing, executing, backing off, sleeping,
waiting on hooks, world calls and the workflow function's own runs.

Users debugging a slow run ask how much was the queue, how much their code, how much the SDK's
polling and world I/O. The event log answers the first ones for every run; the app's own spans,
when it exports them, add world calls, the workflow function's invocations and their queueing.

**What each part is made of** (intervals on the run's timeline):

=============  ==================================================================================
``queued``     ``run_created`` → first ``run_started``; ``step_created`` → its first ``step_started``;
               with app spans, a ``WORKFLOW`` delivery's ``workflow.queue.overhead_ms`` before it —
               ranked *after* hook (below): the SDK measures it from when the message was
               requested, so it includes a sleep's delay, which is sleeping, not queueing
``executing``  an attempt, ``step_started`` → its ``step_retrying``/``step_completed``/``step_failed``,
               and with app spans the step's deliveries (``STEP``: the SDK's step handler around
               it) — less what the app's spans show ran inside them (world calls, nested deliveries)
``backoff``    ``step_retrying`` → the step's next ``step_started`` (the retry delay, as it happened)
``sleeping``   ``wait_created`` → ``wait_completed``
``hook``       ``hook_created`` → its first ``hook_received`` (or ``hook_disposed``)
``world``      the app's ``world.*`` spans under this run's deliveries (not someone else polling it)
``workflow``   the app's ``WORKFLOW`` spans (the workflow function replaying its log), less the
               world calls made inside them
``other``      the rest: hand-offs between the above (with no app spans: the workflow function's
               runs and their queueing)
=============  ==================================================================================

Anything still open at the run's end (or at ``now`` for a live run) runs to it.

**The rule: every instant counted once.** Parallel steps, a step running through a sleep, a world
call inside an attempt: intervals overlap. First, like a flame graph's self time, a step's or a
workflow invocation's own world calls are taken out of it (at that moment it waits on the world).
Then each instant of the run's wall time (first event → end) goes to exactly one part, the first
going on at that instant in the order ``Parts.ORDER``: executing, workflow, world, queued, backoff,
sleeping, hook (then a workflow hand-off's queue time), else other — what makes progress before
what waits: a step's code running while a parallel step writes an event is executing, a step
waiting in the queue while another runs is not queueing time. So the parts add up to the run's
duration exactly. ``summed`` gives each part's plain total as well, overlaps counted as often as
they happen (three parallel steps of 1 s are 3 s of ``executing`` summed, 1 s of wall time).

App spans are placed on the world's clock as they are; a skew between the two shifts time between
parts but never changes the total (everything is clipped to the run's window).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .runfacts import QUEUE_EXECUTION_TIME_MS, QUEUE_OVERHEAD_MS, AppSpan, LogEvent, Roles
from .semconv import STEP_ID

__all__ = ["Interval", "Parts", "TimeBreakdown", "breakdown"]

_TERMINAL: Final = frozenset({"run_completed", "run_failed", "run_cancelled"})
#: a workflow delivery's wait in the queue, as the SDK measured it: ``queued`` where nothing ranked
#: above ``other`` explains the wait (a sleep's delay is part of that measure)
_HANDOFF: Final = "queued (workflow hand-off)"


class Parts:
    """The parts of a run's time, in the order that decides an instant covered by several."""

    WORLD: Final = "world"
    EXECUTING: Final = "executing"
    WORKFLOW: Final = "workflow"
    QUEUED: Final = "queued"
    BACKOFF: Final = "backoff"
    SLEEPING: Final = "sleeping"
    HOOK: Final = "hook"
    OTHER: Final = "other"
    ORDER: Final = (EXECUTING, WORKFLOW, WORLD, QUEUED, BACKOFF, SLEEPING, HOOK, OTHER)


@dataclass(frozen=True, slots=True)
class Interval:
    start_ns: int
    end_ns: int | None  # None: still going (runs to the end of the window)
    part: str
    step_id: str | None = None  # an attempt's step


@dataclass(frozen=True, slots=True)
class TimeBreakdown:
    start_ns: int
    end_ns: int
    live: bool
    exclusive_ns: dict[str, int]  # per part; sums to end_ns - start_ns
    summed_ns: dict[str, int]  # per part, overlaps counted each time
    app_spans: bool  # the app's spans contributed
    queue_overhead_ms: float | None  # the SDK's own queue measure, summed over the run's deliveries
    step_execution_ms: float | None  # the SDK's own step-function measure, summed over attempts

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def to_json(self) -> dict[str, Any]:
        """The API form: nanoseconds exact, milliseconds whole (parts still add up to the duration)."""
        whole = _whole_ms([self.exclusive_ns[part] for part in Parts.ORDER], self.duration_ns)
        return {
            "startNs": self.start_ns,
            "endNs": self.end_ns,
            "durationMs": round(self.duration_ns / 1e6),
            "live": self.live,
            "appSpans": self.app_spans,
            "parts": [
                {
                    "name": part,
                    "ns": self.exclusive_ns[part],
                    "ms": ms,
                    "summedMs": round(self.summed_ns[part] / 1e6),
                }
                for part, ms in zip(Parts.ORDER, whole, strict=True)
            ],
            "sdk": None
            if self.queue_overhead_ms is None and self.step_execution_ms is None
            else {
                "queueOverheadMs": None if self.queue_overhead_ms is None else round(self.queue_overhead_ms),
                "stepExecutionMs": None if self.step_execution_ms is None else round(self.step_execution_ms),
            },
        }


def _whole_ms(parts_ns: list[int], total_ns: int) -> list[int]:
    """Whole milliseconds per part that still add up to the rounded total (largest remainder)."""
    floors = [ns // 1_000_000 for ns in parts_ns]
    short = round(total_ns / 1e6) - sum(floors)
    by_remainder = sorted(range(len(parts_ns)), key=lambda i: parts_ns[i] % 1_000_000, reverse=True)
    for i in by_remainder[: max(short, 0)]:
        floors[i] += 1
    return floors


@dataclass
class _Step:
    created: int | None = None
    started: bool = False
    attempt: int | None = None  # start of the attempt in flight
    retry: int | None = None  # since when it waits for its next attempt
    done: bool = False  # completed or failed: later events of it are the log's untidiness, not time


def _log_intervals(events: Iterable[LogEvent]) -> tuple[list[Interval], int | None, int | None, int | None]:
    """Intervals from the log; the first event's time, the terminal event's, the last event's."""
    out: list[Interval] = []
    first: int | None = None
    last: int | None = None
    end: int | None = None
    run_created: int | None = None
    run_started = False
    steps: dict[str, _Step] = {}
    opened: dict[tuple[str, str], int] = {}  # ("wait"|"hook", id) -> since
    closed: set[tuple[str, str]] = set()
    for event in events:
        at, kind, cid = event.at_ns, event.event_type, event.correlation_id
        first = at if first is None else min(first, at)
        last = at if last is None else max(last, at)
        if kind == "run_created" and run_created is None:
            run_created = at
        elif kind == "run_started" and not run_started:
            run_started = True
            if run_created is not None:
                out.append(Interval(run_created, at, Parts.QUEUED))
        elif kind in _TERMINAL:
            end = at if end is None else end
        elif kind.startswith("step_") and cid is not None:
            step = steps.setdefault(cid, _Step())
            if step.done:
                continue
            if kind == "step_created":
                step.created = at if step.created is None else step.created
                continue
            if step.attempt is not None:  # retrying/completed/failed, or a start while one never ended
                out.append(Interval(step.attempt, at, Parts.EXECUTING, cid))
                step.attempt = None
            elif step.retry is not None:
                out.append(Interval(step.retry, at, Parts.BACKOFF))
                step.retry = None
            elif not step.started and step.created is not None:
                out.append(Interval(step.created, at, Parts.QUEUED))
            step.started = step.started or kind == "step_started"
            if kind == "step_started":
                step.attempt = at
            elif kind == "step_retrying":
                step.retry = at
            else:
                step.done = True
        elif kind in ("wait_created", "hook_created") and cid is not None:
            opened.setdefault((kind[:4], cid), at)
        elif kind in ("wait_completed", "hook_received", "hook_disposed") and cid is not None:
            key = (kind[:4], cid)
            if key in opened and key not in closed:
                closed.add(key)
                out.append(Interval(opened[key], at, Parts.SLEEPING if kind == "wait_completed" else Parts.HOOK))
    for step_id, step in steps.items():  # still open: runs to the end of the window
        if step.done:
            continue
        if step.attempt is not None:
            out.append(Interval(step.attempt, None, Parts.EXECUTING, step_id))
        elif step.retry is not None:
            out.append(Interval(step.retry, None, Parts.BACKOFF))
        elif not step.started and step.created is not None:
            out.append(Interval(step.created, None, Parts.QUEUED))
    if run_created is not None and not run_started:
        out.append(Interval(run_created, None, Parts.QUEUED))
    for key, since in opened.items():
        if key not in closed:
            out.append(Interval(since, None, Parts.SLEEPING if key[0] == "wait" else Parts.HOOK))
    return out, first, end, last


_Key = tuple[str, str]  # (trace id, span id)


def _own_work(run_id: str, spans: Sequence[AppSpan]) -> list[tuple[AppSpan, str, _Key | None]]:
    """The run's deliveries and the world calls made inside them, each with the delivery it runs
    in (its nearest delivery ancestor; None for a delivery at the top). A world call outside any of
    the run's deliveries — someone polling the run from a trace of their own — is not its work.
    Linear: each ancestor chain is walked once."""
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    roles = {key: span.role for key, span in by_id.items()}
    nearest: dict[_Key, _Key | None] = {}  # a span -> the nearest delivery at or above it

    def delivery_at_or_above(start: _Key) -> _Key | None:
        chain: list[_Key] = []
        key: _Key | None = start
        found: _Key | None = None
        while key is not None:
            if key in nearest:
                found = nearest[key]
                break
            if key in chain:  # a parent cycle (hostile input)
                break
            chain.append(key)
            if roles[key] in (Roles.STEP, Roles.WORKFLOW):
                found = key
                break
            here = by_id[key]
            parent = (key[0], here.parent_span_id)
            key = parent if here.parent_span_id and parent in by_id else None
        for link in chain:
            nearest[link] = found
        return found

    out: list[tuple[AppSpan, str, _Key | None]] = []
    for key, span in by_id.items():
        role = roles[key]
        if role is None:
            continue
        parent = (span.trace_id, span.parent_span_id)
        owner = delivery_at_or_above(parent) if span.parent_span_id and parent in by_id else None
        if owner is not None and by_id[owner].run_id != run_id:
            owner = None  # inside another run's delivery (this run is a child workflow of it)
        if (role == Roles.WORLD and owner is None) or (role != Roles.WORLD and span.run_id != run_id):
            continue
        out.append((span, role, owner))
    return out


def _minus(lo: int, hi: int, holes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """[lo, hi) less the (sorted) holes, as the pieces left."""
    pieces: list[tuple[int, int]] = []
    at = lo
    for hole_lo, hole_hi in holes:
        if hole_hi <= at:
            continue
        if hole_lo >= hi:
            break
        if hole_lo > at:
            pieces.append((at, hole_lo))
        at = max(at, hole_hi)
    if at < hi:
        pieces.append((at, hi))
    return pieces


def _app_intervals(
    run_id: str, spans: Sequence[AppSpan]
) -> tuple[list[Interval], dict[str, list[tuple[int, int]]], float | None, float | None]:
    """Intervals from the app's spans, each delivery less what ran inside it (its self time); what
    ran inside each step's deliveries, per step id (to take out of the log's attempts too); the
    SDK's queue and step-execution measures, summed."""
    work = _own_work(run_id, spans)
    inside: dict[_Key, list[tuple[int, int]]] = {}
    for span, _, owner in work:
        if owner is not None:
            inside.setdefault(owner, []).append((span.start_ns, span.end_ns))
    for holes in inside.values():
        holes.sort()
    out: list[Interval] = []
    by_step: dict[str, list[tuple[int, int]]] = {}
    overhead: float | None = None
    execution: float | None = None
    for span, role, _ in work:
        if role == Roles.WORLD:
            out.append(Interval(span.start_ns, span.end_ns, Parts.WORLD))
            continue
        holes = inside.get((span.trace_id, span.span_id), [])
        part = Parts.EXECUTING if role == Roles.STEP else Parts.WORKFLOW
        out += [Interval(lo, hi, part) for lo, hi in _minus(span.start_ns, span.end_ns, holes)]
        queue_ms = span.number(QUEUE_OVERHEAD_MS)
        if queue_ms is not None and queue_ms >= 0:
            overhead = (overhead or 0.0) + queue_ms
        if role == Roles.STEP:
            by_step.setdefault(str(span.attributes.get(STEP_ID)), []).extend(holes)
            ran_ms = span.number(QUEUE_EXECUTION_TIME_MS)
            if ran_ms is not None and ran_ms >= 0:
                execution = (execution or 0.0) + ran_ms
        elif queue_ms is not None and queue_ms > 0:  # the invocation's message waited this long before it
            out.append(Interval(span.start_ns - int(queue_ms * 1e6), span.start_ns, _HANDOFF))
    for holes in by_step.values():
        holes.sort()
    return out, by_step, overhead, execution


def breakdown(
    run_id: str, events: Iterable[LogEvent], spans: Iterable[AppSpan] = (), *, now_ns: int | None = None
) -> TimeBreakdown | None:
    """The run's time, split (see the module). None for a run with no events. A live run's window
    ends at ``now_ns`` (default: its last event or app span)."""
    log, first, end, last = _log_intervals(events)
    if first is None or last is None:
        return None
    app, inside_steps, overhead, execution = _app_intervals(run_id, list(spans))
    live = end is None
    if end is None:
        end = max([last, now_ns or last, *(i.end_ns for i in app if i.end_ns is not None)])
    start = first
    end = max(end, start)
    if inside_steps:  # an attempt less what the app's spans show ran inside its step's deliveries
        carved: list[Interval] = []
        for interval in log:
            holes = inside_steps.get(interval.step_id or "") if interval.part == Parts.EXECUTING else None
            if holes:
                hi = end if interval.end_ns is None else interval.end_ns
                carved += [Interval(lo, top, Parts.EXECUTING) for lo, top in _minus(interval.start_ns, hi, holes)]
            else:
                carved.append(interval)
        log = carved
    ranked = (*Parts.ORDER[:-1], _HANDOFF, Parts.OTHER)
    rank = {part: i for i, part in enumerate(ranked)}
    summed = dict.fromkeys(ranked, 0)
    edges: list[tuple[int, int, int]] = []  # (time, +1 / -1, part rank)
    for interval in log + app:
        lo = max(interval.start_ns, start)
        hi = min(end if interval.end_ns is None else interval.end_ns, end)
        if hi <= lo:
            continue
        summed[interval.part] += hi - lo
        edges.append((lo, 1, rank[interval.part]))
        edges.append((hi, -1, rank[interval.part]))
    edges.sort()
    exclusive = dict.fromkeys(ranked, 0)
    active = [0] * len(ranked)
    other = rank[Parts.OTHER]
    previous = start
    for at, delta, part in edges:
        if at > previous:
            exclusive[ranked[next((i for i, n in enumerate(active) if n), other)]] += at - previous
            previous = at
        active[part] += delta
    exclusive[Parts.OTHER] += end - previous
    summed[Parts.OTHER] = exclusive[Parts.OTHER]
    for totals in (exclusive, summed):
        totals[Parts.QUEUED] += totals.pop(_HANDOFF)
    return TimeBreakdown(
        start_ns=start,
        end_ns=end,
        live=live,
        exclusive_ns=exclusive,
        summed_ns=summed,
        app_spans=bool(app),
        queue_overhead_ms=overhead,
        step_execution_ms=execution,
    )
