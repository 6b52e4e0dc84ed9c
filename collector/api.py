"""The JSON API: ``/api/runs``, ``/api/runs/{run_id}``, ``/api/traces/{trace_id}``, ``/metrics``, ``/healthz``."""

from __future__ import annotations

import asyncio

from aiohttp import web

from .metrics import Metrics
from .queries import TRACE_ID, QueryError, list_runs, lookup_run, run_events, run_view, span_detail, trace_spans
from .store import Store
from .waterfall import waterfall

__all__ = ["Api"]

_STATUSES = {"pending", "running", "completed", "failed", "cancelled"}


class Api:
    def __init__(self, store: Store, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/runs", self.runs),
            web.get("/api/runs/{run_id}", self.run),
            web.get("/api/traces/{trace_id}", self.trace),
            web.get("/api/runs/{run_id}/waterfall", self.waterfall),
            web.get("/api/runs/{run_id}/events", self.events),
            web.get("/api/spans/{trace_id}/{span_id}", self.span),
            web.get("/api/lookup/{ident}", self.lookup),
            web.get("/metrics", self.prometheus),
            web.get("/healthz", self.health),
        ]

    async def _read(self, fn, *args, **kwargs):
        return await asyncio.to_thread(lambda: fn(self.store.reader(), *args, **kwargs))

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
        try:
            page = await self._read(
                list_runs,
                workflow=q.get("workflow"),
                status=status,
                since=q.get("since"),
                until=q.get("until"),
                cursor=q.get("cursor"),
                limit=limit,
            )
        except QueryError as error:
            return _bad(str(error))
        return web.json_response(page)

    async def run(self, request: web.Request) -> web.Response:
        view = await self._read(run_view, request.match_info["run_id"])
        if view is None:
            return web.json_response({"error": f"no run {request.match_info['run_id']!r} in the store"}, status=404)
        return web.json_response(view)

    async def trace(self, request: web.Request) -> web.Response:
        trace_id = request.match_info["trace_id"]
        if not TRACE_ID.match(trace_id):
            return _bad("trace id: expected 32 hex characters")
        spans = await self._read(trace_spans, trace_id)
        if not spans:
            return web.json_response({"error": f"no spans for trace {trace_id}"}, status=404)
        return web.json_response({"traceId": trace_id.lower(), "spans": spans})

    async def waterfall(self, request: web.Request) -> web.Response:
        view = await self._read(waterfall, request.match_info["run_id"])
        if view is None:
            return web.json_response({"error": f"no run {request.match_info['run_id']!r} in the store"}, status=404)
        return web.json_response(view)

    async def events(self, request: web.Request) -> web.Response:
        try:
            limit = min(max(int(request.query.get("limit", "200")), 1), 1000)
        except ValueError:
            return _bad("limit: expected a whole number")
        return web.json_response(
            await self._read(run_events, request.match_info["run_id"], after=request.query.get("cursor"), limit=limit)
        )

    async def span(self, request: web.Request) -> web.Response:
        detail = await self._read(span_detail, request.match_info["trace_id"], request.match_info["span_id"])
        if detail is None:
            return web.json_response({"error": "no such span"}, status=404)
        return web.json_response(detail)

    async def lookup(self, request: web.Request) -> web.Response:
        """A run id or a trace id → the run it belongs to (for search and deep links)."""
        ident = request.match_info["ident"].strip()
        run_id = await self._read(lookup_run, ident)
        if run_id is None:
            return web.json_response({"error": f"no run or trace {ident!r} in the store"}, status=404)
        return web.json_response({"runId": run_id})

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(
            text=self.metrics.render(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})


def _bad(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)
