"""collector/api.py's ``WaterfallCache``: an ended run's waterfall is sent as kept while what it is
built from is unchanged, and built again as soon as anything it shows changes — spans of the run
arriving late (also the app's spans that carry no run id, stitched in by trace), events, the run's
row, what the world tailer could not read. A live run is never kept (its open rows end now).

Real parts: the API on a real aiohttp server on 127.0.0.1 over a real SQLite store, filled with the
real harness's runs (``tests/otel_cut.py``: the event log the tailer turns into spans, and the app's
own spans as its OTLP exporter sent them). "Sent as kept" is told by the answer's bytes: a built
answer says when it was built (``nowNs``), a kept one is the same bytes as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from collector.api import Api, KeptWaterfall, WaterfallCache, finite_dumps, strict_dumps
from collector.metrics import Metrics
from collector.store import Store
from collector.waterfall import waterfall

from . import otel_cut
from .world_spans import commit


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store.sqlite3")


@contextlib.asynccontextmanager
async def _serve(
    store: Store, problems: Callable[[], Mapping[str, str]] | None = None
) -> AsyncIterator[tuple[Api, Callable[[str], Any]]]:
    api = Api(store, Metrics(), problems=problems)
    app = web.Application()
    app.router.add_routes(api.routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as session:

            async def get(run_id: str) -> str:
                async with session.get(f"{url}/api/runs/{run_id}/waterfall") as response:
                    assert response.status == 200 and response.content_type == "application/json"
                    return await response.text()

            yield api, get
    finally:
        await runner.cleanup()


def _built(store: Store, run_id: str) -> dict[str, Any]:
    """The waterfall built now from what the store holds (as the API would send it: strict JSON)."""
    conn = store.connect()
    try:
        view = waterfall(conn, run_id)
    finally:
        conn.close()
    assert view is not None
    return json.loads(strict_dumps(view))


def _same_but_when(sent: str, built: dict[str, Any]) -> bool:
    answer = json.loads(sent)
    return {**answer, "nowNs": None} == {**built, "nowNs": None}


def test_an_ended_runs_waterfall_is_kept_until_what_it_shows_changes(store):
    log = otel_cut.run_log("retry")
    run_id = log.run_id
    commit(store, log.records(), log.event_rows(), [log.info()])
    assert log.info().status == "completed"
    app_spans = [r for r in otel_cut.sdk_records() if r.trace_id == log.records()[0].trace_id]
    stitched = [r for r in app_spans if r.run_id is None]  # the app's spans in the run's trace without its id
    carrying = [r for r in app_spans if r.run_id == run_id]
    assert stitched and carrying

    async def go() -> None:
        async with _serve(store) as (api, get):
            first = await get(run_id)
            assert api.waterfalls.get(run_id) is not None
            assert await get(run_id) == first  # the same bytes: sent as kept, not built again
            assert _same_but_when(first, _built(store, run_id)) and json.loads(first)["sdk"] == []

            commit(store, stitched)  # spans that carry no run id: found by the run's trace
            second = await get(run_id)
            assert second != first and _same_but_when(second, _built(store, run_id))
            assert {i["id"] for i in json.loads(second)["sdk"]} == {r.span_id for r in stitched}
            assert await get(run_id) == second

            commit(store, carrying)  # spans that carry the run id
            third = await get(run_id)
            assert _same_but_when(third, _built(store, run_id))
            assert {i["id"] for i in json.loads(third)["sdk"]} == {r.span_id for r in app_spans}

            again = log.records()[1]  # a span sent again with another status: the newest copy wins
            again.status_code, again.status_message = 2, "resent as failed"
            commit(store, [again])
            fourth = await get(run_id)
            assert _same_but_when(fourth, _built(store, run_id))
            (row,) = [r for r in json.loads(fourth)["rows"] if r["id"] == again.span_id]
            assert row["status"] == 2

            late = log.event_rows()[-1]
            late.event_id += "_late"  # one more event of the run
            commit(store, events=[late])
            fifth = await get(run_id)
            assert json.loads(fifth)["eventsCount"] == json.loads(fourth)["eventsCount"] + 1
            assert await get(run_id) == fifth

    asyncio.run(go())


def test_a_live_runs_waterfall_is_built_on_every_view(store):
    log = otel_cut.run_log("retry")
    cut = log.index("step_started")
    commit(store, log.records(upto=cut), log.event_rows(upto=cut), [log.info("running")])

    async def go() -> None:
        async with _serve(store) as (api, get):
            first, second = json.loads(await get(log.run_id)), json.loads(await get(log.run_id))
            assert first["now"] is not None and second["nowNs"] > first["nowNs"]  # its open rows end now
            assert api.waterfalls.get(log.run_id) is None
            commit(store, log.records(), log.event_rows(cut + 1), [log.info()])  # the run ends
            ended = await get(log.run_id)
            assert json.loads(ended)["now"] is None and api.waterfalls.get(log.run_id) is not None
            assert _same_but_when(ended, _built(store, log.run_id))

    asyncio.run(go())


def test_what_the_tailer_could_not_read_is_never_sent_stale(store):
    log = otel_cut.run_log("fatal")
    commit(store, log.records(), log.event_rows(), [log.info()])
    problems: dict[str, str] = {}

    async def go() -> None:
        async with _serve(store, lambda: problems) as (_, get):
            assert "problems" not in json.loads(await get(log.run_id))["run"]
            problems[log.run_id] = "event evnt_x: unreadable JSON"
            assert json.loads(await get(log.run_id))["run"]["problems"] == ["event evnt_x: unreadable JSON"]
            del problems[log.run_id]
            assert "problems" not in json.loads(await get(log.run_id))["run"]

    asyncio.run(go())


def test_the_cache_holds_at_most_its_bytes_least_recently_used_dropped_first():
    cache = WaterfallCache(1000)

    def kept(size: int) -> KeptWaterfall:
        return KeptWaterfall((), frozenset(), [], b"x" * size)

    for run_id in "abcd":
        cache.put(run_id, kept(250))  # 1000 bytes: all kept
    assert all(cache.get(r) is not None for r in "bcda")  # "a" is now the most recently used
    cache.put("e", kept(200))  # 1200 bytes: the least recently used goes
    assert cache.get("b") is None and all(cache.get(r) is not None for r in "cdae")
    cache.put("a", kept(50))  # kept again: replaced, not counted twice
    cache.put("f", kept(250))  # 1000 bytes again
    assert [r for r in "abcdef" if cache.get(r) is not None] == ["a", "c", "d", "e", "f"]
    cache.put("huge", kept(251))  # over a quarter of the budget: never kept (it would empty the rest)
    assert cache.get("huge") is None and all(cache.get(r) is not None for r in "acdef")


def _strict(text: str) -> Any:
    """``json.loads`` refusing what RFC 8259 does (bare NaN, Infinity, -Infinity)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def _odd(record: Any, **attributes: Any) -> Any:
    return dataclasses.replace(record, attributes={**record.attributes, **attributes})


