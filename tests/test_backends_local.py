"""``telemetry.backends.local`` on copies of real world-local data: keyset reads that touch each
file once, the change feed, and a world that is being written, cut, or holds what is no file."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from ulid import ULID

from bench.synth import long_run
from telemetry.backends import local
from telemetry.backends.local import LocalWorld
from telemetry.backends.records import UnreadableRun
from telemetry.errors import UnreadableEventsError, WorkflowWorldError
from telemetry.follow import Checkpoint, Follower
from telemetry.reading import all_runs, event_log, stalled_runs
from telemetry.world import Pagination

from .conftest import summary


@pytest.fixture
def data(harness_out, tmp_path) -> Path:
    """A copy of the harness's final world-local dir (``copytree`` keeps the files' old mtimes)."""
    target = tmp_path / "data"
    shutil.copytree(harness_out / "local-data", target)
    return target


@pytest.fixture
def runs(harness_out) -> dict[str, str]:
    return {name: result["runId"] for name, result in summary(harness_out, "local").items()}


@pytest.fixture
def reads(monkeypatch) -> Counter[str]:
    """Counts the record files the reader opens, per directory (wraps its one file loader)."""
    counted: Counter[str] = Counter()
    real = local.read_bytes

    def counting(path: str) -> tuple[bytes, float]:
        counted[Path(path).parent.name] += 1
        return real(path)

    monkeypatch.setattr(local, "read_bytes", counting)
    return counted


def event_files(data: Path, run_id: str) -> list[Path]:
    return sorted((data / "events").glob(f"{run_id}-*.json"))


def logs(world: LocalWorld) -> dict[str, list]:
    async def go():
        return {run.run_id: await event_log(world, run.run_id) async for run in all_runs(world)}

    return asyncio.run(go())


def in_thread(fn, timeout: float = 20.0):
    """Run ``fn`` where a blocking open cannot hang the test run: a daemon thread, joined with a timeout."""
    box: dict = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as error:  # handed to the test below
            box["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"reader still blocked after {timeout}s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def copy_event(data: Path, template: Path, run_id: str) -> Path:
    """A new event for ``run_id``: a real record of its log under a fresh, current event id."""
    record = json.loads(template.read_text())
    record["eventId"] = f"evnt_{ULID()}"
    path = data / "events" / f"{run_id}-{record['eventId']}.json"
    path.write_text(json.dumps(record))
    return path


# -- reading in order, once -------------------------------------------------------------------


def test_event_pages_are_keyset_and_read_only_their_files(data, runs, reads):
    world = LocalWorld(data)
    run_id = runs["sequential"]
    full = asyncio.run(event_log(world, run_id))
    assert [e.event_id for e in full] == sorted(e.event_id for e in full) and len(full) > 4
    reads.clear()

    async def pages(limit: int, order: str) -> list:
        got, cursor = [], None
        while True:
            page = await world.events.list(
                run_id=run_id, pagination=Pagination(limit=limit, cursor=cursor, sort_order=order)
            )
            got.extend(page.data)
            if not page.has_more:
                return got
            cursor = page.cursor

    assert asyncio.run(pages(2, "asc")) == full
    assert reads["events"] == len(full)  # each file once, however many pages
    assert asyncio.run(pages(3, "desc")) == full[::-1]
    reads.clear()
    after = asyncio.run(world.events.list(run_id=run_id, pagination=Pagination(cursor=full[2].event_id)))
    assert after.data == full[3:] and reads["events"] == len(full) - 3  # nothing before the cursor is read
    assert asyncio.run(event_log(world, run_id, after=full[-1].event_id)) == []


def test_run_pages_match_one_sorted_listing_and_read_only_their_files(data, reads):
    world = LocalWorld(data)
    everything = asyncio.run(world.runs.list(pagination=Pagination(limit=100))).data
    assert len(everything) == 11
    keys = [(r.created_at, r.run_id) for r in everything]
    assert keys == sorted(keys, reverse=True)  # newest first, as world-local orders them
    reads.clear()
    paged = asyncio.run(_collect_runs(world, 3))
    assert [r.run_id for r in paged] == [r.run_id for r in everything]
    assert reads["runs"] == 11  # the order is known: each page reads its own runs only
    third = everything[2]
    sdk_cursor = f"{third.created_at.isoformat(timespec='milliseconds').replace('+00:00', 'Z')}|{third.run_id}"
    after = asyncio.run(world.runs.list(pagination=Pagination(limit=3, cursor=sdk_cursor))).data
    assert after == everything[3:6]  # world-local's own cursor form pages from the same place
    completed = asyncio.run(_collect_runs(world, 2, status="completed"))
    assert [r.run_id for r in completed] == [r.run_id for r in everything if r.status == "completed"]


async def _collect_runs(world, limit, **filters):
    out, cursor = [], None
    while True:
        page = await world.runs.list(pagination=Pagination(limit=limit, cursor=cursor), **filters)
        out.extend(page.data)
        if not page.has_more:
            return out
        cursor = page.cursor


@pytest.mark.parametrize("steps", [1_000, 10_000])
def test_export_of_a_long_run_reads_each_event_file_once(harness_out, tmp_path, reads, steps):
    """A run of 10,000 steps grown from a real one: reading it costs one read per event file,
    the same per event as a run of 1,000 steps (it used to re-read the whole run per 1,000)."""
    data = tmp_path / "long"
    (run_id,) = long_run(harness_out / "local-data", data, steps)
    files = len(os.listdir(data / "events"))
    world = LocalWorld(data)
    log = logs(world)[run_id]
    assert len(log) == files == 3 * steps + 3
    assert [e.event_id for e in log] == sorted(e.event_id for e in log)
    assert reads["events"] == files
    assert reads["runs"] <= 2  # placed in the order once, read for its page once


# -- the change feed --------------------------------------------------------------------------


@pytest.mark.parametrize("notify", [True, False], ids=["inotify", "mtime-scan"])
def test_changes_names_what_grew_and_an_idle_pass_reads_nothing(data, runs, reads, monkeypatch, notify):
    world = LocalWorld(data, notify=notify)
    first = asyncio.run(world.events.changes(None))
    assert sorted(first.runs) == sorted(runs.values())
    os.utime(data / "events", ns=(1, 1))  # an old mtime: the listing is settled
    settled = asyncio.run(world.events.changes(first.token)).token
    listed = Counter[str]()
    real_listdir = os.listdir
    monkeypatch.setattr(local.os, "listdir", lambda p: listed.update([p]) or real_listdir(p))
    idle = asyncio.run(world.events.changes(settled))
    assert idle.runs == [] and idle.token == settled
    assert not listed and not reads  # one stat: no listing, no file read

    target = runs["retry"]
    copy_event(data, event_files(data, target)[0], target)
    grown = asyncio.run(world.events.changes(settled))
    assert grown.runs == [target] and grown.token != settled
    again = asyncio.run(world.events.changes(settled))  # the caller failed and retries its old token
    assert again.runs == [target]
    assert asyncio.run(world.events.changes(grown.token)).runs == []
    copy_event(data, event_files(data, target)[0], target)  # the same run grows again
    assert asyncio.run(world.events.changes(grown.token)).runs == [target]
    assert not reads  # the feed reads names, never records
    if notify:  # after a change too, the directory is not listed again: the kernel said what changed
        assert not listed
    for name in (f"{target}-evnt_{ULID()}.json.tmp.{ULID()}", "stray.tmp"):  # the SDK's temp files: no event
        (data / "events" / name).write_text("{")
    latest = asyncio.run(world.events.changes(None)).token
    published = copy_event(data, event_files(data, target)[0], target)
    temp = published.with_name(f"{published.name}.tmp.{ULID()}")
    published.rename(temp)
    assert asyncio.run(world.events.changes(latest)).runs == []
    temp.rename(published)
    assert asyncio.run(world.events.changes(latest)).runs == [target]  # renamed into place: an event
    asyncio.run(world.close())


def test_lost_notifications_fall_back_to_one_listing(data, runs, caplog):
    """More changes than the kernel queues (fs.inotify.max_queued_events, 16,384 by default)
    between two passes: the queue overflows, and the feed lists the directory once instead."""
    caplog.set_level(logging.INFO, logger="telemetry.backends.local")
    world = LocalWorld(data)
    target = runs["sequential"]
    token = asyncio.run(world.events.changes(None)).token
    before = len(asyncio.run(event_log(world, target)))
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    template = json.loads(event_files(data, target)[-1].read_text())
    for _ in range(limit + 100):
        event_id = f"evnt_{ULID()}"
        (data / "events" / f"{target}-{event_id}.json").write_text(json.dumps({**template, "eventId": event_id}))
    assert asyncio.run(world.events.changes(token)).runs == [target]
    assert any("notifications lost" in r.getMessage() for r in caplog.records)  # the overflow was seen
    assert len(asyncio.run(event_log(world, target, resolve_data="none"))) == before + limit + 100
    asyncio.run(world.close())


def test_changes_resume_from_another_processes_token(data, runs):
    world = LocalWorld(data)
    token = asyncio.run(world.events.changes(None)).token
    newest = max((data / "events").glob("*.json"), key=lambda p: p.stem.split("-")[1]).stem.split("-")[0]
    target = runs["sequential"]
    copy_event(data, event_files(data, target)[0], target)
    restarted = LocalWorld(data, rewind=0.0)  # no look-back: what is at or after the token's newest event
    assert asyncio.run(restarted.events.changes(token)).runs == sorted({target, newest})
    everything = LocalWorld(data)  # the default look-back re-offers recent runs: harmless, never fewer
    assert target in asyncio.run(everything.events.changes(token)).runs


def behind(event_id: str) -> str:
    """The event id just before ``event_id``: what a writer whose clock runs behind mints."""
    return f"evnt_{ULID.from_int(int(ULID.from_str(event_id.removeprefix('evnt_'))) - 1)}"


@pytest.mark.parametrize("notify", [True, False], ids=["inotify", "mtime-scan"])
def test_changes_name_the_smallest_new_id_so_an_event_published_behind_is_read(data, runs, notify):
    """Event ids are ULIDs the writers mint: one can be published behind ids a reader already
    read (concurrent writers, clock skew). The feed hands out each run's smallest new id
    (``since``), and a follower re-reads a finished run from there instead of skipping it."""
    world = LocalWorld(data, notify=notify)
    sent: dict[str, list[str]] = {}
    follower = Follower(
        world,
        lambda run, events, spans: sent.setdefault(run.run_id, []).extend(e.event_id for e in events),
        Checkpoint(None),
    )
    asyncio.run(follower.poll())
    target = runs["retry"]
    files = event_files(data, target)
    last = files[-1].stem.split("-", 1)[1]
    assert sent[target][-1] == last and follower.checkpoint.get(target).complete
    token = asyncio.run(world.events.changes(None)).token
    late = behind(last)
    record = json.loads(files[-2].read_text()) | {"eventId": late}
    (data / "events" / f"{target}-{late}.json").write_text(json.dumps(record))
    appended = copy_event(data, files[0], target).stem.split("-", 1)[1]
    other = runs["sequential"]
    copy_event(data, event_files(data, other)[0], other)
    changes = asyncio.run(world.events.changes(token))
    assert changes.runs == sorted([target, other])
    assert changes.since[target] == late and changes.since[other] > late
    assert asyncio.run(world.events.changes(changes.token)).since == {}
    sent.clear()
    asyncio.run(follower.poll())
    assert late in sent[target] and appended in sent[target]  # before: read after the last id, never seen
    asyncio.run(world.close())


def test_a_change_within_the_mtime_granularity_is_not_missed(data, runs):
    """A directory listed while its mtime is fresh is listed again: a second change in the same
    timestamp tick (coarse clocks, 1 s filesystems) leaves the mtime where it was."""
    world = LocalWorld(data, notify=False)
    events = data / "events"
    tick = time.time_ns()
    os.utime(events, ns=(tick, tick))
    token = asyncio.run(world.events.changes(None)).token
    target = runs["parallel"]
    copy_event(data, event_files(data, target)[0], target)
    os.utime(events, ns=(tick, tick))  # the same tick as the listing saw
    assert asyncio.run(world.events.changes(token)).runs == [target]


# -- a live, cut or hostile world --------------------------------------------------------------


def test_sdk_temp_files_are_not_records(data, runs):
    """world-local writes ``<name>.tmp.<ULID>`` then renames or links it: a half-written temp
    file sits next to the final names (seen thousands of times on a live app) and is no event."""
    world = LocalWorld(data)
    target = runs["sequential"]
    before = logs(world)
    real = event_files(data, target)[-1]
    body = real.read_bytes()
    (real.parent / f"{real.name}.tmp.{ULID()}").write_bytes(body[: len(body) // 2])
    (data / "runs" / f"{target}.json.tmp.{ULID()}").write_bytes(b'{"runId": "wr')
    (data / "events" / f"{target}-evnt_{ULID()}.json.tmp.{ULID()}").write_bytes(body)  # complete, not published
    after = logs(LocalWorld(data))
    assert after == before


def test_a_record_being_written_stops_the_log_there_and_is_retried(data, runs):
    world = LocalWorld(data, grace=30)
    target = runs["sequential"]
    full = asyncio.run(event_log(world, target))
    files = event_files(data, target)
    cut = files[3]
    body = cut.read_bytes()
    cut.write_bytes(body[: len(body) // 2])  # now: a copy in progress, a fresh mtime
    partial = asyncio.run(event_log(world, target))
    assert partial == full[:3]  # nothing after the gap
    assert stalled_runs(world) == {target: str(cut)}
    token = asyncio.run(world.events.changes(None)).token
    assert target in asyncio.run(world.events.changes(token)).runs  # offered again every pass
    cut.write_bytes(body)
    assert asyncio.run(event_log(world, target, after=partial[-1].event_id)) == full[3:]
    assert stalled_runs(world) == {}


def test_a_record_that_stays_cut_names_its_file_and_only_its_run(data, runs, caplog):
    caplog.set_level(logging.WARNING, logger="telemetry.backends.local")
    world = LocalWorld(data, grace=0.2)
    target = runs["parallel"]
    clean = logs(LocalWorld(data))
    cut = event_files(data, target)[2]
    body = cut.read_bytes()
    cut.write_bytes(body[: len(body) // 2])
    assert asyncio.run(event_log(world, target)) == clean[target][:2]  # within the grace: not yet an error
    time.sleep(0.3)
    for _ in range(2):
        with pytest.raises(UnreadableEventsError) as raised:
            asyncio.run(event_log(world, target))
        assert raised.value.run_id == target and raised.value.path == str(cut)
        assert "truncated JSON" in raised.value.reason
    assert sum(str(cut) in r.getMessage() for r in caplog.records) == 1  # said once
    for run_id, log in clean.items():
        if run_id != target:
            assert asyncio.run(event_log(world, run_id)) == log


def test_copied_truncated_and_non_json_records_are_unreadable_at_once(data, runs):
    """Cut copies keep the original's old mtime (``cp -p``, ``copytree``): past any grace."""
    world = LocalWorld(data)
    cut, garbage = event_files(data, runs["fatal"])[1], event_files(data, runs["retry"])[0]
    for path, content in ((cut, cut.read_bytes()[:40]), (garbage, b"\x00\xff not json")):
        # an old copy's mtime: a fresh harness run's files are seconds old, within the grace themselves
        old = min(path.stat().st_mtime_ns, time.time_ns() - 3600 * 10**9)
        path.write_bytes(content)
        os.utime(path, ns=(old, old))
    for run_id, path in ((runs["fatal"], cut), (runs["retry"], garbage)):
        with pytest.raises(UnreadableEventsError) as raised:
            asyncio.run(event_log(world, run_id))
        assert raised.value.path == str(path)


