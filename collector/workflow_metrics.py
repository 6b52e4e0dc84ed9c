"""Per-workflow RED metrics (rate, errors, duration), derived from the world's event log.

Teams ask first for per-workflow failure rates and durations. The event log is the authority on
what ran (unsampled, whatever the app exported), and the collector's world tailer reads it anyway:
``WorkflowMetrics.feed`` takes the events each delivery of the tailer brings — the events of a pass,
never a whole run read again — and turns them into counter increments, histogram observations and
the state of what is waiting. The derivation does no I/O; the tailer feeds it, the tests feed it real
harness logs.

**What is counted, and when** (``workflow`` and ``step`` are the short names ``wft runs`` shows:
``sequentialWorkflow``, ``add``; each update belongs to exactly one event):

=========================================================  ======================================================
``wft_workflow_runs_started_total{workflow}``              a run's ``run_started``
``wft_workflow_runs_finished_total{workflow,status}``      its ``run_completed``/``run_failed``/``run_cancelled``
``wft_workflow_run_duration_seconds{workflow,status}``     histogram: ``run_created`` (its first event) → its end
``wft_workflow_step_attempts_total{workflow,step,outcome}``  an attempt (``step_started``) when it ends:
                                                           ``completed``, ``failed``, ``retrying``; ``abandoned``
                                                           (started again before it ended: counted when the step
                                                           or run ends), ``unfinished`` (the run ended first)
``wft_workflow_step_attempt_duration_seconds{workflow,step}``  histogram: ``step_started`` → the attempt's
                                                           ``step_completed``/``step_failed``/``step_retrying``
``wft_workflow_step_retries_total{workflow,step}``         a ``step_retrying``
``wft_workflow_step_queue_delay_seconds{workflow}``        histogram: ``step_created`` → its first ``step_started``
``wft_workflow_hooks_waiting{workflow}``                   hooks created and not yet received nor disposed
``wft_workflow_hook_oldest_wait_seconds{workflow}``        how long the oldest of those has waited (absent: none)
``wft_workflow_sleeps_waiting{workflow}``                  sleeps created and not yet completed
``wft_workflow_sleep_oldest_wait_seconds{workflow}``       how long the oldest of those has slept (absent: none)
``wft_workflow_turns_waiting{workflow}``                   live runs with nothing open (no step, sleep or hook):
                                                           waiting for their workflow's next turn
``wft_workflow_turn_oldest_wait_seconds{workflow}``        how long the oldest of those has waited, since its
                                                           newest event (absent: none); a lost turn grows it
``wft_workflow_label_overflow_total{label}``               runs and steps whose name went to ``other``
=========================================================  ======================================================

A run's end closes what it still had open (hooks, sleeps, attempts). Events a log holds after its
run's end are not counted (the run was).

**Bounded cardinality.** Label values are workflow and step names and fixed outcome words, never run
or step ids. Each of ``workflow`` and ``step`` takes at most ``max_label_values`` distinct values (1,000
by default) in a process; later names are counted under ``other``, and each run or step so named adds one to
``wft_workflow_label_overflow_total{label=…}``. A workflow's and a step's counters are created at 0
when the name is first seen (a series born at 1 shows ``rate()`` no increase); histograms are not
(most of the series: at the cap, harness-shaped workflows make about 80,000).

**Counted once.** Within a process an event is counted at most once, however often and in whatever
order it is delivered. Each unfinished run keeps a compact copy of its events (id, type, correlation
id, time, name: what a replay needs) and what each event already counted. Events normally arrive in
id order and are applied as they come; an event that sorts before one already applied (a writer
committed it late) makes the run replay its events in id order, and only what was not counted yet
counts (a step's end that came before its start counts its attempt then). An attempt is counted once
whatever happens: marked on its ``step_started``, with the outcome known when it was counted.
A finished run keeps nothing but, for the last few thousand, the id of its last event.

**Across restarts.** A run the derivation does not hold (new, finished, or unfinished when the process
started) is fed with ``counted_through``: the tailer passes the last event id its checkpoint recorded
for the run, i.e. what an earlier delivery (or an earlier process) already covered. Events up to
there rebuild the run's state (a step's creation time, a hook still waiting) without being counted.
So counters start at 0 when the collector starts, as Prometheus expects of a restarted process, and
count what the event log adds from then on; the first start over an existing world counts its whole
history once. Limits: a delivery acknowledged just before a crash but not yet in the checkpoint is
counted again by the next process (whose counters started from 0 anyway); an event committed late
after its run's end was read is not counted (the run's end was).

What waits is state, not a count: at start ``seed`` takes what the store says each live run waits on
(``waiting_in_store``), so a hook waiting for days is not forgotten by a restart; the run's own events
replace that as soon as the tailer reads the run again.

Thread safety: the tailer's thread feeds, a scrape reads; one lock keeps the run states and the
waiting table consistent, and prometheus-client's metric objects are thread-safe themselves.
"""

