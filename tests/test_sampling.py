"""collector/sampling.py: the rate spec, the decision as a function of the run id, and the sampler on
real SDK data (the harness's world-local runs, and the otel-cut runs with the app's own spans): whole
runs kept or dropped, failed and erroring runs kept, the same decisions in any order and after a
restart, the max wait, the link wait, and the buffer bound."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from ulid import ULID

from collector import sampling
from collector.otlp import JSON, decode_request
from collector.sampling import Sampler, keep_run, parse_sample_rates, run_fraction
from telemetry.backends.local import LocalWorld
from telemetry.export import run_resource
from telemetry.otlp_encode import OtlpEncoder
from telemetry.reading import all_runs, run_trace

from . import otel_cut
from .otlp_receiver import decode_request as received_spans

# ---- the spec -------------------------------------------------------------------------------------


def test_parse_sample_rates_names_outcomes_and_defaults_the_rest_to_one():
    assert parse_sample_rates("completed=0.1,failed=1,cancelled=1") == {
        "completed": 0.1,
        "failed": 1.0,
        "cancelled": 1.0,
    }
    assert parse_sample_rates(" completed = 0 ") == {"completed": 0.0, "failed": 1.0, "cancelled": 1.0}
    assert parse_sample_rates("cancelled=0.25,completed=1e-1") == {
        "completed": 0.1,
        "failed": 1.0,
        "cancelled": 0.25,
    }


@pytest.mark.parametrize(
    "spec, says",
    [
        ("succeeded=0.1", "unknown outcome 'succeeded'"),
        ("completed=1.5", "rate '1.5' for completed"),
        ("completed=-0.1", "rate '-0.1' for completed"),
        ("completed=nan", "rate 'nan' for completed"),
        ("completed=lots", "rate 'lots' for completed"),
        ("completed=0.1,completed=0.2", "completed given twice"),
        ("completed", "'completed' is not outcome=rate"),
        ("", "'' is not outcome=rate"),
        ("completed=0.1,", "'' is not outcome=rate"),
    ],
)
def test_parse_sample_rates_refuses_a_bad_spec_in_one_line(spec, says):
    with pytest.raises(ValueError) as caught:
        parse_sample_rates(spec)
    message = str(caught.value)
    assert says in message and "\n" not in message and message.startswith("--forward-sample: ")


# ---- the decision ---------------------------------------------------------------------------------


def test_the_decision_is_the_same_in_every_process(harness_runs):
    """The hash is BLAKE2b, not ``hash()``: processes with other hash seeds decide the same."""
    ids = sorted(harness_runs)
    here = [keep_run(run_id, 0.5) for run_id in ids]
    code = (
        "import json, sys; from collector.sampling import keep_run;"
        " print(json.dumps([keep_run(i, 0.5) for i in json.loads(sys.argv[1])]))"
    )
    for seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(ids)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
            timeout=60,
            check=True,
        )
        assert json.loads(out.stdout) == here
    assert 0 < sum(here) < len(here)  # the harness's ids fall on both sides of 0.5


def test_rates_zero_and_one_and_the_share_kept_in_between():
    ids = [f"wrun_{ULID()}" for _ in range(20_000)]  # run ids as the SDK makes them
    assert all(keep_run(i, 1.0) for i in ids) and not any(keep_run(i, 0.0) for i in ids)
    kept = sum(keep_run(i, 0.1) for i in ids) / len(ids)
    assert 0.09 < kept < 0.11  # 20 000 draws: 0.1 ± 5 standard deviations is ±0.0106
    assert all(keep_run(i, 0.1) == (run_fraction(i) < 0.1) for i in ids[:1000])
    # a higher rate keeps a superset: raising it never drops a run kept before
    assert {i for i in ids if keep_run(i, 0.1)} <= {i for i in ids if keep_run(i, 0.3)}


# ---- real runs --------------------------------------------------------------------------------------


@dataclass
class Run:
    run_id: str
    status: str
    body: bytes  # every span of the run, as the tailer forwards them
    partial: bytes  # all but the run span (what a live run has sent before its end)
    end: bytes  # the run span alone
    span_ids: set[str] = field(default_factory=set)
    errors: int = 0  # ERROR spans
    early_errors: int = 0  # ERROR spans before the run span


@pytest.fixture(scope="module")
def harness_runs(harness_out) -> dict[str, Run]:
    """The harness's world-local runs as the tailer encodes their event-log spans."""
    return asyncio.run(_runs(harness_out / "local-data"))