def test_fifo_socket_and_directory_records_never_block(data, runs, caplog):
    caplog.set_level(logging.WARNING, logger="telemetry.backends.local")
    world = LocalWorld(data)
    target, other = runs["sleep"], runs["stream"]
    fifo = data / "events" / f"{target}-evnt_{ULID()}.json"
    os.mkfifo(fifo)
    directory = data / "events" / f"{other}-evnt_{ULID()}.json"
    directory.mkdir()  # unreadable even as root
    os.mkfifo(data / "runs" / f"wrun_{ULID()}.json")
    os.mkfifo(data / "hooks" / f"hook_{ULID()}.json")
    os.mkfifo(data / "steps" / f"{other}-step_{ULID()}.json")
    stream = f"strm_{ULID()}_user"
    os.mkfifo(data / "streams" / "chunks" / f"{stream}-chnk_{ULID()}.bin")

    def read_everything():
        async def go():
            out = {}
            async for run in all_runs(world):
                if isinstance(run, UnreadableRun):
                    continue
                try:
                    out[run.run_id] = await event_log(world, run.run_id)
                except UnreadableEventsError as error:
                    out[run.run_id] = error
                await world.steps.list(run_id=run.run_id)
            await world.hooks.list()
            await world.streams.get_chunks(stream, target)
            return out

        return asyncio.run(go())

    result = in_thread(read_everything)
    assert isinstance(result[target], UnreadableEventsError) and "FIFO" in result[target].reason
    assert isinstance(result[other], UnreadableEventsError) and "directory" in result[other].reason
    assert result[target].path == str(fifo) and result[other].path == str(directory)
    placeholders = [
        r for r in asyncio.run(world.runs.list(pagination=Pagination(limit=50))).data if r.status == "unreadable"
    ]
    assert len(placeholders) == 1 and isinstance(placeholders[0], UnreadableRun) and "FIFO" in placeholders[0].reason
    fine = [v for v in result.values() if isinstance(v, list)]
    assert len(fine) == 9 and all(fine)
    in_thread(read_everything)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == len(set(warned)) == 6  # one line per path, however often it is read


