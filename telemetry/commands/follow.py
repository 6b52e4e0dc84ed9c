"""``wft follow``: tail a world and export spans as steps finish, with a persisted checkpoint."""

from __future__ import annotations

import argparse
import asyncio
import signal

from ..export import OtlpSink, run_resource
from ..follow import Checkpoint, Follower
from .common import CliError, add_world_options, run_async, world_from


def configure(parser: argparse.ArgumentParser):
    add_world_options(parser)
    parser.add_argument("--otlp", metavar="URL", help="OTLP/HTTP base URL; /v1/traces is appended")
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        default="wft-follow.checkpoint.json",
        help="where progress is kept across restarts (default: %(default)s)",
    )
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between polls (default %(default)s)")
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per OTLP request, retries included (default %(default)s)"
    )
    parser.add_argument(
        "--no-payloads", action="store_true", help="leave decoded inputs/outputs out of span attributes"
    )

    def handle(args: argparse.Namespace) -> int:
        world = world_from(args, allow_missing=True)
        try:
            checkpoint = Checkpoint(args.checkpoint)
        except ValueError as error:
            raise CliError(str(error)) from None
        sink = OtlpSink(args.otlp, timeout=args.timeout)

        async def deliver(run, events, spans) -> None:
            if spans:
                await asyncio.to_thread(sink.send, spans)

        follower = Follower(
            world,
            deliver,
            checkpoint,
            resource=run_resource(args.world or "local"),
            include_payloads=not args.no_payloads,
            interval=args.interval,
        )

        async def tail() -> None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            try:
                await follower.run(stop)
            finally:
                await world.close()

        try:
            run_async(tail)
        finally:
            sink.close()
        return 0

    return handle
