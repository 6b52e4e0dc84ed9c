"""collector/otlp_grpc.py: OTLP/gRPC in. The client is the real OTel Python gRPC exporter (what
``opentelemetry-instrument`` uses unless told otherwise) and grpc's own channel for what an
exporter would not send; the server is the collector itself, in process or as ``wft serve``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult

from collector.otlp_grpc import max_message_bytes
from telemetry.export_grpc import TRACE_SERVICE

from .conftest import get_json, stored_span_ids, wait_for_line
from .pgserver import free_port
from .sdk_spans import RUN, make_sdk_spans

TOKEN = "grpc-test-token-0123456789"


def _exporter(service, **kwargs) -> OTLPSpanExporter:
    return OTLPSpanExporter(endpoint=f"127.0.0.1:{service.grpc_port}", insecure=True, timeout=10, **kwargs)


def _call(service, body: bytes, metadata=()) -> tuple[grpc.StatusCode, str, bytes | None, dict]:
    """One raw ``Export`` call (bytes in, bytes out): (code, details, answer, trailing metadata)."""
    with grpc.insecure_channel(f"127.0.0.1:{service.grpc_port}") as channel:
        export = channel.unary_unary(f"/{TRACE_SERVICE}/Export")
        try:
            answer, call = export.with_call(body, metadata=metadata, timeout=10)
            return call.code(), call.details() or "", answer, dict(call.trailing_metadata() or ())
        except grpc.RpcError as error:
            return error.code(), error.details() or "", None, dict(error.trailing_metadata() or ())


def test_the_real_grpc_exporter_stores_spans_like_otlp_http(collector):
    service = collector(grpc_port=0)
    spans = make_sdk_spans(5)
    assert _exporter(service).export(spans) == SpanExportResult.SUCCESS
    assert {f"{s.context.span_id:016x}" for s in spans} <= stored_span_ids(service)
    # the same path as OTLP/HTTP: the benign conflict among them is downgraded, the run summarised
    assert service.metrics.spans_accepted == len(spans) and service.metrics.spans_benign == 1
    runs = get_json(f"{service.url}/api/runs")["data"]
    assert RUN in {r["runId"] for r in runs}


def test_gzip_compressed_calls_are_taken(collector):
    service = collector(grpc_port=0)
    spans = make_sdk_spans(3)
    exporter = _exporter(service, compression=grpc.Compression.Gzip)
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    assert {f"{s.context.span_id:016x}" for s in spans} <= stored_span_ids(service)


def test_partial_success_says_what_was_refused(collector):
    service = collector(grpc_port=0)
    request = encode_spans(make_sdk_spans(3))
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = bytes(16)  # all zero: refused
    code, _, answer, _ = _call(service, request.SerializeToString())
    assert code == grpc.StatusCode.OK and answer is not None
    response = ExportTraceServiceResponse.FromString(answer)
    assert response.partial_success.rejected_spans == 1
    assert "trace id" in response.partial_success.error_message
    sent = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    assert len(stored_span_ids(service)) == sent - 1


def test_a_body_that_does_not_parse_is_invalid_argument(collector):
    service = collector(grpc_port=0)
    code, details, _, _ = _call(service, b"\xff\xff\xff not protobuf")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "invalid protobuf" in details
    assert stored_span_ids(service) == set() and service.metrics.requests_rejected == 1


def test_a_message_over_the_limit_is_refused_by_grpc(collector):
    service = collector(grpc_port=0, max_body_bytes=64 * 1024)
    assert max_message_bytes(64 * 1024) == 64 * 1024
    code, _, _, _ = _call(service, b"\x0a" + b"\x00" * (70 * 1024))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert max_message_bytes(16 << 20) == 4 << 20  # gRPC's customary ceiling under a large --max-body


def test_overload_is_unavailable_with_when_to_retry(collector):
    service = collector(grpc_port=0, max_pending_spans=1)
    code, details, _, trailing = _call(service, encode_spans(make_sdk_spans(3)).SerializeToString())
    assert code == grpc.StatusCode.UNAVAILABLE and "overloaded" in details
    retry = RetryInfo.FromString(trailing["google.rpc.retryinfo-bin"])
    assert 1 <= retry.retry_delay.seconds <= 30
    assert service.metrics.requests_overloaded == 1


def test_with_a_token_the_authorization_metadata_is_required(collector):
    service = collector(grpc_port=0, token=TOKEN)
    body = encode_spans(make_sdk_spans(2)).SerializeToString()
    for metadata in ((), (("authorization", "Bearer wrong-token-0123456789"),)):
        code, _, _, _ = _call(service, body, metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED
    assert stored_span_ids(service) == set()
    spans = make_sdk_spans(2)
    exporter = _exporter(service, headers={"authorization": f"Bearer {TOKEN}"})
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    assert {f"{s.context.span_id:016x}" for s in spans} <= stored_span_ids(service)


def test_a_zero_code_python_app_exports_to_it_as_configured_by_default(collector):
    """``opentelemetry-instrument`` with opentelemetry-distro exports over gRPC unless told otherwise
    (the distro sets ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc``): an app given only the endpoint reaches us."""
    service = collector(grpc_port=0)
    code = (
        "from opentelemetry import trace\n"
        "with trace.get_tracer('zero-code').start_as_current_span('world.runs.get') as span:\n"
        f"    span.set_attribute('workflow.run.id', {RUN!r})\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env |= {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{service.grpc_port}",
        "OTEL_SERVICE_NAME": "zero-code-app",
        "OTEL_METRICS_EXPORTER": "none",  # the distro turns these on too; we take traces only
        "OTEL_LOGS_EXPORTER": "none",
    }
    instrument = str(Path(sys.executable).with_name("opentelemetry-instrument"))
    result = subprocess.run(
        [instrument, sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "Failed to export" not in result.stderr, result.stderr
    conn = service.store.connect()
    try:
        stored = conn.execute("SELECT count(*) FROM spans WHERE run_id = ?", (RUN,)).fetchone()[0]
    finally:
        conn.close()
    assert stored == 1


def _serve(tmp_path, *args: str) -> subprocess.Popen:
    port = free_port()
    command = [sys.executable, "-m", "telemetry", "serve", "--port", str(port), "--no-world"]
    command += ["--store", str(tmp_path / "store.sqlite3"), *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_wft_serve_listens_for_grpc_on_the_port_asked_and_a_restart_binds_it_again(tmp_path):
    """The stopped collector's connections linger in TIME_WAIT on its port: the next one started on
    that port (a supervisor's restart) binds it all the same, as it does the HTTP port."""
    grpc_port = free_port()
    exporters = []
    for _ in range(2):
        process = _serve(tmp_path, "--grpc-port", str(grpc_port))
        try:
            wait_for_line(process, f"OTLP/gRPC on 127.0.0.1:{grpc_port}")
            exporter = OTLPSpanExporter(endpoint=f"127.0.0.1:{grpc_port}", insecure=True, timeout=10)
            assert exporter.export(make_sdk_spans(2)) == SpanExportResult.SUCCESS
            exporters.append(exporter)
            with socket.create_connection(("127.0.0.1", grpc_port), timeout=10) as stray:  # not HTTP/2:
                stray.sendall(b"GET / HTTP/1.1\r\n\r\n")  # the collector closes it first, and its
                while stray.recv(4096):  # side of it waits in TIME_WAIT on the port
                    pass
        finally:
            process.terminate()
            process.wait(30)
    for exporter in exporters:
        exporter.shutdown()


def test_a_grpc_port_asked_for_and_taken_is_a_one_line_error(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        process = _serve(tmp_path, "--grpc-port", str(taken))
        _, err = process.communicate(timeout=60)
    assert process.returncode == 1
    assert err.strip().splitlines()[-1] == (
        f"wft serve: port {taken} on 127.0.0.1 is already in use (another wft serve or OTLP collector?):"
        " stop it, or pass --grpc-port"
    )


def test_the_default_grpc_port_taken_is_a_warning_and_http_serves(tmp_path, monkeypatch):
    """Another OTLP collector on 4317 (common beside an app) must not stop ``wft serve``: the
    default port is tried, and if taken the service runs without gRPC and says so."""
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            holder.bind(("127.0.0.1", 4317))
        except OSError:
            pytest.skip("4317 is taken here already, by something that is not ours to stop")
        holder.listen()
        process = _serve(tmp_path)
        try:
            warning = wait_for_line(process, "OTLP/gRPC not served")
            assert "127.0.0.1:4317" in warning and "--grpc-port" in warning
            wait_for_line(process, "listening on http://")
            assert process.poll() is None
        finally:
            process.terminate()
            process.wait(30)


@pytest.mark.parametrize("value, message", [("nope", "--grpc-port 'nope': a port number, or 'off'")])
def test_a_bad_grpc_port_is_a_usage_error(tmp_path, value, message):
    process = _serve(tmp_path, "--grpc-port", value)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 2 and message in err