from __future__ import annotations

import heapq
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from prometheus_client import Counter as PromCounter
from prometheus_client import Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from telemetry.runtrace import short_name
from telemetry.world import TERMINAL_RUN_EVENT_TYPES, Event, WorkflowRun, epoch_ns

from .store import decode_waits
from .summaries import TURN_ID, WaitKinds

__all__ = [
    "DEFAULT_MAX_LABEL_VALUES",
    "OTHER",
    "Outcomes",
    "WorkflowMetrics",
    "waiting_in_store",
]

DEFAULT_MAX_LABEL_VALUES: Final = 1000
#: the label value of names past the cap
OTHER: Final = "other"
#: the label value when the log does not name the workflow or step
UNKNOWN: Final = "unknown"

#: workflow runs last from a second to days (few buckets: each is a series per workflow and status)
RUN_BUCKETS: Final = (0.5, 1, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400)
#: step attempts and queue delays: milliseconds to an hour
STEP_BUCKETS: Final = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)

_FINISHED_REMEMBERED = 4096  # finished runs whose last counted event id is kept (a re-delivery's guard)
_NS = 1e9


class Outcomes:
    """How a step attempt ended (``outcome`` label of ``wft_workflow_step_attempts_total``)."""

    COMPLETED: Final = "completed"
    FAILED: Final = "failed"
    RETRYING: Final = "retrying"
    ABANDONED: Final = "abandoned"
    UNFINISHED: Final = "unfinished"


_ATTEMPT_ENDS: Final = {
    "step_completed": Outcomes.COMPLETED,
    "step_failed": Outcomes.FAILED,
    "step_retrying": Outcomes.RETRYING,
}
_WAIT_OPENS: Final = {"hook_created": WaitKinds.HOOK, "wait_created": WaitKinds.SLEEP}
_WAIT_CLOSES: Final = frozenset({"hook_received", "hook_disposed", "wait_completed"})
#: what the gauges show (``collector.summaries`` has the run page's and the store's kinds)
_GAUGED: Final = (WaitKinds.HOOK, WaitKinds.SLEEP, WaitKinds.TURN)
_FINISHED_STATUSES: Final = frozenset(kind.removeprefix("run_") for kind in TERMINAL_RUN_EVENT_TYPES)


class _Delivery(Protocol):
    """What the tailer's follower hands over per run (``telemetry.follow.Delivery``)."""

    run: WorkflowRun
    events: list[Event]


class _Checkpointed(Protocol):
    last_id: str | None


@dataclass(frozen=True, slots=True)
class _Event:
    """What the derivation keeps of an event (a run's log may have to be replayed in id order)."""

    event_id: str
    kind: str
    key: str  # correlation id: the step, hook or wait
    at_ns: int
    name: str | None  # stepName / workflowName of its data

    @classmethod
    def of(cls, event: Event) -> _Event:
        data = event.event_data or {}
        name = data.get("stepName") or data.get("workflowName")
        return cls(
            event.event_id,
            event.event_type,
            event.correlation_id or "?",
            epoch_ns(event.created_at),
            name if isinstance(name, str) and name else None,
        )


