"""``wft serve``: the collector service (OTLP receiver, store, world tailer, API).

Registered as a ``wft`` subcommand through the ``wft.commands`` entry point, so the library
(``telemetry``) never imports the service.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from telemetry.backends import backend_config
from telemetry.commands.common import CliError, add_world_options
from telemetry.errors import WorkflowWorldError

NAME = "serve"
HELP = "run the collector: OTLP receiver, store, world tailer and run API"


def configure(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default %(default)s; anything else needs --token)"
    )
    parser.add_argument("--port", type=int, default=4318, help="port (default %(default)s, the OTLP/HTTP port)")
    parser.add_argument(
        "--store",
        default=os.environ.get("WFT_STORE", "wft-data/store.sqlite3"),
        help="SQLite store file (default %(default)s)",
    )
    parser.add_argument("--token", default=None, help="bearer token required on /v1 and /api (or WFT_TOKEN)")
    parser.add_argument(
        "--max-body", default="16MiB", help="largest request body, before or after decompression (default %(default)s)"
    )
    parser.add_argument(
        "--max-pending-spans",
        type=int,
        default=200_000,
        help="write queue bound; past it requests get 503 (default %(default)s)",
    )
    parser.add_argument(
        "--retention-age", default="7d", help="drop spans older than this (default %(default)s; 0 keeps all)"
    )
    parser.add_argument(
        "--retention-size",
        default="1GiB",
        help="drop the oldest spans past this store size (default %(default)s; 0 = no bound)",
    )
    parser.add_argument("--no-world", action="store_true", help="do not follow a world even if one is configured")
    parser.add_argument(
        "--forward-otlp",
        metavar="URL",
        help="also forward everything to this OTLP/HTTP endpoint (spooled on disk while it is down)",
    )
    parser.add_argument(
        "--sentry-upstream",
        metavar="DSN",
        default=os.environ.get("WFT_SENTRY_UPSTREAM"),
        help="Sentry DSN the relay (/api/<project>/envelope/) forwards kept events to (or WFT_SENTRY_UPSTREAM)",
    )
    parser.add_argument("--spool-max", default="256MiB", help="bound of the forward spool (default %(default)s)")
    add_world_options(parser)

    def handle(args: argparse.Namespace) -> int:
        from .app import serve
        from .settings import Settings, SettingsError, parse_bytes, parse_duration

        try:
            world = (
                None if args.no_world else backend_config(args.world, data_dir=args.dir, url=args.url, implicit=False)
            )
            age = parse_duration(args.retention_age)
            size = parse_bytes(args.retention_size)
            settings = Settings(
                host=args.host,
                port=args.port,
                store=Path(args.store),
                token=args.token or os.environ.get("WFT_TOKEN"),
                max_body_bytes=parse_bytes(args.max_body),
                max_pending_spans=args.max_pending_spans,
                retention_age_s=age or None,
                retention_bytes=size or None,
                world=world,
                forward_otlp=args.forward_otlp,
                spool_max_bytes=parse_bytes(args.spool_max),
                sentry_upstream=args.sentry_upstream,
            )
            settings.check()
        except (SettingsError, WorkflowWorldError) as error:
            raise CliError(str(error)) from None
        serve(settings)
        return 0

    return handle
