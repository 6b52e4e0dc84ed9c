"""The collector service: wiring of store, writer, ingest, API, tailer and forwarder."""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from telemetry.backends import open_backend
from telemetry.export import traces_endpoint

from .api import Api
from .forward import Forwarder
from .ingest import Ingest
from .metrics import Metrics
from .sentry_relay import SentryRelay
from .settings import Settings
from .store import Store
from .tailer import Tailer
from .ui import routes as ui_routes
from .writer import Writer

__all__ = ["Service", "build", "start", "serve"]

log = logging.getLogger("collector")
_PROTECTED = (
    "/v1/",
    "/api/runs",
    "/api/traces",
    "/api/spans",
    "/api/lookup",
)  # Sentry SDKs authenticate with their DSN key, not our token


@dataclass
class Service:
    settings: Settings
    store: Store
    writer: Writer
    metrics: Metrics
    app: web.Application
    runner: web.AppRunner | None = None
    stop_event: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task] = field(default_factory=list)
    tailer: Tailer | None = None
    forwarder: Forwarder | None = None
    sentry_forwarder: Forwarder | None = None
    relay: Any = None
    world: Any = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    @property
    def port(self) -> int:
        site = next(iter(self.runner.sites), None) if self.runner else None
        return site._server.sockets[0].getsockname()[1] if site and site._server else self.settings.port

    async def close(self) -> None:
        self.stop_event.set()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.runner is not None:
            await self.runner.cleanup()
        if self.world is not None:
            await self.world.close()
        await asyncio.to_thread(self.writer.stop)


def _auth(token: str | None):
    expected = f"Bearer {token}".encode() if token else None

    @web.middleware
    async def middleware(request: web.Request, handler):
        if expected is not None and request.path.startswith(_PROTECTED):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.Response(status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return middleware


def build(settings: Settings) -> Service:
    settings.check()
    store = Store(settings.store)
    metrics = Metrics()
    writer = Writer(
        store,
        max_pending=settings.max_pending_spans,
        max_age_s=settings.retention_age_s,
        max_bytes=settings.retention_bytes,
    )
    metrics.gauges["wft_store_bytes"] = store.file_bytes
    metrics.gauges["wft_queue_depth"] = lambda: writer.pending
    app = web.Application(middlewares=[_auth(settings.token)], client_max_size=settings.max_body_bytes + 1024)
    service = Service(settings=settings, store=store, writer=writer, metrics=metrics, app=app)
    forward = None
    if settings.forward_otlp:
        service.forwarder = Forwarder(
            traces_endpoint(settings.forward_otlp),
            settings.spool_dir or settings.store.parent / "spool",
            metrics,
            headers={"Content-Type": "application/x-protobuf"},
            max_spool_bytes=settings.spool_max_bytes,
        )
        metrics.gauges["wft_forward_spool_bytes"] = service.forwarder.spool_bytes
        forward = service.forwarder.enqueue
    ingest = Ingest(writer, metrics, max_body=settings.max_body_bytes, forward=forward)
    app.router.add_post("/v1/traces", ingest.handle)
    app.router.add_routes(Api(store, metrics).routes())
    app.router.add_routes(ui_routes())
    sentry_forwarder = None
    if settings.sentry_upstream:
        sentry_forwarder = Forwarder(
            None, settings.store.parent / "sentry-spool", metrics, max_spool_bytes=settings.spool_max_bytes
        )  # each batch names its URL
        service.sentry_forwarder = sentry_forwarder
    relay = SentryRelay(writer, sentry_forwarder, settings.sentry_upstream, max_body=settings.max_body_bytes)
    service.relay = relay
    app.router.add_routes(relay.routes())
    metrics.labelled["wft_sentry_dropped_total"] = ("rule", lambda: dict(relay.dropped))
    metrics.gauges["wft_sentry_kept_events"] = lambda: relay.kept
    if settings.world:
        service.world = open_backend(settings.world, allow_missing=True)
        checkpoint = str(settings.store) + ".follow.json"
        service.tailer = Tailer(
            service.world,
            writer,
            metrics,
            checkpoint,
            world_kind=settings.world.kind,
            interval=settings.tail_interval,
            forward=forward,
        )
    return service


async def start(settings: Settings) -> Service:
    service = build(settings)
    service.writer.start()
    service.runner = web.AppRunner(service.app, auto_decompress=False, access_log=None)
    await service.runner.setup()
    site = web.TCPSite(service.runner, settings.host, settings.port)
    await site.start()
    if service.tailer is not None:
        service.tasks.append(asyncio.create_task(service.tailer.run(service.stop_event)))
    for forwarder in (service.forwarder, service.sentry_forwarder):
        if forwarder is not None:
            service.tasks.append(asyncio.create_task(forwarder.run(service.stop_event)))
    world = f"following {service.world!r}" if service.world is not None else "no world"
    log.info(
        "listening on %s (store %s, %s, token %s)",
        service.url,
        settings.store,
        world,
        "required" if settings.token else "off",
    )
    return service


def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM."""
    import signal

    async def main() -> None:
        service = await start(settings)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await service.close()

    asyncio.run(main())