async def _runs(world_dir: Path) -> dict[str, Run]:
    world = LocalWorld(world_dir)
    encoder = OtlpEncoder(run_resource("local"))
    out: dict[str, Run] = {}
    try:
        async for run in all_runs(world):
            data = (await run_trace(world, run)).data
            ends = [s for s in data if s.attributes.get("workflow.span.kind") == "run"]
            rest = [s for s in data if s not in ends]
            out[run.run_id] = Run(
                run.run_id,
                run.status,
                encoder.request(data).SerializeToString(),
                encoder.request(rest).SerializeToString(),
                encoder.request(ends).SerializeToString(),
                {f"{s.span_id:016x}" for s in data},
                sum(1 for s in data if _failed(s)),
                sum(1 for s in rest if _failed(s)),
            )
    finally:
        await world.close()
    return out


def _failed(span) -> bool:
    return span.status is not None and span.status.status_code.value == 2


class Upstream:
    """What the sampler released, decoded with opentelemetry-proto."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.fail = False

    async def __call__(self, body: bytes) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        self.bodies.append(body)

    def span_ids(self) -> list[str]:
        return [s.span_id for body in self.bodies for s in received_spans(body)]


def _sampler(tmp_path: Path, upstream: Upstream, spec: str, **options) -> Sampler:
    return Sampler(tmp_path / "sampling.sqlite3", parse_sample_rates(spec), upstream, **options)


def _expected_kept(runs: dict[str, Run], rate: float) -> set[str]:
    """Failed runs, runs with an ERROR span, and completed runs whose hash falls under ``rate``."""
    return {r.run_id for r in runs.values() if r.status == "failed" or r.errors or keep_run(r.run_id, rate)}


def _rate_between(runs: dict[str, Run]) -> float:
    """A completed rate that keeps some of the harness's error-free completed runs and drops others."""
    fractions = sorted(run_fraction(r.run_id) for r in runs.values() if r.status == "completed" and not r.errors)
    assert len(fractions) >= 2, "the harness has too few error-free completed runs for this test"
    middle = len(fractions) // 2
    return (fractions[middle - 1] + fractions[middle]) / 2


def test_completed_runs_are_kept_or_dropped_whole_and_failed_runs_always_kept(harness_runs, tmp_path):
    rate = _rate_between(harness_runs)
    upstream = Upstream()

    async def go() -> Sampler:
        sampler = _sampler(tmp_path, upstream, f"completed={rate}")
        for run in harness_runs.values():  # live: every run's finished spans first, then the ends
            await sampler.offer(run.partial)
        assert sampler.stats().buffered_runs == sum(1 for r in harness_runs.values() if not r.early_errors)
        for run in harness_runs.values():
            await sampler.offer(run.end)
        return sampler

    sampler = asyncio.run(go())
    kept = _expected_kept(harness_runs, rate)
    dropped = set(harness_runs) - kept
    assert dropped and {r for r in kept if harness_runs[r].status == "completed" and not harness_runs[r].errors}
    forwarded = upstream.span_ids()
    assert len(forwarded) == len(set(forwarded))  # each span once
    assert set(forwarded) == set().union(*(harness_runs[r].span_ids for r in kept))
    stats = sampler.stats()
    assert stats.buffered_bytes == 0 and stats.buffered_runs == 0
    assert sum(stats.runs.values()) == len(harness_runs)
    assert stats.runs[("dropped", "completed")] == len(dropped)
    assert stats.runs[("kept", "error")] == sum(1 for r in harness_runs.values() if r.errors)
    assert stats.spans[("dropped", "completed")] == sum(len(harness_runs[r].span_ids) for r in dropped)
    assert sum(n for (decision, _), n in stats.spans.items() if decision == "kept") == len(forwarded)
    for run_id in dropped:
        assert sampler.decision(run_id) == ("dropped", "completed")