@dataclass(slots=True)
class _Step:
    name: str  # label value
    created_ns: int | None
    started: bool = False
    attempt_ns: int | None = None  # the open attempt's start
    attempt_id: str = ""  # the open attempt's step_started: what counting the attempt is marked on
    #: attempts started again before they ended (their step_started ids): counted as abandoned when the
    #: step or the run ends, so an end that only arrives late (a late commit) still counts as what it was
    superseded: list[str] = field(default_factory=list)
    ended: bool = False


@dataclass(slots=True)
class _Run:
    workflow: str  # label value
    seeded: bool = False  # only what the store said it waits on; replaced by its events when fed
    events: list[_Event] = field(default_factory=list)  # in id order
    seen: set[str] = field(default_factory=set)
    through: str | None = None  # events up to this id were counted before this run was held
    emitted: set[tuple[str, str]] = field(default_factory=set)  # (event id, what it counted)
    # what the events so far say (rebuilt when an event arrives out of id order)
    start_ns: int | None = None
    started: bool = False
    ended: bool = False
    steps: dict[str, _Step] = field(default_factory=dict)
    waits: dict[str, bool] = field(default_factory=dict)  # hook/wait id → still open
    #: hooks that received a payload and are not disposed of: the workflow may await another, so no
    #: turn is assumed while one is (``collector.summaries.WaitKinds.PAYLOAD``)
    received: set[str] = field(default_factory=set)
    #: how many of ``waits`` are open and of ``steps`` have not ended: kept as they change, since a
    #: live run of 10^4 steps is fed a few events at a time and asked after each delivery
    open_waits: int = 0
    open_steps: int = 0

    def reset(self) -> None:
        self.start_ns, self.started, self.ended = None, False, False
        self.steps, self.waits, self.received = {}, {}, set()
        self.open_waits = self.open_steps = 0

    def between_turns(self) -> bool:
        """Nothing is open: no step (queued, running, to retry), sleep or hook, and the run goes on."""
        return not self.ended and not self.received and self.open_waits == 0 and self.open_steps == 0


class _Labels:
    """Label values with a cap per label: past ``limit`` distinct values, ``other``."""

    def __init__(self, limit: int, overflow: PromCounter) -> None:
        self.limit = max(1, limit)
        self.overflow = overflow
        self.admitted: dict[str, set[str]] = {}

    def value(self, label: str, name: str) -> str:
        admitted = self.admitted.setdefault(label, set())
        if name in admitted:
            return name
        if len(admitted) < self.limit:
            admitted.add(name)
            return name
        self.overflow.labels(label).inc()
        return OTHER


class _Waiting:
    """Hooks and sleeps open now, per (kind, workflow): how many, and the oldest. The oldest comes from
    a heap with lazy deletion (opening and closing cost O(log n), a scrape O(workflows)); a heap grown
    past twice what is open is rebuilt from what is open, so memory follows what waits, not history."""

    def __init__(self) -> None:
        self.where: dict[tuple[str, str], tuple[str, str]] = {}  # (run, id) → (kind, workflow)
        self.open: dict[tuple[str, str], dict[tuple[str, str], int]] = {}  # (kind, workflow) → {(run, id): since}
        self.heaps: dict[tuple[str, str], list[tuple[int, str, str]]] = {}

    def add(self, run_id: str, wait_id: str, kind: str, workflow: str, since_ns: int) -> None:
        key, group = (run_id, wait_id), (kind, workflow)
        if key in self.where:
            return
        self.where[key] = group
        waiting = self.open.setdefault(group, {})
        waiting[key] = since_ns
        heap = self.heaps.setdefault(group, [])
        heapq.heappush(heap, (since_ns, run_id, wait_id))
        if len(heap) > 2 * len(waiting) + 64:
            heap[:] = [(since, run, wait) for (run, wait), since in waiting.items()]
            heapq.heapify(heap)

    def remove(self, run_id: str, wait_id: str) -> None:
        group = self.where.pop((run_id, wait_id), None)
        if group is not None:
            del self.open[group][(run_id, wait_id)]  # its heap entry goes when it reaches the top

    def oldest(self, group: tuple[str, str]) -> int | None:
        heap, waiting = self.heaps.get(group, []), self.open.get(group, {})
        while heap:
            since, run_id, wait_id = heap[0]
            if waiting.get((run_id, wait_id)) == since:
                return since
            heapq.heappop(heap)
        return None


