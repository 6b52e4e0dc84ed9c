"""The collector under fuzzing: structure-aware mutations of real bodies against a real ``wft serve``.

Seeds are real (``tests/fuzz/corpus.py``): OTLP protobuf from the OTel SDK exporter and from
``wft export`` of the TS SDK harness's data, the same in OTLP-JSON, Sentry envelopes from the
real sentry-sdk, OTLP metrics and logs from the real OTel exporters (for the relay to upstream).
Each case mutates one (``tests/fuzz/mutate.py``) and sends it, with auth, eight
at a time, so fuzzed and valid requests share group commits. Between them go valid requests
(fresh SDK spans, real envelopes), API reads with odd parameters and odd credentials.

It asserts: no answer is a 5xx; the process stays up and logs no traceback and no secret; every
valid request sent around the fuzzed ones is answered 200 and stored; every stored run (and a
sample of traces and spans) is served back by the API as strict JSON; nothing upstream sees the
token. ``WFT_FUZZ_CASES`` sets the count (CI: 3,000; ``make fuzz``: 100,000), ``WFT_FUZZ_SEED`` the
seed; the answers by status go to ``test-artifacts/fuzz-summary-<cases>.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from yarl import URL

from .fuzz import corpus, mutate
from .pgserver import free_port
from .sdk_spans import RUN

CASES = int(os.environ.get("WFT_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("WFT_FUZZ_SEED", "20261122"))
TOKEN = "fuzz-token-0123456789abcdef"
UPSTREAM_KEY = "upstream-dsn-key-secret"
PB, JS = "application/x-protobuf", "application/json"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SENTRY_AUTH = {"X-Sentry-Auth": f"Sentry sentry_version=7, sentry_key={TOKEN}, sentry_client=fuzz/1.0"}
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _valid_spans(rng: random.Random) -> Any:
    """A real SDK batch for one of 64 runs (a run each would make the final check long; one run for
    all would make every commit re-read an ever larger run)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "valid"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("workflow")
    run = f"{RUN[:-2]}{rng.randrange(64):02d}"
    with tracer.start_as_current_span("WORKFLOW valid", attributes={"workflow.run.id": run, "workflow.name": "w"}):
        for i in range(rng.randint(1, 3)):
            with tracer.start_as_current_span(f"STEP s{i}", attributes={"workflow.run.id": run, "step.id": f"s{i}"}):
                pass
    provider.shutdown()
    return memory.get_finished_spans()


