"""collector/forward.py: the on-disk spool, sending in order, retry with backoff against a real
local server that fails and then recovers, the spool bound, restarts, and stopping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from collector.forward import Forwarder
from collector.metrics import Metrics


@dataclass
class Upstream:
    """A real HTTP server on 127.0.0.1 answering from a script of statuses (then 200)."""

    statuses: list[int] = field(default_factory=list)
    arrivals: list[tuple[float, int, bytes, dict[str, str]]] = field(default_factory=list)  # (time, status, body, hdrs)
    url: str = ""
    delivered: asyncio.Event = field(default_factory=asyncio.Event)
    want: int = 1

    def bodies(self, status: int = 200) -> list[bytes]:
        return [body for _, answered, body, _ in self.arrivals if answered == status]


@contextlib.asynccontextmanager
async def _upstream(statuses: list[int] | None = None, *, want: int = 1, port: int = 0):
    upstream = Upstream(list(statuses or []), want=want)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        status = upstream.statuses.pop(0) if upstream.statuses else 200
        upstream.arrivals.append((time.monotonic(), status, body, dict(request.headers)))
        if len(upstream.bodies()) >= upstream.want:
            upstream.delivered.set()
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/v1/traces", receive)
    app.router.add_post("/other", receive)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    upstream.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/traces"
    try:
        yield upstream
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _running(forwarder: Forwarder):
    stop = asyncio.Event()
    task = asyncio.create_task(forwarder.run(stop))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def _files(spool) -> list:
    return sorted(spool.glob("*.pb"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the spool ------------------------------------------------------------------------------------


def test_enqueue_writes_one_file_per_batch_in_order(tmp_path):
    spool = tmp_path / "spool"
    forwarder = Forwarder("http://127.0.0.1:9/v1/traces", spool, Metrics(), headers={"Content-Type": "x/default"})
    payloads = [bytes([i]) * (10 + i) + b"\n\x00binary\n" for i in range(5)]

    async def go():
        for payload in payloads[:4]:
            await forwarder.enqueue(payload)
        await forwarder.enqueue(payloads[4], url="http://127.0.0.1:9/other", headers={"X-Sentry-Auth": "Sentry k"})

    asyncio.run(go())
    files = _files(spool)
    assert len(files) == len(payloads) and not list(spool.glob("*.tmp"))
    metas = []
    for file, payload in zip(files, payloads, strict=True):  # name order is enqueue order
        meta, _, body = file.read_bytes().partition(b"\n")
        assert body == payload  # newlines and NULs in the payload survive
        metas.append(json.loads(meta))
    assert metas[0] == {"url": "http://127.0.0.1:9/v1/traces", "headers": {"Content-Type": "x/default"}}
    assert metas[4] == {"url": "http://127.0.0.1:9/other", "headers": {"X-Sentry-Auth": "Sentry k"}}
    assert forwarder.spool_bytes() == sum(f.stat().st_size for f in files)


def test_a_batch_without_any_url_is_refused(tmp_path):
    forwarder = Forwarder(None, tmp_path / "spool", Metrics())
    with pytest.raises(ValueError, match="no URL"):
        asyncio.run(forwarder.enqueue(b"x"))
    assert _files(tmp_path / "spool") == []


def test_spool_bound_drops_the_oldest_and_counts(tmp_path, caplog):
    spool = tmp_path / "spool"
    metrics = Metrics()
    probe = Forwarder("http://127.0.0.1:9/v1/traces", tmp_path / "probe", Metrics())
    asyncio.run(probe.enqueue(b"x" * 1000))
    one = probe.spool_bytes()  # the size of one spooled batch, meta line included
    bound = 3 * one + one // 2
    forwarder = Forwarder("http://127.0.0.1:9/v1/traces", spool, metrics, max_spool_bytes=bound)

    async def go():
        for i in range(8):
            await forwarder.enqueue(bytes([i]) * 1000)

    with caplog.at_level(logging.WARNING, logger="collector.forward"):
        asyncio.run(go())
    kept = [f.read_bytes().partition(b"\n")[2][0] for f in _files(spool)]
    assert kept == [5, 6, 7]  # the newest three fit
    assert forwarder.spool_bytes() <= bound
    assert metrics.forward_dropped_batches == 8 - 3
    warnings = [r.getMessage() for r in caplog.records if "dropped the oldest" in r.getMessage()]
    assert len(warnings) == 5 and str(bound) in warnings[0]


def test_a_batch_bigger_than_the_bound_is_dropped_and_counted(tmp_path):
    metrics = Metrics()
    forwarder = Forwarder("http://127.0.0.1:9/v1/traces", tmp_path / "spool", metrics, max_spool_bytes=100)
    asyncio.run(forwarder.enqueue(b"y" * 200))
    assert _files(tmp_path / "spool") == [] and metrics.forward_dropped_batches == 1


# ---- sending ------------------------------------------------------------------------------------


def test_batches_are_sent_in_order_with_their_headers_and_removed(tmp_path):
    metrics = Metrics()
    payloads = [f"batch {i}".encode() for i in range(4)]

    async def go():
        async with _upstream(want=len(payloads)) as upstream:
            forwarder = Forwarder(
                upstream.url, tmp_path / "spool", metrics, headers={"Content-Type": "application/x-protobuf"}
            )
            async with _running(forwarder):
                for payload in payloads:
                    await forwarder.enqueue(payload)
                await asyncio.wait_for(upstream.delivered.wait(), 10)
            return upstream, forwarder

    upstream, forwarder = asyncio.run(go())
    assert upstream.bodies() == payloads
    assert all(headers["Content-Type"] == "application/x-protobuf" for *_, headers in upstream.arrivals)
    assert _files(tmp_path / "spool") == [] and forwarder.spool_bytes() == 0
    assert metrics.forwarded_batches == len(payloads) and metrics.forward_dropped_batches == 0


def test_retry_with_backoff_that_grows_caps_and_resets(tmp_path):
    metrics = Metrics()

    async def go():
        # first batch: three 503s, then 200; second batch: one 503, then 200
        async with _upstream([503, 503, 503, 200, 503], want=2) as upstream:
            forwarder = Forwarder(upstream.url, tmp_path / "spool", metrics, max_backoff=1.0)
            await forwarder.enqueue(b"first")
            async with _running(forwarder):
                while len(upstream.bodies()) < 1:
                    await asyncio.sleep(0.02)
                await forwarder.enqueue(b"second")
                await asyncio.wait_for(upstream.delivered.wait(), 15)
            return upstream

    upstream = asyncio.run(go())
    assert upstream.bodies() == [b"first", b"second"] and upstream.bodies(503) == [b"first"] * 3 + [b"second"]
    times = [t for t, *_ in upstream.arrivals]
    first = [b - a for a, b in zip(times[:3], times[1:4], strict=True)]
    assert first[0] >= 0.45  # waited before retrying
    assert first[1] >= 0.9 and first[1] > 1.5 * first[0]  # doubled
    assert 0.9 <= first[2] < 1.7  # capped at max_backoff (uncapped it would be 2 s)
    assert times[5] - times[4] < 0.9  # a success reset the backoff for the next batch
    assert metrics.forwarded_batches == 2 and metrics.forward_dropped_batches == 0


@pytest.mark.parametrize("status", [408, 429, 500])
def test_retryable_statuses_are_retried(tmp_path, status):
    async def go():
        async with _upstream([status]) as upstream:
            forwarder = Forwarder(upstream.url, tmp_path / "spool", Metrics(), max_backoff=0.5)
            await forwarder.enqueue(b"again")
            async with _running(forwarder):
                await asyncio.wait_for(upstream.delivered.wait(), 10)
            return upstream

    upstream = asyncio.run(go())
    assert [s for _, s, *_ in upstream.arrivals] == [status, 200]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
def test_a_refused_batch_is_dropped_counted_and_the_next_one_sent(tmp_path, status, caplog):
    metrics = Metrics()

    async def go():
        async with _upstream([status]) as upstream:
            forwarder = Forwarder(upstream.url, tmp_path / "spool", metrics)
            await forwarder.enqueue(b"refused")
            await forwarder.enqueue(b"accepted")
            async with _running(forwarder):
                await asyncio.wait_for(upstream.delivered.wait(), 10)
            return upstream

    with caplog.at_level(logging.ERROR, logger="collector.forward"):
        upstream = asyncio.run(go())
    assert [(s, b) for _, s, b, _ in upstream.arrivals] == [(status, b"refused"), (200, b"accepted")]
    assert metrics.forward_dropped_batches == 1 and metrics.forwarded_batches == 1
    assert any(f"HTTP {status}" in r.getMessage() for r in caplog.records)


def test_upstream_not_listening_then_coming_up(tmp_path):
    port = _free_port()
    metrics = Metrics()

    async def go():
        forwarder = Forwarder(f"http://127.0.0.1:{port}/v1/traces", tmp_path / "spool", metrics, max_backoff=0.5)
        await forwarder.enqueue(b"waited")
        async with _running(forwarder):
            await asyncio.sleep(0.3)  # at least one refused connection
            assert _files(tmp_path / "spool")
            async with _upstream(port=port) as upstream:
                await asyncio.wait_for(upstream.delivered.wait(), 10)
                return upstream

    upstream = asyncio.run(go())
    assert upstream.bodies() == [b"waited"] and metrics.forwarded_batches == 1
    assert _files(tmp_path / "spool") == []


def test_the_spool_survives_a_restart(tmp_path):
    spool = tmp_path / "spool"
    port = _free_port()  # upstream keeps its address across our restart

    async def before_restart():
        async with _upstream([503] * 100, port=port) as down:  # upstream failing the whole time
            forwarder = Forwarder(down.url, spool, Metrics(), max_backoff=0.2)
            async with _running(forwarder):
                for i in range(3):
                    await forwarder.enqueue(f"spooled {i}".encode())
                while len(down.arrivals) < 2:
                    await asyncio.sleep(0.02)

    async def after_restart():
        async with _upstream(want=4, port=port) as up:
            (spool / "00000000000000000000-00000000.pb.tmp").write_bytes(b"half-written")  # a crash leftover
            forwarder = Forwarder(up.url, spool, Metrics())  # a new process: new Forwarder, same directory
            async with _running(forwarder):
                await forwarder.enqueue(b"after restart")
                await asyncio.wait_for(up.delivered.wait(), 10)
            return up

    asyncio.run(before_restart())
    assert len(_files(spool)) == 3
    up = asyncio.run(after_restart())
    assert up.bodies() == [b"spooled 0", b"spooled 1", b"spooled 2", b"after restart"]
    assert _files(spool) == []


def test_an_unreadable_spool_file_does_not_stop_forwarding(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "00000000000000000001-00000000.pb").write_bytes(b"")  # sorts first

    async def go():
        async with _upstream() as upstream:
            forwarder = Forwarder(upstream.url, spool, Metrics())
            stop = asyncio.Event()
            task = asyncio.create_task(forwarder.run(stop))
            await forwarder.enqueue(b"good")
            delivered = asyncio.ensure_future(upstream.delivered.wait())
            await asyncio.wait({task, delivered}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            stop.set()
            delivered.cancel()
            await asyncio.wait_for(task, 5)  # re-raises whatever ended the task
            return upstream

    assert asyncio.run(go()).bodies() == [b"good"]


# ---- stopping -----------------------------------------------------------------------------------


def test_stop_ends_a_long_backoff_at_once(tmp_path):
    async def go():
        async with _upstream([503] * 100) as upstream:
            forwarder = Forwarder(upstream.url, tmp_path / "spool", Metrics(), max_backoff=30)
            await forwarder.enqueue(b"kept")
            stop = asyncio.Event()
            task = asyncio.create_task(forwarder.run(stop))
            while len(upstream.arrivals) < 3:  # now waiting 2 s
                await asyncio.sleep(0.02)
            started = time.monotonic()
            stop.set()
            await asyncio.wait_for(task, 5)
            return time.monotonic() - started

    assert asyncio.run(go()) < 1.0
    assert len(_files(tmp_path / "spool")) == 1  # not sent: still spooled for the next start


def test_stop_while_idle_and_wake_on_enqueue(tmp_path):
    async def go():
        async with _upstream() as upstream:
            forwarder = Forwarder(upstream.url, tmp_path / "spool", Metrics())
            stop = asyncio.Event()
            task = asyncio.create_task(forwarder.run(stop))
            await asyncio.sleep(0.2)  # idle: nothing spooled
            started = time.monotonic()
            await forwarder.enqueue(b"wake")
            await asyncio.wait_for(upstream.delivered.wait(), 5)
            woke_after = time.monotonic() - started
            await asyncio.sleep(0.1)
            started = time.monotonic()
            stop.set()
            await asyncio.wait_for(task, 5)
            return woke_after, time.monotonic() - started

    woke_after, stopped_after = asyncio.run(go())
    assert woke_after < 3  # idle waits have no timeout: without the wake-up it would never send
    assert stopped_after < 0.5
