"""``wft reconcile``: which runs' event logs and app spans disagree (``telemetry.reconcile``).

Two sources for the app's spans:

- ``--store FILE``: the collector's store file (read only, while it runs too), with the world
  options for the event logs: the world is the authority on what ran;
- ``--collector URL``: a running collector (``wft serve``), which compares its own copy of the
  logs with the spans it received: this command pages through ``/api/runs`` and asks
  ``/api/runs/{id}/analysis`` for each run.

It prints one line per gap (run, workflow, status, what disagrees), then a summary, and exits 1 if
any run has a gap, or if a run's records could not be read (named on stderr); 0 otherwise. Not
being able to check at all (no store, collector unreachable, a bad option) is a one-line error,
exit 2. Items younger than ``--grace`` are not judged (spans are exported in batches, after the
events they describe): they are counted as pending.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sqlite3
import sys
import time
import urllib.parse
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from ..backends.records import UnreadableRun
from ..errors import UnreadableEventsError
from ..reading import all_runs, run_logs
from ..reconcile import reconcile
from ..runfacts import READ_ATTRIBUTES, AppSpan, LogEvent, carries_traceparent
from ..runtrace import SCOPE, short_name
from ..span_blobs import read_blob
from ..world import WorkflowRun
from .common import CliError, Handler, add_world_options, run_async, world_from

__all__ = ["Findings", "configure"]

_STATUSES = ("pending", "running", "completed", "failed", "cancelled")
#: the blobs of a run in the collector's store (layout 2, ``collector.store``; their format is
#: ``telemetry.span_blobs``); a span sent again leaves a dead copy in an older blob, told by the
#: index row pointing elsewhere
_STORE_BLOBS = "SELECT blob_id, dead, data FROM blobs WHERE run_id = ? ORDER BY blob_id"
_STORE_LIVE = "SELECT 1 FROM span_index WHERE trace_id = ? AND span_id = ? AND blob_id = ? AND pos = ?"
_CONCURRENCY = 8  # analyses asked of a collector at once
_LOG_CHUNK = 256  # runs whose logs are read together (``run_logs``)


@dataclass
class Findings:
    """What a check found: runs with gaps (each with its reconciliation as JSON), and counts."""

    checked: int = 0
    not_instrumented: int = 0
    pending: int = 0
    runs: list[dict[str, Any]] = field(default_factory=list)  # runs with gaps
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run id, why it could not be read)

    def add(self, run_id: str, workflow: str | None, status: str | None, reconciliation: dict[str, Any]) -> None:
        self.checked += 1
        self.pending += int(reconciliation.get("pending") or 0)
        if not reconciliation.get("instrumented"):
            self.not_instrumented += 1
        if reconciliation.get("gaps"):
            self.runs.append(
                {"runId": run_id, "workflowName": workflow, "status": status, "reconciliation": reconciliation}
            )

    @property
    def gaps(self) -> int:
        return sum(len(run["reconciliation"]["gaps"]) for run in self.runs)


def _grace_seconds(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise CliError(f"--grace: not a duration: {text!r} (examples: 0, 30s, 5m)")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def _open_store(path: str) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise CliError(f"--store: no such file: {path}")
    try:
        conn = sqlite3.connect(f"file:{urllib.parse.quote(str(Path(path).resolve()))}?mode=ro", uri=True)
        conn.execute("SELECT run_id, dead, data FROM blobs LIMIT 0")
    except sqlite3.Error as error:
        raise CliError(f"--store: {path} is not a collector store ({error})") from None
    return conn


def _store_spans(conn: sqlite3.Connection, run_id: str) -> list[AppSpan]:
    spans = []
    for blob_id, dead, data in conn.execute(_STORE_BLOBS, (run_id,)).fetchall():
        for pos, item in enumerate(read_blob(data)[1]):
            trace_id, span_id, parent, name, _, start, end, _, _, attributes, _, _, _, scope = item[:14]
            if scope == SCOPE.name or (
                dead and not conn.execute(_STORE_LIVE, (trace_id, span_id, blob_id, pos)).fetchone()
            ):
                continue
            read = {name: attributes[name] for name in READ_ATTRIBUTES if attributes.get(name) is not None}
            spans.append(AppSpan(trace_id, span_id, parent or "", name, start, end, read))
    return spans


async def from_world(world: Any, conn: sqlite3.Connection, args: argparse.Namespace, grace_ns: int) -> Findings:
    """Each run's log from the world, its app spans from the store. Logs are read a chunk of runs
    at a time (``run_logs``: one statement per chunk on world-postgres, several reads at once on
    world-vercel), and the runs are checked in the order they were listed."""
    found = Findings()
    now = time.time_ns()

    async def check(chunk: list[WorkflowRun]) -> None:
        """Each log checked as it comes (a chunk of 10^4-step runs' logs held at once would be
        gigabytes); the findings, small, added in the order the runs were listed."""
        checked: dict[str, dict[str, Any] | str] = {}  # run id → its reconciliation, or why it was skipped
        async for run, events in run_logs(world, chunk, resolve_data="none"):
            if isinstance(events, UnreadableEventsError):
                checked[run.run_id] = f"unreadable event record {events.path}: {events.reason}"
                continue
            try:
                spans = _store_spans(conn, run.run_id)
            except sqlite3.Error as error:
                raise CliError(f"--store: cannot read the app's spans: {error}") from None
            result = reconcile(
                run.run_id,
                [LogEvent.of(event) for event in events],
                spans,
                instrumented=carries_traceparent(run.execution_context),
                now_ns=now,
                grace_ns=grace_ns,
            )
            checked[run.run_id] = result.to_json()
        for run in chunk:
            reconciliation = checked[run.run_id]
            if isinstance(reconciliation, str):
                found.skipped.append((run.run_id, reconciliation))
            else:
                found.add(run.run_id, run.workflow_name, run.status, reconciliation)

    try:
        chunk: list[WorkflowRun] = []
        taken = 0
        async for run in all_runs(world, status=args.status, workflow_name=args.workflow, resolve_data="none"):
            if args.limit is not None and taken >= args.limit:
                break
            taken += 1
            if isinstance(run, UnreadableRun):
                found.skipped.append((run.run_id, f"unreadable run record {run.path}: {run.reason}"))
                continue
            chunk.append(run)
            if len(chunk) >= _LOG_CHUNK:
                await check(chunk)
                chunk = []
        await check(chunk)
    finally:
        await world.close()
        conn.close()
    return found


def _shown(url: str) -> str:
    """The URL without credentials, query or fragment (it goes into error messages)."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


