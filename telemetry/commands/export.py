"""``wft export``: backfill every run of a world to an OTLP collector."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from ..export import ExportError, OtlpSink, run_resource
from ..reading import all_runs, run_trace
from .common import CliError, add_world_options, run_async, world_from


class Progress:
    """A one-line progress bar on a terminal; nothing on a pipe (the summary still prints)."""

    def __init__(self, stream=sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()

    def update(self, runs: int, spans: int) -> None:
        if self.tty:
            self.stream.write(f"\rexporting: {runs} runs, {spans} spans")
            self.stream.flush()

    def done(self) -> None:
        if self.tty:
            self.stream.write("\n")


def configure(parser: argparse.ArgumentParser):
    add_world_options(parser)
    parser.add_argument(
        "--otlp",
        metavar="URL",
        help="OTLP/HTTP base URL; /v1/traces is appended (default: OTEL_EXPORTER_OTLP_ENDPOINT or http://localhost:4318)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per OTLP request, retries included (default %(default)s)"
    )
    parser.add_argument(
        "--no-payloads", action="store_true", help="leave decoded inputs/outputs out of span attributes"
    )

    def handle(args: argparse.Namespace) -> int:
        world = world_from(args)
        sink = OtlpSink(args.otlp, timeout=args.timeout)
        resource = run_resource(args.world or "local")
        progress = Progress()
        started = time.monotonic()
        totals = {"runs": 0, "spans": 0, "errors": 0}

        async def backfill() -> None:
            try:
                async for run in all_runs(world):
                    trace = await run_trace(world, run, resource=resource, include_payloads=not args.no_payloads)
                    try:
                        await asyncio.to_thread(sink.send, trace.spans)
                    except ExportError as error:
                        totals["errors"] += 1
                        print(f"wft export: run {run.run_id}: {error}", file=sys.stderr)
                        if totals["runs"] == 0 and totals["errors"] >= 3:
                            raise CliError(f"giving up: {error}") from None
                        continue
                    totals["runs"] += 1
                    totals["spans"] += len(trace.spans)
                    progress.update(totals["runs"], totals["spans"])
            finally:
                await world.close()

        try:
            run_async(backfill)
        finally:
            progress.done()
            sink.close()
        seconds = time.monotonic() - started
        print(
            f"exported {totals['runs']} runs, {totals['spans']} spans, {totals['errors']} errors in {seconds:.2f}s to {sink.endpoint}",
            file=sys.stderr,
        )
        return 1 if totals["errors"] else 0

    return handle
