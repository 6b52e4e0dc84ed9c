"""The collector service: wiring of store, writer, ingest, API, tailer and forwarder.

Starting is all or nothing: bad settings, a store that is not a SQLite file or a port already in
use end ``start`` with one error and nothing left running. What it creates (the store's folder
and file, spools, the checkpoint) is private to the user running it (``private``).
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from telemetry.backends import open_backend, poll_interval
from telemetry.backends.local import LocalWorld
from telemetry.backends.postgres import PostgresWorld
from telemetry.backends.vercel import VercelWorld
from telemetry.export import traces_endpoint

from .admission import Admission
from .api import Api
from .auth import auth_middleware, authorized, login_routes
from .forward import Forwarder
from .health import PATH as HEALTH_PATH
from .health import Check, Probe, health_route
from .ingest import Ingest
from .metrics import Metrics, SamplingMetrics
from .otlp_relay import OtlpRelay, Spool
from .private import FILE_MODE, private_dir, private_file, redact
from .sampling import Sampler
from .sentry_relay import ENVELOPE_ROUTE, STORE_ROUTE, SentryRelay
from .settings import Settings, SettingsError, is_loopback
from .store import Store
from .tailer import Forward, Tailer
from .tls import ServerTls, TlsError, client_certificate_middleware
from .ui import routes as ui_routes
from .writer import Writer

if TYPE_CHECKING:
    import grpc

__all__ = ["Service", "build", "start", "serve"]

log = logging.getLogger("collector")


@dataclass
class Service:
    settings: Settings
    store: Store
    writer: Writer
    metrics: Metrics
    app: web.Application
    runner: web.AppRunner | None = None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    tailer: Tailer | None = None
    forwarder: Forwarder | None = None
    sentry_forwarder: Forwarder | None = None
    sampler: Sampler | None = None  # between the store and the forward spool, with --forward-sample
    relay: SentryRelay | None = None
    world: LocalWorld | PostgresWorld | VercelWorld | None = None
    ingest: Ingest | None = None
    admission: Admission | None = None
    grpc: grpc.aio.Server | None = None  # the OTLP/gRPC receiver, when serving one
    grpc_port: int | None = None  # its bound port
    tls: ServerTls | None = None  # both ports serve TLS, with these files
    otlp_relay: OtlpRelay | None = None  # metrics and logs relayed upstream (``--relay``)
    relay_forwarders: dict[str, Forwarder] = field(default_factory=dict)  # by signal, each its own spool

    @property
    def url(self) -> str:
        return f"{'http' if self.tls is None else 'https'}://{self.settings.host}:{self.port}"

    @property
    def forwarders(self) -> dict[str, Forwarder]:
        """Every forwarder there is, by its name in ``/healthz``: the traces', the Sentry relay's,
        and one per ``--relay`` signal."""
        named = {"forward": self.forwarder, "sentry_forward": self.sentry_forwarder}
        named |= {f"forward_{signal}": forwarder for signal, forwarder in self.relay_forwarders.items()}
        return {name: forwarder for name, forwarder in named.items() if forwarder is not None}

    @property
    def port(self) -> int:
        """The bound port (the real one when the settings asked for 0), once started."""
        addresses = self.runner.addresses if self.runner is not None else []
        return int(addresses[0][1]) if addresses else self.settings.port

    async def close(self) -> None:
        self.stop_event.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.grpc is not None:
            await self.grpc.stop(1)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.world is not None:
            await self.world.close()
        await asyncio.to_thread(self.writer.stop)
        if self.sampler is not None:
            self.sampler.close()


def open_store(path: Path) -> Store:
    """The store at ``path``, created private when new; a file that is not a usable SQLite store is
    a one-line ``SettingsError`` naming it."""
    try:
        private_dir(path.parent)
        private_file(path)  # SQLite gives its -wal and -shm files the database file's mode
        return Store(path)
    except sqlite3.DatabaseError as error:
        raise SettingsError(
            f"store {path} is not a usable SQLite database ({error}); move it away to start a new one"
        ) from None
    except OSError as error:
        raise SettingsError(f"store {path} cannot be opened: {error.strerror or error}") from None


def _checkpoint_files(store: Path) -> set[Path]:
    """The tailer's checkpoint files next to the store (whatever their suffixes: SQLite, -wal, -shm)."""
    return set(store.parent.glob(glob.escape(store.name) + ".follow*"))