def _strict(text: str) -> Any:
    """``json.loads`` that refuses what RFC 8259 does (bare NaN, Infinity, -Infinity)."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def seeds(harness_out) -> dict[str, list[Any]]:
    protobuf = corpus.sdk_protobuf_bodies() + corpus.export_protobuf_bodies(harness_out / "local-data")
    sentry = corpus.sentry_bodies(TOKEN)
    return {
        "protobuf": protobuf,
        "json": [corpus.otlp_json(b) for b in protobuf],
        "envelopes": [body for path, body in sentry if path.endswith("/envelope/")],
        "relayed": corpus.metrics_and_logs_bodies(),
    }


class Fuzzer:
    def __init__(self, url: str, seeds: dict[str, list[Any]], rng: random.Random) -> None:
        self.url = url
        self.seeds = seeds
        self.rng = rng
        self.answers: Counter[tuple[str, int]] = Counter()
        self.server_errors: list[tuple[str, int, str, bytes]] = []
        self.valid_spans: set[str] = set()
        self.valid_failures: list[tuple[str, int, str]] = []
        self.run_ids: list[str] = []

    async def send(
        self,
        session: aiohttp.ClientSession,
        kind: str,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
    ) -> tuple[int, bytes]:
        try:
            async with session.request(method, URL(self.url + path, encoded=True), data=body, headers=headers) as r:
                answer = await r.read()
                status = r.status
        except aiohttp.ClientError as error:  # the server closed on us: count it, it is not an answer
            self.answers[(kind, -1)] += 1
            self.server_errors.append((kind, -1, str(error), (body or b"")[:300]))
            return -1, b""
        self.answers[(kind, status)] += 1
        if status >= 500 and not (status == 503 and "overloaded" in answer.decode(errors="replace")):
            self.server_errors.append((kind, status, answer.decode(errors="replace")[:300], (body or b"")[:300]))
        return status, answer

    # ---- one case of each kind ----------------------------------------------------------------------

    def _maybe_bytes(self, body: bytes) -> bytes:
        return mutate.mutate_bytes(body, self.rng) if self.rng.random() < 0.2 else body

    async def otlp_protobuf(self, session: aiohttp.ClientSession) -> None:
        rng = self.rng
        body = self._maybe_bytes(mutate.mutate_otlp(rng.choice(self.seeds["protobuf"]), rng).SerializeToString())
        body, headers = mutate.encode(body, rng)
        content_type = PB if rng.random() < 0.95 else rng.choice([JS, "text/plain", "application/x-protobuf; x=1"])
        await self.send(
            session, "otlp-protobuf", "POST", "/v1/traces", body, {**AUTH, **headers, "Content-Type": content_type}
        )

    async def otlp_json(self, session: aiohttp.ClientSession) -> None:
        rng = self.rng
        body = self._maybe_bytes(mutate.mutate_otlp_json(rng.choice(self.seeds["json"]), rng))
        body, headers = mutate.encode(body, rng)
        content_type = JS if rng.random() < 0.95 else rng.choice(["application/json; charset=utf-8", PB, ""])
        await self.send(
            session, "otlp-json", "POST", "/v1/traces", body, {**AUTH, **headers, "Content-Type": content_type}
        )

    async def envelope(self, session: aiohttp.ClientSession) -> None:
        rng = self.rng
        body = self._maybe_bytes(mutate.mutate_envelope(rng.choice(self.seeds["envelopes"]), rng))
        body, headers = mutate.encode(body, rng)
        path, auth = "/api/42/envelope/", dict(SENTRY_AUTH)
        if rng.random() < 0.2:
            path, auth = f"/api/42/envelope/?sentry_key={TOKEN}&sentry_version=7", {}
        headers = {**auth, **headers, "Content-Type": "application/x-sentry-envelope"}
        await self.send(session, "sentry-envelope", "POST", path, body, headers)

    async def store_event(self, session: aiohttp.ClientSession) -> None:
        rng = self.rng
        body = self._maybe_bytes(mutate.mutate_event(rng.choice(self.seeds["envelopes"]), rng))
        body, headers = mutate.encode(body, rng)
        await self.send(
            session, "sentry-store", "POST", "/api/42/store/", body, {**SENTRY_AUTH, **headers, **{"Content-Type": JS}}
        )

    async def relayed(self, session: aiohttp.ClientSession) -> None:
        """Metrics and logs for the relay (``--forward-otlp`` is on): byte-level mutations of what the
        real exporters send, compressed or not, now and then as JSON or to the other signal's path."""
        rng = self.rng
        path, body = rng.choice(self.seeds["relayed"])
        if rng.random() < 0.1:
            path = "/v1/logs" if path == "/v1/metrics" else "/v1/metrics"
        body = mutate.mutate_bytes(body, rng) if rng.random() < 0.7 else body
        body, headers = mutate.encode(body, rng)
        content_type = PB if rng.random() < 0.9 else rng.choice([JS, "text/plain"])
        await self.send(session, "otlp-relayed", "POST", path, body, {**AUTH, **headers, "Content-Type": content_type})

    async def api_read(self, session: aiohttp.ClientSession) -> None:
        rng = self.rng
        run = quote(rng.choice(self.run_ids or ["wrun_x"])[:500], safe="")
        odd = rng.choice(
            [
                "",
                "x",
                "-1",
                "0",
                "9" * 30,
                "9" * 5000,
                "%00",
                "%ff%fe",
                "%",
                "2262-04-12T00:00:00Z",
                "9999-12-31",
                "1:x",
            ]
        )
        path = rng.choice(
            [
                f"/api/runs?limit={odd}",
                f"/api/runs?since={odd}",
                f"/api/runs?until={odd}&status=running",
                f"/api/runs?cursor={odd}",
                f"/api/runs?workflow={odd}",
                f"/api/runs/{run}",
                f"/api/runs/{run}/waterfall",
                f"/api/runs/{run}/events?limit={odd}&cursor={odd}",
                f"/api/traces/{odd}",
                f"/api/spans/{odd}/{odd}",
                f"/api/lookup/{odd or 'x'}",
                "/metrics",
                f"/runs/{run}",
            ]
        )
        await self.send(session, "api", "GET", path, None, dict(AUTH))

    async def credentials(self, session: aiohttp.ClientSession) -> None:
        rng = self.rng
        headers = rng.choice(
            [
                {},
                {"Authorization": f"bearer {TOKEN}"},
                {"Authorization": f"BEARER {TOKEN}x"},
                {"Authorization": "Bearer \udcff".encode("utf-8", "surrogateescape").decode("latin-1")},
                {"Authorization": TOKEN},
                {"Cookie": "wft_session=" + "0" * 64},
                {"X-Sentry-Auth": "Sentry sentry_key=nope"},
            ]
        )
        method, path = rng.choice(
            [("GET", "/api/runs"), ("GET", "/"), ("POST", "/v1/traces"), ("GET", "/?token=wrong"), ("GET", "/nope")]
            + [("POST", "/login"), ("GET", "/metrics"), ("GET", "/static/common.js"), ("POST", "/api/1/store/")]
        )
        body = b"token=wrong&next=//evil.example" if path == "/login" else b""
        extra = {"Content-Type": "application/x-www-form-urlencoded"} if path == "/login" else {}
        await self.send(session, "auth", method, path, body, {**headers, **extra})

    async def valid_otlp(self, session: aiohttp.ClientSession) -> None:
        spans = _valid_spans(self.rng)
        status, answer = await self.send(
            session,
            "valid-otlp",
            "POST",
            "/v1/traces",
            encode_spans(spans).SerializeToString(),
            {**AUTH, "Content-Type": PB},
        )
        reply = ExportTraceServiceResponse()
        if status == 200:
            reply.ParseFromString(answer)
        if status != 200 or reply.partial_success.rejected_spans:
            self.valid_failures.append(("otlp", status, answer[:300].decode(errors="replace")))
            return
        self.valid_spans |= {f"{s.context.span_id:016x}" for s in spans}

    async def valid_envelope(self, session: aiohttp.ClientSession) -> None:
        body = self.rng.choice(self.seeds["envelopes"])
        status, answer = await self.send(session, "valid-sentry", "POST", "/api/42/envelope/", body, dict(SENTRY_AUTH))
        if status != 200:
            self.valid_failures.append(("sentry", status, answer[:300].decode(errors="replace")))

    async def case(self, session: aiohttp.ClientSession, number: int) -> None:
        if number % 10 == 0:
            await self.valid_otlp(session)
            return
        if number % 25 == 1:
            await self.valid_envelope(session)
            return
        roll = self.rng.random()
        if roll < 0.33:
            await self.otlp_protobuf(session)
        elif roll < 0.6:
            await self.otlp_json(session)
        elif roll < 0.82:
            await self.envelope(session)
        elif roll < 0.87:
            await self.store_event(session)
        elif roll < 0.91:
            await self.relayed(session)
        elif roll < 0.97:
            await self.api_read(session)
        else:
            await self.credentials(session)

    async def run(self, cases: int, *, concurrency: int = 8) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
            pending: set[asyncio.Task[None]] = set()
            for number in range(cases):
                if number % 200 == 0:
                    await self.refresh_run_ids(session)
                if len(pending) >= concurrency:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()
                pending.add(asyncio.create_task(self.case(session, number)))
            for task in asyncio.as_completed(pending):
                await task

    async def refresh_run_ids(self, session: aiohttp.ClientSession) -> None:
        async with session.get(f"{self.url}/api/runs?limit=500", headers=AUTH) as r:
            if r.status == 200:
                self.run_ids = [run["runId"] for run in _strict(await r.text())["data"]]


