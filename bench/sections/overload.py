"""8. Memory bounded in bytes and overload that holds, against a real ``wft serve`` process.

The payload is real workflow spans: ``wft export`` of the harness's world-local data, captured as
the OTLP requests it sends, merged into one request and copied under fresh trace, span and run ids
(shapes, names, attributes and payloads stay the SDK's own) until a body has the size asked for.

- Memory: 40 clients (each from its own loopback address) send an 8 MiB body at once and retry on
  what they are told (``Retry-After``) until stored. Ours: the default ``--max-pending-bytes``;
  baseline: the same server with a budget so large it never refuses (what memory was bounded by
  before: the span queue). Reported: peak RSS of the server and its decoder process (``VmHWM``), whether every
  client got an answer, the time until all 40 bodies were stored.
- Retry storm: unloaded phases (8 clients sending ~512-span requests one after another, nothing
  refused) alternate with storms (80 clients sending the same kind of requests that, on every 503,
  retry exactly when ``Retry-After`` says, with no backoff or jitter of their own: what many clients
  do), U S U S U on one server, so the shared machine's drift lands on both sides of the ratio.
  Goodput is spans answered 200 within the storms per second of storm; the wait is each accepted
  request's time from its first byte sent to its 200; RSS is the server's peak.
"""

from __future__ import annotations

import asyncio
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .common import free_port, peak_rss_mib, start_server, verdict

MiB = 1024 * 1024
MEMORY_CLIENTS = 40
MEMORY_BODY = 8 * MiB
MEMORY_TARGET_MIB = 400
STORM_CLIENTS = 80
UNLOADED_CLIENTS = 8
STORM_SPANS = 512
STORM_SECONDS = 15.0
UNLOADED_REQUESTS = 60
GOODPUT_TARGET = 0.70
WAIT_TARGET_S = 5.0
PB = {"Content-Type": "application/x-protobuf"}
_RUN_ID = re.compile(r"wrun_[0-9A-Z]{26}")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


# ---- the payload: real workflow spans -------------------------------------------------------------


def exported_request(data_dir: Path) -> bytes:
    """What ``wft export`` sends for ``data_dir``, as one OTLP request (its requests concatenated:
    protobuf messages merge their repeated fields)."""
    bodies: list[bytes] = []

    async def capture(request: web.Request) -> web.Response:
        bodies.append(await request.read())
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PB["Content-Type"])

    async def main() -> None:
        app = web.Application(client_max_size=256 * MiB)
        app.router.add_post("/v1/traces", capture)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        try:
            export = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "telemetry",
                "export",
                "--dir",
                str(data_dir),
                "--otlp",
                f"http://127.0.0.1:{port}",
                "--jobs",
                "1",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
            _, errors = await export.communicate()
            if export.returncode != 0:
                raise RuntimeError(f"wft export failed: {errors.decode()[-300:]}")
        finally:
            await runner.cleanup()

    asyncio.run(main())
    return b"".join(bodies)


