"""collector/otlp_relay.py: OTLP metrics and logs relayed to the ``--forward-otlp`` upstream. The
clients are the real OTel Python metric and log exporters, over HTTP and gRPC (what an app pointed
at the collector sends besides its spans); the upstream is a real HTTP server keeping what it gets."""

from __future__ import annotations

import gzip
import json
import time
import urllib.request
from dataclasses import dataclass, field

import grpc
import pytest
from aiohttp import web
from opentelemetry._logs import LogRecord
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

from .conftest import get_json, http
from .sdk_spans import make_sdk_spans
from .threaded_server import serve_in_thread

KEY = "Bearer upstream-key-0123456789"
RELAY = ("metrics", "logs")


@dataclass
class Upstream:
    """What the upstream took: (path, content type, authorization, body) per request."""

    url: str = ""
    taken: list[tuple[str, str, str | None, bytes]] = field(default_factory=list)

    def bodies(self, path: str) -> list[tuple[str, bytes]]:
        return [(ctype, body) for p, ctype, _, body in self.taken if p == path]


@pytest.fixture
def upstream():
    seen = Upstream()

    async def take(request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        seen.taken.append((request.path, request.content_type, request.headers.get("Authorization"), body))
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application()
    for path in ("/v1/traces", "/v1/metrics", "/v1/logs"):
        app.router.add_post(path, take)
    seen.url, stop = serve_in_thread(app)
    yield seen
    stop()


def _wait(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert predicate()


def _metrics(exporter, name: str) -> None:
    """One counter exported through ``exporter`` by the real SDK pipeline."""
    provider = MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=60_000)])
    provider.get_meter("relay-test").create_counter(name).add(3, {"workflow.name": "demo"})
    assert provider.force_flush(10_000)
    provider.shutdown()


def _logs(exporter, message: str) -> None:
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    provider.get_logger("relay-test").emit(LogRecord(body=message))
    provider.shutdown()