def test_same_decisions_in_another_order_and_in_another_sampler(harness_runs, tmp_path):
    """Two collectors, one seeing whole runs at once and one seeing them live in reverse order."""
    rate = _rate_between(harness_runs)
    first, second = Upstream(), Upstream()

    async def go() -> None:
        one = _sampler(tmp_path / "one", first, f"completed={rate}")
        two = _sampler(tmp_path / "two", second, f"completed={rate}")
        for run in harness_runs.values():
            await one.offer(run.body)
        for run in reversed(harness_runs.values()):
            await two.offer(run.partial)
        for run in harness_runs.values():
            await two.offer(run.end)

    asyncio.run(go())
    assert sorted(first.span_ids()) == sorted(second.span_ids())
    assert set(first.span_ids()) == set().union(*(harness_runs[r].span_ids for r in _expected_kept(harness_runs, rate)))


def test_a_restart_loses_nothing_buffered_and_decides_the_same(harness_runs, tmp_path):
    rate = _rate_between(harness_runs)
    before, after = Upstream(), Upstream()

    async def first_life() -> None:
        sampler = _sampler(tmp_path, before, f"completed={rate}")
        for run in harness_runs.values():
            await sampler.offer(run.partial)
        sampler.close()

    async def second_life() -> Sampler:
        sampler = _sampler(tmp_path, after, f"completed={rate}")  # a new process: same file
        assert sampler.stats().buffered_runs == sum(1 for r in harness_runs.values() if not r.early_errors)
        for run in harness_runs.values():
            await sampler.offer(run.end)
        return sampler

    asyncio.run(first_life())
    asyncio.run(second_life())
    kept = _expected_kept(harness_runs, rate)
    everything = set(before.span_ids()) | set(after.span_ids())
    assert everything == set().union(*(harness_runs[r].span_ids for r in kept))
    # before the restart only runs with an error went; the rest waited for their end
    assert set(before.span_ids()) <= set().union(
        *(harness_runs[r].span_ids for r in harness_runs if harness_runs[r].errors)
    )


def test_a_failed_release_leaves_the_buffer_as_it_was_and_the_next_start_sends_it(harness_runs, tmp_path):
    rate = _rate_between(harness_runs)
    kept = next(
        r for r in harness_runs.values() if r.status == "completed" and not r.errors and keep_run(r.run_id, rate)
    )
    upstream = Upstream()

    async def go() -> None:
        sampler = _sampler(tmp_path, upstream, f"completed={rate}")
        await sampler.offer(kept.partial)
        upstream.fail = True  # the spool's disk is full
        with pytest.raises(OSError):
            await sampler.offer(kept.end)
        assert sampler.stats().buffered_runs == 1 and sampler.decision(kept.run_id) is None
        upstream.fail = False
        await sampler.offer(kept.end)  # the exporter's retry

    asyncio.run(go())
    assert sorted(upstream.span_ids()) == sorted(kept.span_ids)


def test_an_error_sends_the_run_at_once_and_the_rest_follows(harness_runs, tmp_path):
    erring = next(r for r in harness_runs.values() if r.status == "completed" and r.errors)
    upstream = Upstream()

    async def go() -> Sampler:
        sampler = _sampler(tmp_path, upstream, "completed=0")
        await sampler.offer(erring.partial)  # holds the failed attempt
        assert set(upstream.span_ids()) == erring.span_ids - set(_ids(erring.end))
        await sampler.offer(erring.end)  # completed, at rate 0: still kept, with the rest of the run
        return sampler

    sampler = asyncio.run(go())
    assert sorted(upstream.span_ids()) == sorted(erring.span_ids)
    assert sampler.decision(erring.run_id) == ("kept", "error")