async def _get(session: aiohttp.ClientSession, url: str, params: dict[str, str]) -> dict[str, Any] | None:
    """The JSON answer; None for a 404. Anything else that is not a 200 is a CliError."""
    try:
        async with session.get(url, params=params) as response:
            if response.status == 404:
                return None
            if response.status == 401:
                raise CliError("the collector wants a token: pass --token or set WFT_TOKEN")
            body = await response.text()
            if response.status != 200:
                raise CliError(f"{_shown(url)}: HTTP {response.status}: {body[:200].strip()}")
            answer: dict[str, Any] = json.loads(body)
            return answer
    except (aiohttp.ClientError, TimeoutError) as error:
        raise CliError(f"cannot reach the collector at {_shown(url)}: {error or type(error).__name__}") from None
    except json.JSONDecodeError:
        raise CliError(f"{_shown(url)}: the answer is not JSON (is this a wft collector?)") from None


async def from_collector(url: str, token: str | None, args: argparse.Namespace, grace_s: float) -> Findings:
    """Page through the collector's runs (newest first) and ask it for each one's analysis."""
    base = url.rstrip("/")
    if urllib.parse.urlsplit(base).scheme not in ("http", "https"):
        raise CliError(f"--collector: not an http(s) URL: {_shown(url)}")
    found = Findings()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    gate = asyncio.Semaphore(_CONCURRENCY)

    async def check(session: aiohttp.ClientSession, run: dict[str, Any]) -> tuple[dict[str, Any], Any]:
        async with gate:
            path = f"{base}/api/runs/{urllib.parse.quote(run['runId'], safe='')}/analysis"
            return run, await _get(session, path, {"grace": f"{grace_s}s"})

    async with aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=120)) as session:
        cursor: str | None = None
        seen = 0
        while True:
            params = {"limit": str(500 if args.limit is None else max(1, min(500, args.limit - seen)))}
            params.update({k: v for k, v in (("workflow", args.workflow), ("status", args.status)) if v})
            if cursor:
                params["cursor"] = cursor
            page = await _get(session, f"{base}/api/runs", params)
            if page is None:
                raise CliError(f"{_shown(base)}/api/runs: not found (is this a wft collector?)")
            runs = page.get("data") or []
            seen += len(runs)
            for run, analysis in await asyncio.gather(*(check(session, run) for run in runs)):
                if analysis is None:  # no events of it in the store: nothing to compare
                    continue
                found.add(run["runId"], run.get("workflowName"), run.get("status"), analysis["reconciliation"])
            cursor = page.get("cursor")
            if not page.get("hasMore") or not cursor or (args.limit is not None and seen >= args.limit):
                return found