async def _served_strictly(url: str, store: Path) -> dict[str, int]:
    """Every run the API lists, and a sample of traces and spans, fetched and parsed strictly."""
    checked: Counter[str] = Counter()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def get(path: str) -> Any:
            async with session.get(URL(url + path, encoded=True), headers=AUTH) as r:
                text = await r.text()
                assert r.status == 200, (path, r.status, text[:300])
                return _strict(text)

        runs: list[str] = []
        cursor = None
        while True:
            page = await get("/api/runs?limit=500" + (f"&cursor={quote(cursor, safe='')}" if cursor else ""))
            runs += [r["runId"] for r in page["data"]]
            checked["run rows"] += len(page["data"])
            cursor = page["cursor"]
            if not cursor:
                break
        for run_id in runs:
            encoded = quote(run_id, safe="")
            for suffix in ("", "/waterfall", "/events"):
                await get(f"/api/runs/{encoded}{suffix}")
            checked["runs"] += 1
        conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT trace_id, span_id FROM spans ORDER BY random() LIMIT 300").fetchall()
        finally:
            conn.close()
        for trace_id, span_id in rows:
            await get(f"/api/traces/{trace_id}")
            await get(f"/api/spans/{trace_id}/{span_id}")
            checked["traces"] += 1
    return dict(checked)