def test_a_run_file_in_place_of_a_directory_or_cut_is_listed_not_fatal(data, runs):
    world = LocalWorld(data)
    target = runs["webhook"]
    run_file = data / "runs" / f"{target}.json"
    old = run_file.stat().st_mtime_ns
    run_file.write_bytes(run_file.read_bytes()[:30])
    os.utime(run_file, ns=(old, old))
    listed = asyncio.run(world.runs.list(pagination=Pagination(limit=50))).data
    assert len(listed) == 11
    broken = next(r for r in listed if r.run_id == target)
    assert isinstance(broken, UnreadableRun) and broken.path == str(run_file)
    assert "truncated JSON" in broken.reason
    assert all(not isinstance(r, UnreadableRun) for r in listed if r.run_id != target)
    assert target not in [r.run_id for r in asyncio.run(world.runs.list(status="completed")).data]
    with pytest.raises(WorkflowWorldError) as raised:
        asyncio.run(world.runs.get(target))
    assert raised.value.code == "UNREADABLE_RUN" and str(run_file) in str(raised.value)


def test_a_file_that_vanishes_while_read_is_skipped_with_its_path(data, runs, harness_out, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="telemetry.backends.local")
    # the snapshot's pending hooks: one or more, as the harness's timing had it; any one will do
    pending_hook = min((harness_out / "local-data-midrun" / "hooks").glob("*.json"))
    shutil.copy2(pending_hook, data / "hooks")
    world = LocalWorld(data)
    target = runs["sequential"]
    clean = asyncio.run(event_log(world, target))
    doomed_event = event_files(data, target)[1]
    doomed_run = data / "runs" / f"{runs['fatal']}.json"
    doomed_hook = data / "hooks" / pending_hook.name
    real = local.read_bytes

    def vanishing(path: str) -> tuple[bytes, float]:
        if path in (str(doomed_event), str(doomed_run), str(doomed_hook)):
            os.unlink(path)  # listed a moment ago, gone now
        return real(path)

    monkeypatch.setattr(local, "read_bytes", vanishing)
    assert asyncio.run(event_log(world, target)) == clean[:1] + clean[2:]
    listed = asyncio.run(world.runs.list(pagination=Pagination(limit=50))).data
    assert runs["fatal"] not in [r.run_id for r in listed] and len(listed) == 10
    assert asyncio.run(world.hooks.list()).data == []
    messages = [r.getMessage() for r in caplog.records]
    assert any(str(doomed_event) in m and "vanished" in m for m in messages)
    assert not any(str(doomed_hook) in m for m in messages)  # hooks are deleted as they complete: routine