def report(found: Findings, *, as_json: bool, grace: str) -> int:
    for run_id, why in found.skipped:
        print(f"wft reconcile: run {run_id}: {why}", file=sys.stderr)
    if as_json:
        json.dump(
            {
                "checked": found.checked,
                "withGaps": len(found.runs),
                "gaps": found.gaps,
                "notInstrumented": found.not_instrumented,
                "pending": found.pending,
                "skipped": [{"runId": r, "reason": why} for r, why in found.skipped],
                "runs": found.runs,
            },
            sys.stdout,
            indent=2,
        )
        sys.stdout.write("\n")
    else:
        for run in found.runs:
            head = f"{run['runId']}  {short_name(run['workflowName'] or '?')}  {run['status'] or '?'}"
            for gap in run["reconciliation"]["gaps"]:
                print(f"{head}  {gap['message']}")
        summary = f"{found.checked} runs checked: {len(found.runs)} with gaps ({found.gaps} gaps)"
        if found.not_instrumented:
            summary += f", {found.not_instrumented} not instrumented (no traceparent, no app span)"
        if found.pending:
            summary += f", {found.pending} too recent to judge (--grace {grace})"
        if found.skipped:
            summary += f", {len(found.skipped)} unreadable"
        print(summary)
    return 1 if found.runs or found.skipped else 0


def configure(parser: argparse.ArgumentParser) -> Handler:
    add_world_options(parser)
    source = parser.add_argument_group("the app's spans (one of)")
    source.add_argument("--store", metavar="FILE", help="the collector's store file, e.g. wft-data/store.sqlite3")
    source.add_argument(
        "--collector", metavar="URL", help="a running collector (wft serve), e.g. http://127.0.0.1:4318"
    )
    parser.add_argument("--token", help="the collector's token, if it has one (default: WFT_TOKEN)")
    parser.add_argument("--workflow", metavar="NAME", help="only runs of this workflow")
    parser.add_argument("--status", choices=_STATUSES, help="only runs in this status")
    parser.add_argument("--limit", type=int, metavar="N", help="only the first N runs listed (newest first)")
    parser.add_argument(
        "--grace", default="30s", help="judge only what ended at least this long ago (default 30s; 0 judges all)"
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")

    def handle(args: argparse.Namespace) -> int:
        if bool(args.store) == bool(args.collector):
            raise CliError("pass --store FILE (with the world options) or --collector URL")
        if args.limit is not None and args.limit < 1:
            raise CliError("--limit: expected a positive number")
        grace_s = _grace_seconds(args.grace)
        check: Callable[[], Coroutine[Any, Any, Findings]]
        if args.collector:
            if args.world or args.dir or args.url:
                raise CliError("--collector compares its own copy of the event logs: world options go with --store")
            token = args.token or os.environ.get("WFT_TOKEN") or None

            def check() -> Coroutine[Any, Any, Findings]:
                return from_collector(args.collector, token, args, grace_s)

        else:
            conn = _open_store(args.store)
            try:
                world = world_from(args)
            except CliError:
                conn.close()
                raise

            def check() -> Coroutine[Any, Any, Findings]:
                return from_world(world, conn, args, int(grace_s * 1e9))

        return report(run_async(check), as_json=args.json, grace=args.grace)

    return handle
