"""The benign-conflict rule accepts every name the SDKs give a stream or telemetry write, and no other.

The names are read from the real packages, not typed in: the TS SDK's streamer methods (wrapped by
``instrumentObject('world.streams', …)`` in world-local and world-vercel) and the Python SDK's
(vercel-workflow) World methods. A method added upstream shows up here on its own.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from collector.otlp import SpanRecord
from collector.policy import operation_of
from telemetry.errors import EntityConflictError
from telemetry.tracing import BENIGN_OPERATIONS, benign_operation, is_benign_conflict

_METHOD = re.compile(r"^\s*async\s+([A-Za-z]+)\s*\(", re.MULTILINE)


def _is_write(method: str) -> bool:
    return bool(re.search(r"write|close", method, re.IGNORECASE))


@pytest.fixture(scope="module")
def ts_stream_methods(harness_app_dir: Path) -> dict[str, set[str]]:
    """Streamer method names per TS world package, from its built ``streamer.js``."""
    found: dict[str, set[str]] = {}
    for package in ("world-local", "world-vercel"):
        dist = harness_app_dir / "node_modules" / "@workflow" / package / "dist"
        assert "instrumentObject('world.streams'" in (dist / "index.js").read_text()
        names = {m for m in _METHOD.findall((dist / "streamer.js").read_text()) if m[0].islower()}
        found[package] = names - {"start", "pump", "pull", "cancel"}
    return found


def test_every_ts_stream_write_spelling_is_benign(ts_stream_methods):
    for package, methods in ts_stream_methods.items():
        writes = {m for m in methods if _is_write(m)}
        assert writes >= {"writeToStream", "writeToStreamMulti", "closeStream"}, package
        for method in writes:
            for spelling in (method, f"streams.{method}", f"world.{method}", f"world.streams.{method}"):
                assert benign_operation(spelling) in BENIGN_OPERATIONS, (package, spelling)
                assert is_benign_conflict(EntityConflictError("conflict"), operation=spelling), spelling


def test_ts_stream_reads_are_not_benign(ts_stream_methods):
    reads = {m for methods in ts_stream_methods.values() for m in methods if not _is_write(m)}
    assert {"readFromStream", "getStreamChunks", "getStreamInfo", "listStreamsByRunId"} <= reads
    for method in reads:
        for spelling in (method, f"streams.{method}", f"world.streams.{method}"):
            assert benign_operation(spelling) is None, spelling
            assert not is_benign_conflict(EntityConflictError("conflict"), operation=spelling)


def test_python_sdk_world_stream_writes_are_benign():
    from vercel.workflow._internal import world as py_world  # the Python SDK's World base class

    methods = {
        name
        for cls in vars(py_world).values()
        if inspect.isclass(cls)
        for name, _ in inspect.getmembers(cls, inspect.isfunction)
        if name.startswith("streams_")
    }
    writes = {m for m in methods if _is_write(m)}
    assert writes == {"streams_write", "streams_write_multi", "streams_close"}
    for method in writes:
        assert benign_operation(method) in BENIGN_OPERATIONS
    for method in methods - writes:
        assert benign_operation(method) is None, method


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ("world.events.create step_completed", None),
        ("world.events.create run_completed", None),
        ("world.runs.get", None),
        ("write", None),  # bare: says too little
        ("close", None),
        ("streams.write", "streams.writeToStream"),  # 5.x
        ("streams.writeMulti", "streams.writeToStreamMulti"),
        ("streams.close", "streams.closeStream"),
        ("telemetry.write", "telemetry.write"),
        ("world.telemetry.write", "telemetry.write"),
        ("http PUT https://vercel-workflow.com/api/v2/runs/wrun_1/stream/strm_1_user", "streams.writeToStream"),
        ("PUT /v2/runs/wrun_1/stream/strm_1", "streams.writeToStream"),
        ("http GET https://vercel-workflow.com/api/v2/stream/strm_1", None),
        ("http PUT https://vercel-workflow.com/api/v2/runs/wrun_1/events", None),
    ],
)
def test_other_spellings(operation, expected):
    assert benign_operation(operation) == expected


def _span(name: str, attributes: dict[str, object]) -> SpanRecord:
    return SpanRecord(
        trace_id="0" * 31 + "1",
        span_id="0" * 15 + "1",
        parent_span_id="",
        name=name,
        kind=3,
        start_ns=1,
        end_ns=2,
        status_code=2,
        status_message="",
        attributes=dict(attributes),
        events=[],
        links=[],
        resource={},
        scope="workflow",
    )


@pytest.mark.parametrize(
    ("name", "attributes"),
    [
        ("http PUT", {"http.request.method": "PUT", "url.full": "https://x/api/v2/runs/wrun_1/stream/s"}),
        ("world.streams.writeToStream", {}),
        ("world.streams.closeStream", {}),
        ("world.streams.write", {}),
        ("stream write", {"workflow.stream.operation": "write_multi"}),
    ],
)
def test_collector_policy_operations_are_benign_operations(name, attributes):
    """The collector's policy names a span's operation in a spelling the library rule accepts."""
    operation = operation_of(_span(name, attributes))
    assert operation is not None and benign_operation(operation) in BENIGN_OPERATIONS
