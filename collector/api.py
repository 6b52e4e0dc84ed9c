"""The JSON API: ``/api/runs``, ``/api/runs/{run_id}``, ``/api/traces/{trace_id}``, ``/metrics``.

Answers are strict JSON (RFC 8259): the edge stores NaN and ±Infinity as the strings the OTLP-JSON
mapping uses, and a value that still is one (a store written before that) is sent as that string
too, never as a bare ``NaN`` that ``JSON.parse`` refuses. A query parameter out of range is a 400.

Runs the world tailer could not read (an event record that stays unreadable, or a run whose record
says it ran while its event log reads empty) are named, not hidden: such a run has ``problems`` (a
healthy one has no such field, as in ``wft runs --json``), ``/api/runs`` says how many there are and
which (``unreadable``, on every page while there are any, also runs of which nothing reached the
store), and ``/api/runs/{id}`` answers such a run's 404 with its ``problems`` too.

``/api/runs/{id}/waterfall`` of an ended run is sent as kept (``WaterfallCache``) while nothing it
is built from changed; its ``nowNs`` then says when it was built (an ended run's page does not use it).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

import orjson
from aiohttp import web

from .metrics import CONTENT_TYPE, Metrics
from .queries import (
    TRACE_ID,
    QueryError,
    finite,
    list_runs,
    lookup_run,
    run_events,
    run_view,
    span_detail,
    trace_spans,
)
from .run_analysis import GapScan, analyse_run
from .settings import SettingsError, parse_duration
from .store import Store, paused_gc
from .waterfall import build_waterfall, ended_run_stamp

__all__ = ["Api"]

_STATUSES = {"pending", "running", "completed", "failed", "cancelled"}
#: one path segment, matched percent-encoded: a run id may hold any character ("{", "/" included),
#: which aiohttp's default pattern would refuse once decoded
SEGMENT = "[^/]+"

#: How many unreadable runs ``/api/runs`` names (``unreadable.count`` says how many there are).
_LISTED_UNREADABLE = 20

#: The bytes of ended runs' waterfalls kept as sent (``WaterfallCache``): a 10,000-step run's is ~3 MB.
WATERFALL_CACHE_BYTES = 32 << 20

P = ParamSpec("P")
R = TypeVar("R")


class Api:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        trace_url_template: str | None = None,
        problems: Callable[[], Mapping[str, str]] | None = None,
    ) -> None:
        """``problems``: the runs the world tailer could not read, run id → why (``Follower.problems``)."""
        self.store = store
        self.metrics = metrics
        self.problems = problems or dict
        self.trace_url_template = trace_url_template  # ``--trace-url-template``: runs get a ``traceUrl``
        self.gap_scan = GapScan(metrics)  # the wft_reconcile_* metrics, brought up to date on each scrape
        self.waterfalls = WaterfallCache(WATERFALL_CACHE_BYTES)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/runs", self.runs),
            web.get(f"/api/runs/{{run_id:{SEGMENT}}}", self.run),
            web.get(f"/api/traces/{{trace_id:{SEGMENT}}}", self.trace),
            web.get(f"/api/runs/{{run_id:{SEGMENT}}}/waterfall", self.waterfall),
            web.get(f"/api/runs/{{run_id:{SEGMENT}}}/analysis", self.analysis),
            web.get(f"/api/runs/{{run_id:{SEGMENT}}}/events", self.events),
            web.get(f"/api/spans/{{trace_id:{SEGMENT}}}/{{span_id:{SEGMENT}}}", self.span),
            web.get(f"/api/lookup/{{ident:{SEGMENT}}}", self.lookup),
            web.get("/metrics", self.prometheus),
        ]

    async def _read(
        self, query: Callable[Concatenate[sqlite3.Connection, P], R], *args: P.args, **kwargs: P.kwargs
    ) -> R:
        """``query(connection, …)`` in a worker thread, on that thread's read connection (without
        cyclic garbage collection while it runs: ``store.paused_gc``)."""

        def read() -> R:
            with paused_gc():
                return query(self.store.reader(), *args, **kwargs)

        return await asyncio.to_thread(read)

    async def runs(self, request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status")
        if status and status not in _STATUSES:
            return _bad(f"status: expected one of {', '.join(sorted(_STATUSES))}")
        try:
            limit = int(q.get("limit", "50"))
        except ValueError:
            return _bad("limit: expected a whole number")
        if not 1 <= limit <= 500:
            return _bad("limit: expected 1 to 500")
        stuck_s = None
        if q.get("stuck"):
            try:
                stuck_s = parse_duration(q["stuck"])
            except SettingsError:
                return _bad("stuck: expected a duration such as 90s, 5m, 2h or 1d")
        try:
            page = await self._read(
                list_runs,
                workflow=q.get("workflow"),
                status=status,
                since=q.get("since"),
                until=q.get("until"),
                cursor=q.get("cursor"),
                limit=limit,
                stuck_s=stuck_s,
                trace_url_template=self.trace_url_template,
            )
        except QueryError as error:
            return _bad(str(error))
        except (OverflowError, ValueError):  # a time or cursor past what SQLite's integers hold
            return _bad("since, until or cursor: out of range")
        problems = self.problems()
        if problems:
            for run in page["data"]:
                if run["runId"] in problems:
                    run["problems"] = _problems(problems, run["runId"])
            named = sorted(problems.items(), reverse=True)[:_LISTED_UNREADABLE]  # newest run ids first
            page["unreadable"] = {"count": len(problems), "runs": [{"runId": r, "problem": p} for r, p in named]}
        return _json(page)

    def _mark(self, run: dict[str, Any]) -> None:
        """``problems`` on a run the world tailer could not read (none on a healthy one)."""
        problems = _problems(self.problems(), run["runId"])
        if problems:
            run["problems"] = problems

    def _missing_run(self, run_id: str) -> web.Response:
        problems = _problems(self.problems(), run_id)
        if problems:
            error = f"run {run_id!r} could not be read from the world: {problems[0]}"
            return _json({"error": error, "problems": problems}, status=404)
        return _json({"error": f"no run {run_id!r} in the store"}, status=404)

    async def run(self, request: web.Request) -> web.Response:
        view = await self._read(run_view, request.match_info["run_id"], trace_url_template=self.trace_url_template)
        if view is None:
            return self._missing_run(request.match_info["run_id"])
        self._mark(view["run"])
        analysis = await self._read(analyse_run, request.match_info["run_id"])
        view["reconciliation"] = analysis["reconciliation"] if analysis else None
        view["timeBreakdown"] = analysis["timeBreakdown"] if analysis else None
        return _json(view)

    async def analysis(self, request: web.Request) -> web.Response:
        """The run's reconciliation and time breakdown alone (what the run page and ``wft reconcile``
        read; ``/api/runs/{id}`` has them too, beside every span). ``grace``: a duration (default 30s)."""
        try:
            grace_s = parse_duration(request.query.get("grace", "30s"))
        except SettingsError:
            return _bad("grace: expected a duration such as 0s, 30s or 5m")
        found = await self._read(analyse_run, request.match_info["run_id"], grace_ns=int(grace_s * 1e9))
        if found is None:
            return _json({"error": f"no events of run {request.match_info['run_id']!r} in the store"}, status=404)
        return _json(found)

    async def trace(self, request: web.Request) -> web.Response:
        trace_id = request.match_info["trace_id"]
        if not TRACE_ID.match(trace_id):
            return _bad("trace id: expected 32 hex characters")
        spans = await self._read(trace_spans, trace_id)
        if not spans:
            return _json({"error": f"no spans for trace {trace_id}"}, status=404)
        return _json({"traceId": trace_id.lower(), "spans": spans})

    async def waterfall(self, request: web.Request) -> web.Response:
        run_id = request.match_info["run_id"]
        problems = _problems(self.problems(), run_id)
        body = await self._read(self._waterfall_body, run_id, problems)
        if body is None:
            return self._missing_run(run_id)
        return web.Response(body=body, content_type="application/json")

    def _waterfall_body(self, conn: sqlite3.Connection, run_id: str, problems: list[str]) -> bytes | None:
        """The run page's JSON: an ended run's as kept while what it is built from is unchanged
        (``ended_run_stamp``: a few index lookups instead of decoding and drawing 20k spans), else
        built, and kept when the run has ended. Built and stamped in one read transaction, so a
        write in between cannot leave a stamp newer than the body it vouches for."""
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN")
        try:
            kept = self.waterfalls.get(run_id)
            if kept is not None and kept.problems == problems:
                if ended_run_stamp(conn, run_id, kept.traces) == kept.stamp:
                    return kept.body
            built = build_waterfall(conn, run_id, trace_url_template=self.trace_url_template)
            if built is None:
                return None
            if problems:
                built.view["run"]["problems"] = problems
            body = finite_dumps(built.view)
            stamp = ended_run_stamp(conn, run_id, built.traces)
            if stamp is not None:
                self.waterfalls.put(run_id, KeptWaterfall(stamp, built.traces, problems, body))
            return body
        finally:
            if own and conn.in_transaction:
                conn.execute("COMMIT")

    async def events(self, request: web.Request) -> web.Response:
        try:
            limit = min(max(int(request.query.get("limit", "200")), 1), 1000)
        except ValueError:
            return _bad("limit: expected a whole number")
        return _json(
            await self._read(run_events, request.match_info["run_id"], after=request.query.get("cursor"), limit=limit)
        )

    async def span(self, request: web.Request) -> web.Response:
        detail = await self._read(span_detail, request.match_info["trace_id"], request.match_info["span_id"])
        if detail is None:
            return _json({"error": "no such span"}, status=404)
        return _json(detail)

    async def lookup(self, request: web.Request) -> web.Response:
        """A run id or a trace id → the run it belongs to (for search and deep links)."""
        ident = request.match_info["ident"].strip()
        run_id = await self._read(lookup_run, ident)
        if run_id is None:
            return _json({"error": f"no run or trace {ident!r} in the store"}, status=404)
        return _json({"runId": run_id})

    async def prometheus(self, request: web.Request) -> web.Response:
        await self._read(self.gap_scan.scan)
        return web.Response(
            body=await asyncio.to_thread(self.metrics.exposition),  # per-workflow series: not on the loop
            headers={"Content-Type": CONTENT_TYPE, "X-Content-Type-Options": "nosniff"},
        )


class KeptWaterfall:
    """An ended run's waterfall as sent, with what it was built from (``ended_run_stamp`` of
    ``traces``) and the problems it was sent with."""

    __slots__ = ("body", "problems", "stamp", "traces")

    def __init__(self, stamp: tuple[Any, ...], traces: frozenset[str], problems: list[str], body: bytes) -> None:
        self.stamp, self.traces, self.problems, self.body = stamp, traces, problems, body


class WaterfallCache:
    """Ended runs' waterfalls as sent, least recently used dropped first, at most ``max_bytes`` of
    them. A finished run's page is read far more often than it changes: re-reading it is a few
    index lookups (its stamp) instead of decoding every span again (~0.3 s of CPU for 20k spans).
    Shared by the worker threads that answer reads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._kept: OrderedDict[str, KeptWaterfall] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, run_id: str) -> KeptWaterfall | None:
        with self._lock:
            kept = self._kept.get(run_id)
            if kept is not None:
                self._kept.move_to_end(run_id)
            return kept

    def put(self, run_id: str, kept: KeptWaterfall) -> None:
        if len(kept.body) > self.max_bytes // 4:  # one huge run must not empty the cache for itself
            return
        with self._lock:
            old = self._kept.pop(run_id, None)
            if old is not None:
                self._bytes -= len(old.body)
            self._kept[run_id] = kept
            self._bytes += len(kept.body)
            while self._bytes > self.max_bytes:
                _, dropped = self._kept.popitem(last=False)
                self._bytes -= len(dropped.body)


def _problems(problems: Mapping[str, str], run_id: str) -> list[str]:
    found = problems.get(run_id)
    return [found] if found else []


def _bad(message: str) -> web.Response:
    return _json({"error": message}, status=400)


def _json(data: Any, *, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=strict_dumps)


def strict_dumps(data: Any) -> str:
    """JSON that every parser takes: non-finite floats become "NaN", "Infinity", "-Infinity".
    Compact (no blank after ``,`` and ``:``): a run page's answer is a tenth smaller."""
    try:
        return json.dumps(data, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(finite(data), allow_nan=False, separators=(",", ":"))


def finite_dumps(data: Any) -> bytes:
    """``strict_dumps`` of data that holds no NaN or infinity (a waterfall: ``waterfall.build_waterfall``
    makes sure of it), written by orjson: a 20k-span run's answer in ~7 ms of CPU instead of ~40.
    Only for such data: orjson writes a NaN as null, where the API promises "NaN". What orjson
    refuses and ``json`` writes (an int past 64 bits, a lone surrogate, a key that is no string)
    goes the ``strict_dumps`` way; the JSON text differs only in escapes (orjson writes UTF-8)."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return strict_dumps(data).encode()
