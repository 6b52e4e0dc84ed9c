"""telemetry/export_grpc.py: run traces shipped over OTLP/gRPC, chosen by ``--otlp-protocol`` or
the OTel variables; the same spans as over OTLP/HTTP (real harness data), the OTLP specification's
retries (``RetryInfo`` honoured), refusals reported as their HTTP equivalents. Receivers: a grpc
stand-in (``grpc_receiver``) and the collector's own OTLP/gRPC port."""

from __future__ import annotations

import time

import grpc
import pytest

from telemetry.cli import main
from telemetry.export import ExportError, OtlpSink, open_sink
from telemetry.export_grpc import GrpcSink, grpc_target
from telemetry.otlp_encode import OtlpEncoder

from .grpc_receiver import start_grpc_receiver
from .sdk_spans import make_sdk_spans


@pytest.fixture
def grpc_receiver():
    receiver, server = start_grpc_receiver()
    yield receiver
    server.stop(None)


def _export(capsys, *args: str) -> tuple[int, str]:
    code = main(["export", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_the_same_spans_as_over_http(harness_out, otlp_receiver, grpc_receiver, capsys, jobs):
    data = ["--dir", str(harness_out / "local-data"), "--jobs", jobs]
    code, err = _export(capsys, *data, "--otlp", otlp_receiver.url)
    assert code == 0, err
    over_http = sorted(otlp_receiver.by_id())
    code, err = _export(capsys, *data, "--otlp", grpc_receiver.url, "--otlp-protocol", "grpc")
    assert code == 0, err
    assert sorted(grpc_receiver.span_ids) == over_http and len(grpc_receiver.span_ids) == len(over_http)
    assert f"exported 11 runs, {len(over_http)} spans, 0 errors" in err


def test_the_otel_variables_choose_grpc(harness_out, grpc_receiver, capsys, monkeypatch):
    """An environment set up for an app that exports over gRPC: endpoint, protocol and headers."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", grpc_receiver.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme")
    code, err = _export(capsys, "--dir", str(harness_out / "local-data"), "--jobs", "1")
    assert code == 0, err
    assert grpc_receiver.span_ids and all(m.get("x-tenant") == "acme" for m in grpc_receiver.metadata)
    assert all("workflow-telemetry/" in m.get("user-agent", "") for m in grpc_receiver.metadata)


def test_into_the_collectors_own_grpc_port(harness_out, collector, capsys):
    service = collector(grpc_port=0)
    url = f"http://127.0.0.1:{service.grpc_port}"
    code, err = _export(capsys, "--dir", str(harness_out / "local-data"), "--otlp", url, "--otlp-protocol", "grpc")
    assert code == 0, err
    conn = service.store.connect()
    try:
        stored = conn.execute("SELECT count(*) FROM spans").fetchone()[0]
    finally:
        conn.close()
    assert stored > 0 and f"{stored} spans, 0 errors" in err


def _body() -> tuple[bytes, int]:
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    spans = make_sdk_spans(2)
    return encode_spans(spans).SerializeToString(), len(spans)


def test_unavailable_is_retried_after_the_delay_asked(grpc_receiver):
    grpc_receiver.fail_next = [(grpc.StatusCode.UNAVAILABLE, 0.3), (grpc.StatusCode.UNAVAILABLE, 0.3)]
    sink = GrpcSink(grpc_receiver.url, timeout=10)
    body, count = _body()
    started = time.monotonic()
    sink.post(body, count)
    assert time.monotonic() - started >= 0.6 and grpc_receiver.calls == 3 and sink.sent == count


def test_resource_exhausted_is_retried_only_when_the_server_says_when(grpc_receiver):
    sink = GrpcSink(grpc_receiver.url, timeout=10)
    body, count = _body()
    grpc_receiver.fail_next = [(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.1)]
    sink.post(body, count)
    assert grpc_receiver.calls == 2
    grpc_receiver.fail_next = [(grpc.StatusCode.RESOURCE_EXHAUSTED, None)]
    with pytest.raises(ExportError, match="was refused.*RESOURCE_EXHAUSTED") as refused:
        sink.post(body, count)
    assert refused.value.status == 413 and grpc_receiver.calls == 3


def test_a_refusal_of_the_data_is_not_retried_and_reads_as_a_400(grpc_receiver):
    grpc_receiver.fail_next = [(grpc.StatusCode.INVALID_ARGUMENT, None)]
    sink = GrpcSink(grpc_receiver.url, timeout=10)
    with pytest.raises(ExportError, match="was refused.*INVALID_ARGUMENT: the stand-in says no") as refused:
        sink.post(*_body())
    assert refused.value.status == 400 and grpc_receiver.calls == 1


def test_nothing_listening_gives_up_within_the_timeout():
    from .pgserver import free_port

    sink = GrpcSink(f"http://127.0.0.1:{free_port()}", timeout=1.5)
    started = time.monotonic()
    with pytest.raises(ExportError, match="gave up.*UNAVAILABLE") as failed:
        sink.post(*_body())
    assert time.monotonic() - started < 5 and failed.value.status == 503


def test_workers_hand_the_grpc_sink_plain_bodies(harness_out, grpc_receiver, capsys, monkeypatch):
    """grpc compresses each call itself: workers that gzipped their bodies would have the parent
    gunzip them before grpc compressed them again, on the one process that sends."""
    prepared: list[tuple[bool, bytes]] = []
    real = GrpcSink._prepare

    def watched(self, body: bytes, gzipped: bool) -> bytes:
        prepared.append((gzipped, body[:2]))
        return real(self, body, gzipped)

    monkeypatch.setattr(GrpcSink, "_prepare", watched)  # forked workers inherit it; only the parent sends
    data = ["--dir", str(harness_out / "local-data"), "--jobs", "2"]
    code, err = _export(capsys, *data, "--otlp", grpc_receiver.url, "--otlp-protocol", "grpc")
    assert code == 0 and "exported 11 runs" in err, err
    assert prepared and all(not gzipped and head != b"\x1f\x8b" for gzipped, head in prepared), prepared
    assert GrpcSink.gzip_bodies is False and OtlpSink.gzip_bodies is True


def test_gzipped_bodies_from_workers_are_sent_whole(grpc_receiver, harness_out):
    from telemetry.backends.local import LocalWorld
    from telemetry.export import gzip_body, run_resource

    from .test_export import _traces

    trace = _traces(LocalWorld(harness_out / "local-data"))[0]
    body = OtlpEncoder(run_resource("local")).request(trace.data).SerializeToString()
    GrpcSink(grpc_receiver.url).post(gzip_body(body), len(trace.data), gzipped=True)
    assert len(grpc_receiver.span_ids) == len(trace.data)


@pytest.mark.parametrize(
    "endpoint, insecure, target",
    [
        ("http://collector:4317", None, ("collector:4317", False)),
        ("https://tempo.example.com", None, ("tempo.example.com:4317", True)),
        ("http://[::1]:5317/ignored/path", None, ("[::1]:5317", False)),
        ("collector:4317", None, ("collector:4317", True)),  # no scheme: TLS unless told otherwise
        ("collector:4317", "true", ("collector:4317", False)),
    ],
)
def test_endpoints_as_the_otel_specification_reads_them(endpoint, insecure, target, monkeypatch):
    if insecure is not None:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_INSECURE", insecure)
    assert grpc_target(endpoint) == target


def test_the_protocol_is_chosen_by_flag_then_variables(monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    assert isinstance(open_sink("http://127.0.0.1:1"), GrpcSink)
    assert not isinstance(open_sink("http://127.0.0.1:1", protocol="http/protobuf"), GrpcSink)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json")  # the traces one wins
    assert not isinstance(open_sink("http://127.0.0.1:1"), GrpcSink)


def test_an_unknown_protocol_is_a_one_line_usage_error(harness_out, capsys, monkeypatch):
    code, err = _export(capsys, "--dir", str(harness_out / "local-data"), "--otlp-protocol", "thrift")
    assert code == 2 and err.strip().splitlines() == [
        "wft export: --otlp-protocol: OTLP protocol 'thrift': expected one of http/protobuf, http/json, grpc"
    ]
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/thrift")
    code, err = _export(capsys, "--dir", str(harness_out / "local-data"))
    assert code == 2 and "OTEL_EXPORTER_OTLP_PROTOCOL: OTLP protocol 'http/thrift'" in err


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_wft_follow_once_over_grpc_sends_what_export_sends(harness_out, grpc_receiver, tmp_path, jobs):
    from .conftest import wft
    from .test_follow import _expected

    result = wft(
        "follow",
        "--once",
        "--dir",
        str(harness_out / "local-data"),
        "--checkpoint",
        str(tmp_path / "checkpoint.sqlite3"),
        "--jobs",
        jobs,
        "--otlp",
        grpc_receiver.url,
        "--otlp-protocol",
        "grpc",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(grpc_receiver.span_ids) == sorted(_expected(harness_out / "local-data"))
