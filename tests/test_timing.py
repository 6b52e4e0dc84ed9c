"""Where the time went (``telemetry.timing``) on real runs: the harness's runs on world-local and
world-postgres (event logs only: the app ran without OpenTelemetry), its mid-run snapshot (live
runs), and ``otel_cut`` (three runs with every span the app exported). The parts must add up to the
run's duration exactly, with parallel steps counted once; each part is checked against the events
it is made of, computed here independently."""

from __future__ import annotations

import asyncio
from functools import cache

import pytest

from telemetry.reading import event_log
from telemetry.runfacts import QUEUE_EXECUTION_TIME_MS, QUEUE_OVERHEAD_MS, AppSpan, LogEvent
from telemetry.runtrace import build_run_trace
from telemetry.timing import Parts, breakdown

from . import otel_cut
from .conftest import summary
from .world_spans import RunLog


@cache
def _cut(scenario: str) -> RunLog:
    return otel_cut.run_log(scenario)


@cache
def _app_spans() -> tuple[AppSpan, ...]:
    return tuple(
        AppSpan(r.trace_id, r.span_id, r.parent_span_id, r.name, r.start_ns, r.end_ns, r.attributes)
        for r in otel_cut.sdk_records()
    )


def _events(log: RunLog) -> list[LogEvent]:
    return [LogEvent.of(e) for e in log.events]


def _at(events: list[LogEvent], kind: str, nth: int = 0, correlation: str | None = None) -> int:
    return [e.at_ns for e in events if e.event_type == kind and correlation in (None, e.correlation_id)][nth]


def _union(intervals: list[tuple[int, int]]) -> int:
    total, reach = 0, None
    for lo, hi in sorted(intervals):
        if reach is None or lo > reach:
            total, reach = total + hi - lo, hi
        elif hi > reach:
            total, reach = total + hi - reach, hi
    return total


def _attempts(events: list[LogEvent]) -> list[tuple[int, int]]:
    """Each attempt as (step_started, the step's next event), straight from the log."""
    out, open_at = [], {}
    for e in events:
        if e.event_type == "step_started":
            open_at[e.correlation_id] = e.at_ns
        elif e.event_type in ("step_retrying", "step_completed", "step_failed") and e.correlation_id in open_at:
            out.append((open_at.pop(e.correlation_id), e.at_ns))
    return out


def _adds_up(timing) -> None:
    parts = timing.to_json()["parts"]
    assert [p["name"] for p in parts] == list(Parts.ORDER)
    assert sum(p["ns"] for p in parts) == timing.duration_ns  # every instant counted once
    duration_ms = timing.to_json()["durationMs"]
    assert isinstance(duration_ms, int) and sum(p["ms"] for p in parts) == duration_ms  # whole ms, no float noise
    for p in parts:
        assert isinstance(p["ms"], int) and isinstance(p["summedMs"], int), p
        assert 0 <= p["ns"] and abs(p["ms"] - p["ns"] / 1e6) < 1 and p["ms"] <= p["summedMs"] + 1, p


def test_parts_add_up_to_the_duration_of_every_real_run(real_world):
    kind, world, results = real_world

    async def logs():
        return {
            name: (await world.runs.get(r["runId"]), await event_log(world, r["runId"])) for name, r in results.items()
        }

    for scenario, (run, log) in asyncio.run(logs()).items():
        events = [LogEvent.of(e) for e in log]
        timing = breakdown(run.run_id, events)
        assert timing is not None and not timing.live, scenario
        _adds_up(timing)
        # the same window as the run's span in its event-log trace: first event to the run's end
        (root,) = [
            s for s in build_run_trace(run.run_id, log, run).spans if s.attributes["workflow.span.kind"] == "run"
        ]
        assert (timing.start_ns, timing.end_ns) == (root.start_time, root.end_time), (kind, scenario)
        assert timing.exclusive_ns[Parts.WORLD] == timing.exclusive_ns[Parts.WORKFLOW] == 0 and not timing.app_spans
        # without app spans an attempt is the innermost thing there is: executing is their union
        assert timing.exclusive_ns[Parts.EXECUTING] == _union(_attempts(events)), (kind, scenario)
        assert timing.summed_ns[Parts.EXECUTING] == sum(hi - lo for lo, hi in _attempts(events)), (kind, scenario)


def test_parallel_steps_are_counted_once(harness_out):
    log = RunLog(harness_out / "local-data", summary(harness_out, "local")["parallel"]["runId"])
    events = _events(log)
    attempts = _attempts(events)
    assert len(attempts) == 3 and _union(attempts) < sum(hi - lo for lo, hi in attempts)  # they overlapped
    timing = breakdown(log.run_id, events)
    _adds_up(timing)
    assert timing.summed_ns[Parts.EXECUTING] > timing.exclusive_ns[Parts.EXECUTING] == _union(attempts)
    queued = [
        (_at(events, "step_created", correlation=c), _at(events, "step_started", correlation=c))
        for c in {e.correlation_id for e in events if e.event_type == "step_created"}
    ]
    queued.append((_at(events, "run_created"), _at(events, "run_started")))
    assert timing.summed_ns[Parts.QUEUED] == sum(hi - lo for lo, hi in queued)