class Copies:
    """Fresh copies of a real request: every trace id, span id and run id replaced, so each copy is
    new spans of new runs to the store (nothing deduplicated away)."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        message = ExportTraceServiceRequest.FromString(request)
        self.spans = sum(len(ss.spans) for rs in message.resource_spans for ss in rs.scope_spans)
        self.made = 0

    def _copy(self) -> bytes:
        self.made += 1
        k = self.made
        tag = k.to_bytes(4, "big")
        run_tag = "".join(_CROCKFORD[(k >> (5 * i)) & 31] for i in range(6, -1, -1))
        message = ExportTraceServiceRequest.FromString(self.request)
        for resource_spans in message.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    span.trace_id = tag + span.trace_id[4:]
                    span.span_id = tag[1:] + span.span_id[3:]
                    if span.parent_span_id:
                        span.parent_span_id = tag[1:] + span.parent_span_id[3:]
                    for kv in span.attributes:
                        text = kv.value.string_value
                        if "wrun_" in text:
                            kv.value.string_value = _RUN_ID.sub(lambda m: f"wrun_{run_tag}{m.group(0)[12:]}", text)
        wire: bytes = message.SerializeToString()
        return wire

    def body(self, *, size: int | None = None, spans: int | None = None) -> tuple[bytes, int]:
        """(a request of fresh copies of at least ``size`` bytes or ``spans`` spans, its span count)."""
        parts: list[bytes] = []
        count = 0
        while (size is not None and sum(map(len, parts)) < size) or (spans is not None and count < spans):
            parts.append(self._copy())
            count += self.spans
        return b"".join(parts), count


# ---- the server ----------------------------------------------------------------------------------


def _serve(tmp: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    argv = [sys.executable, "-m", "telemetry", "serve", "--no-world", "--port", str(port)]
    argv += ["--store", str(tmp / "store.sqlite3"), "--retention-age", "0", "--retention-size", "0", *args]
    return start_server(argv, port, log=tmp / "serve.log"), f"http://127.0.0.1:{port}/v1/traces"


def _stop(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(60)


# ---- the clients ---------------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: dict[int, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    waits: list[float] = field(default_factory=list)  # accepted requests: first byte sent → 200
    stored_spans: int = 0
    stored_at: list[tuple[float, int]] = field(default_factory=list)  # (when the 200 came, spans)
    first_answers: dict[int, int] = field(default_factory=dict)
    retry_after: list[int] = field(default_factory=list)

    def status(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def error(self, error: BaseException) -> None:
        name = type(error).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


async def _send_until_stored(
    session: aiohttp.ClientSession, url: str, body: bytes, spans: int, tally: Tally, deadline: float
) -> bool:
    """POST ``body``; on 503 wait exactly ``Retry-After`` and send it again (until ``deadline``)."""
    first = True
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            async with session.post(url, data=body, headers=PB) as response:
                await response.read()
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.ClientError, TimeoutError) as error:
            tally.error(error)
            if first:
                tally.first_answers[0] = tally.first_answers.get(0, 0) + 1
            first = False
            await asyncio.sleep(1)
            continue
        tally.status(status)
        if first:
            tally.first_answers[status] = tally.first_answers.get(status, 0) + 1
        first = False
        if status == 200:
            tally.waits.append(time.monotonic() - started)
            tally.stored_spans += spans
            tally.stored_at.append((time.monotonic(), spans))
            return True
        if status not in (429, 503) or retry_after is None:
            return False
        tally.retry_after.append(int(retry_after))
        await asyncio.sleep(min(int(retry_after), max(0.0, deadline - time.monotonic())))
    return False


def _session(address: int) -> aiohttp.ClientSession:
    """A client of its own (its own loopback address, as separate hosts would be)."""
    connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{address}", 0), limit=0)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300))


# ---- memory --------------------------------------------------------------------------------------


def _memory_case(url: str, bodies: list[tuple[bytes, int]]) -> tuple[Tally, float]:
    async def main() -> tuple[Tally, float]:
        tally = Tally()
        deadline = time.monotonic() + 240
        sessions = [_session(10 + i) for i in range(len(bodies))]
        started = time.monotonic()
        try:
            await asyncio.gather(
                *(
                    _send_until_stored(s, url, body, spans, tally, deadline)
                    for s, (body, spans) in zip(sessions, bodies, strict=True)
                )
            )
        finally:
            for s in sessions:
                await s.close()
        return tally, time.monotonic() - started

    return asyncio.run(main())


def _memory_rows(copies: Copies) -> list[dict]:
    bodies = [copies.body(size=MEMORY_BODY) for _ in range(MEMORY_CLIENTS)]
    size_mib = sum(len(b) for b, _ in bodies) / len(bodies) / MiB
    results = {}
    for name, budget in (("ours", "256MiB"), ("unbounded", "64GiB")):
        tmp = Path(tempfile.mkdtemp(prefix=f"wft-bench-memory-{name}-"))
        server, url = _serve(tmp, "--max-pending-bytes", budget)
        try:
            tally, seconds = _memory_case(url, bodies)
            rss = peak_rss_mib(server.pid)
        finally:
            _stop(server)
        results[name] = (tally, seconds, rss)
    tally, seconds, rss = results["ours"]
    base_tally, base_seconds, base_rss = results["unbounded"]
    answered = sum(tally.first_answers.get(s, 0) for s in (200, 413, 503))
    stored = tally.statuses.get(200, 0)
    ok = rss < MEMORY_TARGET_MIB and answered == MEMORY_CLIENTS and not tally.errors
    return [
        {
            "benchmark": f"8. memory: {MEMORY_CLIENTS} clients × {size_mib:.1f} MiB bodies of real workflow spans at"
            " once, retrying on Retry-After (1 server process, --max-pending-bytes 256MiB)",
            "ours": f"peak RSS {rss:.0f} MiB; first answers {_fmt(tally.first_answers)};"
            f" {stored}/{MEMORY_CLIENTS} stored in {seconds:.0f} s; client errors {_fmt(tally.errors) or 'none'}",
            "baseline": f"no byte budget: peak RSS {base_rss:.0f} MiB; {base_tally.statuses.get(200, 0)}/"
            f"{MEMORY_CLIENTS} stored in {base_seconds:.0f} s",
            "ratio": f"{rss / base_rss:.2f}× RSS",
            "target": f"peak RSS < {MEMORY_TARGET_MIB} MiB, every client answered",
            "verdict": "met"
            if ok
            else verdict(rss, MEMORY_TARGET_MIB, higher_is_better=False, unit="MiB")
            + ("" if answered == MEMORY_CLIENTS else f"; {MEMORY_CLIENTS - answered} not answered"),
        }
    ]


def _fmt(counts: dict) -> str:
    return ", ".join(f"{k}×{v}" for k, v in sorted(counts.items(), key=str))


# ---- the retry storm -----------------------------------------------------------------------------


def _unloaded(url: str, bodies: list[tuple[bytes, int]]) -> tuple[int, float, Tally]:
    """(spans stored, seconds) of ``bodies`` sent by ``UNLOADED_CLIENTS`` clients one after another."""

    async def main() -> tuple[int, float, Tally]:
        tally = Tally()
        queue = list(bodies)
        deadline = time.monotonic() + 300

        async def client(address: int) -> None:
            async with _session(address) as session:
                while queue:
                    body, spans = queue.pop()
                    await _send_until_stored(session, url, body, spans, tally, deadline)

        started = time.monotonic()
        await asyncio.gather(*(client(100 + i) for i in range(UNLOADED_CLIENTS)))
        return tally.stored_spans, time.monotonic() - started, tally

    return asyncio.run(main())


def _storm(url: str, make_body: Callable[[], tuple[bytes, int]], seconds: float) -> tuple[int, float, Tally]:
    """(spans stored within the storm, its seconds): ``STORM_CLIENTS`` clients sending for ``seconds``.
    What is answered after the storm's end is not counted (but waited for, so the next phase starts
    on an idle server)."""

    async def main() -> tuple[int, float, Tally]:
        tally = Tally()
        started = time.monotonic()
        stop = started + seconds

        async def client(address: int) -> None:
            await asyncio.sleep(random.random() * 0.2)  # they arrive together, not in one instant
            async with _session(address) as session:
                while time.monotonic() < stop:
                    body, spans = make_body()
                    await _send_until_stored(session, url, body, spans, tally, stop)

        await asyncio.gather(*(client(10 + i) for i in range(STORM_CLIENTS)))
        return sum(spans for when, spans in tally.stored_at if when <= stop), seconds, tally

    return asyncio.run(main())


def _storm_rows(copies: Copies) -> list[dict]:
    """Unloaded and storm phases alternate (U S U S U) on one server, so drift in what the shared
    machine gives us lands on both sides of the ratio."""
    per_request = copies.body(spans=STORM_SPANS)[1]
    unloaded_bodies = [[copies.body(spans=STORM_SPANS) for _ in range(UNLOADED_REQUESTS)] for _ in range(3)]
    pool = [copies.body(spans=STORM_SPANS) for _ in range(1200)]  # fresh requests for both storms

    def make_body() -> tuple[bytes, int]:
        return pool.pop() if pool else copies.body(spans=STORM_SPANS)

    tmp = Path(tempfile.mkdtemp(prefix="wft-bench-storm-"))
    server, url = _serve(tmp)
    unloaded_spans = storm_spans = 0
    unloaded_s = storm_s = 0.0
    storm = Tally()
    refused_unloaded = 0
    try:
        for phase in range(5):
            if phase % 2 == 0:
                spans, seconds, tally = _unloaded(url, unloaded_bodies[phase // 2])
                unloaded_spans, unloaded_s = unloaded_spans + spans, unloaded_s + seconds
                refused_unloaded += tally.statuses.get(503, 0)
                if phase == 0:
                    rss_unloaded = peak_rss_mib(server.pid)
            else:
                spans, seconds, tally = _storm(url, make_body, STORM_SECONDS)
                storm_spans, storm_s = storm_spans + spans, storm_s + seconds
                for status, count in tally.statuses.items():
                    storm.statuses[status] = storm.statuses.get(status, 0) + count
                for name, count in tally.errors.items():
                    storm.errors[name] = storm.errors.get(name, 0) + count
                storm.waits += tally.waits
                storm.retry_after += tally.retry_after
        rss = peak_rss_mib(server.pid)
    finally:
        _stop(server)
    unloaded_rate, goodput = unloaded_spans / unloaded_s, storm_spans / storm_s
    ratio = goodput / unloaded_rate
    worst = max(storm.waits) if storm.waits else float("inf")
    refused = storm.statuses.get(503, 0)
    spread = f"{min(storm.retry_after)}..{max(storm.retry_after)} s" if storm.retry_after else "none"
    ok = ratio >= GOODPUT_TARGET and worst <= WAIT_TARGET_S and rss < MEMORY_TARGET_MIB and not storm.errors
    misses = []
    if ratio < GOODPUT_TARGET:
        misses.append(verdict(ratio, GOODPUT_TARGET, higher_is_better=True, unit="× unloaded"))
    if worst > WAIT_TARGET_S:
        misses.append(verdict(worst, WAIT_TARGET_S, higher_is_better=False, unit="s wait"))
    if rss >= MEMORY_TARGET_MIB:
        misses.append(f"**missed**: peak RSS {rss:.0f} MiB")
    if storm.errors:
        misses.append(f"**missed**: client errors {_fmt(storm.errors)}")
    return [
        {
            "benchmark": f"8. retry storm: {STORM_CLIENTS} clients × {per_request}-span requests of real workflow"
            f" spans, 2 storms of {STORM_SECONDS:.0f} s between 3 unloaded phases, each client retrying exactly on"
            " Retry-After (1 server process, defaults)",
            "ours": f"goodput {goodput:,.0f} spans/s; max accepted wait {worst:.2f} s"
            f" (p50 {_quantile(storm.waits, 0.5):.2f} s); {storm.statuses.get(200, 0)} stored, {refused} refused"
            f" (Retry-After {spread}); client errors {_fmt(storm.errors) or 'none'}; peak RSS {rss:.0f} MiB",
            "baseline": f"unloaded: {unloaded_rate:,.0f} spans/s ({UNLOADED_CLIENTS} clients, {refused_unloaded}"
            f" refused); peak RSS {rss_unloaded:.0f} MiB",
            "ratio": f"{ratio:.2f}× goodput",
            "target": f"≥ {GOODPUT_TARGET:.0%} of unloaded, accepted wait ≤ {WAIT_TARGET_S:g} s, RSS bounded",
            "verdict": "met" if ok else "; ".join(misses),
        }
    ]


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def run(harness_out: Path) -> list[dict]:
    copies = Copies(exported_request(harness_out / "local-data"))
    return _memory_rows(copies) + _storm_rows(copies)
