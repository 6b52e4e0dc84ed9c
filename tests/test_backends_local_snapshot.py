"""What ``wft export``'s parent hands its workers from a flat world-local directory
(``FlatSnapshot``: one sorted listing, a slice per run), and the reads the workers make of it
(``read_listed`` without ``fstat``, ``decode_json`` without the decoder's Python wrapper): the
same events as the index and the one-process reader, the same errors for what is no record."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from ulid import ULID

from telemetry.backends.local import LocalWorld, UnreadableRecord, decode_json, read_listed, read_record
from telemetry.backends.local_layout import UnsupportedLayoutError, detect_layout, event_ids
from telemetry.errors import UnreadableEventsError

from .test_backends_local import in_thread


@pytest.fixture
def data(harness_out, tmp_path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(harness_out / "local-data", target)
    return target


def _run_ids(data: Path) -> list[str]:
    return sorted(p.stem for p in (data / "runs").glob("*.json"))


def test_a_snapshot_gives_each_run_the_ids_the_index_gives(data):
    runs = _run_ids(data)
    some = runs[0]
    events = data / "events"
    first = sorted(events.glob(f"{some}-*.json"))[0]
    (events / f"{first.name}.tmp.{ULID()}").write_text("{")  # world-local's temp file, mid-write
    (events / f".{some}-evnt_{ULID()}.json").write_text("{}")  # hidden: no record
    world = LocalWorld(data)
    snapshot = world.events.snapshot()
    assert snapshot is not None
    known = LocalWorld(data).events.known_ids(runs)
    assert known is not None
    for run_id in runs:
        names, regular = snapshot.take(run_id)
        assert event_ids(run_id, names) == known[run_id][0], run_id
        assert regular is known[run_id][1] is True
    assert snapshot.take("wrun_none") == ([], True)
    assert snapshot.take("wrun_a-b") == ([], True)  # the index files such names under ``wrun_a``


def test_a_name_that_is_no_regular_file_is_flagged_and_read_the_careful_way(data):
    run_id = _run_ids(data)[0]
    fifo = data / "events" / f"{run_id}-evnt_{ULID()}.json"
    os.mkfifo(fifo)
    snapshot = LocalWorld(data).events.snapshot()
    assert snapshot is not None
    names, regular = snapshot.take(run_id)
    assert fifo.name in names and regular is False
    reader = LocalWorld(data)
    with pytest.raises(UnreadableEventsError) as raised:
        in_thread(lambda: reader.events.read_log(run_id, event_ids(run_id, names), True, listed=regular))
    assert raised.value.path == str(fifo) and "FIFO" in raised.value.reason


def test_a_run_folder_among_flat_files_is_left_to_the_index_to_refuse(data):
    # The world is opened first: which entry a listing meets first is the file system's order, so
    # a world opened on the mixed directory may refuse it at once (the last assertion) instead.
    world = LocalWorld(data)
    (data / "events" / f"wrun_{ULID()}").mkdir()  # a live world: the folder appears later
    assert world.events.snapshot() is None
    with pytest.raises(UnsupportedLayoutError, match="mixes the flat"):
        world.events.known_ids(_run_ids(data))
    with pytest.raises(UnsupportedLayoutError, match="mixes the flat"):
        detect_layout(data, thorough=True)


def test_read_listed_reads_a_record_whole_without_asking_its_mtime(data):
    record = sorted((data / "events").glob("*.json"))[0]
    body, mtime = read_listed(str(record))
    assert body == record.read_bytes() and mtime is None
    big = data / "events" / "big.json"
    big.write_text(json.dumps({"pad": "x" * 200_000}))  # more than one read: read on to the end
    body, mtime = read_listed(str(big))
    assert body == big.read_bytes() and mtime == big.stat().st_mtime


def test_read_listed_says_what_a_swapped_in_name_is_and_a_cut_record_has_its_mtime(data, tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(UnreadableRecord) as raised:
        in_thread(lambda: read_listed(str(fifo)))
    assert raised.value.problem == "not a regular file" and "FIFO" in raised.value.reason
    folder = tmp_path / "folder.json"
    folder.mkdir()
    with pytest.raises(UnreadableRecord) as raised:
        read_listed(str(folder))
    assert raised.value.problem == "not a regular file" and "directory" in raised.value.reason
    for cut in (b"", b'{"eventType": "step_'):
        path = tmp_path / "cut.json"
        path.write_bytes(cut)
        old = time.time() - 3600
        os.utime(path, (old, old))
        with pytest.raises(UnreadableRecord) as raised:
            read_record(str(path), listed=True)
        assert raised.value.problem == "unparseable" and raised.value.mtime == pytest.approx(old)
        assert "truncated JSON" in raised.value.reason


@pytest.mark.parametrize(
    "text",
    [
        '{"a": {"b": 1}, "c": [1, 2.5, null, true]}',
        ' {"a": 1}',  # leading whitespace
        '{"a": 1}\n\t ',  # trailing JSON whitespace
        '{"a": 1} x',  # extra data
        '{"a": 1}\x0b',  # not JSON whitespace
        '{"a": ',  # cut
        '{"a": "unterminated',
        "",
        "[1, 2]",
        "NaN",
    ],
)
def test_decode_json_is_the_decoder_on_any_text(text):
    decoder = json.JSONDecoder()

    def answer(fn):
        try:
            return repr(fn(text))
        except json.JSONDecodeError as error:
            return ("error", error.msg, error.pos)

    assert answer(decode_json) == answer(decoder.decode)


def test_decode_json_revives_bytes_as_the_records_hold_them():
    text = '{"input": {"__type": "Uint8Array", "data": "ZGV2bFs1XQ=="}, "other": {"__type": "Uint8Array"}}'
    assert decode_json(text) == {"input": b"devl[5]", "other": {"__type": "Uint8Array"}}
    spelled = '{"input": {"__type": "Uint8\\u0041rray", "data": "AAE="}}'  # an escape spells the type
    assert decode_json(spelled) == {"input": b"\x00\x01"}
