"""OTLP/HTTP ingestion: real OpenTelemetry exporters as clients, and every kind of bad input."""

from __future__ import annotations

import base64
import gzip
import json

import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from .conftest import get_json, http
from .sdk_spans import RUN, make_sdk_spans


def test_real_exporter_spans_are_stored_intact(collector):
    service = collector()
    spans = make_sdk_spans()
    exporter = OTLPSpanExporter(endpoint=f"{service.url}/v1/traces")
    assert exporter.export(spans).name == "SUCCESS"
    trace_id = f"{spans[0].context.trace_id:032x}"
    stored = {s["spanId"]: s for s in get_json(f"{service.url}/api/traces/{trace_id}")["spans"]}
    assert len(stored) == len(spans)
    for span in spans:
        got = stored[f"{span.context.span_id:016x}"]
        assert got["name"] == span.name
        assert got["parentSpanId"] == (f"{span.parent.span_id:016x}" if span.parent else None)
        assert got["startTimeUnixNano"] == span.start_time and got["endTimeUnixNano"] == span.end_time
        for key, value in span.attributes.items():
            assert got["attributes"][key] == (list(value) if isinstance(value, tuple) else value)
        assert got["resource"]["service.name"] == "shop" and got["scope"] == "workflow"
    benign = next(s for s in stored.values() if s["name"] == "world.streams.writeToStream")
    assert benign["status"]["code"] == 0 and benign["benign"]
    assert benign["attributes"]["workflow.conflict"] == "benign"
    assert benign["attributes"]["workflow.original_status"].startswith("ERROR: Stream write failed: HTTP 409")
    real = next(s for s in stored.values() if s["name"].startswith("world.events.create"))
    assert real["status"]["code"] == 2 and not real["benign"]
    assert service.metrics.spans_benign == 1 and service.metrics.spans_accepted == len(spans)
    run = get_json(f"{service.url}/api/runs/{RUN}")
    assert run["run"]["benignConflicts"] == 1 and len(run["spans"]) == len(spans)
    metrics = http("GET", f"{service.url}/metrics")[2].decode()
    assert f"wft_spans_accepted_total {len(spans)}" in metrics and "wft_spans_benign_downgraded_total 1" in metrics


def _otlp_json(spans) -> bytes:
    """OTLP-JSON as the spec writes it: hex ids, enums as names in one span, ints elsewhere."""
    document = json_format.MessageToDict(encode_spans(spans))

    def hexify(node):
        if isinstance(node, dict):
            for key, value in list(node.items()):
                if key in ("traceId", "spanId", "parentSpanId"):
                    node[key] = base64.b64decode(value).hex()
                else:
                    hexify(value)
        elif isinstance(node, list):
            for item in node:
                hexify(item)

    hexify(document)
    return json.dumps(document).encode()


def test_otlp_json_with_hex_ids_and_chunked_gzip(collector):
    service = collector()
    spans = make_sdk_spans(2)
    body = gzip.compress(_otlp_json(spans))

    def chunks():
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    import urllib.request

    request = urllib.request.Request(
        f"{service.url}/v1/traces",
        data=chunks(),
        method="POST",
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip", "Transfer-Encoding": "chunked"},
    )
    with urllib.request.urlopen(request) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("application/json")
        assert json.loads(response.read()) == {}
    stored = get_json(f"{service.url}/api/traces/{spans[0].context.trace_id:032x}")["spans"]
    assert sorted(s["spanId"] for s in stored) == sorted(f"{s.context.span_id:016x}" for s in spans)


def test_partial_success_for_spans_with_bad_ids(collector):
    service = collector()
    spans = make_sdk_spans(1)
    request = encode_spans(spans)
    request.resource_spans[0].scope_spans[0].spans[0].trace_id = bytes(16)
    status, headers, body = http(
        "POST", f"{service.url}/v1/traces", request.SerializeToString(), {"Content-Type": "application/x-protobuf"}
    )
    assert status == 200
    response = ExportTraceServiceResponse()
    response.ParseFromString(body)
    assert response.partial_success.rejected_spans == 1
    assert "invalid trace id" in response.partial_success.error_message
    assert service.metrics.spans_rejected == 1 and service.metrics.spans_accepted == len(spans) - 1


@pytest.mark.parametrize(
    "body, headers, status, text",
    [
        (b"{}", {"Content-Type": "text/plain"}, 415, "unsupported Content-Type"),
        (b"\xff\xff\xff", {"Content-Type": "application/x-protobuf"}, 400, "invalid protobuf"),
        (b"{not json", {"Content-Type": "application/json"}, 400, "invalid JSON"),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz", "spanId": "00f067aa0ba902b7"}]}]}]}',
            {"Content-Type": "application/json"},
            400,
            "invalid id",
        ),
        (
            b"not gzip",
            {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"},
            400,
            "bad compressed body",
        ),
        (
            b"not brotli at all",
            {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"},
            400,
            "bad compressed body: invalid brotli data",
        ),
        (
            b"x",
            {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy"},
            415,
            "unsupported Content-Encoding 'snappy' (use gzip, deflate, br, zstd or none)",
        ),
    ],
)
def test_bad_input_gets_its_status(collector, body, headers, status, text):
    service = collector()
    got, _, answer = http("POST", f"{service.url}/v1/traces", body, headers)
    assert got == status and text in answer.decode()
    assert service.metrics.spans_accepted == 0


def test_body_limits_before_and_after_decompression(collector):
    service = collector(max_body_bytes=64 * 1024)
    big = b"\x00" * (65 * 1024)
    status, _, text = http("POST", f"{service.url}/v1/traces", big, {"Content-Type": "application/x-protobuf"})
    assert status == 413 and b"over 65536 bytes" in text
    bomb = gzip.compress(b"\x00" * (10 * 1024 * 1024))  # ~10 KB that inflates to 10 MiB
    assert len(bomb) < 64 * 1024
    status, _, _ = http(
        "POST", f"{service.url}/v1/traces", bomb, {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    )
    assert status == 413
    assert service.metrics.requests_rejected == 2


def test_full_queue_answers_503_with_retry_after(collector):
    service = collector(max_pending_spans=1)
    body = encode_spans(make_sdk_spans(1)).SerializeToString()
    status, headers, _ = http("POST", f"{service.url}/v1/traces", body, {"Content-Type": "application/x-protobuf"})
    assert status == 503 and 1 <= int(headers["Retry-After"]) <= 30
    assert service.metrics.requests_overloaded == 1
