"""``telemetry.backends.local`` on the per-run layout (newer world-local, and vercel-workflow's local
world): detected as the SDK detects it, read linearly and live like the flat one, and giving the
same trace for the same run in either layout.

Per-run data here is real: the cut fixture of vercel-workflow output (``tests/fixtures/pylocal-cut``)
and the TS harness's flat world-local dir converted to the per-run layout by moving its files
(``to_per_run``: no record is rewritten).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from ulid import ULID

from bench.synth import long_run
from telemetry.backends import local
from telemetry.backends.local import LocalWorld, UnsupportedLayoutError
from telemetry.backends.local_layout import detect_layout
from telemetry.errors import HookNotFoundError, UnreadableEventsError
from telemetry.payloads import decode_payload, split_frames
from telemetry.reading import all_runs, empty_log, event_log, run_trace, stalled_runs
from telemetry.streams import StreamWriter, stream_name
from telemetry.world import Pagination

from .conftest import summary

FIXTURE = Path(__file__).parent / "fixtures" / "pylocal-cut"
MANIFEST = json.loads((FIXTURE / "MANIFEST.json").read_text())


def to_per_run(flat: Path, target: Path) -> Path:
    """A flat (4.x) world-local dir in the per-run layout, by moving files only: events and steps
    into ``<kind>/<runId>/``, chunks into ``streams/chunks/<stream>/``. ``waits/`` goes (the
    per-run layout keeps no wait records) and so does ``version.txt`` (vercel-workflow writes none)."""
    shutil.copytree(flat, target)
    for sub in ("events", "steps"):
        for path in sorted((target / sub).glob("wrun_*-*.json")):
            folder = target / sub / path.name.split("-", 1)[0]
            folder.mkdir(exist_ok=True)
            path.rename(folder / path.name)
    chunks = target / "streams" / "chunks"
    for path in sorted(chunks.glob("*-chnk_*.bin")):
        stream, chunk = path.name.rsplit("-chnk_", 1)
        (chunks / stream).mkdir(exist_ok=True)
        path.rename(chunks / stream / f"chnk_{chunk}")
    shutil.rmtree(target / "waits", ignore_errors=True)
    (target / "version.txt").unlink(missing_ok=True)
    return target


@pytest.fixture
def flat(harness_out, tmp_path) -> Path:
    target = tmp_path / "flat"
    shutil.copytree(harness_out / "local-data", target)
    return target


@pytest.fixture
def perrun(harness_out, tmp_path) -> Path:
    return to_per_run(harness_out / "local-data", tmp_path / "perrun")


@pytest.fixture
def pylocal(tmp_path) -> Path:
    target = tmp_path / "pylocal"
    shutil.copytree(FIXTURE, target, ignore=shutil.ignore_patterns("MANIFEST.json"))
    return target


@pytest.fixture
def runs(harness_out) -> dict[str, str]:
    return {name: result["runId"] for name, result in summary(harness_out, "local").items()}


@pytest.fixture
def reads(monkeypatch) -> Counter[str]:
    """Counts the record files the reader opens, per top-level directory of the world."""
    counted: Counter[str] = Counter()
    real = local.read_bytes

    def counting(path: str) -> tuple[bytes, float]:
        parts = Path(path).parts
        counted[next((p for p in ("events", "steps", "runs", "hooks", "streams") if p in parts), "other")] += 1
        return real(path)

    monkeypatch.setattr(local, "read_bytes", counting)
    return counted


@pytest.fixture
def listed(monkeypatch) -> Counter[str]:
    """Counts directory listings under ``events/``."""
    counted: Counter[str] = Counter()
    real = os.listdir

    def counting(path):
        if "events" in Path(path).parts:
            counted[str(path)] += 1
        return real(path)

    monkeypatch.setattr(local.os, "listdir", counting)
    return counted


def logs(world: LocalWorld) -> dict[str, list]:
    async def go():
        return {run.run_id: await event_log(world, run.run_id) async for run in all_runs(world)}

    return asyncio.run(go())


def traces(world: LocalWorld) -> dict[str, tuple]:
    """Every span of every run: id -> (name, parent, attributes, event names, status)."""

    async def go():
        out = {}
        async for run in all_runs(world):
            for span in (await run_trace(world, run)).spans:
                parent = f"{span.parent.span_id:016x}" if span.parent else None
                events = [(e.name, dict(e.attributes or {})) for e in span.events]
                key = f"{span.context.span_id:016x}"
                out[key] = (span.name, parent, dict(span.attributes or {}), events, span.status.status_code)
        return out

    return asyncio.run(go())


def new_event(folder: Path, template: Path, run_id: str) -> Path:
    """A new event for ``run_id`` in its run folder: a real record of its log under a fresh id."""
    record = json.loads(template.read_text())
    record["eventId"] = f"evnt_{ULID()}"
    path = folder / f"{run_id}-{record['eventId']}.json"
    path.write_text(json.dumps(record, indent=2))
    return path


def settle(*folders: Path) -> None:
    """Old mtimes: a listing taken now is not "racy" and is trusted until the mtime moves."""
    for folder in folders:
        os.utime(folder, ns=(1, 1))


# -- detection -------------------------------------------------------------------------------------


def test_layouts_are_told_apart_as_vercel_workflow_tells_them_apart(flat, perrun, pylocal, tmp_path, monkeypatch):
    """The oracle is vercel-workflow's own start-up check on copies of the same directories: it
    deletes a flat one, keeps a per-run one, refuses a mixed one, and leaves an undecided one."""
    from vercel.workflow._internal.worlds.local import DataDirLayoutError
    from vercel.workflow._internal.worlds.local import LocalWorld as SdkWorld

    runs_only = tmp_path / "runs-only"
    shutil.copytree(pylocal / "runs", runs_only / "runs")
    mixed = tmp_path / "mixed"
    shutil.copytree(pylocal, mixed)
    stray = next((flat / "events").glob("*.json"))
    shutil.copy2(stray, mixed / "events" / stray.name)
    cases = {flat: "flat", perrun: "per-run", pylocal: "per-run", runs_only: None}
    for folder, expected in cases.items():
        assert detect_layout(folder) == detect_layout(folder, thorough=True) == expected, folder
        assert LocalWorld(folder).layout.name == expected
    with pytest.raises(UnsupportedLayoutError, match="mixes the flat"):
        detect_layout(mixed, thorough=True)
    with pytest.raises(UnsupportedLayoutError, match=stray.name):  # on opening, or at the latest on reading
        logs(LocalWorld(mixed))

    def sdk_start(folder: Path) -> str:
        copy = tmp_path / "sdk" / folder.name
        shutil.copytree(folder, copy)
        monkeypatch.setenv("WORKFLOW_LOCAL_DATA_DIR", str(copy))
        try:
            SdkWorld()
        except DataDirLayoutError:
            return "refused"
        return "wiped" if not copy.exists() else "kept"

    assert {name: sdk_start(f) for name, f in [("flat", flat), ("perrun", perrun), ("runs-only", runs_only)]} == {
        "flat": "wiped",
        "perrun": "kept",
        "runs-only": "kept",
    }
    assert sdk_start(mixed) == "refused"


def test_a_newer_version_txt_is_read_and_an_unknown_one_refused(perrun):
    (perrun / "version.txt").write_text("@workflow/world-local@5.0.0-beta.46")
    assert LocalWorld(perrun).layout.name == "per-run"
    (perrun / "version.txt").write_text("@workflow/world-local@6.0.0")
    with pytest.raises(UnsupportedLayoutError, match="6.0.0 is not supported"):
        LocalWorld(perrun)


# -- same runs, same traces ------------------------------------------------------------------------


def test_the_same_harness_run_gives_the_same_trace_in_both_layouts(flat, perrun, reads):
    flat_traces = traces(LocalWorld(flat))
    reads.clear()
    per_run_traces = traces(LocalWorld(perrun))
    events = sum(1 for _ in (perrun / "events").glob("*/*.json"))
    assert reads["events"] == events  # each event file read once
    assert len(flat_traces) > 50
    assert per_run_traces == flat_traces  # span ids, names, parents, attributes, events, statuses


def test_other_entities_read_the_same_in_both_layouts(flat, perrun, runs):
    flat_world, per_run_world = LocalWorld(flat), LocalWorld(perrun)

    async def view(world: LocalWorld) -> dict:
        out: dict = {}
        for name, run_id in runs.items():
            steps = (await world.steps.list(run_id=run_id, pagination=Pagination(limit=100))).data
            out[name] = {
                "steps": steps,
                "one": [await world.steps.get(None, s.step_id) for s in steps[:1]],
                "streams": {
                    s: world.streams.read_all(s) for s in await world.streams.list(run_id)
                },  # chunks, done, chunks after EOF
                "hooks": (await world.hooks.list(run_id=run_id)).data,
            }
        return out

    flat_view, per_run_view = asyncio.run(view(flat_world)), asyncio.run(view(per_run_world))
    assert per_run_view == flat_view
    assert any(v["streams"] for v in flat_view.values()) and any(v["steps"] for v in flat_view.values())


def test_pending_sleeps_come_from_the_events_where_no_wait_record_is_kept(harness_out, tmp_path, runs):
    """The mid-run snapshot has one sleep pending (a ``waits/`` record in the flat layout); the
    per-run layout has no such record, and the wait is rebuilt from its ``wait_created``."""
    midrun = harness_out / "local-data-midrun"
    per_run = to_per_run(midrun, tmp_path / "midrun")
    expected = asyncio.run(LocalWorld(midrun).waits.list())
    assert [w.run_id for w in expected] == [runs["sleep"]] and not (per_run / "waits").exists()
    world = LocalWorld(per_run)
    assert asyncio.run(world.waits.list()) == expected
    assert asyncio.run(world.waits.list(run_id=runs["sleep"])) == expected
    assert asyncio.run(LocalWorld(to_per_run(harness_out / "local-data", tmp_path / "done")).waits.list()) == []


# -- linear -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1_000, 10_000])
def test_a_long_per_run_log_reads_each_event_file_once(harness_out, tmp_path, reads, steps):
    (run_id,) = long_run(harness_out / "local-data", tmp_path / "long-flat", steps)
    data = to_per_run(tmp_path / "long-flat", tmp_path / "long")
    files = len(os.listdir(data / "events" / run_id))
    world = LocalWorld(data)
    log = logs(world)[run_id]
    assert len(log) == files == 3 * steps + 3
    assert [e.event_id for e in log] == sorted(e.event_id for e in log)
    assert reads["events"] == files


def test_event_pages_are_keyset_and_read_only_their_files(perrun, runs, reads):
    world = LocalWorld(perrun)
    run_id = runs["sequential"]
    full = asyncio.run(event_log(world, run_id))
    reads.clear()
    got, cursor = [], None
    while True:
        page = asyncio.run(world.events.list(run_id=run_id, pagination=Pagination(limit=2, cursor=cursor)))
        got.extend(page.data)
        if not page.has_more:
            break
        cursor = page.cursor
    assert got == full and reads["events"] == len(full)
    reads.clear()
    after = asyncio.run(world.events.list(run_id=run_id, pagination=Pagination(cursor=full[2].event_id)))
    assert after.data == full[3:] and reads["events"] == len(full) - 3


# -- the change feed --------------------------------------------------------------------------------


@pytest.mark.parametrize("notify", [True, False], ids=["inotify", "mtime-scan"])
def test_the_change_feed_follows_run_folders_and_new_ones(perrun, runs, reads, listed, notify):
    world = LocalWorld(perrun, notify=notify)
    events = perrun / "events"
    first = asyncio.run(world.events.changes(None))
    assert first.runs == sorted(runs.values())
    settle(events, *events.iterdir())
    settled = asyncio.run(world.events.changes(first.token)).token
    target = runs["retry"]
    folder = events / target
    template = sorted(folder.iterdir())[0]
    listed.clear()
    idle = asyncio.run(world.events.changes(settled))
    assert idle.runs == [] and idle.token == settled
    assert not listed and not reads  # a stat per folder (or one inotify read): no listing, no record

    new_event(folder, template, target)
    grown = asyncio.run(world.events.changes(settled))
    assert grown.runs == [target]
    assert asyncio.run(world.events.changes(settled)).runs == [target]  # a retry with the old token
    assert asyncio.run(world.events.changes(grown.token)).runs == []
    if notify:
        assert not listed  # the kernel said what changed
    # vercel-workflow's temp files (mkstemp in the run folder), half-written: no event
    fd, temp = tempfile.mkstemp(dir=folder)
    os.write(fd, template.read_bytes()[:20])
    os.close(fd)
    assert asyncio.run(world.events.changes(grown.token)).runs == []
    os.unlink(temp)

    # a run folder that was not there: the run is named, its log reads
    newcomer = f"wrun_{ULID()}"
    (events / newcomer).mkdir()
    record = json.loads(template.read_text()) | {"runId": newcomer, "eventId": f"evnt_{ULID()}"}
    fd, temp = tempfile.mkstemp(dir=events / newcomer)  # as vercel-workflow publishes: temp file, then link
    os.write(fd, json.dumps(record).encode())
    os.close(fd)
    os.link(temp, events / newcomer / f"{newcomer}-{record['eventId']}.json")
    os.unlink(temp)
    appeared = asyncio.run(world.events.changes(grown.token))
    assert appeared.runs == [newcomer]
    assert [e.event_id for e in asyncio.run(event_log(world, newcomer))] == [record["eventId"]]
    asyncio.run(world.close())


def test_lost_notifications_relist_the_run_folders_once(perrun, runs, listed):
    """More changes than the kernel queues (``fs.inotify.max_queued_events``) between two passes,
    spread over two run folders on one inotify instance: the queue overflows, and each folder is
    listed again, once (while notifications work, a folder is never listed after its first pass)."""
    world = LocalWorld(perrun)
    token = asyncio.run(world.events.changes(None)).token
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    targets = [runs["sequential"], runs["parallel"]]
    before = {r: len(asyncio.run(event_log(world, r, resolve_data="none"))) for r in targets}
    templates = {r: json.loads(next((perrun / "events" / r).glob("*.json")).read_text()) for r in targets}
    listed.clear()
    added = Counter[str]()
    for i in range(limit + 100):
        run_id = targets[i % 2]
        event_id = f"evnt_{ULID()}"
        record = {**templates[run_id], "eventId": event_id}
        (perrun / "events" / run_id / f"{run_id}-{event_id}.json").write_text(json.dumps(record))
        added[run_id] += 1
    assert asyncio.run(world.events.changes(token)).runs == sorted(targets)
    # which folder lost what is unknown: every run folder (and the events dir) is listed once
    assert {Path(p).name for p in listed} == {*runs.values(), "events"}
    assert all(count == 1 for count in listed.values())
    for run_id in targets:
        assert len(asyncio.run(event_log(world, run_id, resolve_data="none"))) == before[run_id] + added[run_id]
    asyncio.run(world.close())


def test_a_run_record_without_events_is_named_on_every_pass(perrun, runs):
    world = LocalWorld(perrun)
    token = asyncio.run(world.events.changes(None)).token
    lonely = f"wrun_{ULID()}"
    record = json.loads((perrun / "runs" / f"{runs['sequential']}.json").read_text()) | {"runId": lonely}
    (perrun / "runs" / f"{lonely}.json").write_text(json.dumps(record, indent=2))
    for _ in range(3):  # until it has an event (or the caller marks it), it is offered each pass
        changes = asyncio.run(world.events.changes(token))
        assert changes.runs == [lonely]
        token = changes.token
    run = asyncio.run(world.runs.get(lonely))
    where, reason = asyncio.run(empty_log(world, run))
    assert reason == "its record says completed but its event log reads empty"
    assert where == f"{perrun / 'events' / lonely} does not exist"
    (perrun / "runs" / f"{lonely}.json").unlink()
    assert asyncio.run(world.events.changes(token)).runs == []


def test_an_empty_dir_is_undecided_until_the_first_event_appears(tmp_path, pylocal):
    data = tmp_path / "fresh"
    world = LocalWorld(data, allow_missing=True)
    assert world.layout.name is None and asyncio.run(world.events.changes(None)).runs == []
    run_id = MANIFEST["sequential"]["run_id"]
    (data / "runs").mkdir(parents=True)
    shutil.copy2(pylocal / "runs" / f"{run_id}.json", data / "runs")
    first = asyncio.run(world.events.changes(None))
    assert first.runs == [run_id] and world.layout.name is None  # a record, no event: not a layout yet
    assert "no event record of any run" in asyncio.run(empty_log(world, asyncio.run(world.runs.get(run_id))))[0]
    shutil.copytree(pylocal / "events" / run_id, data / "events" / run_id)
    assert asyncio.run(world.events.changes(first.token)).runs == [run_id]
    assert world.layout.name == "per-run"
    assert [e.event_type for e in asyncio.run(event_log(world, run_id))] == MANIFEST["sequential"]["events"]


def test_a_flat_dir_replaced_by_a_per_run_one_is_followed(flat, pylocal, runs):
    """vercel-workflow deletes a flat data dir on start and writes the per-run layout there. Every
    run of the new layout is new to a token of the old one, from its first event, whatever the
    times in its event ids (older than the flat world's when the harness ran after the fixture
    was cut: the watermark fallback for another process's token offered none of them then)."""
    world = LocalWorld(flat)
    token = asyncio.run(world.events.changes(None)).token
    assert world.layout.name == "flat"
    shutil.rmtree(flat)
    shutil.copytree(pylocal, flat)
    changes = asyncio.run(world.events.changes(token))
    assert world.layout.name == "per-run"
    assert set(changes.runs) == {facts["run_id"] for facts in MANIFEST.values()}
    firsts = {r: min(p.stem.split("-", 1)[1] for p in (flat / "events" / r).glob("*.json")) for r in changes.runs}
    assert changes.since == firsts
    assert asyncio.run(world.events.changes(changes.token)).runs == []
    asyncio.run(world.close())


def test_a_run_folder_appearing_in_a_flat_dir_is_refused_as_mixed(flat, runs):
    world = LocalWorld(flat)
    token = asyncio.run(world.events.changes(None)).token
    (flat / "events" / f"wrun_{ULID()}").mkdir()
    with pytest.raises(UnsupportedLayoutError, match="mixes the flat"):
        asyncio.run(world.events.changes(token))


def test_a_file_named_like_a_run_folder_is_no_evidence_and_looked_at_once(flat, runs, monkeypatch):
    world = LocalWorld(flat)
    token = asyncio.run(world.events.changes(None)).token
    (flat / "events" / f"wrun_{ULID()}").write_text("a file, not a run folder")
    scans = Counter[str]()
    real = os.scandir
    monkeypatch.setattr("telemetry.backends.local_layout.os.scandir", lambda p: scans.update([str(p)]) or real(p))
    for _ in range(3):
        assert asyncio.run(world.events.changes(token)).runs == []
    assert world.layout.name == "flat" and not world.layout.strays
    assert scans[str(flat / "events")] == 1  # looked at again once, not on every pass


# -- live and hostile -------------------------------------------------------------------------------


def test_stray_temp_files_are_not_records(pylocal):
    before = logs(LocalWorld(pylocal))
    run_id = MANIFEST["sequential"]["run_id"]
    for sub in ("events", "steps"):
        real = sorted((pylocal / sub / run_id).iterdir())[-1]
        fd, _ = tempfile.mkstemp(dir=real.parent)
        os.write(fd, real.read_bytes()[:25])
        os.close(fd)
    (stream,) = [pylocal / "streams" / "chunks" / name for name in MANIFEST["streaming"]["streams"]]
    fd, _ = tempfile.mkstemp(dir=stream)
    os.write(fd, b"\x01")  # an EOF flag that is not published yet
    os.close(fd)
    world = LocalWorld(pylocal)
    assert logs(world) == before
    steps = asyncio.run(world.steps.list(run_id=run_id)).data
    assert len(steps) == len(MANIFEST["sequential"]["steps"])
    chunks, done, _ = world.streams.read_all(stream.name)
    assert len(chunks) == 3 and done


def test_a_record_being_written_stops_the_log_and_one_that_stays_cut_is_named(pylocal):
    world = LocalWorld(pylocal, grace=30)
    run_id = MANIFEST["failing"]["run_id"]
    full = asyncio.run(event_log(world, run_id))
    files = sorted((pylocal / "events" / run_id).iterdir())
    cut = files[4]
    body = cut.read_bytes()
    cut.write_bytes(body[: len(body) // 2])
    assert asyncio.run(event_log(world, run_id)) == full[:4]
    assert stalled_runs(world) == {run_id: str(cut)}
    cut.write_bytes(body)
    assert asyncio.run(event_log(world, run_id, after=full[3].event_id)) == full[4:]
    assert stalled_runs(world) == {}
    cut.write_bytes(body[:30])
    os.utime(cut, ns=(1, 1))  # cut long ago: past any grace
    with pytest.raises(UnreadableEventsError) as raised:
        asyncio.run(event_log(world, run_id))
    assert raised.value.path == str(cut) and "truncated JSON" in raised.value.reason
    others = {r: log for r, log in logs(LocalWorld(FIXTURE)).items() if r != run_id}
    assert {r: asyncio.run(event_log(world, r)) for r in others} == others


def test_a_fifo_in_a_run_folder_never_blocks(pylocal):
    from .test_backends_local import in_thread

    run_id = MANIFEST["retrying"]["run_id"]
    fifo = pylocal / "events" / run_id / f"{run_id}-evnt_{ULID()}.json"
    os.mkfifo(fifo)
    os.mkfifo(pylocal / "steps" / run_id / f"{run_id}-step_{ULID()}.json")
    world = LocalWorld(pylocal)

    def read():
        try:
            asyncio.run(event_log(world, run_id))
        except UnreadableEventsError as error:
            return error, asyncio.run(world.steps.list(run_id=run_id)).data

    error, steps = in_thread(read)
    assert error.path == str(fifo) and "FIFO" in error.reason
    assert len(steps) == 1


def test_an_unlistable_run_folder_makes_an_empty_log_that_says_why(pylocal, monkeypatch):
    run_id = MANIFEST["bulky"]["run_id"]
    real = os.listdir

    def denied(path):
        if str(path).endswith(run_id) and "events" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(local.os, "listdir", denied)
    monkeypatch.setattr("telemetry.backends.local_layout.os.listdir", denied)
    world = LocalWorld(pylocal)
    run = asyncio.run(world.runs.get(run_id))
    assert asyncio.run(event_log(world, run_id)) == []
    where, reason = asyncio.run(empty_log(world, run))
    assert "cannot be listed: Permission denied" in where and "says completed" in reason


# -- hooks and streams ------------------------------------------------------------------------------


def test_hooks_by_token_in_the_per_run_layout(pylocal):
    world = LocalWorld(pylocal)
    hook = asyncio.run(world.hooks.get_by_token("nobody-answers"))
    assert hook.run_id == MANIFEST["waiting"]["run_id"] and hook.metadata == {"token": "nobody-answers"}
    with pytest.raises(HookNotFoundError):
        asyncio.run(world.hooks.get_by_token("approve-me"))  # resumed and disposed: its records are gone


def test_stream_writes_in_a_per_run_dir_use_per_stream_folders_that_vercel_workflow_reads(pylocal, monkeypatch):
    from vercel.workflow._internal.worlds.local import LocalWorld as SdkWorld

    run_id = MANIFEST["waiting"]["run_id"]
    world = LocalWorld(pylocal)

    async def write() -> tuple[StreamWriter, StreamWriter]:
        out = StreamWriter(world, run_id, namespace="py", raw=True)
        assert await out.write(b"\x00\x00\x00\x03abc") and await out.write("text") and await out.close()
        values = StreamWriter(world, run_id, namespace="values")
        assert values.sdk == "python"  # a directory vercel-workflow wrote: its serialization
        assert await values.write({"word": "alpha"}) and await values.close()
        return out, values

    out, values = asyncio.run(write())
    chunks = pylocal / "streams" / "chunks"
    assert not list(chunks.glob("*-chnk_*")) and not list(chunks.rglob("tmp*"))  # no flat name, no temp left
    assert sorted(p.name[:5] for p in (chunks / out.name).iterdir()) == ["chnk_"] * 3
    monkeypatch.setenv("WORKFLOW_LOCAL_DATA_DIR", str(pylocal))
    sdk = SdkWorld()  # neither refuses the dir as mixed nor wipes it

    async def sdk_view(name: str):
        page = await sdk.streams_get_chunks(run_id, name)
        return await sdk.streams_list(run_id), [c.data for c in page.data], page.done

    names, data, done = asyncio.run(sdk_view(out.name))
    assert (pylocal / "runs").is_dir() and out.name in names and values.name in names
    assert data == [b"\x00\x00\x00\x03abc", b"text"] and done
    assert split_frames(data[0]) == [b"abc"]
    _, data, done = asyncio.run(sdk_view(values.name))
    assert [decode_payload(f) for f in split_frames(data[0])] == [{"word": "alpha"}] and done


def test_stream_writes_into_a_dir_without_events_yet_use_per_stream_folders(tmp_path, flat, runs):
    fresh = tmp_path / "fresh"
    asyncio.run(LocalWorld(fresh, allow_missing=True).streams.write(stream_name("wrun_X"), "wrun_X", b"one"))
    assert [p.name[:5] for p in (fresh / "streams" / "chunks" / stream_name("wrun_X")).iterdir()] == ["chnk_"]
    asyncio.run(LocalWorld(flat).streams.write(stream_name(runs["sleep"]), runs["sleep"], b"one"))
    assert list((flat / "streams" / "chunks").glob(f"{stream_name(runs['sleep'])}-chnk_*.bin"))  # flat stays flat


def test_stream_reads_match_what_vercel_workflow_reports(pylocal):
    world = LocalWorld(pylocal)
    for facts in MANIFEST.values():
        streams = asyncio.run(world.streams.list(facts["run_id"]))
        view = {}
        for name in streams:
            info = asyncio.run(world.streams.get_info(name, facts["run_id"]))
            page = asyncio.run(world.streams.get_chunks(name, facts["run_id"]))
            view[name] = {"done": info.done, "chunks": len(page.data)}
        assert view == facts["streams"]
    (late,) = MANIFEST["racing"]["streams"]
    chunk = asyncio.run(world.streams.get_chunks(late, MANIFEST["racing"]["run_id"])).data[0].data
    assert [decode_payload(f) for f in split_frames(chunk)] == ["written after the run completed"]


def test_known_ids_are_none_in_the_per_run_layout(perrun):
    """Each run's folder is its own listing there: an export worker lists just the runs it reads."""
    world = LocalWorld(perrun)
    assert world.layout.name == "per-run" and world.events.known_ids(["wrun_x"]) is None
