"""collector/admission.py: the byte budget, the wait it bounds, fairness between clients and
``Retry-After`` (unit tests on a fake clock); then end to end against a real ``wft serve`` process
with real clients: the OTel OTLP/HTTP exporter for the normal case, raw sockets and aiohttp for the
hostile ones (bodies refused before they are sent, chunked bodies outgrowing the budget, a client
hammering from many connections next to a polite one)."""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

from collector.admission import DECODED_FACTOR, Admission, Refused, client_key
from collector.settings import Settings, SettingsError
from telemetry.runtrace import build_run_trace

from .conftest import http
from .pgserver import free_port
from .world_spans import SCENARIOS, cut_run

MiB = 1024 * 1024


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _admission(budget: int = 64 * MiB, **kwargs) -> tuple[Admission, Clock]:
    clock = Clock()
    kwargs.setdefault("max_body", 16 * MiB)
    kwargs.setdefault("max_wait_s", 10.0)  # the wait bound out of the way, but where a test is about it
    return Admission(budget, clock=clock, rng=random.Random(7), **kwargs), clock


def _refused(admission: Admission, key: str, declared: int | None) -> Refused:
    with pytest.raises(Refused) as caught:
        admission.admit(key, declared)
    return caught.value


# ---- the budget ----------------------------------------------------------------------------------


def test_a_body_is_charged_at_the_factor_until_released():
    admission, _ = _admission()
    ticket = admission.admit("a", 1 * MiB)
    assert ticket.charged == admission.charged == DECODED_FACTOR * MiB
    ticket.release()
    ticket.release()  # idempotent
    assert admission.charged == 0


def test_too_large_for_the_body_limit_or_the_whole_budget_is_413_without_retry_after():
    admission, _ = _admission(budget=64 * MiB, max_body=16 * MiB)
    over_body = _refused(admission, "a", 16 * MiB + 1)
    assert over_body.status == 413 and over_body.retry_after is None and "16777216" in over_body.reason
    over_budget = _refused(admission, "a", 8 * MiB + 1)  # × 8 > 64 MiB
    assert over_budget.status == 413 and "--max-pending-bytes" in over_budget.reason
    assert admission.charged == 0 and admission.refusals["too_large"] == 2


def test_a_taken_budget_refuses_with_503_and_retry_after():
    admission, _ = _admission(budget=64 * MiB)
    admission.admit("a", 6 * MiB)  # 48 MiB charged
    refused = _refused(admission, "b", 3 * MiB)  # 24 more: over
    assert refused.status == 503 and refused.why == "budget" and 1 <= refused.retry_after <= 30
    assert admission.admit("b", 2 * MiB).charged == 16 * MiB  # what fits is admitted


def test_with_nothing_charged_any_body_within_the_budget_is_admitted():
    admission, clock = _admission(budget=64 * MiB, max_wait_s=1.0)
    _measure_rate(admission, clock, per_second=1 * MiB)  # the wait would allow 1 MiB, the floor 8
    assert admission.in_force() == 8 * MiB
    assert admission.admit("a", 7 * MiB).charged == 56 * MiB  # progress: it is alone


