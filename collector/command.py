"""``wft serve``: the collector service (OTLP receiver, store, world tailer, API).

Registered as a ``wft`` subcommand through the ``wft.commands`` entry point, so the library
(``telemetry``) never imports the service.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
from pathlib import Path

from telemetry.backends import backend_config
from telemetry.commands.common import RUNTIME, CliError, Handler, add_world_options, check_world
from telemetry.errors import WorkflowWorldError

NAME = "serve"
HELP = "run the collector: OTLP receiver, store, world tailer and run API"


def configure(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default %(default)s; anything else needs --token)"
    )
    parser.add_argument("--port", type=int, default=4318, help="port (default %(default)s, the OTLP/HTTP port)")
    parser.add_argument(
        "--store",
        default=os.environ.get("WFT_STORE", "wft-data/store.sqlite3"),
        help="SQLite store file (default %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="token required on every route but /healthz: a bearer token, the pages' login, the Sentry DSN key"
        " (or WFT_TOKEN)",
    )
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
    parser.add_argument(
        "--trace-url-template",
        metavar="URL",
        default=os.environ.get("WFT_TRACE_URL_TEMPLATE"),
        help="link run pages to your Tempo/Jaeger: a URL with {trace_id} (or {run_id}) in it, e.g."
        " 'https://grafana.example/explore?left=...{trace_id}...' (or WFT_TRACE_URL_TEMPLATE)",
    )
    add_world_options(parser)

    def handle(args: argparse.Namespace) -> int:
        from .app import serve
        from .settings import Settings, SettingsError, parse_bytes, parse_duration

        try:
            world = (
                None if args.no_world else backend_config(args.world, data_dir=args.dir, url=args.url, implicit=False)
            )
            if world is not None:  # a bad URL or a folder that is not a world: refused; a missing one: a warning
                _, warning = check_world(world, args, allow_missing=True)
                if warning:
                    logging.getLogger("collector").warning("world: %s", warning)
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
                trace_url_template=args.trace_url_template,
            )
            settings.check()
        except (SettingsError, WorkflowWorldError) as error:
            raise CliError(str(error)) from None
        try:
            serve(settings)
        except SettingsError as error:  # found on opening: the store cannot be opened or is not one (--store)
            raise CliError(str(error)) from None
        except OSError as error:  # e.g. the port is taken
            where = f"{settings.host}:{settings.port}"
            if error.errno == errno.EADDRINUSE or "address already in use" in str(error):
                raise CliError(
                    f"port {settings.port} on {settings.host} is already in use (another wft serve or OTLP"
                    " collector?): stop it, or pass --port",
                    status=RUNTIME,
                ) from None
            raise CliError(f"cannot serve on {where}: {error.strerror or error}", status=RUNTIME) from None
        return 0

    return handle