def test_fuzz_the_collector(tmp_path, seeds):
    rng = random.Random(SEED)
    port = free_port()
    store = tmp_path / "store.sqlite3"
    log_path = tmp_path / "serve.log"
    with corpus.Capture() as upstream:
        host = upstream.url.split("://", 1)[1]
        args = [sys.executable, "-m", "telemetry", "-v", "serve", "--port", str(port), "--store", str(store)]
        args += ["--no-world"]
        args += ["--forward-otlp", upstream.url, "--sentry-upstream", f"http://{UPSTREAM_KEY}@{host}/7"]
        args += ["--relay", "metrics,logs"]
        env = {**os.environ, "WFT_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
        with log_path.open("w") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
                    time.sleep(0.05)
            fuzzer = Fuzzer(url, seeds, rng)
            started = time.monotonic()
            asyncio.run(fuzzer.run(CASES))
            elapsed = time.monotonic() - started
            alive = process.poll() is None
            try:
                checked: dict[str, Any] = asyncio.run(_served_strictly(url, store))
            except AssertionError as error:  # reported with the rest, after the summary is written
                checked = {"failed": str(error)[:1000]}
            health = subprocess.run(
                [sys.executable, "-c", f"import urllib.request; print(urllib.request.urlopen('{url}/healthz').status)"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            process.terminate()
            process.wait(30)
        upstream_seen = list(upstream.bodies)
        upstream_requests = list(upstream.requests)
    conn = sqlite3.connect(store)
    try:
        stored = {row[0] for row in conn.execute("SELECT span_id FROM spans")}
    finally:
        conn.close()
    log_text = log_path.read_text(errors="replace")
    by_status = Counter()
    for (_, status), count in fuzzer.answers.items():
        by_status[status] += count
    summary = {
        "cases": CASES,
        "seed": SEED,
        "seconds": round(elapsed, 1),
        "answers_by_status": {str(k): v for k, v in sorted(by_status.items())},
        "answers_by_kind_and_status": {f"{k} {s}": v for (k, s), v in sorted(fuzzer.answers.items())},
        "answers_5xx": sum(v for s, v in by_status.items() if s >= 500 or s < 0),
        "valid_spans_acknowledged": len(fuzzer.valid_spans),
        "valid_spans_stored": len(fuzzer.valid_spans & stored),
        "served_back": checked,
        "alive_and_healthy": alive and health.stdout.strip() == "200",
        "seeds": {k: len(v) for k, v in seeds.items()},
    }
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"fuzz-summary-{CASES}.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    assert summary["alive_and_healthy"], "the collector died or stopped answering"
    assert "failed" not in checked, checked
    assert fuzzer.server_errors == [], fuzzer.server_errors[:5]
    assert fuzzer.valid_failures == [], fuzzer.valid_failures[:5]
    assert fuzzer.valid_spans and fuzzer.valid_spans <= stored
    assert "Traceback" not in log_text and "Error handling request" not in log_text, log_text[-3000:]
    assert TOKEN not in log_text and UPSTREAM_KEY not in log_text
    assert not any(TOKEN.encode() in body for _, body in upstream_seen)  # the token never leaves
    assert not any(TOKEN in target or TOKEN in json.dumps(headers) for target, headers in upstream_requests)
    assert checked["runs"] >= 1 and checked["traces"] >= 1
