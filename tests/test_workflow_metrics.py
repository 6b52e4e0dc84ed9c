"""collector/workflow_metrics.py: per-workflow RED metrics from real harness event logs.

The counts are checked against the event logs themselves (and the harness driver's own summary of
how each run ended); then fed the way the tailer feeds them — a pass at a time, again after a
failed delivery, through a real ``Follower`` over the mid-run snapshot and then the finished world,
and across a restart on the same checkpoint — each event must count exactly once. The last tests
read ``/metrics`` of a real collector with prometheus-client's parser.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from collector.metrics import COUNTERS, GAUGES
from collector.workflow_metrics import OTHER, WorkflowMetrics, waiting_in_store
from telemetry.backends import BackendConfig
from telemetry.backends.local import LocalWorld
from telemetry.follow import Checkpoint, Follower
from telemetry.reading import all_runs, event_log
from telemetry.runtrace import short_name
from telemetry.world import TERMINAL_RUN_EVENT_TYPES, epoch_ns

Key = tuple[str, tuple[tuple[str, str], ...]]


def _logs(world) -> dict:
    """run id → (run record, its whole event log), read once."""

    async def go():
        return {run.run_id: (run, await event_log(world, run.run_id)) async for run in all_runs(world)}

    return asyncio.run(go())


def _samples(metrics: WorkflowMetrics) -> dict[Key, float]:
    """Every sample the derivation exposes (``_created`` left out: the service's registry drops it).
    Values to the nanosecond: a histogram's ``_sum`` adds float seconds, so observations made in
    another order (an event committed late) may differ in the last bits, never by a nanosecond."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): round(s.value, 9)
        for family in metrics.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def _value(samples: dict[Key, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _oracle(logs: dict) -> dict[str, Counter]:
    """What the event logs say, counted plainly, per workflow (and step)."""
    out: dict[str, Counter] = {
        k: Counter() for k in ("started", "finished", "attempts", "ended", "retries", "queued", "run_s", "queue_s")
    }
    for run, events in logs.values():
        workflow = short_name(run.workflow_name)
        names = {e.correlation_id: e.event_data["stepName"] for e in events if e.event_type == "step_created"}
        created = {e.correlation_id: epoch_ns(e.created_at) for e in events if e.event_type == "step_created"}
        first_start: dict[str, int] = {}
        start = min(epoch_ns(e.created_at) for e in events)
        finished = any(e.event_type in TERMINAL_RUN_EVENT_TYPES for e in events)
        ends = [e for e in events if e.event_type in ("step_completed", "step_failed", "step_retrying")]
        for e in events:
            kind = e.event_type
            step = short_name(names.get(e.correlation_id, "?"))
            if kind == "run_started":
                out["started"][workflow] += 1
            elif kind in TERMINAL_RUN_EVENT_TYPES:
                status = kind.removeprefix("run_")
                out["finished"][(workflow, status)] += 1
                out["run_s"][(workflow, status)] += (epoch_ns(e.created_at) - start) / 1e9
            elif kind == "step_started":
                first_start.setdefault(e.correlation_id, epoch_ns(e.created_at))
                if finished or any(
                    later.correlation_id == e.correlation_id for later in ends if later.event_id > e.event_id
                ):
                    out["attempts"][(workflow, step)] += 1  # an attempt is counted once it ended
            elif kind in ("step_completed", "step_failed", "step_retrying"):
                out["ended"][(workflow, step, kind.removeprefix("step_"))] += 1
                if kind == "step_retrying":
                    out["retries"][(workflow, step)] += 1
        for step_id, at in first_start.items():
            out["queued"][workflow] += 1
            out["queue_s"][workflow] += (at - created[step_id]) / 1e9
    return out


def _check_against(samples: dict[Key, float], expected: dict[str, Counter]) -> None:
    """Every count of ``expected`` is what the metrics say, and the metrics say nothing more."""
    v = _value
    for workflow, n in expected["started"].items():
        assert v(samples, "wft_workflow_runs_started_total", workflow=workflow) == n, workflow
    for (workflow, status), n in expected["finished"].items():
        labels = {"workflow": workflow, "status": status}
        assert v(samples, "wft_workflow_runs_finished_total", **labels) == n, labels
        assert v(samples, "wft_workflow_run_duration_seconds_count", **labels) == n, labels
        total = v(samples, "wft_workflow_run_duration_seconds_sum", **labels)
        assert total == pytest.approx(expected["run_s"][(workflow, status)], abs=1e-6), labels
    for (workflow, step, outcome), n in expected["ended"].items():
        assert v(samples, "wft_workflow_step_attempts_total", workflow=workflow, step=step, outcome=outcome) == n
    for (workflow, step), n in expected["attempts"].items():
        counted = sum(
            value
            for (name, labels), value in samples.items()
            if name == "wft_workflow_step_attempts_total" and dict(labels)["workflow"] == workflow
            if dict(labels)["step"] == step
        )
        assert counted == n, (workflow, step)  # every attempt of a finished run is counted, once
        durations = v(samples, "wft_workflow_step_attempt_duration_seconds_count", workflow=workflow, step=step)
        assert durations == sum(c for (w, s, _), c in expected["ended"].items() if (w, s) == (workflow, step))
    for (workflow, step), n in expected["retries"].items():
        assert v(samples, "wft_workflow_step_retries_total", workflow=workflow, step=step) == n
    for workflow, n in expected["queued"].items():
        assert v(samples, "wft_workflow_step_queue_delay_seconds_count", workflow=workflow) == n
        queued = v(samples, "wft_workflow_step_queue_delay_seconds_sum", workflow=workflow)
        assert queued == pytest.approx(expected["queue_s"][workflow], abs=1e-6)
    totals = {
        "wft_workflow_runs_started_total": sum(expected["started"].values()),
        "wft_workflow_runs_finished_total": sum(expected["finished"].values()),
        "wft_workflow_step_attempts_total": sum(expected["attempts"].values()),
        "wft_workflow_step_retries_total": sum(expected["retries"].values()),
        "wft_workflow_step_queue_delay_seconds_count": sum(expected["queued"].values()),
    }
    for name, total in totals.items():
        assert sum(value for (n, _), value in samples.items() if n == name) == total, name


def _one_shot(logs: dict) -> WorkflowMetrics:
    metrics = WorkflowMetrics()
    for run_id, (run, events) in logs.items():
        metrics.feed(run_id, run.workflow_name, events)
    return metrics


def test_counts_equal_what_the_event_log_says_per_workflow(real_world):
    kind, world, summary = real_world
    logs = _logs(world)
    expected = _oracle(logs)
    assert expected["retries"] and ("fatalWorkflow", "failed") in expected["finished"]  # the data has them
    samples = _samples(_one_shot(logs))
    _check_against(samples, expected)
    # how each run ended, as the harness driver saw it through the SDK
    ended = Counter((short_name(r["workflowName"]), r["status"]) for r in summary.values())
    counted = {
        (dict(labels)["workflow"], dict(labels)["status"]): value
        for (name, labels), value in samples.items()
        if name == "wft_workflow_runs_finished_total" and value
    }
    assert counted == ended, kind
    # label values are names, never ids
    values = {value for (_, labels) in samples for _, value in labels}
    assert not any(value.startswith(("wrun_", "step_", "hook_", "wait_", "workflow//", "step//")) for value in values)
    retried = {"workflow": "retryWorkflow", "step": "flakyOnce", "outcome": "retrying"}
    assert _value(samples, "wft_workflow_step_attempts_total", **retried) == 1  # named as `wft runs` names it


def test_a_pass_at_a_time_and_a_redelivery_count_each_event_once(harness_out):
    logs = _logs(LocalWorld(harness_out / "local-data"))
    whole = _samples(_one_shot(logs))
    metrics = WorkflowMetrics()
    for run_id, (run, events) in logs.items():
        sent: list = []
        for start in range(0, len(events), 3):  # passes of three events
            chunk = events[start : start + 3]
            metrics.feed(run_id, run.workflow_name, chunk)
            sent.extend(chunk)
            metrics.feed(run_id, run.workflow_name, sent)  # a failed delivery offered again, or a rebuild
    assert _samples(metrics) == whole
    assert metrics.held_runs == 0  # finished runs keep nothing
    # a finished run's whole log delivered again (the follower's "finished again"): nothing counts twice
    run_id, (run, events) = next(iter(logs.items()))
    metrics.feed(run_id, run.workflow_name, events)
    assert _samples(metrics) == whole


def test_an_event_committed_late_is_counted_as_if_it_had_come_in_order(harness_out):
    """A writer may commit an event whose id sorts before one already read (concurrent step handlers):
    the run replays its log in id order and counts what the late event brings, nothing twice."""
    logs = _logs(LocalWorld(harness_out / "local-data"))
    whole = _samples(_one_shot(logs))
    late_ones = 0
    for run_id, (run, events) in logs.items():
        for i in range(1, len(events) - 2):  # the event after the late one is not the run's end
            metrics = WorkflowMetrics()
            for other_id, (other, other_events) in logs.items():
                if other_id != run_id:
                    metrics.feed(other_id, other.workflow_name, other_events)
            metrics.feed(run_id, run.workflow_name, [*events[:i], events[i + 1]])
            metrics.feed(run_id, run.workflow_name, [events[i]])  # read one pass later
            metrics.feed(run_id, run.workflow_name, events[i + 2 :])
            # a run that waited on its turn between passes leaves its workflow's gauge at 0, not absent
            now_waiting = {k: v for k, v in _samples(metrics).items() if not (k[0].endswith("_waiting") and v == 0)}
            assert now_waiting == {k: v for k, v in whole.items() if not (k[0].endswith("_waiting") and v == 0)}, (
                run_id,
                events[i].event_type,
            )
            late_ones += 1
    assert late_ones > 50


def test_attempts_that_never_ended_are_counted_as_abandoned_or_unfinished(harness_out):
    """The retry run's real log, cut: without its ``step_retrying`` the first attempt of ``flakyOnce``
    is started again before it ended (abandoned); without the second attempt's end too, the run ends
    with it open (unfinished). Every attempt is still counted, once."""
    logs = _logs(LocalWorld(harness_out / "local-data"))
    run, events = next((r, e) for r, e in logs.values() if short_name(r.workflow_name) == "retryWorkflow")
    flaky = next(e.correlation_id for e in events if e.event_type == "step_retrying")
    cut = [e for e in events if e.event_type != "step_retrying"]
    attempts = {"workflow": "retryWorkflow", "step": "flakyOnce"}
    for events_fed, outcomes in (
        (cut, {"abandoned": 1, "completed": 1}),
        (
            [e for e in cut if not (e.event_type == "step_completed" and e.correlation_id == flaky)],
            {"abandoned": 1, "unfinished": 1},
        ),
    ):
        metrics = WorkflowMetrics()
        for start in range(0, len(events_fed), 2):
            metrics.feed(run.run_id, run.workflow_name, events_fed[: start + 2])  # passes, each resending
        samples = _samples(metrics)
        for outcome in ("completed", "failed", "retrying", "abandoned", "unfinished"):
            counted = _value(samples, "wft_workflow_step_attempts_total", **attempts, outcome=outcome)
            assert counted == outcomes.get(outcome, 0), outcome
        assert _value(samples, "wft_workflow_runs_finished_total", workflow="retryWorkflow", status="completed") == 1


def test_a_finished_run_the_process_never_held_is_not_counted_again():
    """The checkpoint said how far an earlier delivery (an earlier process) counted: only later events count."""
    world = Path(__file__).parent / "fixtures" / "local-cut"
    logs = _logs(LocalWorld(world))
    metrics = WorkflowMetrics()
    for run_id, (run, events) in logs.items():
        metrics.feed(run_id, run.workflow_name, events, counted_through=max(e.event_id for e in events))
    assert not any(v for (name, _), v in _samples(metrics).items() if not name.endswith("_bucket")), "counted"


def _follow(world_dir: Path, checkpoint: Checkpoint, metrics: WorkflowMetrics) -> Follower:
    """A real follower over ``world_dir`` feeding ``metrics`` as the collector's tailer does."""
    return Follower(
        LocalWorld(world_dir),
        None,
        checkpoint,
        span_data=True,
        deliver_many=lambda batch: metrics.feed_deliveries(batch, checkpoint.get),
    )


def test_midrun_then_finished_through_a_follower_and_across_a_restart(harness_out, tmp_path):
    midrun, final = harness_out / "local-data-midrun", harness_out / "local-data"
    final_logs = _logs(LocalWorld(final))
    whole = _samples(_one_shot(final_logs))
    midrun_logs = _logs(LocalWorld(midrun))
    assert {r.status for r, _ in midrun_logs.values()} >= {"running", "completed"}  # runs going at the snapshot

    for restart in (False, True):
        world_dir = tmp_path / f"world-{restart}"
        shutil.copytree(midrun, world_dir)
        path = tmp_path / f"cp-{restart}.sqlite3"
        now = time.time()
        first = WorkflowMetrics(clock=lambda at=now: at)
        follower = _follow(world_dir, Checkpoint(path), first)
        asyncio.run(follower.poll())
        at_midrun = _samples(first)
        # what the snapshot's logs say, and what waits: the hook and the sleep of the runs still going
        _check_against(at_midrun, _oracle(midrun_logs))
        assert _value(at_midrun, "wft_workflow_hooks_waiting", workflow="hookWorkflow") == 1
        assert _value(at_midrun, "wft_workflow_sleeps_waiting", workflow="sleepWorkflow") == 1
        hook_since = min(
            epoch_ns(e.created_at)
            for r, ev in midrun_logs.values()
            if short_name(r.workflow_name) == "hookWorkflow"
            for e in ev
            if e.event_type == "hook_created"
        )
        hook_age = _value(at_midrun, "wft_workflow_hook_oldest_wait_seconds", workflow="hookWorkflow")
        assert hook_age == pytest.approx(now - hook_since / 1e9, abs=1e-3)
        # a workflow's series exist from its first run on, at 0 (else rate() misses the first increase)
        assert (
            at_midrun[("wft_workflow_runs_finished_total", (("status", "completed"), ("workflow", "hookWorkflow")))]
            == 0
        )
        # the webhook run's hook: received before the snapshot or still waiting, as the harness's timing had
        # it; the gauge says what its log says, and an oldest age exists only while one waits
        webhook = [e for r, ev in midrun_logs.values() if short_name(r.workflow_name) == "webhookWorkflow" for e in ev]
        opened = {e.correlation_id for e in webhook if e.event_type == "hook_created"}
        closed = {e.correlation_id for e in webhook if e.event_type in ("hook_received", "hook_disposed")}
        assert opened, "the webhook run had created its hook by the snapshot"
        assert _value(at_midrun, "wft_workflow_hooks_waiting", workflow="webhookWorkflow") == len(opened - closed)
        oldest = ("wft_workflow_hook_oldest_wait_seconds", (("workflow", "webhookWorkflow"),))
        assert (oldest in at_midrun) == bool(opened - closed)

        metrics = first
        if restart:  # a new process on the same checkpoint: counters from 0, nothing counted twice
            follower.checkpoint.close()
            metrics = WorkflowMetrics()
            follower = _follow(world_dir, Checkpoint(path), metrics)
        shutil.copytree(final, world_dir, dirs_exist_ok=True)  # the runs go on and finish
        for _ in range(3):
            asyncio.run(follower.poll())
        after = _samples(metrics)
        assert _value(after, "wft_workflow_hooks_waiting", workflow="hookWorkflow") == 0
        assert _value(after, "wft_workflow_sleeps_waiting", workflow="sleepWorkflow") == 0
        assert not any(name.endswith("_oldest_wait_seconds") for name, _ in after)
        if not restart:
            assert after == whole  # mid-run then finished, in one process: exactly the one-shot counts
            continue
        # the restarted process counted exactly what the event log added since the first one's passes
        counts = [k for k in whole if not k[0].endswith(("_bucket", "_sum")) and "waiting" not in k[0]]
        for key in counts:
            assert after.get(key, 0) + at_midrun.get(key, 0) == whole[key], key
        # a step created before the restart and started after it still has its queue delay (state rebuilt
        # from the checkpointed events, without counting them)
        assert _value(after, "wft_workflow_step_queue_delay_seconds_count", workflow="hookWorkflow") == 1
        assert _value(after, "wft_workflow_runs_finished_total", workflow="sequentialWorkflow", status="completed") == 0
        follower.checkpoint.close()


def test_what_waits_costs_memory_for_what_waits_now_not_for_history(harness_out):
    """A hook that waits for ever (the mid-run snapshot's hook run) and, beside it, thousands of hooks of
    the same workflow that come and go (the finished hook run's real log under fresh run ids): the
    oldest stays right, and the table of waiting hooks does not grow with the ones that went."""
    midrun = _logs(LocalWorld(harness_out / "local-data-midrun"))
    final = _logs(LocalWorld(harness_out / "local-data"))
    waits, waiting = next((r, e) for r, e in midrun.values() if short_name(r.workflow_name) == "hookWorkflow")
    done, events = final[waits.run_id]
    now = time.time()
    metrics = WorkflowMetrics(clock=lambda: now)
    metrics.feed(waits.run_id, waits.workflow_name, waiting)
    for copy in range(3000):
        metrics.feed(f"{done.run_id}-{copy}", done.workflow_name, events)
    # white-box, before any scrape: the bound itself (one hook open, the rest rebuilt away)
    assert sum(len(heap) for heap in metrics._waiting.heaps.values()) <= 2 * 1 + 64 + 1
    samples = _samples(metrics)
    assert _value(samples, "wft_workflow_hooks_waiting", workflow="hookWorkflow") == 1
    since = next(epoch_ns(e.created_at) for e in waiting if e.event_type == "hook_created")
    oldest = _value(samples, "wft_workflow_hook_oldest_wait_seconds", workflow="hookWorkflow")
    assert oldest == pytest.approx(now - since / 1e9, abs=1e-3)
    assert _value(samples, "wft_workflow_runs_finished_total", workflow="hookWorkflow", status="completed") == 3000
    assert metrics.held_runs == 1


def test_names_past_the_cap_go_to_other_and_are_counted():
    logs = _logs(LocalWorld(Path(__file__).parent / "fixtures" / "local-cut"))
    metrics = WorkflowMetrics(max_label_values=1)
    for run_id, (run, events) in logs.items():
        metrics.feed(run_id, run.workflow_name, events)
    samples = _samples(metrics)
    workflows = {dict(labels).get("workflow") for _, labels in samples} - {None}
    steps = {dict(labels).get("step") for _, labels in samples} - {None}
    assert len(workflows) == 2 and OTHER in workflows and len(steps) == 2 and OTHER in steps
    overflow = {dict(labels)["label"]: v for (n, labels), v in samples.items() if n.startswith("wft_workflow_label")}
    assert overflow["workflow"] == len(logs) - sum(
        1 for r, _ in logs.values() if short_name(r.workflow_name) in workflows
    )
    assert overflow["step"] > 0
    runs = sum(v for (n, _), v in samples.items() if n == "wft_workflow_runs_finished_total")
    assert runs == len(logs)  # nothing lost to the cap, only renamed


# ---- through a real collector ----------------------------------------------------------------


def _wait(predicate, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


def grow_local_world(source: Path, world: Path) -> None:
    """The world-local dir ``world`` becomes ``source`` while a tailer reads it, in the order the SDK
    wrote it: events one by one in id (time) order, then the entity records."""
    for path in sorted((source / "events").iterdir(), key=lambda p: p.name.rsplit("-", 1)[-1]):
        if not (world / "events" / path.name).exists():
            shutil.copyfile(path, world / "events" / path.name)
    shutil.copytree(source, world, dirs_exist_ok=True)


def _scrape(url: str) -> tuple[str, dict]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        return response.headers["Content-Type"], {
            f.name: f for f in text_string_to_metric_families(response.read().decode())
        }


def test_metrics_endpoint_parses_and_follows_a_live_world(collector, harness_out, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(harness_out / "local-data-midrun", world)
    service = collector(world=BackendConfig("local", data_dir=str(world)), tail_interval=0.05)
    midrun = _oracle(_logs(LocalWorld(harness_out / "local-data-midrun")))
    workflows = service.tailer.workflows

    def finished() -> float:
        return sum(v for (n, _), v in _samples(workflows).items() if n == "wft_workflow_runs_finished_total")

    _wait(lambda: finished() == sum(midrun["finished"].values()))
    content_type, families = _scrape(service.url)
    assert content_type == CONTENT_TYPE_LATEST
    # the service's own metrics keep their names and types
    for spec in COUNTERS:
        assert families[spec.name.removesuffix("_total")].type == "counter", spec.name
    for spec in GAUGES:
        assert families[spec.name].type == "gauge", spec.name
    assert families["wft_store_bytes"].type == "gauge" and families["wft_tailer_unreadable_runs"].type == "gauge"
    # the per-workflow ones, typed, with names as labels
    kinds = {
        "wft_workflow_runs_started": "counter",
        "wft_workflow_runs_finished": "counter",
        "wft_workflow_run_duration_seconds": "histogram",
        "wft_workflow_step_attempts": "counter",
        "wft_workflow_step_attempt_duration_seconds": "histogram",
        "wft_workflow_step_retries": "counter",
        "wft_workflow_step_queue_delay_seconds": "histogram",
        "wft_workflow_hooks_waiting": "gauge",
        "wft_workflow_hook_oldest_wait_seconds": "gauge",
        "wft_workflow_sleeps_waiting": "gauge",
        "wft_workflow_sleep_oldest_wait_seconds": "gauge",
    }
    for name, kind in kinds.items():
        assert families[name].type == kind, name
    assert not any(name.endswith("_created") for name in families)

    def sample(name: str, **labels: str) -> float | None:
        family = families[name.removesuffix("_total")]
        return next((s.value for s in family.samples if s.name == name and s.labels == labels), None)

    assert sample("wft_workflow_hooks_waiting", workflow="hookWorkflow") == 1
    assert sample("wft_workflow_hook_oldest_wait_seconds", workflow="hookWorkflow") > 0
    assert sample("wft_workflow_sleeps_waiting", workflow="sleepWorkflow") == 1
    for (workflow, status), n in midrun["finished"].items():
        assert sample("wft_workflow_runs_finished_total", workflow=workflow, status=status) == n

    # what the store says waits is what a restarted tailer starts from
    conn = sqlite3.connect(service.settings.store)
    try:
        seeded = WorkflowMetrics()
        seeded.seed(waiting_in_store(conn))
    finally:
        conn.close()
    waiting = _samples(seeded)
    assert _value(waiting, "wft_workflow_hooks_waiting", workflow="hookWorkflow") == 1
    assert _value(waiting, "wft_workflow_sleeps_waiting", workflow="sleepWorkflow") == 1
    assert not any(v for (n, _), v in waiting.items() if n.endswith("_total"))  # state only, nothing counted

    # the runs go on and finish: the counts become the whole log's, each event once
    grow_local_world(harness_out / "local-data", world)
    final = _oracle(_logs(LocalWorld(harness_out / "local-data")))
    _wait(lambda: workflows.held_runs == 0 and finished() == sum(final["finished"].values()))
    time.sleep(0.3)  # a few more passes: nothing more may count
    _check_against(_samples(workflows), final)
    _, families = _scrape(service.url)
    assert sample("wft_workflow_hooks_waiting", workflow="hookWorkflow") == 0
    assert sample("wft_workflow_hook_oldest_wait_seconds", workflow="hookWorkflow") is None


def test_runs_waiting_for_their_next_turn_are_what_the_run_pages_say(harness_out):
    """Every real run (finished, and the mid-run snapshot's), fed an event at a time: the turn gauges
    count a run exactly when the store's rule (``summaries.fold_waits``, what the run page and the
    "stuck" list show) has it waiting on its next turn, and the oldest age is since the same event.
    A turn the queue lost is then an alert on ``wft_workflow_turn_oldest_wait_seconds``."""
    from collector.store import EventRow
    from collector.summaries import WaitKinds, fold_waits
    from telemetry.payloads import to_jsonable

    now = time.time()
    seen_turn = seen_other = 0
    for data in ("local-data", "local-data-midrun"):
        for run_id, (run, events) in _logs(LocalWorld(harness_out / data)).items():
            metrics = WorkflowMetrics(clock=lambda at=now: at)
            workflow = short_name(run.workflow_name)
            waiting, cursor = (), None
            for event in events:
                metrics.feed(run_id, run.workflow_name, [event])
                row = EventRow(
                    run_id,
                    event.event_id,
                    event.event_type,
                    event.correlation_id,
                    epoch_ns(event.created_at),
                    json.dumps(to_jsonable(event.event_data), default=str) if event.event_data else None,
                )
                waiting, cursor = fold_waits(waiting, cursor, [row])
                turn = [w for w in waiting if w.kind == WaitKinds.TURN]
                samples = _samples(metrics)
                assert _value(samples, "wft_workflow_turns_waiting", workflow=workflow) == len(turn), (run_id, event)
                oldest = ("wft_workflow_turn_oldest_wait_seconds", (("workflow", workflow),))
                if turn:
                    assert samples[oldest] == pytest.approx(now - turn[0].since_ns / 1e9, abs=1e-3)
                    seen_turn += 1
                else:
                    assert oldest not in samples
                    seen_other += 1
    assert seen_turn > 20 and seen_other > 20
