"""``wft serve``: the collector service (OTLP receiver, store, world tailer, API).

Registered as a ``wft`` subcommand through the ``wft.commands`` entry point, so the library
(``telemetry``) never imports the service.
"""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import os
from pathlib import Path

from telemetry.backends import backend_config
from telemetry.commands.common import RUNTIME, CliError, Handler, add_world_options, check_world
from telemetry.errors import WorkflowWorldError

from .settings import GRPC_PORT

NAME = "serve"
HELP = "run the collector: OTLP receiver, store, world tailer and run API"


def configure(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default %(default)s; anything else needs --token)"
    )
    parser.add_argument("--port", type=int, default=4318, help="port (default %(default)s, the OTLP/HTTP port)")
    parser.add_argument(
        "--grpc-port",
        default=None,
        help=f"OTLP/gRPC port, or 'off' (default {GRPC_PORT}; if the default is taken, a warning and no gRPC)",
    )
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
        "--max-pending-bytes",
        default="256MiB",
        help="one memory budget for request bodies being read and the spans decoded from them until stored"
        " (charged at 8× the body); past it requests get 503 + Retry-After before their body is read"
        " (default %(default)s)",
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
        "--forward-headers",
        metavar="HEADERS",
        default=None,
        help="headers sent with what is forwarded, as OTEL_EXPORTER_OTLP_HEADERS writes them:"
        " 'authorization=Bearer%%20KEY,x-scope-orgid=team' (or WFT_FORWARD_HEADERS)",
    )
    parser.add_argument(
        "--relay",
        metavar="SIGNALS",
        default="",
        help="also take the apps' OTLP metrics and/or logs and relay them to the --forward-otlp upstream as"
        " they came: 'metrics,logs' (default: none; 404 / UNIMPLEMENTED for them)",
    )
    parser.add_argument(
        "--sentry-upstream",
        metavar="DSN",
        default=os.environ.get("WFT_SENTRY_UPSTREAM"),
        help="Sentry DSN the relay (/api/<project>/envelope/) forwards kept events to (or WFT_SENTRY_UPSTREAM)",
    )
    parser.add_argument(
        "--spool-max",
        default="256MiB",
        help="bound of the forward spool, and of each --relay signal's (default %(default)s)",
    )
    parser.add_argument(
        "--forward-sample",
        metavar="SPEC",
        help="forward only a share of the runs by how they ended, whole runs (event-log and app spans),"
        " e.g. completed=0.1,failed=1,cancelled=1 (outcomes not named: 1; default: forward everything)",
    )
    parser.add_argument(
        "--sample-max-wait",
        default="1h",
        help="forward a run still undecided after this long without waiting for its end (default %(default)s)",
    )
    parser.add_argument(
        "--sample-buffer",
        default="64MiB",
        help="bound of the buffer of undecided runs; past it the oldest go early (default %(default)s)",
    )
    parser.add_argument(
        "--trace-url-template",
        metavar="URL",
        default=os.environ.get("WFT_TRACE_URL_TEMPLATE"),
        help="link run pages to your Tempo/Jaeger: a URL with {trace_id} (or {run_id}) in it, e.g."
        " 'https://grafana.example/explore?left=...{trace_id}...' (or WFT_TRACE_URL_TEMPLATE)",
    )
    parser.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="serve both ports over TLS with this certificate (chain) file; renewed files are picked up"
        " (or WFT_TLS_CERT)",
    )
    parser.add_argument("--tls-key", metavar="PEM", help="the certificate's private key, unencrypted (or WFT_TLS_KEY)")
    parser.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="require clients to present a certificate signed by this CA (mutual TLS; or WFT_TLS_CLIENT_CA)",
    )
    add_world_options(parser)

    def handle(args: argparse.Namespace) -> int:
        from .app import serve
        from .sampling import parse_sample_rates
        from .settings import Settings, SettingsError, parse_bytes, parse_duration, parse_headers
        from .tls import TlsError, environment_files

        try:
            world = (
                None if args.no_world else backend_config(args.world, data_dir=args.dir, url=args.url, implicit=False)
            )
            if world is not None:  # a bad URL or a folder that is not a world: refused; a missing one: a warning
                _, warning = check_world(world, args, allow_missing=True)
                if warning:
                    logging.getLogger("collector").warning("world: %s", warning)
            age = parse_duration(args.retention_age)
            try:
                sample = None if args.forward_sample is None else parse_sample_rates(args.forward_sample)
            except ValueError as error:
                raise SettingsError(str(error)) from None
            size = parse_bytes(args.retention_size)
            try:
                pending_bytes = parse_bytes(args.max_pending_bytes)
            except SettingsError as error:
                raise SettingsError(f"--max-pending-bytes: {error}") from None
            grpc_port, best_effort = _grpc_port(args.grpc_port)
            try:
                tls = environment_files(args.tls_cert, args.tls_key, args.tls_client_ca)
            except TlsError as error:
                raise SettingsError(str(error)) from None
            settings = Settings(
                host=args.host,
                port=args.port,
                grpc_port=grpc_port,
                grpc_best_effort=best_effort,
                store=Path(args.store),
                token=args.token or os.environ.get("WFT_TOKEN"),
                max_body_bytes=parse_bytes(args.max_body),
                max_pending_spans=args.max_pending_spans,
                max_pending_bytes=pending_bytes,
                retention_age_s=age or None,
                retention_bytes=size or None,
                world=world,
                forward_otlp=args.forward_otlp,
                relay=tuple(name.strip() for name in args.relay.split(",") if name.strip()),
                forward_headers=parse_headers(  # the variable applies where something is forwarded
                    args.forward_headers or (args.forward_otlp and os.environ.get("WFT_FORWARD_HEADERS")) or "",
                    "--forward-headers",
                ),
                spool_max_bytes=parse_bytes(args.spool_max),
                forward_sample=sample,
                sample_max_wait=parse_duration(args.sample_max_wait),
                sample_buffer_bytes=parse_bytes(args.sample_buffer),
                sentry_upstream=args.sentry_upstream,
                trace_url_template=args.trace_url_template,
                tls=tls,
            )
            settings.check()
        except (SettingsError, WorkflowWorldError) as error:
            raise CliError(str(error)) from None
        # decoding a request or a run allocates tens of containers a span, none of them cyclic; at the
        # default threshold (700) the cyclic collector runs every few spans and walks a heap full of
        # queued spans: ingest decode measured 2.2× slower. Rarer young collections, same safety.
        gc.set_threshold(50_000, 20, 100)
        try:
            serve(settings)
        except SettingsError as error:  # found on opening: the store cannot be opened or is not one (--store)
            raise CliError(str(error)) from None
        except OSError as error:  # e.g. a port is taken
            grpc = "OTLP/gRPC" in str(error.filename or "")  # otlp_grpc names its port so
            port, flag = (settings.grpc_port, "--grpc-port") if grpc else (settings.port, "--port")
            where = f"{settings.host}:{port}"
            if error.errno == errno.EADDRINUSE or "address already in use" in str(error):
                raise CliError(
                    f"port {port} on {settings.host} is already in use (another wft serve or OTLP"
                    f" collector?): stop it, or pass {flag}",
                    status=RUNTIME,
                ) from None
            raise CliError(f"cannot serve on {where}: {error.strerror or error}", status=RUNTIME) from None
        return 0

    return handle


def _grpc_port(given: str | None) -> tuple[int | None, bool]:
    """``--grpc-port``: (the port, or None for 'off'; whether it was left to its default)."""
    if given is None:
        return GRPC_PORT, True
    if given.strip().lower() in ("off", "none", "no"):
        return None, False
    try:
        return int(given), False
    except ValueError:
        raise CliError(f"--grpc-port {given!r}: a port number, or 'off'") from None