def _ids(body: bytes) -> list[str]:
    return [s.span_id for s in received_spans(body)]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_run_left_open_goes_after_max_wait(harness_runs, tmp_path):
    quiet = [r for r in harness_runs.values() if not r.errors and r.status == "completed"]
    clock = Clock()
    upstream = Upstream()

    async def go() -> Sampler:
        sampler = _sampler(tmp_path, upstream, "completed=0", max_wait=600, clock=clock)
        await sampler.offer(quiet[0].partial)
        clock.now += 300
        await sampler.offer(quiet[1].partial)
        clock.now += 299
        await sampler.expire()
        assert upstream.bodies == []  # neither waited 600 s yet
        clock.now += 2
        await sampler.expire()
        assert set(upstream.span_ids()) == set(_ids(quiet[0].partial))  # the first did
        await sampler.offer(quiet[0].end)  # its end at rate 0 changes nothing now: kept whole
        clock.now += 300
        await sampler.expire()
        return sampler

    sampler = asyncio.run(go())
    assert set(upstream.span_ids()) == quiet[0].span_ids | set(_ids(quiet[1].partial))
    assert sampler.stats().runs == {("kept", "max_wait"): 2}
    assert sampler.stats().buffered_bytes == 0


def test_a_run_kept_before_its_end_is_remembered_through_a_long_sleep(harness_runs, tmp_path):
    """A durable workflow sleeps for days: kept at ``max_wait`` (its first spans went upstream), it is
    remembered past ``remember`` until its end comes, so the end follows the head even at rate 0.
    Once it has ended, and for any run decided at its end, the usual ``remember`` applies."""
    quiet = [r for r in harness_runs.values() if not r.errors and r.status == "completed"]
    sleeper, finished = quiet[0], quiet[1]
    clock = Clock()
    upstream = Upstream()
    day = 24 * 3600

    async def go() -> Sampler:
        sampler = _sampler(tmp_path, upstream, "completed=0", max_wait=600, clock=clock)
        await sampler.offer(sleeper.partial)
        await sampler.offer(finished.body)  # decided at its end: dropped (rate 0)
        clock.now += 601
        await sampler.expire()
        assert set(upstream.span_ids()) == set(_ids(sleeper.partial))
        clock.now += 7 * day  # the sleep: past ``remember``, within ``remember_live``
        await sampler.expire()
        assert sampler.decision(sleeper.run_id) == ("kept", "max_wait")
        assert sampler.decision(finished.run_id) is None  # forgotten after a day, as before
        await sampler.offer(sleeper.end)
        clock.now += 2 * day
        await sampler.expire()
        assert sampler.decision(sleeper.run_id) is None  # ended: the usual memory from then on
        return sampler

    asyncio.run(go())
    assert set(upstream.span_ids()) == sleeper.span_ids


def test_a_buffer_from_before_the_long_memory_opens(harness_runs, tmp_path):
    """A sampling buffer written before ``runs.ended`` existed is given the column and used as is."""
    path = tmp_path / "sampling.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE runs (key TEXT PRIMARY KEY, first_ns INTEGER NOT NULL, seen_ns INTEGER NOT NULL,"
        " bytes INTEGER NOT NULL DEFAULT 0, decision TEXT, reason TEXT);"
        "INSERT INTO runs VALUES ('wrun_old', 1, 1, 0, 'kept', 'max_wait');"
    )
    old.close()
    upstream = Upstream()
    sampler = _sampler(tmp_path, upstream, "completed=0", clock=Clock())
    assert sampler.decision("wrun_old") == ("kept", "max_wait")
    run = next(r for r in harness_runs.values() if not r.errors and r.status == "completed")
    asyncio.run(sampler.offer(run.body))
    assert sampler.decision(run.run_id) == ("dropped", "completed")
    with sqlite3.connect(path) as db:  # its one index of both memories replaced by one each
        indexes = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"runs_seen_short", "runs_seen_live"} <= indexes and "runs_seen" not in indexes