def test_each_part_is_the_time_between_its_events():
    retry, fatal, hook = (_events(_cut(s)) for s in ("retry", "fatal", "hook"))
    backoff = breakdown(_cut("retry").run_id, retry)
    gap = _at(retry, "step_started", 1) - _at(retry, "step_retrying")
    assert backoff.exclusive_ns[Parts.BACKOFF] == backoff.summed_ns[Parts.BACKOFF] == gap  # ~1 s retry delay
    assert 900e6 < gap < 1500e6

    queue = breakdown(_cut("fatal").run_id, fatal)
    steps = {e.correlation_id for e in fatal if e.event_type == "step_created"}
    waited = (
        _at(fatal, "run_started")
        - _at(fatal, "run_created")
        + sum(_at(fatal, "step_started", correlation=s) - _at(fatal, "step_created", correlation=s) for s in steps)
    )
    assert queue.summed_ns[Parts.QUEUED] == waited and len(steps) == 2

    waiting = breakdown(_cut("hook").run_id, hook)
    assert waiting.summed_ns[Parts.HOOK] == _at(hook, "hook_received") - _at(hook, "hook_created")
    for timing in (backoff, queue, waiting):
        _adds_up(timing)


def test_sleeping_is_the_sleep(harness_out):
    log = RunLog(harness_out / "local-data", summary(harness_out, "local")["sleep"]["runId"])
    events = _events(log)
    timing = breakdown(log.run_id, events)
    slept = _at(events, "wait_completed") - _at(events, "wait_created")
    assert timing.summed_ns[Parts.SLEEPING] == slept and slept >= 1_000_000_000  # sleep("1s")
    _adds_up(timing)


@pytest.mark.parametrize("scenario", ["retry", "fatal", "hook"])
def test_app_spans_split_out_world_calls_and_the_workflow_function(scenario):
    log = _cut(scenario)
    events = _events(log)
    alone = breakdown(log.run_id, events)
    both = breakdown(log.run_id, events, _app_spans())
    _adds_up(both)
    assert both.app_spans and both.duration_ns == alone.duration_ns
    assert both.exclusive_ns[Parts.WORLD] > 0 and both.exclusive_ns[Parts.WORKFLOW] > 0
    # world calls inside attempts are world time now: what is left of executing is the step handler
    assert both.exclusive_ns[Parts.EXECUTING] < alone.exclusive_ns[Parts.EXECUTING]
    assert both.exclusive_ns[Parts.OTHER] < alone.exclusive_ns[Parts.OTHER]
    # the SDK's own measures, summed over this run's deliveries only
    mine = [s for s in _app_spans() if s.role in ("step", "workflow") and s.run_id == log.run_id]
    assert both.queue_overhead_ms == sum(s.number(QUEUE_OVERHEAD_MS) or 0 for s in mine)
    assert both.step_execution_ms == sum(s.number(QUEUE_EXECUTION_TIME_MS) or 0 for s in mine if s.role == "step")
    assert both.to_json()["sdk"]["queueOverheadMs"] == both.queue_overhead_ms


def test_someone_polling_the_run_is_not_its_time():
    """The harness's driver asked ``world.runs.get`` a few times a second, each in a trace of its own
    that carries the run's id: those are someone waiting on the run, not the run's work."""
    log = _cut("retry")
    polls = [s for s in _app_spans() if s.name == "world.runs.get" and s.run_id == log.run_id and not s.parent_span_id]
    assert len(polls) >= 3
    with_polls = breakdown(log.run_id, _events(log), _app_spans())
    polled = {(s.trace_id, s.span_id) for s in polls}
    without = breakdown(log.run_id, _events(log), [s for s in _app_spans() if (s.trace_id, s.span_id) not in polled])
    assert with_polls == without


def test_a_live_run_counts_up_to_now(harness_out):
    hook = summary(harness_out, "local")["hook"]
    assert hook["midrunSnapshot"]["hookPending"]
    log = RunLog(harness_out / "local-data-midrun", hook["runId"])
    events = _events(log)
    assert not any(e.event_type == "hook_received" for e in events)
    now = max(e.at_ns for e in events) + 5_000_000_000
    timing = breakdown(log.run_id, events, now_ns=now)
    assert timing.live and timing.end_ns == now
    _adds_up(timing)
    assert timing.summed_ns[Parts.HOOK] == now - _at(events, "hook_created")  # still waiting, up to now
    assert timing.to_json()["live"] is True
    assert breakdown(log.run_id, []) is None