def test_a_first_listing_reads_each_run_file_once_and_a_changed_one_again(data, runs, reads):
    """Placing the runs in ``createdAt`` order reads every run file; the page that returns a run
    without payloads uses that read while the file is unchanged (by mtime, ctime, size, inode)."""
    world = LocalWorld(data)
    first = asyncio.run(world.runs.list(pagination=Pagination(limit=1), resolve_data="none")).data
    assert len(first) == 1 and reads["runs"] == 11  # placing them all; the page's own run was read then
    changed = next(r for r in runs.values() if r != first[0].run_id)
    run_file = data / "runs" / f"{changed}.json"
    record = json.loads(run_file.read_text())
    record["status"] = "cancelled"
    old = run_file.stat().st_mtime_ns
    run_file.write_text(json.dumps(record))
    os.utime(run_file, ns=(old, old))  # the same mtime: its ctime (and size) still tell
    reads.clear()
    listed = asyncio.run(world.runs.list(pagination=Pagination(limit=50), resolve_data="none")).data
    assert len(listed) == 11
    assert next(r for r in listed if r.run_id == changed).status == "cancelled"
    assert reads["runs"] == 2  # the changed file, and the one the first page took (kept for one page only)
    reads.clear()
    again = asyncio.run(world.runs.list(pagination=Pagination(limit=50), resolve_data="none")).data
    assert again == listed and reads["runs"] == 11  # placed already: each page reads its own runs