def _metric_names(body: bytes) -> set[str]:
    request = ExportMetricsServiceRequest.FromString(body)
    return {m.name for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


def _log_bodies(body: bytes) -> set[str]:
    request = ExportLogsServiceRequest.FromString(body)
    return {r.body.string_value for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records}


def test_metrics_and_logs_over_http_reach_upstream_as_sent_with_the_forward_headers(collector, upstream):
    service = collector(forward_otlp=upstream.url, forward_headers={"authorization": KEY}, relay=RELAY)
    _metrics(OTLPMetricExporter(endpoint=f"{service.url}/v1/metrics", compression=Compression.Gzip), "relay.http")
    _logs(OTLPLogExporter(endpoint=f"{service.url}/v1/logs"), "relayed over http")
    _wait(lambda: upstream.bodies("/v1/metrics") and upstream.bodies("/v1/logs"))
    metrics = upstream.bodies("/v1/metrics")  # the flush's export, and the shutdown's
    assert {ctype for ctype, _ in metrics} == {"application/x-protobuf"}
    assert "relay.http" in set().union(*(_metric_names(body) for _, body in metrics))
    ((ctype, body),) = upstream.bodies("/v1/logs")
    assert ctype == "application/x-protobuf" and _log_bodies(body) == {"relayed over http"}
    assert {auth for *_, auth, _ in upstream.taken} == {KEY}
    assert service.otlp_relay.relayed == {"metrics": len(metrics), "logs": 1}
    status, _, text = http("GET", f"{service.url}/metrics")
    assert status == 200
    assert f'wft_otlp_relayed_requests_total{{signal="metrics"}} {len(metrics)}.0'.encode() in text
    assert get_json(f"{service.url}/api/runs")["data"] == []  # nothing of it is stored


def test_metrics_and_logs_over_grpc_reach_upstream(collector, upstream):
    service = collector(grpc_port=0, forward_otlp=upstream.url, relay=RELAY)
    endpoint = f"127.0.0.1:{service.grpc_port}"
    _metrics(GrpcMetricExporter(endpoint=endpoint, insecure=True), "relay.grpc")
    _logs(GrpcLogExporter(endpoint=endpoint, insecure=True), "relayed over grpc")
    _wait(lambda: upstream.bodies("/v1/metrics") and upstream.bodies("/v1/logs"))
    assert "relay.grpc" in set().union(*(_metric_names(body) for _, body in upstream.bodies("/v1/metrics")))
    assert _log_bodies(upstream.bodies("/v1/logs")[0][1]) == {"relayed over grpc"}


def test_json_goes_as_json_and_what_is_not_the_signal_is_refused(collector, upstream):
    service = collector(forward_otlp=upstream.url, relay=RELAY)
    document = {"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "5b8efff798038103d269b633813fc60c"}]}]}]}
    sent = json.dumps(document).encode()
    status, headers, answer = http("POST", f"{service.url}/v1/logs", sent, {"Content-Type": "application/json"})
    assert status == 200 and json.loads(answer) == {}
    for body, ctype, expected in (
        (b"\xff\xff not protobuf", "application/x-protobuf", 400),
        (b"[1, 2]", "application/json", 400),
        (b"{}", "text/plain", 415),
    ):
        status, _, text = http("POST", f"{service.url}/v1/metrics", body, {"Content-Type": ctype})
        assert status == expected, text
    _wait(lambda: bool(upstream.bodies("/v1/logs")))
    time.sleep(0.3)  # what was refused would have followed by now
    assert upstream.bodies("/v1/logs") == [("application/json", sent)] and not upstream.bodies("/v1/metrics")


@pytest.mark.parametrize("relay", [(), ("logs",)])
def test_a_signal_not_relayed_is_not_served(collector, upstream, relay):
    """Relaying is asked for (many trace backends answer 404 to metrics): without ``--relay`` an
    upstream for traces does not make the collector take metrics, and one signal asked for does
    not bring the other."""
    service = collector(grpc_port=0, forward_otlp=upstream.url, relay=relay)
    request = urllib.request.Request(
        f"{service.url}/v1/metrics", data=b"", headers={"Content-Type": "application/x-protobuf"}, method="POST"
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 404
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")
        with pytest.raises(grpc.RpcError) as failed:
            export(b"", timeout=10)
        assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED
        logs = channel.unary_unary("/opentelemetry.proto.collector.logs.v1.LogsService/Export")
        if relay:
            assert logs(b"", timeout=10) == b""
        else:
            with pytest.raises(grpc.RpcError) as failed:
                logs(b"", timeout=10)
            assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_signal_upstream_refuses_holds_back_neither_the_traces_nor_the_other(collector, tmp_path):
    """A key scoped to traces (a hosted backend's ``traces:write``): upstream answers 403 to logs.
    Logs wait in their own spool (held: the key is the forwarder's); traces and metrics go on."""
    taken: list[tuple[str, int]] = []

    async def take(request: web.Request) -> web.Response:
        await request.read()
        status = 403 if request.path == "/v1/logs" else 200
        taken.append((request.path, status))
        return web.Response(status=status, body=b"", content_type="application/x-protobuf")

    app = web.Application()
    for path in ("/v1/traces", "/v1/metrics", "/v1/logs"):
        app.router.add_post(path, take)
    url, stop = serve_in_thread(app)
    try:
        service = collector(forward_otlp=url, relay=RELAY, spool_dir=tmp_path / "spool")
        _logs(OTLPLogExporter(endpoint=f"{service.url}/v1/logs"), "refused upstream")
        assert OTLPSpanExporter(endpoint=f"{service.url}/v1/traces").export(make_sdk_spans(2)).name == "SUCCESS"
        _metrics(OTLPMetricExporter(endpoint=f"{service.url}/v1/metrics"), "relay.scoped")
        _wait(lambda: ("/v1/traces", 200) in taken and ("/v1/metrics", 200) in taken)
    finally:
        stop()
    assert ("/v1/logs", 403) in taken
    assert list((tmp_path / "spool" / "logs").glob("*.pb"))  # held, not dropped
    assert service.metrics.forward_dropped_batches == 0
    status, answer = http("GET", f"{service.url}/healthz")[0], get_json(f"{service.url}/healthz")
    assert status == 200 and answer["checks"]["forward_logs"]["ok"] is False and answer["checks"]["forward"]["ok"]


def test_a_token_guards_the_relay_too(collector, upstream):
    token = "relay-test-token-0123456789"
    service = collector(forward_otlp=upstream.url, token=token, relay=RELAY)
    body = ExportMetricsServiceRequest().SerializeToString()
    status, _, _ = http("POST", f"{service.url}/v1/metrics", body, {"Content-Type": "application/x-protobuf"})
    assert status == 401
    headers = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {token}"}
    status, _, _ = http("POST", f"{service.url}/v1/metrics", body, headers)
    assert status == 200
