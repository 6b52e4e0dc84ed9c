"""``PostgresWorld`` on a real PostgreSQL loaded with the harness's world-postgres dump: keyset
pages on indexed columns, and a change feed that never skips an event committed late."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter

import psycopg
import pytest
from ulid import ULID

from telemetry.backends.postgres import PostgresWorld
from telemetry.follow import Checkpoint, Follower
from telemetry.reading import all_runs, event_log, run_logs, run_trace
from telemetry.runtrace import build_run_trace
from telemetry.world import Pagination

_names = itertools.count()


@pytest.fixture
def pg_world_url(pg_server, harness_out) -> str:
    """A database of its own, loaded from the harness's final dump (the tests write to it)."""
    name = f"pgworld_{next(_names)}_{int(time.time() * 1000)}"
    url = pg_server.create_database(name)
    pg_server.psql("-f", str(harness_out / "postgres" / "world.sql"), db=name)
    return url


def _plan(url: str, sql: str, params: list | dict) -> str:
    """The plan PostgreSQL picks when it can avoid sorting and full scans: what the indexes allow."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET enable_sort = off")
        conn.execute("SET enable_seqscan = off")
        return "\n".join(r[0] for r in conn.execute("EXPLAIN " + sql, params).fetchall())


# -- keyset pagination ---------------------------------------------------------------------------
def test_runs_page_newest_first_by_id_each_once(harness_pg_url):
    world = PostgresWorld(harness_pg_url)

    async def go():
        pages, cursor = [], None
        while True:
            page = await world.runs.list(pagination=Pagination(limit=3, cursor=cursor))
            pages.append([r.run_id for r in page.data])
            if not page.has_more:
                break
            cursor = page.cursor
        ascending = await world.runs.list(pagination=Pagination(limit=100, sort_order="asc"))
        await world.close()
        return pages, [r.run_id for r in ascending.data]

    pages, ascending = asyncio.run(go())
    ids = [r for page in pages for r in page]
    assert len(ids) == len(set(ids)) == 11 and all(len(p) <= 3 for p in pages)
    assert ids == sorted(ids, reverse=True) and ascending == sorted(ids)
    # one index range scan per page, no sort of the whole table
    # the page's order comes from an index (11 rows are sorted cheaper than scanned by index, so
    # the planner is told to avoid sorts and seq scans: a query ordered by an unindexed column
    # would still need its Sort)
    plan = _plan(
        harness_pg_url,
        "SELECT id FROM workflow.workflow_runs WHERE id < %s ORDER BY id DESC LIMIT 21",
        [ids[3]],
    )
    assert "workflow_runs_pkey" in plan and "Sort" not in plan
    unindexed = _plan(
        harness_pg_url, "SELECT id FROM workflow.workflow_runs ORDER BY created_at DESC, id DESC LIMIT 21", []
    )
    assert "Sort" in unindexed  # the old order: a sort of every run per page


def test_event_pages_are_keyset_on_the_primary_key(harness_pg_url):
    world = PostgresWorld(harness_pg_url)

    async def go():
        runs = [r async for r in all_runs(world)]
        logs = {r.run_id: await event_log(world, r.run_id) for r in runs}
        longest = max(logs, key=lambda r: len(logs[r]))
        pages, cursor = [], None
        while True:
            page = await world.events.list(run_id=longest, pagination=Pagination(limit=2, cursor=cursor))
            pages.append(page.data)
            if not page.has_more:
                break
            cursor = page.cursor
        after = await world.events.list(
            run_id=longest, pagination=Pagination(cursor=logs[longest][4].event_id, sort_order="asc")
        )
        await world.close()
        return logs[longest], pages, after.data

    log, pages, after = asyncio.run(go())
    assert [e.event_id for p in pages for e in p] == [e.event_id for e in log]
    assert [e.event_id for e in after] == [e.event_id for e in log[5:]]  # only the events after the cursor


# -- the change feed -----------------------------------------------------------------------------
def test_id_pages_and_entries_list_the_runs_as_the_listing_does(harness_pg_url):
    """What ``wft export``'s parent lists on world-postgres (ids only, newest first, each once)
    and what its workers read a chunk of them with (one statement): the runs of a bare listing."""

    async def go() -> tuple[list[list[str]], list, dict, dict]:
        world = PostgresWorld(harness_pg_url)
        try:
            pages, before = [], None
            while True:
                page = await world.runs.id_page(before, 4)
                pages.append(page)
                if len(page) < 4:
                    break
                before = page[-1]
            listed = [run async for run in all_runs(world, resolve_data="none")]
            chosen = [listed[0].run_id, listed[-1].run_id, "wrun_gone"]
            return pages, listed, await world.runs.entries(chosen), await world.runs.entries([])
        finally:
            await world.close()

    pages, listed, found, none = asyncio.run(go())
    ids = [run_id for page in pages for run_id in page]
    assert ids == [run.run_id for run in listed] and len(ids) == len(set(ids)) == 11
    assert all(len(page) == 4 for page in pages[:-1])
    assert found == {listed[0].run_id: listed[0], listed[-1].run_id: listed[-1]} and none == {}


def test_run_logs_reads_many_runs_logs_in_one_statement(harness_pg_url):
    """What the export workers read a chunk of runs with: each run's whole log, the same events as
    reading the runs one by one, in one statement instead of one per run."""

    async def go() -> tuple[dict[str, list], dict[str, list], int]:
        world = PostgresWorld(harness_pg_url)
        try:
            runs = [run async for run in all_runs(world)]
            one_by_one = {run.run_id: await event_log(world, run.run_id) for run in runs}
            statements = 0

            def counting(query):
                async def counted(*args, **kwargs):
                    nonlocal statements
                    statements += 1
                    return await query(*args, **kwargs)

                return counted

            # counting the statements sent, whichever way their rows come back (dicts or tuples)
            world.query = counting(world.query)  # type: ignore[method-assign]  # counting, as above
            world.query_tuples = counting(world.query_tuples)  # type: ignore[method-assign]  # counting, as above
            together = {run.run_id: log async for run, log in run_logs(world, runs)}
            return one_by_one, together, statements
        finally:
            await world.close()

    one_by_one, together, statements = asyncio.run(go())
    assert len(together) == 11 and sum(map(len, together.values())) > 100
    assert together == one_by_one
    assert statements == 1


def test_run_logs_through_traced_is_a_span_per_statement(harness_pg_url, spans):
    """``run_logs`` over ``traced(world)``: the one statement that reads many runs' logs is a
    ``world.events.list`` span (it made none: only per-run reads were traced)."""
    from opentelemetry.trace import SpanKind

    from telemetry.world import traced

    provider, exporter = spans

    async def go() -> dict[str, list]:
        inner = PostgresWorld(harness_pg_url)
        world = traced(inner, peer_service="world-postgres", tracer_provider=provider)
        try:
            runs = [run async for run in all_runs(inner)]
            return {run.run_id: log async for run, log in run_logs(world, runs)}
        finally:
            await inner.close()

    logs = asyncio.run(go())
    assert len(logs) == 11
    [span] = exporter.get_finished_spans()
    assert span.name == "world.events.list" and span.kind is SpanKind.CLIENT
    assert span.attributes["peer.service"] == "world-postgres" and "workflow.run.id" not in span.attributes


def test_change_feed_reports_each_new_event_once_and_an_idle_pass_nothing(pg_world_url):
    world = PostgresWorld(pg_world_url)
    writer = _Writer(pg_world_url)

    async def go():
        first = await world.events.changes(None)
        idle = await world.events.changes(first.token)
        idle_again = await world.events.changes(idle.token)
        run_id, ids = writer.copy_run(writer.source_runs()[0], upto=3)
        grown = await world.events.changes(idle_again.token)
        after = await world.events.changes(grown.token)
        retried = await world.events.changes(idle_again.token)  # a caller whose delivery failed
        await world.close()
        return first, idle, idle_again, grown, after, retried, run_id, ids

    first, idle, idle_again, grown, after, retried, run_id, ids = asyncio.run(go())
    assert len(first.runs) == 11
    assert idle.runs == [] and idle_again.runs == []
    assert grown.runs == [run_id] and grown.since == {run_id: ids[0]}
    assert after.runs == []
    assert run_id in retried.runs  # an older token gets the run again


def test_change_feed_is_index_range_scans_not_an_aggregate(pg_world_url):
    from telemetry.backends.postgres import _ULID_TOP, _WINDOW_SQL

    old = _plan(pg_world_url, "SELECT run_id, count(*) AS n FROM workflow.workflow_events GROUP BY run_id", [])
    assert "Aggregate" in old and "workflow_events_run_id_index" in old  # every event, every pass
    for grouped in (False, True):
        params = {"floor": "01M8PCFS0S7CGAET860N1T83MN", "top": _ULID_TOP, "grouped": grouped, "keep": _ULID_TOP}
        plan = _plan(pg_world_url, _WINDOW_SQL, params)
        # the events read are a primary-key range above the floor; nothing scans the whole table
        assert "Index Cond: (((id)::text >= (p_1.pre || '01M8PCFS0S7CGAET860N1T83MN'::text))" in plan
        assert "Seq Scan" not in plan and "workflow_events_run_id_index" not in plan


class _Writer:
    """Writes like an SDK process: copies of the harness's real event rows under fresh ids."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.conn = psycopg.connect(url, autocommit=True)

    def source_runs(self) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT run_id FROM workflow.workflow_events GROUP BY run_id HAVING count(*) >= 10 ORDER BY run_id"
            )
        ]

    def events_of(self, run_id: str) -> list[str]:
        return [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM workflow.workflow_events WHERE run_id = %s ORDER BY id", [run_id]
            )
        ]

    def new_run(self, source: str) -> str:
        run_id = f"wrun_{ULID()}"
        self.conn.execute(
            "INSERT INTO workflow.workflow_runs SELECT (jsonb_populate_record(NULL::workflow.workflow_runs,"
            " to_jsonb(r) || jsonb_build_object('id', %s::text))).* FROM workflow.workflow_runs r WHERE id = %s",
            [run_id, source],
        )
        return run_id

    @staticmethod
    def insert(conn: psycopg.Connection, old_id: str, new_id: str, run_id: str) -> None:
        conn.execute(
            "INSERT INTO workflow.workflow_events SELECT (jsonb_populate_record(NULL::workflow.workflow_events,"
            " to_jsonb(e) || jsonb_build_object('id', %s::text, 'run_id', %s::text))).*"
            " FROM workflow.workflow_events e WHERE id = %s",
            [new_id, run_id, old_id],
        )

    def copy_run(self, source: str, upto: int | None = None) -> tuple[str, list[str]]:
        run_id = self.new_run(source)
        ids = []
        for old in self.events_of(source)[:upto]:
            ids.append(_minted())
            self.insert(self.conn, old, ids[-1], run_id)
        return run_id, ids


