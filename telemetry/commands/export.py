"""``wft export``: backfill every run of a world to an OTLP collector.

A run whose records cannot be read is skipped, named, and counted, never fatal to the others:
the export ends with a one-line summary of what it skipped and exits 1 if it skipped anything.
So is a run whose record says it ran but whose event log reads empty (``reading.empty_log``):
exported, it would be a run with no spans, which looks like success and is not.
A world-local record still being written (a copy in progress) is retried at the end, until it
reads or its grace period runs out.

Runs share requests in one process as they do in worker processes (``RunBatcher``; a world of
10^5 small runs is not 10^5 POSTs, each gzipped alone): a run is counted once every request
holding its spans was acknowledged, and a refused request counts against exactly the runs with
spans in it, each named (``Delivery``, shared by both paths). After ``GIVE_UP_AFTER`` failed
requests with no run through, the export gives up.

``--run``, ``--workflow``, ``--status``, ``--since``/``--until`` export only some runs: the world is
read through a ``reading.RunSelection`` (one process or many alike); ``--run`` ids are looked up
first, so a mistyped one is an error before anything is sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ..backends import backend_config
from ..backends.records import UnreadableRun
from ..errors import UnreadableEventsError, WorkflowRunNotFoundError, WorkflowWorldError
from ..export import open_sink, run_resource
from ..otlp_encode import OtlpEncoder, RunBatcher
from ..reading import RunSelection, all_runs, count_runs, empty_log, event_log, run_logs, selected, stalled_runs
from ..runtrace import SpanData, build_run_trace
from ..world import Event, WorkflowRun
from .common import (
    RUNTIME,
    CliError,
    Handler,
    add_otlp_protocol_option,
    add_world_options,
    otlp_endpoint,
    otlp_protocol_of,
    parse_moment,
    run_async,
    world_from,
)
from .export_parallel import PARALLEL_KINDS, Delivery, default_jobs, export_in_processes

__all__ = ["Progress", "configure"]

#: Seconds between retries of runs whose log ends at a record still being written.
RETRY_INTERVAL = 0.5
#: Listed runs whose logs one process reads together (``run_logs``): one statement on world-postgres,
#: ``LOGS_IN_FLIGHT`` reads at once on world-vercel, where one run at a time waits out each round trip
LOG_CHUNK = 64


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """One self-rewriting line on a terminal (runs done/total, events/s, ETA); nothing on a
    pipe or file, where only the final summary is printed. Redrawn at most 5 times a second."""

    def __init__(self, stream: TextIO | None = None, *, label: str = "exporting") -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.label = label
        self.total: int | None = None
        self.started = time.monotonic()
        self._drawn = 0.0
        self._width = 0

    def update(self, runs: int, events: int, *, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._drawn < 0.2:
            return
        self._drawn = now
        elapsed = max(now - self.started, 1e-6)
        line = f"{self.label}: {runs}" + (f"/{self.total}" if self.total is not None else "") + " runs"
        line += f", {events / elapsed:,.0f} events/s"
        if self.total and runs:
            line += f", ETA {_clock(elapsed / runs * max(self.total - runs, 0))}"
        self.stream.write("\r" + line.ljust(self._width))
        self._width = len(line)
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()


@dataclass
class _Totals:
    runs: int = 0
    spans: int = 0
    events: int = 0
    errors: int = 0
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (run id, path, reason)

    def skip(self, run_id: str, path: str, reason: str) -> None:
        """The world has already logged the record once, with its path; this keeps the tally."""
        self.skipped.append((run_id, path, reason))

    def summary(self) -> str | None:
        if not self.skipped:
            return None
        run_id, path, reason = self.skipped[0]
        plural = "s" if len(self.skipped) != 1 else ""
        return (
            f"skipped {len(self.skipped)} run{plural} with unreadable records (first: run {run_id}, {path}: {reason})"
        )


def configure(parser: argparse.ArgumentParser) -> Handler:
    add_world_options(parser)
    parser.add_argument(
        "--otlp",
        metavar="URL",
        help="OTLP base URL; /v1/traces is appended over OTLP/HTTP (default: OTEL_EXPORTER_OTLP_ENDPOINT or"
        " http://localhost:4318, :4317 over grpc)",
    )
    add_otlp_protocol_option(parser)
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per OTLP request, retries included (default %(default)s)"
    )
    parser.add_argument(
        "--no-payloads", action="store_true", help="leave decoded inputs/outputs out of span attributes"
    )
    parser.add_argument(
        "--grace",
        type=float,
        metavar="SECONDS",
        help="world-local: how long (by mtime) a record may stay unparseable, being written, before its run "
        "is skipped as unreadable (default 30)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=default_jobs(),
        metavar="N",
        help="world-local/world-postgres: worker processes reading and encoding runs; 1 exports in this process "
        "(default: the CPUs available, %(default)s)",
    )

    chosen = parser.add_argument_group("which runs (all given must hold; default: every run)")
    chosen.add_argument("--run", action="append", default=[], metavar="RUN_ID", help="only this run (repeat for more)")
    chosen.add_argument(
        "--workflow",
        metavar="NAME",
        help="only runs of this workflow: the function (processOrder), the file (src/workflows/order) or the"
        " full id (workflow//./src/workflows/order//processOrder)",
    )
    chosen.add_argument("--status", choices=["pending", "running", "completed", "failed", "cancelled"])
    chosen.add_argument(
        "--since",
        metavar="TIME",
        help="only runs created at or after TIME: ISO-8601 (UTC unless it says), epoch ms, or ago (2h, 7d)",
    )
    chosen.add_argument("--until", metavar="TIME", help="only runs created before TIME (same forms as --since)")

    def selection(args: argparse.Namespace) -> RunSelection:
        if args.workflow is not None and not args.workflow.strip():
            raise CliError("--workflow: empty; give a function name, a file or a full workflow id")
        since = parse_moment(args.since, "--since") if args.since else None
        until = parse_moment(args.until, "--until") if args.until else None
        if since is not None and until is not None and since >= until:
            raise CliError(f"--since {args.since} is not before --until {args.until}: no run can match")
        runs = tuple(dict.fromkeys(r.strip() for r in args.run))
        if any(not r for r in runs):
            raise CliError("--run: empty run id")
        return RunSelection(run_ids=runs, workflow=args.workflow, status=args.status, since=since, until=until)

    def handle(args: argparse.Namespace) -> int:
        if args.timeout <= 0:
            raise CliError(f"--timeout: expected a positive number of seconds, got {args.timeout:g}")
        if args.jobs < 1:
            raise CliError(f"--jobs: expected 1 or more, got {args.jobs}")
        if args.grace is not None and args.grace < 0:
            raise CliError(f"--grace: expected 0 or more seconds, got {args.grace:g}")
        chosen = selection(args)
        endpoint = otlp_endpoint(args.otlp)
        protocol = otlp_protocol_of(args)
        world = world_from(args)
        if args.grace is not None and hasattr(world, "grace"):
            world.grace = max(0.0, args.grace)
        listing = selected(world, chosen)
        sink = open_sink(endpoint, protocol=protocol, timeout=args.timeout)
        resource = run_resource(args.world or "local")
        progress = Progress()
        started = time.monotonic()
        totals = _Totals()
        batcher = RunBatcher(OtlpEncoder(resource), sink.batch_size)  # small runs share a request
        delivery = Delivery(sink, totals)
        unsent: dict[str, tuple[int, int]] = {}  # runs not tallied yet: run id → (spans, events)

        async def post(requests: list[tuple[bytes, int, list[str]]]) -> None:
            """Post filled requests, then tally the runs none of whose spans waits for one."""
            for body, count, runs in requests:
                await delivery.post(body, count, runs)
            held = set(batcher.holding)
            for run_id in [r for r in unsent if r not in held]:
                delivery.settle(run_id, *unsent.pop(run_id))

        async def send(run_id: str, spans: list[SpanData], events: int) -> None:
            """A run's spans into the request being filled; those it fills are posted."""
            unsent[run_id] = (len(spans), events)
            filled = batcher.add(run_id, spans)
            if filled or not spans:  # else the run (and every run not tallied) waits in the request
                await post(filled)

        async def flush() -> None:
            """The request being filled, posted: every run is tallied."""
            last = batcher.flush()
            await post([last] if last is not None else [])

        async def export_run(run: WorkflowRun, read: list[Event] | UnreadableEventsError | None = None) -> bool:
            """Export one run (its log as ``run_logs`` read it, or read here when ``read`` is None);
            False when its log ends at a record still being written."""
            if isinstance(run, UnreadableRun):
                if run.run_id in stalled_runs(world):  # its run file is being written: later
                    return False
                totals.skip(run.run_id, run.path, run.reason)
                return True
            try:
                events = read if read is not None else await event_log(world, run.run_id)
                if isinstance(events, UnreadableEventsError):
                    raise events
            except UnreadableEventsError as error:
                totals.skip(run.run_id, error.path, error.reason)
                return True
            if run.run_id in stalled_runs(world):
                return False
            empty = None if events else await empty_log(world, run)
            if empty is not None:
                where, reason = empty
                totals.skip(run.run_id, where, reason)
                print(f"wft export: run {run.run_id}: {reason} ({where})", file=sys.stderr)
                return True
            trace = build_run_trace(run.run_id, events, run, resource=resource, include_payloads=not args.no_payloads)
            await send(run.run_id, trace.data, len(events))
            return True

        async def retry(waiting: list[WorkflowRun]) -> None:
            """Runs whose log ended at a record being written: read again until each reads
            through or the reader gives up on the record (its grace period, by mtime)."""
            grace = float(getattr(world, "grace", 30.0))
            deadline = time.monotonic() + grace + 5 * RETRY_INTERVAL
            while waiting:
                await asyncio.sleep(RETRY_INTERVAL)
                still: list[WorkflowRun] = []
                for run in waiting:
                    try:
                        fresh: Any = await world.runs.get(run.run_id, resolve_data="all")
                    except WorkflowWorldError:
                        fresh = run
                    if not await export_run(fresh):
                        still.append(fresh)
                    progress.update(totals.runs + len(totals.skipped), totals.events)
                waiting = still
                if waiting and time.monotonic() > deadline:  # a record rewritten for ever, never whole
                    for run in waiting:
                        path = stalled_runs(world).get(run.run_id, "?")
                        totals.skip(run.run_id, path, "still not readable (being written?)")
                        print(f"wft export: run {run.run_id}: {path} is still not readable", file=sys.stderr)
                    return

        async def named_runs() -> None:
            """``--run`` ids not in the world: an error before anything is sent."""
            missing = []
            for run_id in chosen.run_ids:
                try:
                    await world.runs.get(run_id, resolve_data="none")
                except WorkflowRunNotFoundError:
                    missing.append(run_id)
                except WorkflowWorldError:  # there, but unreadable: skipped and counted like any other
                    pass
            if missing:
                shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
                raise CliError(f"--run: no run {shown} in this world (check the id and --dir/--url)", status=RUNTIME)

        async def backfill() -> None:
            try:
                if chosen.run_ids:
                    await named_runs()
                if progress.tty:
                    progress.total = len(chosen.run_ids) if chosen.run_ids else await count_runs(listing)
                waiting: list[WorkflowRun] = []
                config = backend_config(args.world, data_dir=args.dir, url=args.url)
                try:
                    if args.jobs > 1 and config is not None and config.kind in PARALLEL_KINDS:
                        try:
                            waiting = await export_in_processes(
                                listing,
                                config,
                                sink,
                                resource,
                                totals,
                                jobs=args.jobs,
                                include_payloads=not args.no_payloads,
                                on_progress=lambda: progress.update(totals.runs + len(totals.skipped), totals.events),
                            )
                        except WorkflowWorldError:
                            if config.kind == "local":  # a worker's error arrives as words: the layout's is its own
                                from ..backends.local_layout import detect_layout

                                detect_layout(Path(config.data_dir or "."), thorough=True)
                            raise
                    else:

                        async def export_chunk(runs: list[WorkflowRun]) -> None:
                            """A chunk of listed runs, their logs read together (``run_logs``: one
                            statement on world-postgres, several reads at once on world-vercel)."""
                            readable = [run for run in runs if not isinstance(run, UnreadableRun)]
                            for run in runs:
                                if isinstance(run, UnreadableRun) and not await export_run(run):
                                    waiting.append(run)
                            async for run, read in run_logs(world, readable):
                                if not await export_run(run, read):
                                    waiting.append(run)
                                progress.update(totals.runs + len(totals.skipped), totals.events)

                        chunk: list[WorkflowRun] = []
                        try:
                            async for run in all_runs(listing):
                                chunk.append(run)
                                if len(chunk) >= LOG_CHUNK:
                                    runs, chunk = chunk, []
                                    await export_chunk(runs)
                        except WorkflowWorldError:  # the listing failed: the runs listed before it still go out
                            with contextlib.suppress(WorkflowWorldError):
                                await export_chunk(chunk)
                            raise
                        await export_chunk(chunk)
                    await retry(waiting)
                except WorkflowWorldError:  # the runs read before it still go out (the error is the one to tell)
                    with contextlib.suppress(CliError):
                        await flush()
                    raise
                await flush()
                progress.update(totals.runs + len(totals.skipped), totals.events, force=True)
            finally:
                await world.close()

        try:
            run_async(backfill)
        finally:
            progress.done()
            sink.close()
        seconds = time.monotonic() - started
        print(
            f"exported {totals.runs} runs, {totals.spans} spans, {totals.errors} errors in {seconds:.2f}s "
            f"({totals.events / max(seconds, 1e-6):,.0f} events/s) to {sink.endpoint}",
            file=sys.stderr,
        )
        skipped = totals.summary()
        if skipped:
            print(f"wft export: {skipped}", file=sys.stderr)
        return 1 if totals.errors or totals.skipped else 0

    return handle
