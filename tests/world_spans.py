"""Real world-local logs turned into what the collector stores, the way its tailer does it: spans
built by the runtrace, encoded as OTLP and decoded by the collector's own decoder, event rows and
run info. Prefixes of a real log stand for the run at that moment of its life (the world wrote
exactly those events first), which is how the tests see live runs without a live app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

from collector.otlp import SpanRecord, records_from
from collector.store import EventRow, RunInfo, Store
from telemetry.backends.local import LocalWorld
from telemetry.payloads import to_jsonable
from telemetry.reading import event_log
from telemetry.runtrace import build_run_trace

CUT = Path(__file__).parent / "fixtures" / "local-cut"
SCENARIOS: dict[str, dict[str, Any]] = json.loads((CUT / "summary.json").read_text())


def ns(moment: Any) -> int:
    return round(moment.timestamp() * 1_000_000) * 1000  # exact: world times are whole milliseconds


class RunLog:
    """One run of a world-local data dir: its record and its whole event log."""

    def __init__(self, data_dir: Path, run_id: str) -> None:
        world = LocalWorld(data_dir)

        async def read() -> tuple[Any, list[Any]]:
            try:
                return await world.runs.get(run_id), await event_log(world, run_id)
            finally:
                await world.close()

        self.run_id = run_id
        self.run, self.events = asyncio.run(read())

    def index(self, event_type: str, nth: int = 0) -> int:
        """The position of the ``nth`` event of a type (to cut the log just after it)."""
        return [i for i, e in enumerate(self.events) if e.event_type == event_type][nth]

    def records(self, upto: int | None = None, *, source: str = "world") -> list[SpanRecord]:
        """The spans of the log's first ``upto + 1`` events (all of them by default), as stored."""
        events = self.events if upto is None else self.events[: upto + 1]
        trace = build_run_trace(self.run_id, events, self.run)
        records = records_from(encode_spans(trace.spans))[0] if trace.spans else []
        for record in records:
            record.source = source
        return records

    def event_rows(self, start: int = 0, upto: int | None = None) -> list[EventRow]:
        return [
            EventRow(
                e.run_id,
                e.event_id,
                e.event_type,
                e.correlation_id,
                ns(e.created_at),
                json.dumps(to_jsonable(e.event_data), default=str) if e.event_data else None,
            )
            for e in self.events[start : None if upto is None else upto + 1]
        ]

    def info(self, status: str | None = None) -> RunInfo:
        return RunInfo(self.run_id, self.run.workflow_name, status or self.run.status, ns(self.run.created_at))


def cut_run(scenario: str) -> RunLog:
    return RunLog(CUT, SCENARIOS[scenario]["runId"])


def commit(
    store: Store, spans: Iterable[SpanRecord] = (), events: Iterable[EventRow] = (), runs: Iterable[RunInfo] = ()
) -> None:
    """One writer commit: write (which folds the batch into its runs' rows), commit (as
    ``collector.writer`` does)."""
    conn = store.connect()
    try:
        conn.execute("BEGIN IMMEDIATE")
        store.write(conn, spans, events, runs)
        conn.execute("COMMIT")
    finally:
        conn.close()


def commit_run(store: Store, log: RunLog, *, source: str = "world") -> None:
    """A whole run as the tailer delivers it (spans, events, run info); with ``source="otlp"``
    as ``wft export`` delivers it: the same spans, nothing else."""
    if source == "world":
        commit(store, log.records(), log.event_rows(), [log.info()])
    else:
        commit(store, log.records(source=source))


def run_row(store: Store, run_id: str) -> dict[str, Any]:
    conn = store.connect()
    try:
        row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        assert row is not None, run_id
        return dict(row)
    finally:
        conn.close()
