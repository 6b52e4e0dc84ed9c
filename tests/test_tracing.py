import logging

import pytest
from opentelemetry.trace import StatusCode

from telemetry.errors import (
    EntityConflictError,
    RunExpiredError,
    StreamError,
    ThrottleError,
    WorkflowWorldError,
    error_for_response,
)
from telemetry.tracing import (
    benign_counts,
    is_benign_conflict,
    record_benign,
    run_id_of,
    throw_with_trace,
)

RUN = "wrun_01KQKXJQGJ78X9YSF34QG3GHFX"
# Seed 003 (issue #1949), world-vercel 4.1.2: no diagnostics in the message.
CONFLICT_BODY = '{"success":false,"error":"conflict","message":"Run \\"' + RUN + '\\" is already completed"}'
SEED_409 = "Stream write failed: HTTP 409: " + CONFLICT_BODY
# Reference §3.4, world-vercel 4.7.4 after PR #2142: method, URL and x-vercel diagnostics.
DIAG_409 = (
    f"Stream write failed: HTTP 409 (PUT https://vercel-workflow.com/api/v2/runs/{RUN}/stream/"
    f"strm_01KQKXJQGJ78X9YSF34QG3GHFX_user; x-vercel-id=iad1::x; x-vercel-error=conflict): {CONFLICT_BODY}"
)
WRITE = "world.streams.writeToStream"


@pytest.mark.parametrize(
    "error, operation, benign",
    [
        (Exception(SEED_409), WRITE, True),
        (Exception(DIAG_409), WRITE, True),
        (Exception(DIAG_409), "world.streams.writeToStreamMulti", True),
        (Exception(DIAG_409), "world.streams.closeStream", True),
        (Exception(SEED_409), "telemetry.write", True),
        (StreamError(DIAG_409, status=409), "streams.write", True),  # 5.x StreamError with a 409
        (StreamError(DIAG_409), "streams.write", True),
        (EntityConflictError("Run is already completed"), WRITE, True),
        (RunExpiredError("run expired"), WRITE, True),
        (error_for_response(409, "PUT x -> HTTP 409"), WRITE, True),
        (WorkflowWorldError("gone", status=410), WRITE, True),
        # the same conflicts on operations that carry state are not benign
        (Exception(SEED_409), "world.events.create step_completed", False),
        (EntityConflictError("Tried completing step, but step has already finished."), "world.events.create", False),
        (
            EntityConflictError('Cannot transition run from terminal state "completed"'),
            "world.events.create run_completed",
            False,
        ),
        (RunExpiredError("x"), "world.runs.get", False),
        # near misses on a stream write are real errors
        (Exception(SEED_409.replace("409", "500")), WRITE, False),
        (Exception("Stream write failed: HTTP 409: conflict on lock"), WRITE, False),
        (Exception('Run "wrun_01KQKXJQGJ78X9YSF34QG3GHFX" is already completed'), WRITE, False),
        (StreamError("Stream write failed: HTTP 500", status=500), WRITE, False),
        (WorkflowWorldError("boom", status=500), WRITE, False),
        (ThrottleError("slow down", retry_after=1), WRITE, False),
        (ValueError("bad chunk"), WRITE, False),
    ],
)
def test_is_benign_conflict_table(error, operation, benign):
    assert is_benign_conflict(error, operation=operation) is benign


def test_is_benign_conflict_on_serialized_errors():
    assert is_benign_conflict({"type": "Error", "value": SEED_409}, operation=WRITE)
    assert is_benign_conflict({"name": "EntityConflictError", "message": "x"}, operation=WRITE)
    assert is_benign_conflict({"type": "telemetry.errors.EntityConflictError", "message": "x"}, operation=WRITE)
    assert is_benign_conflict({"name": "StreamError", "message": "x", "status": 409}, operation=WRITE)
    assert not is_benign_conflict({"name": "StreamError", "message": "x", "status": 500}, operation=WRITE)
    assert not is_benign_conflict({"type": "Error", "value": "boom"}, operation=WRITE)


def test_run_id_of():
    assert run_id_of(Exception(SEED_409)) == RUN
    assert run_id_of(EntityConflictError("x", run_id="wrun_A")) == "wrun_A"
    assert run_id_of(Exception("nothing here")) is None


def _raise_inside_span(provider, error, **kwargs):
    tracer = provider.get_tracer("t")
    with tracer.start_as_current_span("world.runs.get", record_exception=False, set_status_on_exception=False) as span:
        with pytest.raises(type(error)) as raised:
            throw_with_trace(span, error, **kwargs)
    assert raised.value is error


@pytest.mark.parametrize(
    "error, kwargs, expected_type",
    [
        (WorkflowWorldError("t", code="TIMEOUT"), {}, "TIMEOUT"),
        (WorkflowWorldError("s", status=503), {}, "HTTP 503"),
        (EntityConflictError("c"), {}, "EntityConflictError"),
        (ValueError("v"), {}, "ValueError"),
        (WorkflowWorldError("s", status=503, code="X"), {"error_type": "HTTP 503"}, "HTTP 503"),
    ],
)
def test_throw_with_trace_records_error(spans, error, kwargs, expected_type):
    provider, exporter = spans
    _raise_inside_span(provider, error, **kwargs)
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert str(error) in span.status.description
    assert span.attributes["error.type"] == expected_type
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"].rsplit(".", 1)[-1] == type(error).__name__
    assert event.attributes["exception.message"] == str(error)
    assert "exception.stacktrace" in event.attributes


def test_record_benign_leaves_status_unset_logs_and_counts(spans, caplog):
    provider, exporter = spans
    error = Exception(DIAG_409)
    caplog.set_level(logging.DEBUG, logger="telemetry.conflicts")
    with provider.get_tracer("t").start_as_current_span("w") as live:
        record_benign(live, error)
        record_benign(live, error)  # the same error seen twice counts once
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.UNSET
    assert span.attributes["workflow.conflict"] == "benign"
    assert span.attributes["error.type"] == "Exception"
    assert span.attributes["workflow.run.id"] == RUN
    assert not [e for e in span.events if e.name == "exception"]
    records = [r for r in caplog.records if r.name == "telemetry.conflicts"]
    assert len(records) == 1
    assert records[0].levelno == logging.DEBUG
    assert records[0].exc_info[1] is error
    assert RUN in records[0].getMessage() and records[0].workflow_run_id == RUN
    assert benign_counts() == {"Exception": 1}
    with provider.get_tracer("t").start_as_current_span("w2") as live:
        record_benign(live, EntityConflictError("x", run_id=RUN))
    assert benign_counts() == {"Exception": 1, "EntityConflictError": 1}


def test_record_benign_uses_given_logger(spans, caplog):
    provider, _ = spans
    logger = logging.getLogger("my.app")
    caplog.set_level(logging.DEBUG, logger="my.app")
    with provider.get_tracer("t").start_as_current_span("w") as span:
        record_benign(span, Exception(SEED_409), logger=logger)
    assert [r.name for r in caplog.records] == ["my.app"]
