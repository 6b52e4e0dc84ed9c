"""collector/health.py: ``/healthz`` says, part by part, whether the collector can do its job:
503 while nothing can be stored, ``degraded`` while a part fails without stopping ingest (the world
tailer, the forward upstream), the reasons only to whoever has the token. Faults are real: a world
directory that turns unreadable to the SDK's rules, an upstream nothing listens on, a stopped writer."""

from __future__ import annotations

import json
import shutil
import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from ulid import ULID

from telemetry.backends import BackendConfig

from .conftest import http
from .pgserver import free_port
from .sdk_spans import make_sdk_spans

TOKEN = "health-test-token-0123456789"


def _health(service, headers=None) -> tuple[int, dict]:
    status, _, body = http("GET", f"{service.url}/healthz", headers=headers)
    return status, json.loads(body)


def _until(service, predicate, timeout: float = 20, headers=None) -> tuple[int, dict]:
    deadline = time.monotonic() + timeout
    answer = _health(service, headers)
    while not predicate(answer) and time.monotonic() < deadline:
        time.sleep(0.05)
        answer = _health(service, headers)
    assert predicate(answer), answer
    return answer


def test_a_collector_that_can_store_is_ok(collector):
    service = collector()
    assert _health(service) == (200, {"ok": True, "status": "ok", "checks": {"store": {"ok": True}}})


def test_a_world_the_tailer_cannot_read_is_degraded_and_mends(collector, harness_out, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(harness_out / "local-data", data)
    service = collector(world=BackendConfig("local", data_dir=str(data)), tail_interval=0.05)
    _until(
        service,
        lambda a: a == (200, {"ok": True, "status": "ok", "checks": {"store": {"ok": True}, "world": {"ok": True}}}),
    )
    stray = data / "events" / f"wrun_{ULID()}"
    stray.mkdir()  # a per-run folder among the flat records: the SDK refuses such a directory, so do we
    status, answer = _until(service, lambda a: not a[1]["checks"]["world"]["ok"])
    assert status == 200 and answer["status"] == "degraded" and answer["checks"]["store"] == {"ok": True}
    assert "mixes the flat" in answer["checks"]["world"]["reason"]
    stray.rmdir()
    _until(service, lambda a: a[1]["status"] == "ok")


def test_an_upstream_down_is_degraded_and_only_the_token_reads_why(collector, tmp_path):
    secret = "forward-password-0123456789"
    upstream = f"http://user:{secret}@127.0.0.1:{free_port()}/v1/traces"  # nothing listens there
    service = collector(forward_otlp=upstream, token=TOKEN, spool_dir=tmp_path / "spool")
    exporter = OTLPSpanExporter(endpoint=f"{service.url}/v1/traces", headers={"authorization": f"Bearer {TOKEN}"})
    assert exporter.export(make_sdk_spans(2)).name == "SUCCESS"  # stored: ingest is not held up
    status, answer = _until(service, lambda a: a[1]["checks"]["forward"]["ok"] is False)
    assert status == 200 and answer == {
        "ok": False,
        "status": "degraded",
        "checks": {"store": {"ok": True}, "forward": {"ok": False}},  # no reason without the token
    }
    _, told = _health(service, {"Authorization": f"Bearer {TOKEN}"})
    reason = told["checks"]["forward"]["reason"]
    assert "127.0.0.1" in reason and "1 batches spooled" in reason and secret not in reason


def test_a_stopped_writer_is_unavailable(collector):
    service = collector()
    service.writer.stop()
    status, answer = _health(service)
    assert status == 503 and answer["status"] == "unavailable"
    assert answer["checks"]["store"] == {"ok": False, "reason": "the writer stopped"}
