"""collector/forward.py: the on-disk spool, sending in order, retry with backoff against a real
local server that fails and then recovers, the spool bound, restarts, and stopping."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from collector.forward import Forwarder
from collector.metrics import Metrics

from .pgserver import free_port


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


KEY = "Bearer forward-key-0123456789"


def _files(spool) -> list:
    return sorted(spool.glob("*.pb"))


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
    # the defaults are added as it is sent: the file holds the body's type, readable by earlier versions
    assert metas[0] == {
        "url": "http://127.0.0.1:9/v1/traces",
        "headers": {"Content-Type": "x/default"},
        "defaults": True,
    }
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


def test_the_forwarders_own_headers_are_added_as_sent_so_a_rotated_key_applies_to_the_spool(tmp_path):
    """Batches spooled under one key and sent after a restart with another go with the new one
    (the spool holds no key); a batch with its own headers (the relay's) keeps them."""
    spool = tmp_path / "spool"

    async def go():
        async with _upstream(want=2) as upstream:
            old = Forwarder(upstream.url, spool, Metrics(), headers={"Authorization": "Bearer old-key"})
            await old.enqueue(b"spooled before the restart")
            await old.enqueue(b"a client's", headers={"X-Sentry-Auth": "Sentry sentry_key=client"})
            assert b"old-key" not in b"".join(f.read_bytes() for f in _files(spool))
            new = Forwarder(upstream.url, spool, Metrics(), headers={"Authorization": "Bearer new-key"})
            async with _running(new):
                await asyncio.wait_for(upstream.delivered.wait(), 10)
            return upstream

    upstream = asyncio.run(go())
    (_, _, first, sent), (_, _, second, client) = upstream.arrivals
    assert first == b"spooled before the restart" and sent["Authorization"] == "Bearer new-key"
    assert second == b"a client's" and "Authorization" not in client and "sentry_key=client" in client["X-Sentry-Auth"]


def test_a_batch_spooled_under_an_upstream_url_goes_to_the_url_given_now(tmp_path):
    """Credentials in the --forward-otlp URL, rotated across a restart: what was spooled goes with
    the new ones (held on a 401 otherwise, it would stall everything behind it)."""
    import base64

    spool = tmp_path / "spool"

    async def go():
        async with _upstream(want=1) as upstream:
            with_password = upstream.url.replace("http://", "http://user:{}@")
            old = Forwarder(with_password.format("old-password"), spool, Metrics(), headers={"Content-Type": "x/y"})
            await old.enqueue(b"spooled under the old password")
            new = Forwarder(with_password.format("new-password"), spool, Metrics(), headers={"Content-Type": "x/y"})
            async with _running(new):
                await asyncio.wait_for(upstream.delivered.wait(), 10)
            return upstream

    ((_, status, body, headers),) = asyncio.run(go()).arrivals
    assert (status, body) == (200, b"spooled under the old password")
    assert headers["Authorization"] == "Basic " + base64.b64encode(b"user:new-password").decode()


def test_a_batch_spooled_before_forward_headers_existed_goes_with_them_after_the_upgrade(tmp_path):
    """The previous version spooled its defaults (a content type alone) into each file: such a file
    is read as the defaults, so it goes with the key the upgraded collector was given."""
    spool = tmp_path / "spool"
    spool.mkdir()

    async def go():
        async with _upstream() as upstream:
            meta = {"url": upstream.url, "headers": {"Content-Type": "application/x-protobuf"}}
            (spool / f"{time.time_ns():020d}-00000000.pb").write_bytes(json.dumps(meta).encode() + b"\nold batch")
            forwarder = Forwarder(
                upstream.url, spool, Metrics(), headers={"Content-Type": "application/x-protobuf", "Authorization": KEY}
            )
            async with _running(forwarder):
                await asyncio.wait_for(upstream.delivered.wait(), 10)
            return upstream

    ((_, status, body, headers),) = asyncio.run(go()).arrivals
    assert (status, body) == (200, b"old batch") and headers["Authorization"] == KEY
    assert headers["Content-Type"] == "application/x-protobuf"


@pytest.mark.parametrize("status", [401, 403])
def test_a_refusal_of_the_forwarders_credentials_holds_the_batches(tmp_path, status, caplog):
    """Every batch carries the same key: a 401 says the key is wrong, not the batch. They are held
    and retried (one error a minute says so) until the key works, not dropped one by one."""
    metrics = Metrics()

    async def go():
        async with _upstream([status, status, status], want=2) as upstream:
            forwarder = Forwarder(
                upstream.url,
                tmp_path / "spool",
                metrics,
                headers={"Authorization": "Bearer k"},
                max_backoff=0.1,
                hold_on_auth_failure=True,
            )
            await forwarder.enqueue(b"first")
            await forwarder.enqueue(b"second")
            async with _running(forwarder):
                await asyncio.wait_for(upstream.delivered.wait(), 10)
            return upstream

    with caplog.at_level(logging.ERROR, logger="collector.forward"):
        upstream = asyncio.run(go())
    assert upstream.bodies() == [b"first", b"second"] and [s for _, s, *_ in upstream.arrivals][:3] == [status] * 3
    assert metrics.forward_dropped_batches == 0 and metrics.forwarded_batches == 2
    errors = [r.getMessage() for r in caplog.records if "credentials" in r.getMessage()]
    assert len(errors) == 1 and f"HTTP {status}" in errors[0] and "Bearer" not in errors[0]


@pytest.mark.parametrize(
    "value, says",
    [
        ("authorization", "entry 2 of 2 is not a header name=value"),
        ("bad name=x", "entry 2 of 2 is not a header name=value"),
        ("content-length=9", "entry 2 of 2: content-length is set by the request itself"),
        ("x-key=a%0D%0Ab", "entry 2 of 2: x-key's value holds a control character"),
        ("c2VjcmV0LWtleQ==", "entry 2 of 2 is not a header name=value"),  # a key pasted without its name
        ("X-OK=again", "entry 2 of 2: x-ok is given twice"),
        ("x-key=%FF", "entry 2 of 2: a %-escape that is not UTF-8"),
    ],
)
def test_serve_refuses_bad_forward_headers_in_one_line_without_the_value(tmp_path, value, says):
    from .conftest import wft

    store = tmp_path / "s.sqlite3"
    args = ("--forward-otlp", "http://127.0.0.1:9", "--forward-headers", f"x-ok=secret-1,{value}")
    result = wft("serve", "--no-world", "--port", "0", "--store", str(store), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert says in line and "secret-1" not in line
    result = wft("serve", "--no-world", "--port", "0", "--store", str(store), "--forward-headers", "a=b")
    assert result.returncode == 2 and "--forward-headers needs --forward-otlp" in result.stderr
    both = ("--forward-otlp", "http://u:p@127.0.0.1:9", "--forward-headers", "authorization=Bearer%20k")
    result = wft("serve", "--no-world", "--port", "0", "--store", str(store), *both)
    assert result.returncode == 2 and "give one of the two" in result.stderr and "Bearer" not in result.stderr


@pytest.mark.parametrize(
    "args, says",
    [
        (["--relay", "metrics"], "--relay needs --forward-otlp: the signals go to its upstream"),
        (["--forward-otlp", "http://127.0.0.1:9", "--relay", "metrics,traces"], "--relay: traces: the signals relayed"),
    ],
)
def test_serve_refuses_a_bad_relay_in_one_line(tmp_path, args, says):
    from .conftest import wft

    store = tmp_path / "s.sqlite3"
    result = wft("serve", "--no-world", "--port", "0", "--store", str(store), *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert says in line and not store.exists()


def test_parse_headers_reads_the_otel_format():
    from collector.settings import parse_headers

    assert parse_headers("Authorization=Bearer%20k%3D%3D, X-Scope-OrgID = team ,", "f") == {
        "authorization": "Bearer k==",
        "x-scope-orgid": "team",
    }
    assert parse_headers("", "f") == {}


def test_upstream_not_listening_then_coming_up(tmp_path):
    port = free_port()
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
    port = free_port()  # upstream keeps its address across our restart

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


# ---- outcome-aware sampling end to end (--forward-sample; the sampler itself: test_sampling.py) -------
# Real `wft serve` processes following copies of the harness's world-local data, forwarding to a real
# OTLP receiver; the expected spans are the event-log spans `wft` builds from the same data.


def _serve_sampling(tmp_path, name: str, world, receiver_url: str, *args: str):
    """A `wft serve` process of its own (store, spool, sampling buffer) logging to a file."""
    import subprocess
    import sys

    home = tmp_path / name
    home.mkdir(exist_ok=True)
    port = free_port()
    log = (home / "serve.log").open("a")
    command = [sys.executable, "-m", "telemetry", "serve", "--port", str(port), "--store", str(home / "store.sqlite3")]
    command += ["--world", "local", "--dir", str(world), "--forward-otlp", receiver_url, *args]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log)
    log.close()
    return process, home


def _stop(process) -> None:
    import signal
    import subprocess

    process.send_signal(signal.SIGTERM)
    try:
        assert process.wait(15) == 0
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def _said(home) -> str:
    return (home / "serve.log").read_text(errors="replace")[-3000:]


def _wait_for(predicate, what: str, processes, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        for process, home in processes:
            assert process.poll() is None, f"wft serve exited {process.returncode}:\n{_said(home)}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n" + "\n".join(
            _said(h) for _, h in processes
        )
        time.sleep(0.1)


def _world_span_count(store) -> int:
    import sqlite3

    if not store.exists():
        return 0
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        return conn.execute("SELECT count(DISTINCT span_id) FROM spans WHERE source = 'world'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        conn.close()


def _received(receiver) -> set[str]:
    with receiver.lock:
        return {s.span_id for s in receiver.spans}


@pytest.fixture
def receivers():
    from .otlp_receiver import start_receiver

    started = [start_receiver() for _ in range(3)]
    yield [receiver for receiver, _ in started]
    for _, stop in started:
        stop()


def test_sampling_decides_the_same_whole_runs_on_two_collectors_and_across_a_restart(harness_out, tmp_path, receivers):
    """Collectors one and two follow the final world; collector three follows the mid-run snapshot
    (four runs still going: their finished spans wait in its buffer), is stopped, sees the world
    finish, and starts again. All three forward exactly the spans of the same kept runs."""
    import shutil

    from collector.sampling import run_fraction

    from .test_sampling import _expected_kept, _runs

    final = asyncio.run(_runs(harness_out / "local-data"))
    midrun = asyncio.run(_runs(harness_out / "local-data-midrun"))
    assert {r.status for r in midrun.values()} >= {"running", "completed"}  # the snapshot has runs going
    # a rate that keeps one of the runs going at the snapshot and drops another: both wait across the restart
    going = sorted(
        run_fraction(r.run_id)
        for r in final.values()
        if midrun[r.run_id].status == "running" and r.status == "completed" and not r.errors
    )
    assert len(going) >= 2, "the mid-run snapshot has too few error-free runs going for this test"
    rate = (going[0] + going[1]) / 2
    kept = _expected_kept(final, rate)
    dropped = set(final) - kept
    assert dropped and kept
    expected = set().union(*(final[r].span_ids for r in kept))
    spec = ("--forward-sample", f"completed={rate},failed=1,cancelled=1", "--sample-max-wait", "1h")
    one, two, three = receivers
    worlds = []
    for name, source in (("one", "local-data"), ("two", "local-data"), ("three", "local-data-midrun")):
        worlds.append(tmp_path / f"world-{name}")
        shutil.copytree(harness_out / source, worlds[-1])
    first = _serve_sampling(tmp_path, "one", worlds[0], one.url, *spec)
    second = _serve_sampling(tmp_path, "two", worlds[1], two.url, *spec)
    third = _serve_sampling(tmp_path, "three", worlds[2], three.url, *spec)
    running = [first, second, third]
    try:
        in_midrun = sum(len(r.span_ids) for r in midrun.values() if r.status != "running")
        in_midrun += sum(len(_span_ids(r.partial)) for r in midrun.values() if r.status == "running")
        _wait_for(lambda: _world_span_count(third[1] / "store.sqlite3") >= in_midrun, "the mid-run world", running)
        _stop(third[0])
        running.remove(third)
        shutil.copytree(harness_out / "local-data", worlds[2], dirs_exist_ok=True)  # the runs went on and ended
        before = _received(three)
        third = _serve_sampling(tmp_path, "three", worlds[2], three.url, *spec)  # same store, spool and buffer
        running.append(third)
        for receiver, name in ((one, "one"), (two, "two"), (three, "three")):
            _wait_for(lambda r=receiver: _received(r) >= expected, f"the kept runs' spans at {name}", running)
        time.sleep(1.5)  # several tailer passes: anything wrongly forwarded has arrived by now
    finally:
        for process, _ in running:
            _stop(process)
    for receiver in (one, two, three):
        assert _received(receiver) == expected  # whole runs: every span of the kept ones, none of the others
    open_then = {r.run_id for r in midrun.values() if r.status == "running"}
    waited = set().union(*(midrun[r].span_ids for r in open_then & kept)) - set().union(
        *(final[r].span_ids for r in kept if final[r].errors)
    )
    assert waited and not waited & before  # spans buffered before the restart, sent only after it
    assert _world_span_count(third[1] / "store.sqlite3") == sum(len(r.span_ids) for r in final.values())  # all stored


def _span_ids(body: bytes) -> set[str]:
    from .otlp_receiver import decode_request

    return {s.span_id for s in decode_request(body)}


def test_sampling_forwards_a_run_left_open_after_max_wait(harness_out, tmp_path, otlp_receiver):
    """The mid-run snapshot, never finished: at completed=0 its quiet completed runs are dropped, its
    failed and erring runs kept, and the runs still going are sent as they are once they waited 3 s."""
    from .test_sampling import _runs

    midrun = asyncio.run(_runs(harness_out / "local-data-midrun"))
    going = {r.run_id for r in midrun.values() if r.status == "running"}
    waiting = {r for r in going if not midrun[r].early_errors}  # no error sent them at once
    dropped = {r.run_id for r in midrun.values() if r.status == "completed" and not r.errors}
    assert waiting and dropped
    kept_ended = set(midrun) - going - dropped
    expected = set().union(*(midrun[r].span_ids for r in kept_ended), *(_span_ids(midrun[r].partial) for r in going))
    open_spans = set().union(*(_span_ids(midrun[r].partial) for r in waiting))
    args = ("--forward-sample", "completed=0", "--sample-max-wait", "3s")
    started = time.monotonic()
    process = _serve_sampling(tmp_path, "c", harness_out / "local-data-midrun", otlp_receiver.url, *args)
    try:
        _wait_for(lambda: _received(otlp_receiver) >= open_spans, "the open runs' spans", [process])
        took = time.monotonic() - started
        time.sleep(1.0)
    finally:
        _stop(process[0])
    assert took >= 3.0  # not before the max wait
    assert _received(otlp_receiver) == expected


def test_sampling_keeps_the_apps_spans_with_their_run_and_the_store_keeps_everything(collector, otlp_receiver):
    """The otel-cut runs (OpenTelemetry on in the real SDK app): the app's OTLP/JSON requests go to the
    collector as its exporter sent them; at completed=0 the completed, error-free hook run is dropped
    upstream whole (event-log spans, spans naming it, anonymous spans of its traces) and kept locally."""
    import sqlite3

    from collector.otlp import JSON, decode_request
    from telemetry.backends import BackendConfig

    from . import otel_cut
    from .conftest import http
    from .test_sampling import _app_spans_of, _runs

    runs = asyncio.run(_runs(otel_cut.OTEL_CUT))
    hook = otel_cut.SCENARIOS["hook"]["runId"]
    service = collector(
        world=BackendConfig("local", data_dir=str(otel_cut.OTEL_CUT)),
        tail_interval=0.1,
        forward_otlp=otlp_receiver.url,
        forward_sample={"completed": 0.0, "failed": 1.0, "cancelled": 1.0},
    )
    app_spans = set()
    for body in otel_cut.request_bodies():
        assert http("POST", f"{service.url}/v1/traces", body, {"Content-Type": "application/json"})[0] == 200
        app_spans |= _span_ids(decode_request(body, JSON).SerializeToString())
    world_spans = set().union(*(r.span_ids for r in runs.values()))
    dropped = _app_spans_of(hook) | runs[hook].span_ids
    expected = (app_spans | world_spans) - dropped
    deadline = time.monotonic() + 30
    while not _received(otlp_receiver) >= expected:
        assert time.monotonic() < deadline, f"{len(expected - _received(otlp_receiver))} spans not forwarded"
        time.sleep(0.1)
    time.sleep(1.0)  # ten tailer passes: anything wrongly forwarded has arrived
    assert _received(otlp_receiver) == expected
    stats = service.sampler.stats()
    assert stats.runs == {("dropped", "completed"): 1, ("kept", "error"): 2}
    assert stats.spans[("dropped", "completed")] >= len(dropped)  # the tailer may send a span twice
    assert stats.buffered_bytes == 0 and stats.buffered_runs == 0
    # the same counts on /metrics, as Prometheus reads them
    from prometheus_client.parser import text_string_to_metric_families

    status, _, text = http("GET", f"{service.url}/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
        if s.name.startswith("wft_forward_sample")
    }
    assert samples[("wft_forward_sampled_runs_total", (("decision", "dropped"), ("reason", "completed")))] == 1
    assert samples[("wft_forward_sampled_runs_total", (("decision", "kept"), ("reason", "error")))] == 2
    spans_dropped = ("wft_forward_sampled_spans_total", (("decision", "dropped"), ("reason", "completed")))
    assert samples[spans_dropped] == stats.spans[("dropped", "completed")]
    assert samples[("wft_forward_sample_buffer_bytes", ())] == 0
    assert samples[("wft_forward_sample_buffer_runs", ())] == 0
    conn = sqlite3.connect(f"file:{service.settings.store}?mode=ro", uri=True)
    try:
        stored = {row[0] for row in conn.execute("SELECT span_id FROM spans")}
    finally:
        conn.close()
    assert stored >= app_spans | world_spans  # the local store keeps what was not forwarded


@pytest.mark.parametrize(
    "args, says",
    [
        (["--forward-sample", "completed=0.1,succeeded=1"], "unknown outcome 'succeeded'"),
        (["--forward-sample", "completed=2"], "rate '2' for completed is not a number from 0 to 1"),
        (["--forward-sample", "failed=1,failed=0"], "failed given twice"),
        (["--forward-sample", "completed=0.1", "--sample-max-wait", "soon"], "not a duration: 'soon'"),
        (["--forward-sample", "completed=0.1", "--sample-buffer", "lots"], "not a size: 'lots'"),
    ],
)
def test_serve_refuses_a_bad_sampling_spec_in_one_line(tmp_path, args, says):
    from .conftest import wft

    store = tmp_path / "store.sqlite3"
    result = wft(
        "serve", "--no-world", "--port", "0", "--store", str(store), "--forward-otlp", "http://127.0.0.1:9", *args
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert not store.exists()  # refused before anything was created


def test_serve_refuses_sampling_without_forwarding(tmp_path):
    from .conftest import wft

    store = tmp_path / "s.sqlite3"
    result = wft("serve", "--no-world", "--port", "0", "--store", str(store), "--forward-sample", "completed=0")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "wft serve: --forward-sample needs --forward-otlp: it samples what is forwarded"
    ]


def test_sampling_buffer_bound_sends_waiting_runs_early_and_is_respected(harness_out, tmp_path, otlp_receiver):
    """A 2 KiB buffer on the mid-run snapshot: the runs going cannot all wait for their end (an hour's max
    wait), so the oldest are sent early instead of lost; ended runs are still sampled; the file holds no
    more than the bound waiting."""
    import sqlite3

    from .test_sampling import _runs

    midrun = asyncio.run(_runs(harness_out / "local-data-midrun"))
    going = {r.run_id for r in midrun.values() if r.status == "running"}
    dropped = {r.run_id for r in midrun.values() if r.status == "completed" and not r.errors}
    partial = {r: _span_ids(midrun[r].partial) for r in going}
    ended = set().union(*(midrun[r].span_ids for r in set(midrun) - going - dropped))
    bound = 2048
    assert sum(len(midrun[r].partial) for r in going) > 2 * bound  # they do not all fit
    args = ("--forward-sample", "completed=0", "--sample-max-wait", "1h", "--sample-buffer", str(bound))
    process = _serve_sampling(tmp_path, "c", harness_out / "local-data-midrun", otlp_receiver.url, *args)
    buffer = tmp_path / "c" / "spool" / "sampling.sqlite3"
    try:
        _wait_for(lambda: _received(otlp_receiver) >= ended, "the kept ended runs", [process])
        in_midrun = len(ended) + sum(len(r.span_ids) for r in midrun.values() if r.run_id in dropped)
        in_midrun += sum(len(ids) for ids in partial.values())
        store = tmp_path / "c" / "store.sqlite3"
        _wait_for(lambda: _world_span_count(store) >= in_midrun, "the whole snapshot stored", [process])
        time.sleep(1.0)  # forwarded right after the commit
        conn = sqlite3.connect(f"file:{buffer}?mode=ro", uri=True)
        try:
            waiting = dict(conn.execute("SELECT key, bytes FROM runs WHERE decision IS NULL").fetchall())
            early = {k for (k,) in conn.execute("SELECT key FROM runs WHERE reason = 'buffer_full'")}
        finally:
            conn.close()
    finally:
        _stop(process[0])
    assert sum(waiting.values()) <= bound and early  # the bound held, by sending some runs early
    assert set(waiting) | early == going - {r for r in going if midrun[r].early_errors}
    sent_early = set().union(*(partial[r] for r in early))
    assert _received(otlp_receiver) == ended | sent_early | set().union(
        *(partial[r] for r in going if midrun[r].early_errors)
    )  # nothing of the dropped runs, nothing of the runs still waiting
