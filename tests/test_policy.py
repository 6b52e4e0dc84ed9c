"""collector/policy.py: which failed spans are benign post-completion conflicts, and which stay errors.

Spans are made by the real OpenTelemetry SDK and decoded by the collector's own OTLP path, so the
policy sees exactly what it sees in service (``exception`` events, ``error.type``, status).
"""

from __future__ import annotations

import copy

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from collector.otlp import PROTOBUF, SpanRecord, decode_request, records_from
from collector.policy import apply_benign_policy, operation_of
from telemetry.errors import EntityConflictError, RunExpiredError, StreamError, WorkflowWorldError
from telemetry.tracing import is_benign_conflict

from .sdk_spans import CONFLICT, RUN, make_sdk_spans

STREAM_URL = f"https://vercel-workflow.com/api/v2/runs/{RUN}/stream/strm_x_user"
ALREADY_COMPLETED = f'Run "{RUN}" is already completed'


def _record(
    name: str,
    attributes: dict | None = None,
    *,
    exception: BaseException | None = None,
    status: StatusCode = StatusCode.ERROR,
    message: str | None = None,
) -> SpanRecord:
    """One span from the real SDK, through the collector's OTLP decoding."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("workflow").start_as_current_span(name, attributes=attributes or {}) as span:
        if exception is not None:
            span.record_exception(exception)
        if status is StatusCode.ERROR:
            span.set_status(Status(StatusCode.ERROR, message if message is not None else str(exception or "")))
        elif status is StatusCode.OK:
            span.set_status(Status(StatusCode.OK))
    provider.shutdown()
    (record,), rejected, _ = records_from(
        decode_request(encode_spans(memory.get_finished_spans()).SerializeToString(), PROTOBUF)
    )
    assert rejected == 0
    return record


def _http_put(url: str = STREAM_URL, method: str = "PUT", *, legacy: bool = False, status: int = 409) -> dict:
    if legacy:
        return {"http.method": method, "http.url": url, "http.status_code": status, "error.type": f"HTTP {status}"}
    return {
        "http.request.method": method,
        "url.full": url,
        "http.response.status_code": status,
        "error.type": f"HTTP {status}",
    }


BENIGN = {
    # 4.7.4: world-vercel's stream 409 is a plain Error carrying the server's message
    "writeToStream 409": lambda: _record(
        "world.streams.writeToStream", {"error.type": "HTTP 409"}, exception=Exception(CONFLICT)
    ),
    "writeToStreamMulti 409": lambda: _record(
        "world.streams.writeToStreamMulti", {"error.type": "HTTP 409"}, exception=Exception(CONFLICT)
    ),
    "closeStream 409": lambda: _record(
        "world.streams.closeStream", {"error.type": "HTTP 409"}, exception=Exception(CONFLICT)
    ),
    "status message only": lambda: _record("world.streams.writeToStream", message=CONFLICT),
    "http PUT to a stream": lambda: _record("http PUT", _http_put(), exception=Exception(CONFLICT)),
    "http PUT, legacy attributes": lambda: _record("http PUT", _http_put(legacy=True), exception=Exception(CONFLICT)),
    "EntityConflictError on a stream write": lambda: _record(
        "world.streams.writeToStream", exception=EntityConflictError("conflict")
    ),
    "RunExpiredError on a stream close": lambda: _record(
        "world.streams.closeStream", exception=RunExpiredError("gone")
    ),
    "WorkflowWorldError with error.type HTTP 409": lambda: _record(
        "world.streams.writeToStream", {"error.type": "HTTP 409"}, exception=WorkflowWorldError("conflict")
    ),
    # 5.x: StreamError with the server's text, and the stream operation as an attribute
    "5.x StreamError, operation attribute write": lambda: _record(
        "http PUT",
        {"workflow.stream.operation": "write", "error.type": "HTTP 409"},
        exception=StreamError(f"Stream write failed: {ALREADY_COMPLETED}"),
    ),
    "5.x StreamError, operation attribute write_multi": lambda: _record(
        "stream", {"workflow.stream.operation": "write_multi"}, exception=StreamError(ALREADY_COMPLETED)
    ),
    "5.x StreamError, operation attribute close": lambda: _record(
        "stream", {"workflow.stream.operation": "close"}, exception=StreamError(ALREADY_COMPLETED)
    ),
}

KEPT = {
    "same conflict on a step completion": lambda: _record(
        "world.events.create step_completed", {"error.type": "HTTP 409"}, exception=Exception(CONFLICT)
    ),
    "EntityConflictError on a run transition": lambda: _record(
        "world.events.create run_completed", exception=EntityConflictError("Run is already completed")
    ),
    "a stream write that failed otherwise": lambda: _record(
        "world.streams.writeToStream", {"error.type": "HTTP 503"}, exception=Exception("Stream write failed: HTTP 503")
    ),
    "WorkflowWorldError with error.type HTTP 500": lambda: _record(
        "world.streams.writeToStream", {"error.type": "HTTP 500"}, exception=WorkflowWorldError("server error")
    ),
    "a stream read": lambda: _record("world.streams.readFromStream", exception=Exception(CONFLICT)),
    "operation attribute read": lambda: _record(
        "stream", {"workflow.stream.operation": "read"}, exception=StreamError(ALREADY_COMPLETED)
    ),
    "http GET of a stream": lambda: _record("http GET", _http_put(method="GET"), exception=Exception(CONFLICT)),
    "http PUT elsewhere": lambda: _record(
        "http PUT", _http_put(f"https://vercel-workflow.com/api/v2/runs/{RUN}/events"), exception=Exception(CONFLICT)
    ),
    "StreamError about something else": lambda: _record(
        "world.streams.writeToStream", exception=StreamError("Stream write failed: HTTP 413 payload too large")
    ),
    "409 text without a real run id": lambda: _record(
        "world.streams.writeToStream",
        exception=Exception('Stream write failed: HTTP 409: {"message":"Run \\"wrun_short\\" is already completed"}'),
    ),
    "a step span": lambda: _record("STEP s0", {"workflow.run.id": RUN}, exception=Exception(CONFLICT)),
    "a plain 409 http span without the server's text": lambda: _record("http PUT", _http_put(), message=""),
}


@pytest.mark.parametrize("case", list(BENIGN))
def test_benign_conflicts_are_downgraded(case):
    record = BENIGN[case]()
    original = record.status_message
    assert record.status_code == StatusCode.ERROR.value
    assert apply_benign_policy(record) is True
    assert record.status_code == StatusCode.UNSET.value and record.status_message == ""
    assert record.benign is True
    assert record.attributes["workflow.conflict"] == "benign"
    assert record.attributes["workflow.original_status"] == (f"ERROR: {original}" if original else "ERROR")


@pytest.mark.parametrize("case", list(KEPT))
def test_other_errors_are_kept_untouched(case):
    record = KEPT[case]()
    before = copy.deepcopy(record)
    assert record.status_code == StatusCode.ERROR.value
    assert apply_benign_policy(record) is False
    assert record == before


@pytest.mark.parametrize("status", [StatusCode.UNSET, StatusCode.OK])
def test_spans_that_did_not_fail_are_never_touched(status):
    record = _record(
        "world.streams.writeToStream", {"error.type": "HTTP 409"}, exception=Exception(CONFLICT), status=status
    )
    before = copy.deepcopy(record)
    assert apply_benign_policy(record) is False and record == before


def test_a_span_the_app_recorded_benign_is_flagged_not_rewritten():
    """``record_benign`` in the app (our instrumentors): status Unset, ``workflow.conflict="benign"``. The run
    must count and show it as benign; nothing about the span changes, and it is no downgrade of ours."""
    marked = {"workflow.conflict": "benign", "error.type": "HTTP 409"}
    record = _record("world.streams.writeToStream", marked, status=StatusCode.UNSET)
    before = copy.deepcopy(record)
    assert apply_benign_policy(record) is False
    assert record.benign is True
    record.benign = False
    assert record == before


def test_original_status_without_a_message():
    record = _record("world.streams.writeToStream", exception=EntityConflictError("conflict"), message="")
    assert record.status_message == ""
    assert apply_benign_policy(record)
    assert record.attributes["workflow.original_status"] == "ERROR"


def test_the_policy_is_idempotent():
    record = BENIGN["writeToStream 409"]()
    assert apply_benign_policy(record)
    after = copy.deepcopy(record)
    assert apply_benign_policy(record) is False and record == after


@pytest.mark.parametrize(
    "error, operation",
    [
        (Exception(CONFLICT), "world.streams.writeToStream"),
        (Exception(CONFLICT), "world.events.create step_completed"),
        (EntityConflictError("conflict"), "world.streams.closeStream"),
        (EntityConflictError("conflict"), "world.runs.get"),
        (RunExpiredError("gone"), "world.streams.writeToStreamMulti"),
        (StreamError(ALREADY_COMPLETED), "world.streams.writeToStream"),
        (StreamError("other"), "world.streams.writeToStream"),
        (Exception("boom"), "world.streams.writeToStream"),
    ],
)
def test_the_policy_agrees_with_the_library_decision(error, operation):
    """Spans and in-process errors are judged alike: one decision, ``is_benign_conflict``."""
    record = _record(operation, exception=error)
    assert apply_benign_policy(record) == is_benign_conflict(error, operation=operation)


def test_real_sdk_batch_downgrades_only_the_stream_conflict():
    records, _, _ = records_from(decode_request(encode_spans(make_sdk_spans(3)).SerializeToString(), PROTOBUF))
    errors_before = {r.name for r in records if r.status_code == StatusCode.ERROR.value}
    downgraded = {r.name for r in records if apply_benign_policy(r)}
    assert downgraded == {"world.streams.writeToStream"}
    assert {r.name for r in records if r.status_code == StatusCode.ERROR.value} == errors_before - downgraded


@pytest.mark.parametrize(
    "name, attributes, expected",
    [
        ("world.streams.writeToStream", {}, "world.streams.writeToStream"),
        ("world.events.create step_completed", {}, "world.events.create step_completed"),
        ("stream", {"workflow.stream.operation": "write"}, "streams.write"),
        ("stream", {"workflow.stream.operation": "write_multi"}, "streams.writeMulti"),
        ("stream", {"workflow.stream.operation": "close"}, "streams.close"),
        ("stream", {"workflow.stream.operation": "read"}, None),
        ("http PUT", _http_put(), "streams.writeToStream"),
        ("http PUT", _http_put(legacy=True), "streams.writeToStream"),
        ("http PUT", _http_put(method="POST"), None),
        ("http PUT", _http_put(f"https://x/api/v2/runs/{RUN}/events"), None),
        ("fetch PUT", _http_put(), None),
        ("STEP s0", {}, None),
    ],
)
def test_operation_of(name, attributes, expected):
    assert operation_of(_record(name, attributes)) == expected
