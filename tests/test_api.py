"""collector/api.py: paging with cursors (also while runs arrive), filters, limits, 400s and 404s.

The API runs on a real aiohttp server on 127.0.0.1 over a real SQLite store, filled through the
real writer with real SDK spans and world-shaped run rows; every expected answer is derived from
what the test put in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from collector.api import Api
from collector.metrics import Metrics
from collector.otlp import PROTOBUF, decode_request, records_from
from collector.policy import apply_benign_policy
from collector.store import EventRow, RunInfo, Store
from collector.writer import Batch, Writer

from .sdk_spans import RUN, make_sdk_spans

BASE_S = 1_700_000_000  # whole seconds, so ISO and epoch-ms spellings are exact
STATUSES = ["completed", "failed", "running", "cancelled", "pending"]


def _run(i: int, start_s: int, *, workflow: str = "workflow//./src/flows//other") -> RunInfo:
    return RunInfo(f"wrun_{i:026d}", workflow, STATUSES[i % len(STATUSES)], start_s * 1_000_000_000)


async def _write(store: Store, *batches: Batch) -> None:
    writer = Writer(store)
    writer.start()
    try:
        for batch in batches:
            await writer.submit(batch)
    finally:
        await asyncio.to_thread(writer.stop)


class Client:
    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self.session = session

    async def get(self, path: str, params: dict | None = None) -> tuple[int, object]:
        async with self.session.get(self.url + path, params=params) as response:
            text = await response.text()
            is_json = response.content_type == "application/json"
            return response.status, json.loads(text) if is_json else (text, dict(response.headers))

    async def ok(self, path: str, params: dict | None = None):
        status, body = await self.get(path, params)
        assert status == 200, body
        return body


@contextlib.asynccontextmanager
async def _serve(store: Store, metrics: Metrics | None = None):
    app = web.Application()
    app.router.add_routes(Api(store, metrics or Metrics()).routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Client(f"http://127.0.0.1:{runner.addresses[0][1]}", session)
    finally:
        await runner.cleanup()


def _order(runs: list[RunInfo]) -> list[str]:
    """Newest first, ties by run id descending: the API's documented order."""
    return [r.run_id for r in sorted(runs, key=lambda r: (r.created_ns, r.run_id), reverse=True)]


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "store.sqlite3")