_last_minted = [0]


def _minted(ms_ago: float = 0) -> str:
    """An event id as a writer mints it right before its INSERT (monotonic, like the SDK's ULID
    factory), ``ms_ago`` in the past for a process whose clock runs behind."""
    value = int(ULID.from_timestamp(time.time() - ms_ago / 1000))
    if not ms_ago:
        value = _last_minted[0] = max(value, _last_minted[0] + 1)
    return f"wevt_{ULID.from_int(value)}"


def _follow_with(url: str, window: float):
    world = PostgresWorld(url, feed_window=window)
    delivered: list = []

    def deliver(run, events, spans):
        delivered.append((run.run_id, [e.event_id for e in events], [f"{s.context.span_id:016x}" for s in spans]))

    return world, Follower(world, deliver, Checkpoint(None)), delivered


def test_no_event_is_skipped_at_the_watermark_with_concurrent_writers(pg_world_url):
    """Writer A mints an id and holds its transaction open; writer B commits later ids; the
    follower polls in between, so its watermark passes A's id before A commits. The feed's window
    is made much shorter than A's transaction, so only the snapshot pin can bring A's event in."""
    writer = _Writer(pg_world_url)
    source = writer.source_runs()[0]
    old = writer.events_of(source)
    assert len(old) >= 10
    world, follower, delivered = _follow_with(pg_world_url, window=0.2)
    slow = psycopg.connect(pg_world_url)  # writer A: not autocommit, so its INSERT stays uncommitted

    async def go():
        await follower.poll()  # the history: 11 runs
        run_id = writer.new_run(source)
        new = []
        for o in old[:3]:
            new.append(_minted())
            writer.insert(writer.conn, o, new[-1], run_id)
        new.append(_minted())
        _Writer.insert(slow, old[3], new[-1], run_id)  # A: minted before B's ids, committed after them
        for o in old[4:8]:
            new.append(_minted())
            writer.insert(writer.conn, o, new[-1], run_id)  # B
            await follower.poll()
        for _ in range(8):  # the watermark moves well past A's id while A stays open
            await asyncio.sleep(0.1)
            await follower.poll()
        slow.commit()
        await follower.poll()
        for o in old[8:]:
            new.append(_minted())
            writer.insert(writer.conn, o, new[-1], run_id)
        await follower.poll()
        run = await world.runs.get(run_id)
        final = build_run_trace(run_id, await event_log(world, run_id), run, resource=follower.resource)
        await world.close()
        return run_id, new, final

    run_id, new, final = asyncio.run(go())
    slow.close()
    events = Counter(e for r, evs, _ in delivered if r == run_id for e in evs)
    assert set(events) == set(new) and max(events.values()) == 1, "an event was skipped or delivered twice"
    spans = Counter(s for r, _, ids in delivered if r == run_id for s in ids)
    assert set(spans) == {f"{s.context.span_id:016x}" for s in final.spans} and max(spans.values()) == 1
    assert follower.rebuilds >= 1  # A's event came after later ones: the run was rebuilt in id order