def _measure_rate(admission: Admission, clock: Clock, per_second: int) -> None:
    """Let the admission see ``per_second`` charged bytes drain each second for a while."""
    for _ in range(6):
        ticket = admission.admit("rate", per_second // DECODED_FACTOR)
        clock.now += 1.0
        ticket.release()
    assert admission.rate == pytest.approx(per_second, rel=0.01)


def test_the_wait_bounds_what_is_admitted_when_the_store_drains_slowly():
    admission, clock = _admission(budget=256 * MiB, max_wait_s=2.0)
    _measure_rate(admission, clock, per_second=16 * MiB)
    assert admission.in_force() == 32 * MiB  # 2 s at 16 MiB/s
    admission.admit("a", 3 * MiB)  # 24 MiB
    refused = _refused(admission, "b", 2 * MiB)  # 16 more would wait longer than 2 s
    assert refused.status == 503 and refused.why == "wait"


def test_the_wait_bound_never_shrinks_the_budget_below_an_eighth():
    admission, clock = _admission(budget=256 * MiB, max_wait_s=1.0)
    _measure_rate(admission, clock, per_second=1 * MiB)
    assert admission.in_force() == 32 * MiB


def test_a_stalled_store_lowers_the_rate():
    admission, clock = _admission(budget=256 * MiB)
    _measure_rate(admission, clock, per_second=64 * MiB)
    ticket = admission.admit("a", 1 * MiB)
    for _ in range(4):  # busy, nothing released
        clock.now += 1.0
        admission.retry_after()
        admission.admit("b", 0).release()
    assert admission.rate < 8 * MiB
    ticket.release()


# ---- bodies without Content-Length ---------------------------------------------------------------


def test_a_chunked_body_is_charged_as_it_arrives():
    admission, _ = _admission(budget=64 * MiB)
    ticket = admission.admit("a", None)
    assert ticket.charged == 0
    ticket.grow(2 * MiB)
    assert admission.charged == 16 * MiB
    ticket.grow(1 * MiB)  # never shrinks while held
    assert admission.charged == 16 * MiB
    ticket.release()
    assert admission.charged == 0


def test_a_chunked_body_past_the_free_budget_is_503_and_past_the_whole_budget_413():
    admission, _ = _admission(budget=64 * MiB)
    admission.admit("a", 4 * MiB)  # 32 MiB
    chunked = admission.admit("b", None)
    chunked.grow(3 * MiB)  # 24: fits
    with pytest.raises(Refused) as caught:
        chunked.grow(5 * MiB)  # 40 + 32 > 64
    assert caught.value.status == 503 and caught.value.retry_after is not None
    alone, _ = _admission(budget=64 * MiB)
    ticket = alone.admit("c", None)
    with pytest.raises(Refused) as caught:
        ticket.grow(9 * MiB)
    assert caught.value.status == 413


# ---- fairness ------------------------------------------------------------------------------------


def test_a_client_holding_its_share_is_refused_while_another_holding_nothing_is_admitted():
    admission, _ = _admission(budget=64 * MiB)
    hammer = [admission.admit("hammer", 1 * MiB) for _ in range(4)]  # 32 MiB: alone, it may take it all
    assert admission.share() == 64 * MiB
    admission.admit("polite", 1 * MiB).release()  # the polite client is seen: the share halves
    assert admission.share() == 32 * MiB
    refused = _refused(admission, "hammer", 1 * MiB)
    assert refused.status == 503 and refused.why == "share"
    assert admission.admit("polite", 1 * MiB).charged == 8 * MiB  # what the hammerer could not take
    for ticket in hammer:
        ticket.release()


def test_a_client_holding_nothing_may_start_one_request_larger_than_its_share():
    admission, _ = _admission(budget=64 * MiB)
    for key in "abcdefgh":
        admission.admit(key, 0).release()
    assert admission.share() == 8 * MiB
    assert admission.admit("a", 2 * MiB).charged == 16 * MiB  # over its share, but all it holds
    assert _refused(admission, "a", 1 * MiB).why == "share"


def test_clients_drop_out_of_the_share_after_the_window():
    admission, clock = _admission(budget=64 * MiB, window_s=5.0)
    for key in "abcd":
        admission.admit(key, 0).release()
    assert admission.clients() == 4
    clock.now += 6
    assert admission.clients() == 0 and admission.share() == 64 * MiB


def test_a_client_still_holding_a_charge_stays_active_past_the_window():
    admission, clock = _admission(budget=64 * MiB, window_s=5.0)
    slow = admission.admit("slow", 1 * MiB)  # a long upload or a long commit
    admission.admit("other", 0).release()
    clock.now += 60
    assert admission.clients() == 1 and admission.share() == 64 * MiB // 1
    admission.admit("new", 0).release()
    assert admission.clients() == 2  # the holder still counts
    slow.release()
    clock.now += 6
    assert admission.clients() == 0


def test_the_client_key_is_peer_and_user_agent_bounded():
    assert client_key("10.0.0.1", "OTel-OTLP-Exporter-Python/1.45.2") == "10.0.0.1 OTel-OTLP-Exporter-Python/1.45.2"
    assert client_key(None, None) == "? "
    assert len(client_key("10.0.0.1", "x" * 10_000)) < 200


# ---- Retry-After ---------------------------------------------------------------------------------


def test_retry_after_is_spread_over_the_time_the_backlog_takes():
    admission, clock = _admission(budget=256 * MiB, max_wait_s=1.0)
    _measure_rate(admission, clock, per_second=8 * MiB)
    assert {admission.retry_after() for _ in range(50)} == {1}  # nothing waits: come back in a second
    tickets = [admission.admit(k, 1 * MiB) for k in "abcd"]  # 32 MiB charged: 4 s of work
    values = [_refused(admission, k, 1 * MiB).retry_after for k in "efghijklmnop"]
    assert values and all(1 <= v for v in values) and max(values) > 4  # and the refused demand adds to it
    assert len(set(values)) > 3  # jittered, not one value for everyone
    for ticket in tickets:
        ticket.release()


def test_retry_after_is_capped():
    admission, clock = _admission(budget=1024 * MiB, max_body=128 * MiB, max_retry_after=30, max_wait_s=1000)
    _measure_rate(admission, clock, per_second=1 * MiB)
    admission.admit("a", 100 * MiB)
    assert max(admission.retry_after() for _ in range(200)) == 30


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError):
        Admission(0, max_body=1)