def test_non_finite_values_a_waterfall_shows_are_sent_as_the_otlp_json_strings(store):
    """The answer is written by orjson (``finite_dumps``), which would write a NaN as null: a store
    holding spans with NaN and infinities where the page reads them (spans kept before the edge turned
    them into strings, or not from the edge) must still answer "NaN", "Infinity", "-Infinity"."""
    log = otel_cut.run_log("fatal")
    records = []
    for record in log.records():
        kind = record.attributes.get("workflow.span.kind")
        if kind == "step":
            record = _odd(record, **{"step.attempt": math.nan, "step.status": math.inf})
        elif kind == "attempt":
            record = _odd(record, **{"step.retry.delay_ms": -math.inf})
        elif kind == "run":
            record = _odd(record, **{"error.type": math.inf})
            record.events = [
                {**e, "attributes": {**e["attributes"], "exception.type": math.nan}} if e["name"] == "exception" else e
                for e in record.events
            ]
        records.append(record)
    commit(store, records, log.event_rows(), [log.info()])

    async def go() -> None:
        async with _serve(store) as (_, get):
            answer = _strict(await get(log.run_id))
            steps = [r for r in answer["rows"] if r["kind"] == "step"]
            assert steps and all(r["attempts"] == "NaN" and r["stepStatus"] == "Infinity" for r in steps)
            segments = [g for r in steps for g in r["segments"]]
            assert segments and all(g["retryMs"] == "-Infinity" for g in segments)
            assert answer["failure"]["type"] == "NaN" and answer["failure"]["code"] == "Infinity"

    asyncio.run(go())


def test_what_orjson_refuses_is_written_as_strict_dumps_writes_it():
    for value in ({"big": 2**70}, {"lone": "\ud800"}, {1: "a key that is no string"}, {"ok": [1.5, "é", None]}):
        assert json.loads(finite_dumps(value)) == json.loads(strict_dumps(value))