def test_known_ids_hand_another_reader_the_flat_index_and_a_fifo_is_never_opened(data, runs):
    """``wft export``'s parent lists the flat events folder once and hands each worker the ids;
    a name the listing did not see as a regular file is read the careful way (``stat`` first)."""
    lister, reader = LocalWorld(data), LocalWorld(data)
    target, other = runs["sleep"], runs["sequential"]
    fifo = data / "events" / f"{target}-evnt_{ULID()}.json"
    os.mkfifo(fifo)
    known = lister.events.known_ids([target, other, "wrun_none"])
    assert known is not None
    ids, listed = known[other]
    assert ids == lister.events.ids(other) and listed  # every file seen as a regular file: no stat each
    assert known[target][1] is False and known["wrun_none"][0] == []
    expected = asyncio.run(event_log(reader, other))
    assert reader.events.read_log(other, ids, True, listed=True) == expected
    with pytest.raises(UnreadableEventsError) as raised:
        in_thread(lambda: reader.events.read_log(target, known[target][0], True, listed=known[target][1]))
    assert raised.value.path == str(fifo) and "FIFO" in raised.value.reason
    # a regular file swapped for a FIFO after the listing: opened without blocking, and reported
    swapped = Path(reader.events.index.path(other, ids[-1]))
    swapped.unlink()
    os.mkfifo(swapped)
    with pytest.raises(UnreadableEventsError) as raised:
        in_thread(lambda: reader.events.read_log(other, ids, True, listed=True))
    assert raised.value.path == str(swapped) and "FIFO" in raised.value.reason