# ---- end to end: a real `wft serve` --------------------------------------------------------------

BUDGET = 4 * MiB  # largest admissible body: 512 KiB
MAX_BODY = 1 * MiB


def _real_spans() -> list:
    """Real workflow spans: the runtrace's spans of the world-local runs cut from the SDK harness."""
    spans = []
    for scenario in SCENARIOS:
        log = cut_run(scenario)
        spans += build_run_trace(log.run_id, log.events, log.run).spans
    return spans


def _body(size: int) -> bytes:
    """An OTLP protobuf request of at least ``size`` bytes of real workflow spans (a request repeated:
    protobuf messages concatenate)."""
    one = encode_spans(_real_spans()).SerializeToString()
    return one * (size // len(one) + 1)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("admission")
    port = free_port()
    argv = [sys.executable, "-m", "telemetry", "serve", "--no-world", "--port", str(port)]
    argv += ["--store", str(tmp / "store.sqlite3"), "--max-pending-bytes", "4MiB", "--max-body", "1MiB"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if http("GET", f"{url}/healthz", timeout=1)[0] == 200:
                break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"wft serve did not start: {process.communicate()[1]}") from None
            time.sleep(0.05)
    try:
        yield url
    finally:
        process.terminate()
        _, errors = process.communicate(timeout=30)
        assert "Traceback" not in errors


def _metric(url: str, name: str, label: str = "") -> float:
    _, _, text = http("GET", f"{url}/metrics")
    pattern = rf"^{re.escape(name)}{re.escape(label)} (\S+)$"
    found = re.search(pattern, text.decode(), re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def _read_bytes(url: str) -> float:
    return _metric(url, "wft_request_body_read_bytes_total", '{route="otlp"}')


async def _raw_request(
    url: str, length: int, sent: bytes = b"", user_agent: str = "raw", path: str = "/v1/traces"
) -> tuple[int, dict, object]:
    """Send headers announcing a ``length``-byte body and only ``sent`` of it; (status, headers, the
    open connection's writer) of the answer, which must come without the rest of the body."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-protobuf\r\n"
        f"User-Agent: {user_agent}\r\nContent-Length: {length}\r\n\r\n"
    )
    writer.write(head.encode() + sent)
    await writer.drain()
    status_line, *lines = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines if ": " in line)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, writer


def test_a_content_length_over_the_budget_is_refused_before_the_body_is_sent(server):
    before = _read_bytes(server)

    async def go():
        answers = []
        for length in (600 * 1024, 2 * MiB):  # over what 4 MiB can hold (512 KiB); over --max-body
            status, headers, writer = await _raw_request(server, length)
            answers.append((status, headers))
            writer.close()
        return answers

    (status, headers), (status2, _) = asyncio.run(go())
    assert status == 413 and headers["connection"] == "close" and status2 == 413
    assert _read_bytes(server) == before  # not a byte of either body was read


def test_the_sentry_relay_is_held_to_the_same_budget(server):
    before = _metric(server, "wft_request_body_read_bytes_total", '{route="sentry"}')

    async def go():
        status, headers, writer = await _raw_request(server, 600 * 1024, path="/api/1/envelope/")
        writer.close()
        return status, headers

    status, headers = asyncio.run(go())
    assert status == 413 and headers["connection"] == "close"
    assert _metric(server, "wft_request_body_read_bytes_total", '{route="sentry"}') == before


def test_the_otel_exporter_gets_the_answer_to_a_body_refused_unread(server):
    """The real exporter (requests/urllib3) sends its whole body before reading: the server closes
    with the body unread, and the exporter still reads the 413 (no hang, no retries)."""
    spans = _real_spans() * 40  # about 700 KiB: over what the 4 MiB budget can hold
    before = _read_bytes(server)
    exporter = OTLPSpanExporter(endpoint=f"{server}/v1/traces", timeout=10)
    started = time.monotonic()
    try:
        result = exporter.export(spans)
    finally:
        exporter.shutdown()
    assert result.name == "FAILURE" and time.monotonic() - started < 5
    assert _read_bytes(server) == before
    assert _metric(server, "wft_admission_refused_total", '{reason="too_large"}') >= 1


def test_a_body_that_cannot_be_held_now_is_503_before_it_is_sent(server):
    async def go():
        # the first request holds 3.2 MiB of the 4 MiB budget while its body is still coming
        holder_status = asyncio.get_running_loop().create_future()
        host, port = server.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            f"POST /v1/traces HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-protobuf\r\n"
            f"User-Agent: holder\r\nContent-Length: {400 * 1024}\r\n\r\n"
        )
        writer.write(head.encode() + b"\x00" * 1024)
        await writer.drain()
        await asyncio.sleep(0.3)
        before = _read_bytes(server)
        status, headers, other = await _raw_request(server, 200 * 1024, user_agent="second")
        other.close()
        read_meanwhile = _read_bytes(server) - before
        pending = _metric(server, "wft_pending_bytes")
        writer.write(b"\x00" * (399 * 1024))  # the holder finishes: not protobuf, 400, and its bytes go back
        await writer.drain()
        holder_status.set_result(int((await reader.readline()).split()[1]))
        writer.close()
        return status, headers, read_meanwhile, pending, await holder_status

    status, headers, read_meanwhile, pending, holder = asyncio.run(go())
    assert status == 503 and 1 <= int(headers["retry-after"]) <= 30 and headers["connection"] == "close"
    assert read_meanwhile == 0 and pending == DECODED_FACTOR * 400 * 1024
    assert holder == 400
    assert _wait_for_zero_pending(server)


def _wait_for_zero_pending(url: str) -> bool:
    deadline = time.monotonic() + 5
    while _metric(url, "wft_pending_bytes") != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_chunked_body_over_the_budget_is_refused_as_it_arrives(server):
    before = _read_bytes(server)
    total = 2 * MiB

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(total // (16 * 1024)):
            yield b"\x00" * (16 * 1024)

    async def go():
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{server}/v1/traces", data=chunks(), headers={"Content-Type": "application/x-protobuf"}
            ) as response:
                return response.status, response.headers.get("Connection"), await response.text()

    status, connection, text = asyncio.run(go())
    assert status == 413 and connection == "close" and "--max-pending-bytes" in text  # answered, not reset
    # refused once past what the budget holds; what came after was dropped unread, not counted
    assert BUDGET // DECODED_FACTOR <= _read_bytes(server) - before < BUDGET // DECODED_FACTOR + 128 * 1024
    assert _wait_for_zero_pending(server)


def test_the_budget_is_released_after_commit_so_later_exports_succeed(server):
    spans = _real_spans()
    exporter = OTLPSpanExporter(endpoint=f"{server}/v1/traces", timeout=10)
    try:
        results = [exporter.export(spans).name for _ in range(3)]
    finally:
        exporter.shutdown()
    assert results == ["SUCCESS"] * 3
    assert _wait_for_zero_pending(server)
    assert _metric(server, "wft_spans_accepted_total") >= 3 * len(spans)


def test_a_hammering_client_does_not_starve_a_polite_one(server):
    body = _body(48 * 1024)  # about 0.4 MiB charged: the hammerer's 24 connections could hold 4 MiB
    headers = {"Content-Type": "application/x-protobuf"}

    async def hammer(session: aiohttp.ClientSession, done: asyncio.Event, seen: dict[int, int]) -> None:
        while not done.is_set():  # retries at once, whatever Retry-After says
            try:
                async with session.post(f"{server}/v1/traces", data=body, headers=headers) as response:
                    await response.read()
                    seen[response.status] = seen.get(response.status, 0) + 1
            except aiohttp.ClientError:
                seen[0] = seen.get(0, 0) + 1

    async def go():
        done = asyncio.Event()
        seen: dict[int, int] = {}
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=0)
        async with aiohttp.ClientSession(connector=connector) as hammering:
            tasks = [asyncio.create_task(hammer(hammering, done, seen)) for _ in range(24)]
            await asyncio.sleep(0.5)  # the hammerer has the budget to itself
            polite: list[int] = []
            async with aiohttp.ClientSession(headers={"User-Agent": "polite/1.0"}) as session:
                for _ in range(15):
                    async with session.post(f"{server}/v1/traces", data=body, headers=headers) as response:
                        await response.read()
                        polite.append(response.status)
                    await asyncio.sleep(0.1)
            done.set()
            await asyncio.gather(*tasks)
        return polite, seen

    polite, seen = asyncio.run(go())
    assert seen.get(503, 0) > 0 and seen.get(200, 0) > 0  # the budget was contended, and the hammerer served
    assert seen.get(0, 0) == 0  # every refusal was read as an answer, none as a reset connection
    assert polite.count(200) >= 0.8 * len(polite), polite  # without fairness: about a third
    assert _wait_for_zero_pending(server)


def test_a_bad_budget_is_a_one_line_usage_error(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "telemetry", "serve", "--no-world", "--port", "0"]
        + ["--store", str(tmp_path / "s.sqlite3"), "--max-pending-bytes", "lots"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "--max-pending-bytes: not a size: 'lots'" in done.stderr
    assert not Path(tmp_path / "s.sqlite3").exists()
    with pytest.raises(SettingsError, match="--max-pending-bytes: 1000 bytes is too small"):
        Settings(max_pending_bytes=1000).check()