def test_forgetting_walks_only_the_decisions_due(harness_runs, tmp_path):
    """Each memory has its own index: forgetting the day-old decisions never walks the runs kept
    live for up to 30 days (at 10^5 runs a day, ~3×10^6 rows walked every tick: 2.7 CPU-s each),
    and the other way round. Both statements go by their index, and leave the other kind alone."""
    path = tmp_path / "sampling.sqlite3"
    sampler = _sampler(tmp_path, Upstream(), "completed=0", clock=Clock())
    day_ns = 24 * 3600 * 10**9
    now = int(Clock().now * 1e9)
    with sqlite3.connect(path) as db:
        for statement in sampling.FORGET_STATEMENTS:
            [(_, _, _, plan)] = db.execute("EXPLAIN QUERY PLAN " + statement, (0,)).fetchall()
            assert plan.startswith("SEARCH runs USING INDEX runs_seen_"), plan
        rows = [(f"wrun_live{i}", now - 7 * day_ns, "kept", "max_wait", 0) for i in range(50)]  # asleep a week
        rows += [(f"wrun_done{i}", now - 2 * day_ns, "dropped", "completed", 1) for i in range(50)]
        rows += [(f"wrun_new{i}", now, "kept", "error", 0) for i in range(5)]
        db.executemany(
            "INSERT INTO runs (key, first_ns, seen_ns, decision, reason, ended) VALUES (?, ?, ?, ?, ?, ?)",
            [(key, seen, seen, decision, reason, ended) for key, seen, decision, reason, ended in rows],
        )
    asyncio.run(sampler.expire())
    assert sampler.decision("wrun_live0") == ("kept", "max_wait") and sampler.decision("wrun_new0") == ("kept", "error")
    assert sampler.decision("wrun_done0") is None


def test_the_buffer_bound_sends_the_oldest_runs_early_and_loses_nothing(harness_runs, tmp_path):
    quiet = [r for r in harness_runs.values() if not r.errors]
    largest = max(len(r.partial) for r in quiet)
    bound = 3 * largest  # room for about three live runs
    clock = Clock()
    upstream = Upstream()

    async def go() -> Sampler:
        sampler = _sampler(tmp_path, upstream, "completed=0", max_bytes=bound, clock=clock)
        for run in quiet:
            clock.now += 1
            await sampler.offer(run.partial)
            assert sampler.stats().buffered_bytes <= bound
        early = sampler.stats().runs[("kept", "buffer_full")]
        assert 0 < early < len(quiet) - 2  # the bound held some runs back, and forced some out
        gone = [r.run_id for r in quiet if sampler.decision(r.run_id) is not None]
        assert gone == [r.run_id for r in quiet[: len(gone)]]  # oldest first
        for run in quiet:
            await sampler.offer(run.end)  # at rate 0: the runs sent early are sent whole, the others dropped
        return sampler

    sampler = asyncio.run(go())
    stats = sampler.stats()
    early = {r.run_id for r in quiet if sampler.decision(r.run_id) == ("kept", "buffer_full")}
    assert set(upstream.span_ids()) == set().union(*(r.span_ids for r in quiet if r.run_id in early))
    assert stats.runs[("kept", "buffer_full")] == len(early)
    assert stats.runs[("dropped", "completed")] == len(quiet) - len(early)
    assert stats.buffered_bytes == 0


# ---- the app's own spans (otel-cut: three real runs with OpenTelemetry on) ------------------------


@pytest.fixture(scope="module")
def cut_runs() -> dict[str, Run]:
    return asyncio.run(_runs(otel_cut.OTEL_CUT))


def _app_bodies() -> list[bytes]:
    return [decode_request(body, JSON).SerializeToString() for body in otel_cut.request_bodies()]


def _app_spans_of(run_id: str) -> set[str]:
    """The app's spans stitched to a run: naming it, or in a trace where a span names it."""
    spans = [s for body in _app_bodies() for s in received_spans(body)]
    traces = {s.trace_id for s in spans if s.attributes.get("workflow.run.id") == run_id}
    return {
        s.span_id
        for s in spans
        if s.attributes.get("workflow.run.id") == run_id
        or ("workflow.run.id" not in s.attributes and s.trace_id in traces)
    }