class WorkflowMetrics(Collector):
    """The per-workflow metrics of one collector process (a prometheus-client ``Collector``: register
    it with ``Metrics.register``). ``clock``: seconds since the epoch, for the waiting ages."""

    def __init__(self, *, max_label_values: int = DEFAULT_MAX_LABEL_VALUES, clock: Callable[[], float] = time.time):
        self.clock = clock
        self._lock = threading.Lock()
        self._runs: dict[str, _Run] = {}
        self._finished: OrderedDict[str, str | None] = OrderedDict()  # run id → last event id counted
        self._waiting = _Waiting()
        self.overflow = PromCounter(
            "wft_workflow_label_overflow",
            "Runs and steps counted under the name 'other' (past the cap of distinct names), by label.",
            ["label"],
            registry=None,
        )
        self._labels = _Labels(max_label_values, self.overflow)
        self._known: set[str] = set()  # workflows whose series exist (bounded by the cap)
        self._known_steps: set[tuple[str, str]] = set()
        self.runs_started = PromCounter(
            "wft_workflow_runs_started", "Runs started (run_started), by workflow.", ["workflow"], registry=None
        )
        self.runs_finished = PromCounter(
            "wft_workflow_runs_finished",
            "Runs that ended, by workflow and status (completed, failed, cancelled).",
            ["workflow", "status"],
            registry=None,
        )
        self.run_duration = Histogram(
            "wft_workflow_run_duration_seconds",
            "Run duration (run_created to its end), by workflow and status.",
            ["workflow", "status"],
            buckets=RUN_BUCKETS,
            registry=None,
        )
        self.step_attempts = PromCounter(
            "wft_workflow_step_attempts",
            "Step attempts, counted when they end, by workflow, step and outcome"
            " (completed, failed, retrying, abandoned, unfinished).",
            ["workflow", "step", "outcome"],
            registry=None,
        )
        self.step_attempt_duration = Histogram(
            "wft_workflow_step_attempt_duration_seconds",
            "Step attempt duration (step_started to step_completed, step_failed or step_retrying).",
            ["workflow", "step"],
            buckets=STEP_BUCKETS,
            registry=None,
        )
        self.step_retries = PromCounter(
            "wft_workflow_step_retries",
            "Step retries (step_retrying), by workflow and step.",
            ["workflow", "step"],
            registry=None,
        )
        self.queue_delay = Histogram(
            "wft_workflow_step_queue_delay_seconds",
            "Time steps waited in the queue (step_created to its first step_started), by workflow.",
            ["workflow"],
            buckets=STEP_BUCKETS,
            registry=None,
        )
        self._instruments: tuple[PromCounter | Histogram, ...] = (
            self.runs_started,
            self.runs_finished,
            self.run_duration,
            self.step_attempts,
            self.step_attempt_duration,
            self.step_retries,
            self.queue_delay,
            self.overflow,
        )

    # -- feeding (the tailer's thread) ---------------------------------------------------------
    def follows(self, run_id: str) -> bool:
        """The run's state is held (an unfinished run fed by this process): ``counted_through`` is
        not needed for it."""
        with self._lock:
            state = self._runs.get(run_id)
            return state is not None and not state.seeded

    def feed_deliveries(
        self, deliveries: Iterable[_Delivery], checkpointed: Callable[[str], _Checkpointed | None]
    ) -> None:
        """The runs of one tailer delivery; ``checkpointed(run_id)``: what the tailer's checkpoint
        recorded of the run before this delivery (asked only for a run not held)."""
        for delivery in deliveries:
            run = delivery.run
            through = None
            if not self.follows(run.run_id):
                state = checkpointed(run.run_id)
                through = state.last_id if state is not None else None
            self.feed(run.run_id, run.workflow_name, delivery.events, counted_through=through)

    def feed(
        self, run_id: str, workflow_name: str | None, events: Sequence[Event], *, counted_through: str | None = None
    ) -> None:
        """One run's events of a delivery, in any order; events fed before are skipped. For a run
        not held, events up to ``counted_through`` only rebuild its state.

        Events normally come in id order (the log's order) and are applied as they come. One that
        sorts before an event already applied (a writer committed it late) makes the run replay its
        events in id order: what each event counted is remembered, so the replay counts only what the
        late event changes (a step's end that arrived before its start counts its attempt then)."""
        with self._lock:
            state = self._runs.get(run_id)
            if state is not None and state.seeded:
                self._drop(run_id, state)
                state = None
            fresh = sorted(
                (_Event.of(e) for e in events if state is None or e.event_id not in state.seen),
                key=lambda e: e.event_id,
            )
            fresh = [e for i, e in enumerate(fresh) if i == 0 or e.event_id != fresh[i - 1].event_id]
            if not fresh:
                return
            if state is None:
                through = max((t for t in (counted_through, self._finished.get(run_id)) if t), default=None)
                name = workflow_name or next((e.name for e in fresh if e.kind == "run_created" and e.name), None)
                state = self._runs[run_id] = _Run(self._workflow(name))
                state.through = through
            replay = bool(state.events) and fresh[0].event_id < state.events[-1].event_id
            state.seen.update(e.event_id for e in fresh)
            state.events.extend(fresh)
            if replay:
                state.events.sort(key=lambda e: e.event_id)
                self._close_waits(run_id, state)
                state.reset()
            for event in state.events if replay else fresh:
                if state.ended:
                    break  # what a log holds after its run's end is not counted (the run was)
                self._apply(run_id, state, event)
            self._waiting.remove(run_id, TURN_ID)  # the turn, if any, is since the newest event
            if state.between_turns():
                self._waiting.add(run_id, TURN_ID, WaitKinds.TURN, state.workflow, state.events[-1].at_ns)
            if state.ended:
                self._drop(run_id, state)
                self._finished[run_id] = state.events[-1].event_id
                self._finished.move_to_end(run_id)
                while len(self._finished) > _FINISHED_REMEMBERED:
                    self._finished.popitem(last=False)

    def seed(self, waiting: Iterable[tuple[str, str | None, str, str, int]]) -> None:
        """What live runs wait on when the process starts: (run id, workflow name, kind, hook or wait id,
        since ns); only hooks, sleeps and turns count. A run fed later replaces its seeded state."""
        with self._lock:
            for run_id, workflow_name, kind, wait_id, since_ns in waiting:
                if kind not in _GAUGED:
                    continue
                state = self._runs.get(run_id)
                if state is None:
                    state = self._runs[run_id] = _Run(self._workflow(workflow_name), seeded=True)
                elif not state.seeded:
                    continue
                state.waits[wait_id] = True
                self._waiting.add(run_id, wait_id, kind, state.workflow, since_ns)

    def _workflow(self, name: str | None) -> str:
        """The label value of a workflow name; a workflow seen for the first time gets its counters at 0
        (a series born at 1 shows no increase to ``rate()``, so its first run would be missed). Not its
        histograms: those are most of the series, and a quantile does without the first observation."""
        workflow = self._labels.value("workflow", short_name(name) if name else UNKNOWN)
        if workflow not in self._known:
            self._known.add(workflow)
            self.runs_started.labels(workflow)
            for status in sorted(_FINISHED_STATUSES):
                self.runs_finished.labels(workflow, status)
        return workflow

    def _step_label(self, workflow: str, name: str | None) -> str:
        """The label value of a step name, its counters at 0 when first seen in this workflow (as above)."""
        step = self._labels.value("step", short_name(name) if name else UNKNOWN)
        if (workflow, step) not in self._known_steps:
            self._known_steps.add((workflow, step))
            self.step_retries.labels(workflow, step)
            for outcome in (Outcomes.COMPLETED, Outcomes.FAILED, Outcomes.RETRYING):
                self.step_attempts.labels(workflow, step, outcome)
        return step

    def _close_waits(self, run_id: str, state: _Run) -> None:
        for wait_id, is_open in state.waits.items():
            if is_open:
                self._waiting.remove(run_id, wait_id)
        self._waiting.remove(run_id, TURN_ID)

    def _drop(self, run_id: str, state: _Run) -> None:
        self._close_waits(run_id, state)
        del self._runs[run_id]

    @staticmethod
    def _once(state: _Run, event: _Event, what: str, on: str | None = None) -> bool:
        """Count ``what`` now that ``event`` came? Not when an earlier process counted the event (it is
        up to ``through``), nor when this process counted ``what`` of ``on`` (the event itself by
        default) before. An attempt is marked on its ``step_started``: however the events arrived,
        each attempt is counted once, with the outcome known when it was counted."""
        if state.through is not None and event.event_id <= state.through:
            return False
        mark = (on or event.event_id, what)
        if mark in state.emitted:
            return False
        state.emitted.add(mark)
        return True

    def _apply(self, run_id: str, state: _Run, event: _Event) -> None:
        kind, at, workflow = event.kind, event.at_ns, state.workflow
        if state.start_ns is None or (kind == "run_created" and at < state.start_ns):
            state.start_ns = at
        if kind.startswith("step_"):
            self._step(state, event)
        elif kind in _WAIT_OPENS:
            if event.key not in state.waits:
                state.waits[event.key] = True
                state.open_waits += 1
                self._waiting.add(run_id, event.key, _WAIT_OPENS[kind], workflow, at)
        elif kind in _WAIT_CLOSES:
            was_open = state.waits.get(event.key)  # None: closed before it was seen to open
            if was_open is not False:
                state.waits[event.key] = False
                state.open_waits -= bool(was_open)
                self._waiting.remove(run_id, event.key)
            if kind == "hook_received":
                state.received.add(event.key)
            elif kind == "hook_disposed":
                state.received.discard(event.key)
        elif kind == "run_started":
            if not state.started:
                state.started = True
                if self._once(state, event, "started"):
                    self.runs_started.labels(workflow).inc()
        elif kind in TERMINAL_RUN_EVENT_TYPES:
            state.ended = True
            status = kind.removeprefix("run_")
            for step in state.steps.values():
                if step.attempt_ns is not None and not step.ended:
                    if self._once(state, event, "attempt", on=step.attempt_id):
                        self.step_attempts.labels(workflow, step.name, Outcomes.UNFINISHED).inc()
                    step.attempt_ns = None
                self._abandoned(state, step, event)
            if self._once(state, event, "finished"):
                self.runs_finished.labels(workflow, status).inc()
                self.run_duration.labels(workflow, status).observe(max(0, at - (state.start_ns or at)) / _NS)

    def _step(self, state: _Run, event: _Event) -> None:
        kind, at, workflow = event.kind, event.at_ns, state.workflow
        step = state.steps.get(event.key)
        if step is None:
            label = self._step_label(workflow, event.name)
            step = state.steps[event.key] = _Step(label, at if kind == "step_created" else None)
            state.open_steps += 1
        if step.ended:
            return
        if kind == "step_started":
            if step.attempt_ns is not None:
                step.superseded.append(step.attempt_id)
            if not step.started:
                step.started = True
                if step.created_ns is not None and self._once(state, event, "queued"):
                    self.queue_delay.labels(workflow).observe(max(0, at - step.created_ns) / _NS)
            step.attempt_ns, step.attempt_id = at, event.event_id
            return
        outcome = _ATTEMPT_ENDS.get(kind)
        if outcome is None:  # step_created (seen first above), or a kind this version does not know
            return
        if step.attempt_ns is not None:
            if self._once(state, event, "attempt", on=step.attempt_id):
                self.step_attempts.labels(workflow, step.name, outcome).inc()
                self.step_attempt_duration.labels(workflow, step.name).observe(max(0, at - step.attempt_ns) / _NS)
            step.attempt_ns = None
        if outcome == Outcomes.RETRYING:
            if self._once(state, event, "retry"):
                self.step_retries.labels(workflow, step.name).inc()
        else:
            step.ended = True
            state.open_steps -= 1
            self._abandoned(state, step, event)

    def _abandoned(self, state: _Run, step: _Step, event: _Event) -> None:
        """The step's attempts that were started again before they ended, now that it (or its run) ended."""
        for attempt_id in step.superseded:
            if self._once(state, event, "attempt", on=attempt_id):
                self.step_attempts.labels(state.workflow, step.name, Outcomes.ABANDONED).inc()
        step.superseded.clear()

    # -- reading (a scrape) ---------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        for instrument in self._instruments:
            yield from instrument.collect()
        now_ns = int(self.clock() * _NS)
        families = {
            WaitKinds.HOOK: (
                GaugeMetricFamily(
                    "wft_workflow_hooks_waiting",
                    "Hooks created and not yet received nor disposed, by workflow.",
                    labels=["workflow"],
                ),
                GaugeMetricFamily(
                    "wft_workflow_hook_oldest_wait_seconds",
                    "How long the oldest hook still waiting has waited, by workflow.",
                    labels=["workflow"],
                ),
            ),
            WaitKinds.SLEEP: (
                GaugeMetricFamily(
                    "wft_workflow_sleeps_waiting",
                    "Sleeps created and not yet completed, by workflow.",
                    labels=["workflow"],
                ),
                GaugeMetricFamily(
                    "wft_workflow_sleep_oldest_wait_seconds",
                    "How long the oldest sleep still going has slept, by workflow.",
                    labels=["workflow"],
                ),
            ),
            WaitKinds.TURN: (
                GaugeMetricFamily(
                    "wft_workflow_turns_waiting",
                    "Live runs with nothing open (no step, sleep or hook) waiting for their workflow's next turn,"
                    " by workflow.",
                    labels=["workflow"],
                ),
                GaugeMetricFamily(
                    "wft_workflow_turn_oldest_wait_seconds",
                    "How long the oldest run waiting for its next turn has waited since its newest event, by"
                    " workflow (a turn the queue lost grows it).",
                    labels=["workflow"],
                ),
            ),
        }
        with self._lock:
            for (kind, workflow), now_waiting in sorted(self._waiting.open.items()):
                waiting, oldest = families[kind]
                waiting.add_metric([workflow], len(now_waiting))
                since = self._waiting.oldest((kind, workflow))
                if since is not None:
                    oldest.add_metric([workflow], max(0, now_ns - since) / _NS)
        for pair in families.values():
            yield from pair

    @property
    def held_runs(self) -> int:
        """Unfinished runs whose state is held (for tests and the curious)."""
        with self._lock:
            return len(self._runs)


def waiting_in_store(conn: sqlite3.Connection) -> Iterator[tuple[str, str | None, str, str, int]]:
    """What the store says each live run waits on (its ``runs.waiting`` column, which the writer keeps
    up to date from the same event log): (run id, workflow name, kind, id, since ns), for ``seed``.
    Reads only the runs that wait (a partial index), however many finished runs the store holds."""
    rows = conn.execute("SELECT run_id, workflow_name, waiting, world_status FROM runs WHERE waiting IS NOT NULL")
    for run_id, workflow_name, waiting, world_status in rows.fetchall():
        if world_status in _FINISHED_STATUSES:
            continue
        for wait in decode_waits(waiting):
            yield run_id, workflow_name, wait.kind, wait.id, wait.since_ns