@pytest.fixture
def many_runs() -> list[RunInfo]:
    return [_run(i, BASE_S + i // 3) for i in range(11)]  # three runs share each start: ties to break


async def _all_pages(client: Client, limit: int, params: dict | None = None) -> tuple[list[str], int]:
    ids: list[str] = []
    pages = 0
    cursor = None
    while True:
        query = {**(params or {}), "limit": str(limit), **({"cursor": cursor} if cursor else {})}
        page = await client.ok("/api/runs", query)
        pages += 1
        ids += [r["runId"] for r in page["data"]]
        assert len(page["data"]) <= limit
        if not page["hasMore"]:
            assert page["cursor"] is None
            return ids, pages
        assert page["cursor"] and len(page["data"]) == limit
        cursor = page["cursor"]


@pytest.mark.parametrize("limit", [1, 2, 3, 11, 500])
def test_paging_visits_every_run_once_in_order(store, many_runs, limit):
    async def go():
        await _write(store, Batch(runs=many_runs))
        async with _serve(store) as client:
            return await _all_pages(client, limit)

    ids, pages = asyncio.run(go())
    assert ids == _order(many_runs)
    assert pages == -(-len(many_runs) // limit)  # no empty page at the end


def test_paging_while_runs_arrive(store, many_runs):
    newer = _run(100, BASE_S + 1000)
    older = _run(101, BASE_S - 1000)
    tied = RunInfo(many_runs[4].run_id + "a", "workflow//./src/flows//other", "running", many_runs[4].created_ns)

    async def go():
        await _write(store, Batch(runs=many_runs))
        async with _serve(store) as client:
            first = await client.ok("/api/runs", {"limit": "4"})
            await _write(store, Batch(runs=[newer, older, tied]))  # rows arrive between pages
            ids = [r["runId"] for r in first["data"]]
            cursor = first["cursor"]
            while cursor:
                page = await client.ok("/api/runs", {"limit": "4", "cursor": cursor})
                ids += [r["runId"] for r in page["data"]]
                cursor = page["cursor"]
            return ids

    ids = asyncio.run(go())
    everything = _order([*many_runs, newer, older, tied])
    assert len(ids) == len(set(ids))  # nothing twice
    assert newer.run_id not in ids  # it sorts before the cursor: the next fresh listing shows it
    assert ids == [i for i in everything if i != newer.run_id]  # nothing skipped, order kept


def test_status_and_workflow_filters(store, many_runs):
    mine = [_run(50 + i, BASE_S + 500 + i, workflow="workflow//./src/flows//mine") for i in range(3)]

    async def go():
        await _write(store, Batch(runs=many_runs + mine))
        async with _serve(store) as client:
            by_status = {s: await _all_pages(client, 2, {"status": s}) for s in STATUSES}
            short = await _all_pages(client, 50, {"workflow": "mine"})
            full = await _all_pages(client, 50, {"workflow": "workflow//./src/flows//mine"})
            both = await client.ok("/api/runs", {"workflow": "other", "status": "failed"})
            none = await client.ok("/api/runs", {"workflow": "nothing"})
            return by_status, short[0], full[0], both, none

    by_status, short, full, both, none = asyncio.run(go())
    everything = many_runs + mine
    for status, (ids, _) in by_status.items():
        assert ids == _order([r for r in everything if r.status == status])
    assert short == full == _order(mine)
    assert [r["runId"] for r in both["data"]] == _order(
        [r for r in many_runs if r.status == "failed" and r.workflow_name.endswith("//other")]
    )
    assert none == {"data": [], "cursor": None, "hasMore": False}


def test_workflow_filter_is_literal(store):
    runs = [
        _run(1, BASE_S, workflow="workflow//./src/flows//a_b"),
        _run(2, BASE_S + 1, workflow="workflow//./src/flows//axb"),
        _run(3, BASE_S + 2, workflow="workflow//./src/flows//a%"),
    ]

    async def go():
        await _write(store, Batch(runs=runs))
        async with _serve(store) as client:
            return [
                [r["runId"] for r in (await client.ok("/api/runs", {"workflow": name}))["data"]]
                for name in ("a_b", "a%")
            ]

    underscore, percent = asyncio.run(go())
    assert underscore == [runs[0].run_id]
    assert percent == [runs[2].run_id]


def _iso(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def test_time_window_in_epoch_ms_and_iso(store, many_runs):
    since_s, until_s = BASE_S + 1, BASE_S + 3  # since inclusive, until exclusive

    async def go():
        await _write(store, Batch(runs=many_runs))
        async with _serve(store) as client:
            as_ms = await _all_pages(client, 2, {"since": str(since_s * 1000), "until": str(until_s * 1000)})
            as_iso = await _all_pages(client, 2, {"since": _iso(since_s), "until": _iso(until_s)})
            naive = await _all_pages(client, 50, {"since": _iso(since_s).rstrip("Z")})  # no zone: UTC
            return as_ms[0], as_iso[0], naive[0]

    as_ms, as_iso, naive = asyncio.run(go())
    window = [r for r in many_runs if since_s * 10**9 <= r.created_ns < until_s * 10**9]
    assert window and as_ms == as_iso == _order(window)
    assert naive == _order([r for r in many_runs if r.created_ns >= since_s * 10**9])


@pytest.mark.parametrize(
    "params, word",
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "501"}, "limit"),
        ({"limit": "-3"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"status": "weird"}, "status"),
        ({"status": "COMPLETED"}, "status"),
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-45"}, "until"),
        ({"cursor": "zzz"}, "cursor"),
        ({"cursor": "abc:wrun_1"}, "cursor"),
    ],
)
def test_bad_parameters_are_400_with_a_reason(store, params, word):
    async def go():
        async with _serve(store) as client:
            return await client.get("/api/runs", params)

    status, body = asyncio.run(go())
    assert status == 400 and word in body["error"]


def test_limit_bounds_are_inclusive(store, many_runs):
    async def go():
        await _write(store, Batch(runs=many_runs))
        async with _serve(store) as client:
            one = await client.ok("/api/runs", {"limit": "1"})
            most = await client.ok("/api/runs", {"limit": "500"})
            default = await client.ok("/api/runs")
            return one, most, default

    one, most, default = asyncio.run(go())
    assert len(one["data"]) == 1 and one["hasMore"]
    assert len(most["data"]) == len(many_runs) and not most["hasMore"]
    assert default["data"] == most["data"]


# ---- one run, its trace, its spans, its events --------------------------------------------------


@pytest.fixture
def sdk_run(store):
    """RUN's real SDK spans (benign policy applied, as ingest does) and some events, in the store."""
    spans = make_sdk_spans(2)
    records, _, _ = records_from(decode_request(encode_spans(spans).SerializeToString(), PROTOBUF))
    for record in records:
        apply_benign_policy(record)
    events = [EventRow(RUN, f"evnt_{i:04d}", "step_created", f"step_{i}", (BASE_S + i) * 10**9, None) for i in range(7)]
    asyncio.run(_write(store, Batch(spans=records, events=events)))
    return spans, events


def test_run_view_and_404s(store, sdk_run):
    spans, events = sdk_run
    trace_id = f"{spans[0].context.trace_id:032x}"

    async def go():
        async with _serve(store) as client:
            return {
                "run": await client.get(f"/api/runs/{RUN}"),
                "waterfall": await client.get(f"/api/runs/{RUN}/waterfall"),
                "missing run": await client.get("/api/runs/wrun_nope"),
                "missing waterfall": await client.get("/api/runs/wrun_nope/waterfall"),
                "trace": await client.get(f"/api/traces/{trace_id.upper()}"),
                "missing trace": await client.get(f"/api/traces/{'0' * 31}1"),
                "bad trace": await client.get("/api/traces/not-hex"),
                "short trace": await client.get(f"/api/traces/{trace_id[:-1]}"),
            }

    got = asyncio.run(go())
    status, view = got["run"]
    assert status == 200 and view["run"]["runId"] == RUN
    assert {s["spanId"] for s in view["spans"]} == {f"{s.context.span_id:016x}" for s in spans}
    assert [e["eventId"] for e in view["events"]] == [e.event_id for e in events]
    assert view["run"]["benignConflicts"] == 1
    assert got["waterfall"][0] == 200
    for key in ("missing run", "missing waterfall", "missing trace"):
        status, body = got[key]
        assert status == 404 and body["error"], key
    status, trace = got["trace"]
    assert status == 200 and trace["traceId"] == trace_id and len(trace["spans"]) == len(spans)
    for key in ("bad trace", "short trace"):
        status, body = got[key]
        assert status == 400 and "32 hex" in body["error"], key


def test_span_detail_and_lookup(store, sdk_run):
    spans, _ = sdk_run
    span = spans[1]
    trace_id, span_id = f"{span.context.trace_id:032x}", f"{span.context.span_id:016x}"

    async def go():
        async with _serve(store) as client:
            return (
                await client.get(f"/api/spans/{trace_id}/{span_id}"),
                await client.get(f"/api/spans/{trace_id.upper()}/{span_id.upper()}"),
                await client.get(f"/api/spans/{trace_id}/{'0' * 16}"),
                await client.get(f"/api/lookup/{RUN}"),
                await client.get(f"/api/lookup/{trace_id.upper()}"),
                await client.get("/api/lookup/wrun_nope"),
                await client.get(f"/api/lookup/{'f' * 32}"),
            )

    detail, upper, missing, by_run, by_trace, no_run, no_trace = asyncio.run(go())
    assert detail[0] == 200 and detail[1]["name"] == span.name and detail[1]["spanId"] == span_id
    assert upper == detail
    assert missing[0] == 404
    assert by_run == (200, {"runId": RUN}) and by_trace == (200, {"runId": RUN})
    assert no_run[0] == 404 and no_trace[0] == 404


def test_events_page_with_a_cursor_and_clamped_limits(store, sdk_run):
    _, events = sdk_run

    async def go():
        async with _serve(store) as client:
            ids, cursor = [], None
            while True:
                page = await client.ok(
                    f"/api/runs/{RUN}/events", {"limit": "3", **({"cursor": cursor} if cursor else {})}
                )
                ids += [e["eventId"] for e in page["data"]]
                if not page["hasMore"]:
                    break
                cursor = page["cursor"]
            zero = await client.ok(f"/api/runs/{RUN}/events", {"limit": "0"})
            huge = await client.ok(f"/api/runs/{RUN}/events", {"limit": "100000"})
            bad = await client.get(f"/api/runs/{RUN}/events", {"limit": "x"})
            return ids, zero, huge, bad

    ids, zero, huge, bad = asyncio.run(go())
    assert ids == [e.event_id for e in events]
    assert len(zero["data"]) == 1 and zero["hasMore"]  # clamped up to 1
    assert len(huge["data"]) == len(events) and not huge["hasMore"]  # clamped down, all fit
    assert huge["data"][0]["createdAt"] == _iso(BASE_S).replace("Z", ".000Z")
    assert bad[0] == 400 and "limit" in bad[1]["error"]


def test_metrics(store):
    metrics = Metrics(spans_accepted=7, spans_rejected=2)
    metrics.gauges["wft_queue_depth"] = lambda: 3

    async def go():
        async with _serve(store, metrics) as client:
            return await client.get("/metrics")

    status, (text, headers) = asyncio.run(go())
    assert status == 200 and headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert headers["X-Content-Type-Options"] == "nosniff"
    samples = {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples["wft_spans_accepted_total"] == 7 and samples["wft_spans_rejected_total"] == 2
    assert samples["wft_queue_depth"] == 3
    assert not any(name.endswith("_created") for name in samples)  # left out by the collector's registry