def test_a_writer_with_a_clock_behind_is_still_seen(pg_world_url):
    writer = _Writer(pg_world_url)
    source = writer.source_runs()[1]
    old = writer.events_of(source)
    world, follower, delivered = _follow_with(pg_world_url, window=5.0)

    async def go():
        await follower.poll()
        run_id = writer.new_run(source)
        writer.insert(writer.conn, old[0], _minted(), run_id)
        await follower.poll()
        for _ in range(3):
            await asyncio.sleep(0.2)
            await follower.poll()
        late = _minted(ms_ago=2000)  # a process whose clock runs 2 s behind the others
        writer.insert(writer.conn, old[1], late, run_id)
        await follower.poll()
        await world.close()
        return run_id, late

    run_id, late = asyncio.run(go())
    assert late in {e for r, evs, _ in delivered if r == run_id for e in evs}


def test_follower_pass_reads_only_changed_runs(pg_world_url):
    writer = _Writer(pg_world_url)
    source = writer.source_runs()[0]
    world, follower, delivered = _follow_with(pg_world_url, window=5.0)

    async def go():
        await follower.poll()
        read_after_history = follower.events_read
        await follower.poll()
        idle = follower.events_read - read_after_history
        run_id, ids = writer.copy_run(source, upto=4)
        await follower.poll()
        grown = follower.events_read - read_after_history
        await world.close()
        return idle, grown, ids

    idle, grown, ids = asyncio.run(go())
    assert idle == 0 and grown == len(ids)


def test_close_from_another_event_loop_while_in_use(harness_pg_url):
    world = PostgresWorld(harness_pg_url)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        assert asyncio.run_coroutine_threadsafe(world.runs.list(), loop).result(10).data
        asyncio.run(world.close())  # the service's loop closing the tailer's world
        assert asyncio.run_coroutine_threadsafe(world.runs.list(), loop).result(10).data  # reconnects
    finally:
        asyncio.run_coroutine_threadsafe(world.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def test_export_after_follow_gives_the_same_span_ids(harness_pg_url):
    world = PostgresWorld(harness_pg_url)
    world_follow, follower, delivered = _follow_with(harness_pg_url, window=5.0)

    async def go():
        await follower.poll()
        expected = {
            f"{s.context.span_id:016x}" async for run in all_runs(world) for s in (await run_trace(world, run)).spans
        }
        await world.close()
        await world_follow.close()
        return expected

    expected = asyncio.run(go())
    sent = [s for _, _, ids in delivered for s in ids]
    assert set(sent) == expected and len(sent) == len(expected)
