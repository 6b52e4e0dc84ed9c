"""A stored run's reconciliation and time breakdown (``telemetry.reconcile``, ``telemetry.timing``),
and the scan behind the ``wft_reconcile_*`` metrics.

The analyses are the library's pure functions; this module only reads what they need from the
store: the run's events (type, correlation id, time, step name; the traceparent of ``run_created``)
and its stitched app spans with just the attributes they read (``queries.own_app_rows``: rows for
the app's spans alone, as ``json_extract`` would give them). Cost: one run's events and spans.

**Metrics.** ``GapScan`` keeps, at scrape time, which finished runs have gaps: each scrape reads the
runs written since the previous one (in ``updated_ns`` order, at most ``batch`` of them, so the
first scrape after a start works through a large store over several scrapes), once they have been
quiet for the grace period, and reconciles those that ended. Cost per scrape: the runs that changed.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from typing import Any, Final

from telemetry.reconcile import DEFAULT_GRACE_NS, reconcile
from telemetry.runfacts import READ_ATTRIBUTES, AppSpan, LogEvent, carries_traceparent
from telemetry.timing import breakdown
from telemetry.world import TERMINAL_STATUSES

from .metrics import Metrics
from .queries import own_app_rows

__all__ = ["GapScan", "analyse_run", "load_run"]

log = logging.getLogger(__name__)

_EVENTS: Final = (
    "SELECT event_type, correlation_id, created_ns,"
    " CASE WHEN json_valid(data) THEN json_extract(data, '$.stepName') END,"
    " CASE WHEN event_type = 'run_created' AND json_valid(data)"
    " THEN json_extract(data, '$.executionContext.traceCarrier.traceparent') END"
    " FROM run_events WHERE run_id = ? ORDER BY event_id"
)
_SPAN_COLUMNS: Final = ", ".join(
    ["start_ns, end_ns"]
    + [f"json_extract(attributes, '$.\"{name}\"') AS a{i}" for i, name in enumerate(READ_ATTRIBUTES)]
)
#: the index the scan reads runs by (created on first use: the runs table's other indexes order by start)
_BY_UPDATED: Final = "CREATE INDEX IF NOT EXISTS runs_by_updated ON runs (updated_ns, run_id)"


def load_run(conn: sqlite3.Connection, run_id: str) -> tuple[list[LogEvent], list[AppSpan], bool]:
    """The run's events in log order, its app spans, and whether it stored a traceparent."""
    events: list[LogEvent] = []
    instrumented = False
    for kind, correlation, at, step_name, traceparent in conn.execute(_EVENTS, (run_id,)):
        at = round(at / 1_000_000) * 1_000_000  # world times are whole ms; a stored float-made ns is ±64 off
        events.append(LogEvent(kind, correlation, at, step_name if isinstance(step_name, str) else None))
        if traceparent is not None:
            instrumented = instrumented or carries_traceparent({"traceCarrier": {"traceparent": traceparent}})
    spans = [
        AppSpan(
            row["o_trace"],
            row["o_span"],
            row["o_parent"] or "",
            row["o_name"],
            row["start_ns"],
            row["end_ns"],
            {name: row[f"a{i}"] for i, name in enumerate(READ_ATTRIBUTES) if row[f"a{i}"] is not None},
        )
        for row in own_app_rows(conn, run_id, _SPAN_COLUMNS)
    ]
    return events, spans, instrumented


def analyse_run(
    conn: sqlite3.Connection, run_id: str, *, now_ns: int | None = None, grace_ns: int = DEFAULT_GRACE_NS
) -> dict[str, Any] | None:
    """``{"runId", "reconciliation", "timeBreakdown"}`` for a stored run; None if the store has no
    event of it (nothing to compare with, no timeline)."""
    events, spans, instrumented = load_run(conn, run_id)
    if not events:
        return None
    now = time.time_ns() if now_ns is None else now_ns
    found = reconcile(run_id, events, spans, instrumented=instrumented, now_ns=now, grace_ns=grace_ns)
    timing = breakdown(run_id, events, spans, now_ns=now)
    return {
        "runId": run_id,
        "reconciliation": found.to_json(),
        "timeBreakdown": timing.to_json() if timing is not None else None,
    }


class GapScan:
    """Which finished runs have instrumentation gaps, brought up to date by ``scan`` (see the module).

    Only runs with gaps are remembered (their ids), so memory follows the gaps, not the store.
    Counts since the process started; a run checked again after a late write moves in or out.
    """

    def __init__(self, metrics: Metrics, *, grace_ns: int = DEFAULT_GRACE_NS, batch: int = 2000) -> None:
        self.metrics = metrics
        self.grace_ns = grace_ns
        self.batch = batch
        self.after: tuple[int, str] = (0, "")  # (updated_ns, run_id) of the last run read
        self.with_gaps: set[str] = set()
        self._lock = threading.Lock()
        self._indexed = False

    def scan(self, conn: sqlite3.Connection, *, now_ns: int | None = None) -> None:
        """Read the runs that went quiet since the last scan; a scan already under way is not repeated."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._scan(conn, now_ns)
        except sqlite3.Error as error:  # a store that cannot be read now: the metrics keep their last values
            log.warning("reconciliation metrics not updated: the store could not be read (%s)", error)
        finally:
            self._lock.release()

    def _scan(self, conn: sqlite3.Connection, now_ns: int | None) -> None:
        if not self._indexed:
            try:
                conn.execute(_BY_UPDATED)
            except sqlite3.Error:  # a read-only or full store: read without it (slower, still right)
                pass
            self._indexed = True
        now = time.time_ns() if now_ns is None else now_ns
        updated, last_id = self.after
        rows = conn.execute(
            "SELECT run_id, updated_ns, status FROM runs WHERE (updated_ns > ? OR (updated_ns = ? AND run_id > ?))"
            " AND updated_ns <= ? ORDER BY updated_ns, run_id LIMIT ?",
            (updated, updated, last_id, now - self.grace_ns, self.batch),
        ).fetchall()
        for run_id, updated_ns, status in rows:
            self.after = (updated_ns, run_id)
            if status not in TERMINAL_STATUSES:
                continue  # a live run: checked when its end is written (that write moves it on again)
            events, spans, instrumented = load_run(conn, run_id)
            found = reconcile(run_id, events, spans, instrumented=instrumented, now_ns=now, grace_ns=self.grace_ns)
            self.metrics.reconcile_runs_checked += 1
            if found.gaps and run_id not in self.with_gaps:
                self.with_gaps.add(run_id)
                self.metrics.reconcile_gap_runs += 1
            elif not found.gaps:
                self.with_gaps.discard(run_id)
        self.metrics.reconcile_runs_with_gaps = len(self.with_gaps)
