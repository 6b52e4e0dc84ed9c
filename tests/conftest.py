from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from telemetry.tracing import reset_benign_counts

from .harness_app import run_status, start_workflow
from .pgserver import destroy, free_port, start_pg

#: helpers the test modules import from here along with the fixtures
__all__ = ["run_status", "start_workflow"]


@pytest.fixture
def spans():
    """A real SDK tracer provider with an in-memory exporter: (provider, exporter)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture(autouse=True)
def _fresh_benign_counts():
    reset_benign_counts()
    yield


# ---- real SDK data: the harness runs once per test session --------------------------------
HARNESS = Path(__file__).resolve().parents[2] / "shared" / "sdk-harness"


#: how often the harness's PostgreSQL is started on a fresh port when the one picked was taken
HARNESS_PG_ATTEMPTS = 3


def _run_harness(world: str, out: Path) -> None:
    """Run the harness for one world into ``out``.

    The harness's PostgreSQL would listen on 55432 unless told otherwise. That port sits in the
    kernel's ephemeral range, so any client connection of the suite may hold it as its local port
    at that moment (CI failed on exactly that): it gets a port just found free, and a new one if
    that was taken before the server bound it."""
    log = out / f"harness-{world}.log"
    for _ in range(HARNESS_PG_ATTEMPTS if world == "postgres" else 1):
        env = {**os.environ, "PGPORT": str(free_port())}
        with log.open("w") as fh:
            result = subprocess.run(
                ["bash", str(HARNESS / "run.sh"), world, str(out)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=1200,
                env=env,
            )
        if result.returncode == 0 or "already in use" not in log.read_text():
            break
    if result.returncode != 0:
        raise RuntimeError(
            f"sdk-harness {world} failed (exit {result.returncode}); see {log}:\n{log.read_text()[-3000:]}"
        )


@pytest.fixture(scope="session")
def harness_out() -> Path:
    """The harness's outputs for both worlds. WFT_HARNESS_OUT reuses an earlier output dir."""
    reuse = os.environ.get("WFT_HARNESS_OUT")
    if (
        reuse
        and (Path(reuse) / "local-runs-summary.json").exists()
        and (Path(reuse) / "postgres" / "world.sql").exists()
    ):
        return Path(reuse)
    if not HARNESS.exists():
        pytest.fail(f"sdk-harness not found at {HARNESS} (../shared must sit beside the repo)")
    out = Path(tempfile.mkdtemp(prefix="wft-harness-"))
    _run_harness("local", out)
    _run_harness("postgres", out)
    return out


@pytest.fixture(scope="session")
def pg_server():
    server = start_pg()
    yield server
    destroy(server)


@pytest.fixture(scope="session")
def harness_pg_url(pg_server, harness_out) -> str:
    """A database loaded from the harness's final world-postgres dump."""
    url = pg_server.create_database("harness_final")
    pg_server.psql("-f", str(harness_out / "postgres" / "world.sql"), db="harness_final")
    return url


def summary(harness_out: Path, world: str) -> dict:
    return json.loads((harness_out / f"{world}-runs-summary.json").read_text())["results"]


@pytest.fixture
def otlp_receiver():
    from .otlp_receiver import start_receiver

    receiver, stop = start_receiver()
    yield receiver
    stop()


@pytest.fixture(params=["local", "postgres"])
def real_world(request, harness_out):
    """(world kind, world reader over the harness's final data, driver summary for that world)."""
    if request.param == "local":
        from telemetry.backends.local import LocalWorld

        world = LocalWorld(harness_out / "local-data")
    else:
        from telemetry.backends.postgres import PostgresWorld

        world = PostgresWorld(request.getfixturevalue("harness_pg_url"))
    yield request.param, world, summary(harness_out, request.param)
    import asyncio

    asyncio.run(world.close())


@pytest.fixture(scope="session")
def harness_app_dir() -> Path:
    """The harness's built app (it has the SDK's CLI installed)."""
    out = subprocess.run(["bash", str(HARNESS / "run.sh"), "prepare"], capture_output=True, text=True, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(f"sdk-harness prepare failed: {out.stderr[-2000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def wft(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess."""
    import sys

    return subprocess.run(
        [sys.executable, "-m", "telemetry", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def live_local_app(tmp_path):
    """The real SDK app serving on world-local (`run.sh serve local`), stopped afterwards."""
    state = tmp_path / "app"
    out = subprocess.run(
        ["bash", str(HARNESS / "run.sh"), "serve", "local", str(state)], capture_output=True, text=True, timeout=1200
    )
    if out.returncode != 0:
        raise RuntimeError(f"sdk-harness serve failed: {out.stderr[-2000:]}")
    info = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    yield info
    subprocess.run(["bash", str(HARNESS / "run.sh"), "stop", str(state)], capture_output=True, timeout=60)


@pytest.fixture
def collector(tmp_path):
    """A collector service in this process (its own thread and loop), on a free port."""
    import asyncio
    import threading

    from collector.app import start
    from collector.settings import Settings

    holder: dict = {}
    ready = threading.Event()

    def make(**overrides):
        settings = Settings(
            port=0, store=tmp_path / "store.sqlite3", retention_age_s=None, retention_bytes=None, **overrides
        )

        def run() -> None:
            loop = asyncio.new_event_loop()
            holder["loop"] = loop
            try:
                holder["service"] = loop.run_until_complete(start(settings))
            except BaseException as error:  # surfaced to the test
                holder["error"] = error
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(holder["service"].close())
            loop.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        ready.wait(30)
        if "error" in holder:
            raise holder["error"]
        holder["thread"] = thread
        return holder["service"]

    yield make
    if "service" in holder:
        holder["loop"].call_soon_threadsafe(holder["loop"].stop)
        holder["thread"].join(30)


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30):
    """(status, headers, body) of one request; errors are answers, not exceptions."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def get_json(url: str, headers: dict | None = None):
    status, _, body = http("GET", url, headers=headers)
    assert status == 200, body
    return json.loads(body)


@pytest.fixture
def sentry_upstream():
    from .sentry_standin import start_standin

    standin, stop = start_standin()
    yield standin
    stop()


def wait_for_line(process, needle: str, timeout: float = 30) -> str:
    """The first line of ``process``'s stderr holding ``needle`` (``AssertionError`` with what it
    said when it does not within ``timeout`` seconds or ends first)."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        lines.append(line)
        if needle in line:
            return line
        if not line and process.poll() is not None:
            break
    raise AssertionError(f"{needle!r} never logged: {''.join(lines)[-2000:]}")


def stored_span_ids(service) -> set[str]:
    """The span ids a collector ``service`` (from the ``collector`` fixture) has stored."""
    conn = service.store.connect()
    try:
        return {row[0] for row in conn.execute("SELECT span_id FROM spans")}
    finally:
        conn.close()