def _make_private(paths: set[Path]) -> None:
    """Tighten files someone else's code just created to 0600 (SQLite gives later -wal/-shm the same)."""
    for path in paths:
        try:
            os.chmod(path, FILE_MODE)
        except FileNotFoundError:
            pass


def describe_world(settings: Settings) -> str:
    """The followed world for a log line: a postgres URL without its credentials."""
    world = settings.world
    if world is None:
        return "no world"
    if world.kind == "postgres":
        return f"following postgres {redact(str(world.url))}"
    return f"following {world.kind} {world.data_dir}"


class _OneLineProtocolErrors(logging.Filter):
    """aiohttp logs a request it could not even parse (a request line over 8 KiB, a broken header:
    answered 400) with a traceback at ERROR; from the open network that is noise: one debug line."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError) and 400 <= (error.code or 400) < 500:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            # the class only: the parser's message quotes the request line, which may carry a token
            record.msg, record.args = "refused a malformed request from %s (%s)", (remote, type(error).__name__)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_PROTOCOL_FILTER = _OneLineProtocolErrors()


def build(settings: Settings) -> Service:
    settings.check()
    logging.getLogger("aiohttp.server").addFilter(_PROTOCOL_FILTER)  # a set: added once however often
    store = open_store(settings.store)
    metrics = Metrics()
    writer = Writer(
        store,
        max_pending=settings.max_pending_spans,
        max_age_s=settings.retention_age_s,
        max_bytes=settings.retention_bytes,
    )
    metrics.gauges["wft_store_bytes"] = store.file_bytes
    metrics.gauges["wft_queue_depth"] = lambda: writer.pending
    middlewares = [auth_middleware(settings.token, dsn_key_routes=(ENVELOPE_ROUTE, STORE_ROUTE))]
    if settings.tls is not None and settings.tls.client_ca is not None:  # mutual TLS: checked first
        middlewares.insert(0, client_certificate_middleware({HEALTH_PATH}))
    app = web.Application(
        middlewares=middlewares,
        client_max_size=settings.max_body_bytes + 1024,
    )
    service = Service(settings=settings, store=store, writer=writer, metrics=metrics, app=app)
    forward: Forward | None = None
    if settings.forward_otlp:
        spool_dir = settings.spool_dir or settings.store.parent / "spool"
        traces = traces_endpoint(settings.forward_otlp)
        service.forwarder = _upstream_forwarder(settings, traces, spool_dir, metrics)
        # each relayed signal spools on its own: one that upstream refuses (a key without its scope)
        # or that it is slow to take never holds back the traces, nor the other signal
        for signal in settings.relay:
            url = f"{traces.removesuffix('/v1/traces')}/v1/{signal}"
            service.relay_forwarders[signal] = _upstream_forwarder(settings, url, spool_dir / signal, metrics)
        upstream = [service.forwarder, *service.relay_forwarders.values()]
        metrics.gauges["wft_forward_spool_bytes"] = lambda: sum(f.spool_bytes() for f in upstream)
        forward = service.forwarder.enqueue
        rates = settings.forward_sample or {}
        buffer = spool_dir / "sampling.sqlite3"
        # all at 1: nothing to wait for, unless an earlier start with sampling left runs waiting (drained)
        if any(rate < 1 for rate in rates.values()) or buffer.exists():
            try:
                service.sampler = Sampler(
                    buffer, rates, forward, max_wait=settings.sample_max_wait, max_bytes=settings.sample_buffer_bytes
                )
            except sqlite3.DatabaseError as error:
                raise SettingsError(f"forward sampling buffer {buffer} is not usable ({error}); move it away") from None
            forward = service.sampler.offer
            metrics.register(SamplingMetrics(service.sampler.stats))
    # one byte budget for every request body (OTLP and Sentry) and the work decoded from it
    admission = Admission(settings.max_pending_bytes, max_body=settings.max_body_bytes)
    metrics.gauges["wft_pending_bytes"] = lambda: admission.charged
    metrics.labelled["wft_admission_refused_total"] = ("reason", lambda: dict(admission.refusals))
    metrics.labelled["wft_request_body_read_bytes_total"] = ("route", lambda: dict(admission.bytes_read))
    ingest = Ingest(writer, metrics, max_body=settings.max_body_bytes, forward=forward, admission=admission)
    service.ingest, service.admission = ingest, admission
    app.router.add_post("/v1/traces", ingest.handle)
    app.on_cleanup.append(ingest.cleanup)  # its decoder process
    if service.relay_forwarders:  # --relay: the apps' metrics and logs go upstream as they came
        spools = {signal: _spooler(forwarder) for signal, forwarder in service.relay_forwarders.items()}
        otlp_relay = service.otlp_relay = OtlpRelay(spools, admission, metrics, max_body=settings.max_body_bytes)
        app.router.add_routes(otlp_relay.routes())
        metrics.labelled["wft_otlp_relayed_requests_total"] = ("signal", lambda: dict(otlp_relay.relayed))

    def unreadable() -> dict[str, str]:
        """Runs the world tailer could not read (run id → why), for the API and the pages."""
        return dict(service.tailer.follower.problems) if service.tailer is not None else {}

    api = Api(store, metrics, trace_url_template=settings.trace_url_template, problems=unreadable)
    app.router.add_routes(api.routes())
    app.router.add_routes(ui_routes())
    app.router.add_routes(login_routes(settings.token))
    sentry_forwarder = None
    if settings.sentry_upstream:
        sentry_forwarder = Forwarder(
            None, settings.store.parent / "sentry-spool", metrics, max_spool_bytes=settings.spool_max_bytes
        )  # each batch names its URL
        service.sentry_forwarder = sentry_forwarder
    relay = SentryRelay(
        writer,
        sentry_forwarder,
        settings.sentry_upstream,
        max_body=settings.max_body_bytes,
        token=settings.token,
        admission=admission,
    )
    service.relay = relay
    app.router.add_routes(relay.routes())
    metrics.labelled["wft_sentry_dropped_total"] = ("rule", lambda: dict(relay.dropped))
    metrics.gauges["wft_sentry_kept_events"] = lambda: relay.kept
    # no upstream: what the relay keeps goes nowhere; counted, and said once at start
    metrics.gauges["wft_sentry_unforwarded_events"] = lambda: relay.kept if relay.upstream is None else 0
    if settings.world:
        service.world = open_backend(settings.world, allow_missing=True)
        checkpoint = str(settings.store) + ".follow.json"
        existed = _checkpoint_files(settings.store)
        service.tailer = Tailer(
            service.world,
            writer,
            metrics,
            checkpoint,
            world_kind=settings.world.kind,
            interval=settings.tail_interval
            if settings.tail_interval is not None
            else poll_interval(settings.world.kind),
            forward=forward,
        )
        _make_private(_checkpoint_files(settings.store) - existed)
    app.router.add_routes([health_route(_probes(service), authorized(settings.token))])
    return service


def _upstream_forwarder(settings: Settings, url: str, spool: Path, metrics: Metrics) -> Forwarder:
    """A forwarder to the ``--forward-otlp`` upstream at ``url`` with ``--forward-headers``."""
    return Forwarder(
        url,
        spool,
        metrics,
        # the body's type first: it is what a batch spools (``parse_headers`` refuses another)
        headers={"Content-Type": "application/x-protobuf", **settings.forward_headers},
        max_spool_bytes=settings.spool_max_bytes,
        hold_on_auth_failure=True,  # every batch carries the same --forward-headers
    )


def _spooler(forwarder: Forwarder) -> Spool:
    async def spool(body: bytes, content_type: str) -> None:
        await forwarder.enqueue(body, content_type=content_type)

    return spool


def _probes(service: Service) -> list[Probe]:
    """What ``/healthz`` looks at: the store (vital), and the world tailer and forwarders there are."""
    writer = service.writer

    def store() -> Check:
        if writer.ended:
            return Check("store", False, "the writer stopped", vital=True)
        return Check("store", writer.fault is None, writer.fault, vital=True)

    probes: list[Probe] = [store, lambda: _tls_check(service.tls)]
    tailer = service.tailer
    if tailer is not None:
        probes.append(lambda: Check("world", tailer.failing is None, tailer.failing))
    probes += [_upstream_probe(name, forwarder) for name, forwarder in service.forwarders.items()]
    return probes


def _tls_check(tls: ServerTls | None) -> Check | None:
    """The certificate serving: well while it has more than a week to live (no TLS: nothing to say)."""
    if tls is None:
        return None
    ok, reason = tls.expiry_check()
    return Check("tls", ok, reason)


def _upstream_probe(name: str, forwarder: Forwarder) -> Probe:
    return lambda: Check(name, forwarder.failing is None, forwarder.failing)


async def start(settings: Settings) -> Service:
    tls = _server_tls(settings)  # before anything is opened: bad files are a one-line error
    service = build(settings)
    service.tls = tls
    if tls is not None:
        service.metrics.gauges["wft_tls_certificate_expiry_timestamp_seconds"] = lambda: tls.not_after
    service.writer.start()
    # lingering_time=0: a request answered without reading its body (refused by the budget, 401, 415)
    # has its connection closed, not its body read and discarded for up to 10 s (aiohttp's default)
    service.runner = web.AppRunner(service.app, auto_decompress=False, access_log=None, lingering_time=0)
    try:
        await service.runner.setup()
        site = web.TCPSite(
            service.runner,
            settings.host,
            settings.port,
            ssl_context=None if service.tls is None else service.tls.context,
        )
        await site.start()
        await _start_grpc(service)
    except BaseException:  # e.g. the port is taken: leave nothing running behind the error
        await service.runner.cleanup()
        if service.world is not None:
            await service.world.close()
        service.writer.stop()  # nothing was queued yet: returns at once
        raise
    if service.tailer is not None:
        service.tasks.append(asyncio.create_task(service.tailer.run(service.stop_event)))
    for forwarder in service.forwarders.values():
        service.tasks.append(asyncio.create_task(forwarder.run(service.stop_event)))
    if service.sampler is not None:
        service.tasks.append(asyncio.create_task(service.sampler.run(service.stop_event)))
    if service.tls is not None:
        service.tasks.append(asyncio.create_task(service.tls.watch(service.stop_event, settings.tls_reload_interval)))
    log.info(
        "listening on %s%s (store %s, %s, token %s)",
        service.url,
        ""
        if service.grpc_port is None
        else f", OTLP/gRPC{'' if service.tls is None else ' over TLS'} on {settings.host}:{service.grpc_port}",
        settings.store,
        describe_world(settings),
        "required" if settings.token else "off",
    )
    if service.relay is not None and service.relay.upstream is None:
        log.info(
            "sentry relay: no upstream (--sentry-upstream or WFT_SENTRY_UPSTREAM): events it keeps are counted"
            " (wft_sentry_unforwarded_events on /metrics), not forwarded"
        )
    return service


def _server_tls(settings: Settings) -> ServerTls | None:
    """The TLS both ports serve (``SettingsError`` when its files cannot serve); without it, bound
    beyond loopback, a warning: the token then crosses the network in clear."""
    if settings.tls is not None:
        try:
            return ServerTls(settings.tls)
        except TlsError as error:
            raise SettingsError(str(error)) from None
    if not is_loopback(settings.host):
        log.warning(
            "serving on %s without TLS: the token, spans and Sentry events cross the network in clear;"
            " pass --tls-cert and --tls-key (or serve behind a proxy that terminates TLS)",
            settings.host,
        )
    return None


async def _start_grpc(service: Service) -> None:
    """The OTLP/gRPC receiver, when asked for; a port left to its default that cannot be bound
    (another OTLP collector on 4317, say) is a warning, a port asked for is an error."""
    settings = service.settings
    if settings.grpc_port is None or service.ingest is None or service.admission is None:
        return
    from .otlp_grpc import start_grpc  # grpc (12 MiB) is loaded only by a collector serving it

    try:
        service.grpc, service.grpc_port = await start_grpc(
            service.ingest,
            service.admission,
            host=settings.host,
            port=settings.grpc_port,
            token=settings.token,
            max_body=settings.max_body_bytes,
            credentials=None if service.tls is None else service.tls.grpc_credentials(),
            relay=service.otlp_relay,
        )
    except OSError as error:
        if not settings.grpc_best_effort:
            raise
        log.warning(
            "OTLP/gRPC not served: %s: %s; pass --grpc-port PORT to choose another, or --grpc-port off",
            error.filename,
            error.strerror,
        )


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM. Everything the process creates is private (umask 077)."""
    import signal

    os.umask(0o077)

    async def main() -> None:
        service = await start(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await service.close()

    asyncio.run(main())