@pytest.mark.parametrize("app_first", [True, False], ids=["app-spans-first", "event-log-first"])
def test_the_apps_spans_are_kept_or_dropped_with_their_run(cut_runs, tmp_path, app_first):
    hook = otel_cut.SCENARIOS["hook"]["runId"]
    assert cut_runs[hook].status == "completed" and not cut_runs[hook].errors
    upstream = Upstream()

    async def go() -> Sampler:
        sampler = _sampler(tmp_path, upstream, "completed=0")
        world = [run.body for run in cut_runs.values()]
        for body in (_app_bodies() + world) if app_first else (world + _app_bodies()):
            await sampler.offer(body)
        return sampler

    sampler = asyncio.run(go())
    every_app_span = {s.span_id for body in _app_bodies() for s in received_spans(body)}
    every_world_span = set().union(*(r.span_ids for r in cut_runs.values()))
    dropped = _app_spans_of(hook) | cut_runs[hook].span_ids
    anonymous = {s.span_id for b in _app_bodies() for s in received_spans(b) if "workflow.run.id" not in s.attributes}
    assert _app_spans_of(hook) & anonymous and _app_spans_of(hook) - anonymous  # both kinds are at stake
    assert set(upstream.span_ids()) == (every_app_span | every_world_span) - dropped
    assert sampler.decision(hook) == ("dropped", "completed")
    assert {sampler.decision(r) for r in cut_runs if r != hook} == {("kept", "error")}
    assert sampler.stats().buffered_runs == 0


def test_spans_of_no_run_go_after_the_link_wait(tmp_path):
    """A request the app sent outside any workflow (the otel-cut polling, stripped of its run id)."""
    body = decode_request(otel_cut.request_bodies()[0], JSON)
    for resource_spans in body.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                kept = [kv for kv in span.attributes if kv.key != "workflow.run.id"]
                del span.attributes[:]
                span.attributes.extend(kept)
                span.status.code = 0
    payload = body.SerializeToString()
    clock = Clock()
    upstream = Upstream()

    async def go() -> Sampler:
        sampler = _sampler(tmp_path, upstream, "completed=0", max_wait=3600, clock=clock)
        await sampler.offer(payload)
        assert upstream.bodies == [] and sampler.stats().buffered_runs >= 1
        clock.now += 29
        await sampler.expire()
        assert upstream.bodies == []
        clock.now += 2  # past 30 s, the link wait
        await sampler.expire()
        return sampler

    sampler = asyncio.run(go())
    assert sorted(upstream.span_ids()) == sorted(_ids(payload))
    stats = sampler.stats()
    assert stats.runs == {} and stats.spans == {("kept", "no_run"): len(_ids(payload))}


def test_turning_sampling_off_sends_what_was_waiting_and_then_everything(harness_runs, tmp_path):
    """A restart without --forward-sample must not strand the runs that were waiting for their end."""
    quiet = [r for r in harness_runs.values() if not r.early_errors]
    first, second = Upstream(), Upstream()

    async def with_sampling() -> None:
        sampler = _sampler(tmp_path, first, "completed=0")
        for run in quiet:
            await sampler.offer(run.partial)
        sampler.close()

    async def without() -> Sampler:
        sampler = Sampler(tmp_path / "sampling.sqlite3", {}, second)  # every rate 1: sampling off
        await sampler.expire()  # the service's timer: drains the buffer
        for run in quiet:
            await sampler.offer(run.end)  # and then passes everything as it comes
        return sampler

    asyncio.run(with_sampling())
    assert first.bodies == []
    sampler = asyncio.run(without())
    assert sorted(second.span_ids()) == sorted(i for r in quiet for i in r.span_ids)
    assert sampler.stats().runs == {("kept", "sampling_off"): len(quiet)}
    assert not list(tmp_path.glob("sampling.sqlite3*"))  # nothing will wait there again
