"""9. The store at size: what writing real spans costs into a store that already holds 10^7.

The load is real workflow spans (what ``wft export`` sends for the harness's world-local data),
copied under fresh, random trace and span ids and fresh run ids, as real traffic has them (the
``ingest`` section's copies keep most of each id, so their index keys arrive nearly in order).
Each batch is ~2,800 spans of 40 copies (440 traces), prepared as the decoder process prepares
them (``prepare_spans``) and written as the writer writes them (``Store.write`` and a commit, with
the writer's 32 MiB page cache).

Cost is the CPU time of the write (user + system of this process, whose page reads from the OS
cache count) per span, over batches 3..12. Baseline: the same batches into an empty store, in the
same run. The full store's ``span_index`` is filled with 10^7 rows of random keys first (inserted
in key order, so filling is quick); the write pays for the B-tree's depth and for leaf pages that
are no longer in the page cache.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

from collector.otlp import decode_request, records_from
from collector.store import Store, prepare_spans

from .overload import exported_request

FULL = 10_000_000
BATCHES = 12
COPIES = 40
TARGET = 1.3
_PREFILL = "INSERT INTO span_index VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"


def _batches(harness_out: Path) -> list[list]:
    request = decode_request(exported_request(harness_out / "local-data"), "application/x-protobuf")
    base, _, _ = records_from(request)
    rnd = random.Random(20261130)
    made = 0

    def copy() -> list:
        nonlocal made
        made += 1
        traces: dict[str, str] = {}
        out = []
        for s in base:
            attributes = dict(s.attributes)
            run = attributes.get("workflow.run.id")
            if isinstance(run, str):
                attributes["workflow.run.id"] = f"{run}-{made}"
            trace = traces.setdefault(s.trace_id, f"{rnd.getrandbits(128):032x}")
            out.append(
                dataclasses.replace(s, trace_id=trace, span_id=f"{rnd.getrandbits(64):016x}", attributes=attributes)
            )
        return out

    return [[s for _ in range(COPIES) for s in copy()] for _ in range(BATCHES)]


def _prefill(conn: sqlite3.Connection, rows: int) -> None:
    rnd = random.Random(7)
    keys = sorted((f"{rnd.getrandbits(128):032x}", f"{rnd.getrandbits(64):016x}") for _ in range(rows))
    conn.execute("BEGIN")
    for start in range(0, rows, 200_000):
        conn.executemany(
            _PREFILL,
            [(t, s, "wrun_fill", 1, 2, "step", 0, 0, "otlp", 0, 1, 0) for t, s in keys[start : start + 200_000]],
        )
    conn.execute("COMMIT")


def _write_cost(path: Path, batches: list[list], prefill: int) -> tuple[float, int]:
    store = Store(path)
    conn = store.connect()
    if prefill:
        _prefill(conn, prefill)
        conn.close()
        conn = store.connect()
    conn.execute("PRAGMA cache_size=-32768")  # the writer's
    prepared = [prepare_spans(b) for b in batches]
    cpu = []
    for p in prepared:
        gc.collect()
        started = time.process_time()
        conn.execute("BEGIN")
        Store.write(conn, p)
        conn.execute("COMMIT")
        cpu.append(time.process_time() - started)
    conn.close()
    spans = sum(len(b) for b in batches[2:])
    return sum(cpu[2:]) / spans * 1e6, path.stat().st_size >> 20


def run(harness_out: Path) -> list[dict]:
    tmp = Path(tempfile.mkdtemp(prefix="wft-bench-size-"))
    try:
        batches = _batches(harness_out)
        empty, _ = _write_cost(tmp / "empty.sqlite3", batches, 0)
        full, mib = _write_cost(tmp / "full.sqlite3", batches, FULL)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = full / empty
    spans = sum(len(b) for b in batches)
    return [
        {
            "benchmark": f"9. store write of real spans (random ids, {spans:,} spans in {BATCHES} batches) into a store"
            f" whose index holds {FULL:,} spans ({mib:,} MiB)",
            "ours": f"{full:.1f} µs CPU a span",
            "baseline": f"{empty:.1f} µs CPU a span into an empty store",
            "ratio": f"{ratio:.2f}×",
            "target": f"≤ {TARGET}× the empty store",
            "verdict": "met" if ratio <= TARGET else f"**missed** by {ratio / TARGET:.2f}×",
        }
    ]
