"""export: ``OtlpSink`` posting to real HTTP endpoints (retry, refusal, headers, gzip), and
``wft export`` with worker processes sending every span once, the same spans as one process."""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from ulid import ULID

from telemetry.backends.local import LocalWorld
from telemetry.cli import main
from telemetry.commands import export_parallel
from telemetry.export import ExportError, OtlpSink, run_resource
from telemetry.otlp_encode import OtlpEncoder
from telemetry.reading import all_runs, event_log
from telemetry.runtrace import build_run_trace

from .threaded_server import serve_in_thread

RESOURCE = run_resource("local")


@dataclass
class Scripted:
    """An OTLP endpoint answering from a script (then 200), recording what it was sent."""

    script: list[tuple[int, dict[str, str], bytes]] = field(default_factory=list)
    always: tuple[int, dict[str, str], bytes] | None = None
    seen: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""


@pytest.fixture
def endpoint():
    scripted = Scripted()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        with scripted.lock:
            scripted.seen.append((dict(request.headers), body))
            answer = scripted.script.pop(0) if scripted.script else scripted.always
        if answer is not None:
            status, headers, text = answer
            return web.Response(status=status, headers=headers, body=text)
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(), content_type="application/x-protobuf"
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    scripted.url, stop = serve_in_thread(app, auto_decompress=False)
    yield scripted
    stop()


def _traces(world: Any) -> list[Any]:
    async def go() -> list[Any]:
        try:
            return [
                build_run_trace(run.run_id, await event_log(world, run.run_id), run, resource=RESOURCE)
                async for run in all_runs(world)
            ]
        finally:
            await world.close()

    return asyncio.run(go())


def _request(body: bytes) -> ExportTraceServiceRequest:
    return ExportTraceServiceRequest.FromString(gzip.decompress(body))


# -- OtlpSink ------------------------------------------------------------------------------------
def test_post_retries_503_honouring_retry_after_then_delivers(endpoint, harness_out):
    endpoint.script = [(503, {"Retry-After": "0"}, b""), (429, {"Retry-After": "0.1"}, b"")]
    sink = OtlpSink(endpoint.url, timeout=5)
    body = OtlpEncoder(RESOURCE).request(_traces(LocalWorld(harness_out / "local-data"))[0].data).SerializeToString()
    started = time.monotonic()
    sink.post(body, 3)
    assert time.monotonic() - started < 1  # Retry-After, not the 1 s, 2 s backoff
    assert len(endpoint.seen) == 3 and sink.sent == 3
    assert all(_request(b).SerializeToString() == body for _, b in endpoint.seen)  # the same request each time


def test_a_refusal_is_not_retried_and_the_error_says_why(endpoint):
    endpoint.always = (400, {"Content-Type": "text/plain"}, b"bad span: name too long")
    sink = OtlpSink(endpoint.url, timeout=5)
    with pytest.raises(ExportError) as caught:
        sink.post(b"", 7)
    assert len(endpoint.seen) == 1
    message = str(caught.value)
    assert "7 spans" in message and endpoint.url + "/v1/traces" in message
    assert "HTTP 400" in message and "bad span: name too long" in message


def test_a_retry_after_beyond_the_timeout_gives_up_at_once(endpoint):
    endpoint.always = (503, {"Retry-After": "30"}, b"")
    started = time.monotonic()
    with pytest.raises(ExportError, match="gave up.*HTTP 503"):
        OtlpSink(endpoint.url, timeout=2).post(b"", 1)
    assert time.monotonic() - started < 1.5 and len(endpoint.seen) == 1


def test_an_endpoint_nobody_listens_on_is_an_export_error_naming_it():
    with pytest.raises(ExportError) as caught:
        OtlpSink("http://127.0.0.1:9", timeout=0.5).post(b"", 1)
    assert "127.0.0.1:9/v1/traces" in str(caught.value) and "refused" in str(caught.value).lower()


def test_headers_from_the_environment_and_the_caller_and_gzip(endpoint, monkeypatch):
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=acme,authorization=Bearer%20abc")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-signal=traces")
    sink = OtlpSink(endpoint.url, headers={"x-extra": "1"})
    sink.post(b"\x0a\x00", 1)
    headers, body = endpoint.seen[0]
    assert headers["x-signal"] == "traces" and "x-tenant" not in headers  # the traces variable wins, as in the SDK
    assert headers["x-extra"] == "1"
    assert headers["Content-Type"] == "application/x-protobuf" and headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == b"\x0a\x00"


def test_send_data_splits_into_requests_of_the_batch_size(endpoint, harness_out):
    traces = _traces(LocalWorld(harness_out / "local-data"))
    data = [s for t in traces for s in t.data]
    sink = OtlpSink(endpoint.url, batch_size=5)
    sink.send_data(data, RESOURCE)
    sizes = [len(_request(b).resource_spans[0].scope_spans[0].spans) for _, b in endpoint.seen]
    assert sizes == [5] * (len(data) // 5) + ([len(data) % 5] if len(data) % 5 else [])
    received = [s.span_id for _, b in endpoint.seen for s in _request(b).resource_spans[0].scope_spans[0].spans]
    assert received == [s.span_id.to_bytes(8, "big") for s in data] and sink.sent == len(data)


def test_sdk_spans_are_sent_as_the_sdk_encodes_them(endpoint, harness_out):
    trace = _traces(LocalWorld(harness_out / "local-data"))[0]
    OtlpSink(endpoint.url).send(trace.spans)
    assert _request(endpoint.seen[0][1]) == sdk_encode(trace.spans)


# -- wft export with worker processes -----------------------------------------------------------
def _export(capsys, *args: str) -> tuple[int, str]:
    code = main(["export", *args])
    return code, capsys.readouterr().err


def _spans(receiver) -> dict[str, Any]:
    """Received spans by id, without the resource's per-process ``service.instance.id``."""
    out = {}
    for span_id, span in receiver.by_id().items():
        resource = {k: v for k, v in span.resource.items() if k != "service.instance.id"}
        out[span_id] = replace(span, resource=resource)
    return out


@pytest.mark.parametrize("world", ["local", "postgres"])
def test_workers_send_every_span_once_the_same_as_one_process(
    world, request, harness_out, otlp_receiver, capsys, monkeypatch
):
    monkeypatch.setattr(export_parallel, "CHUNK_RUNS", 2)  # 11 runs: six chunks over two workers
    where = (
        ["--dir", str(harness_out / "local-data")]
        if world == "local"
        else ["--world", "postgres", "--url", request.getfixturevalue("harness_pg_url")]
    )
    code, err = _export(capsys, *where, "--otlp", otlp_receiver.url, "--jobs", "2")
    assert code == 0, err
    parallel = _spans(otlp_receiver)
    assert len(otlp_receiver.spans) == len(parallel)  # each span once
    assert len({s.resource["service.instance.id"] for s in otlp_receiver.spans}) == 1  # one resource
    assert otlp_receiver.requests >= 2  # the runs did go out in several requests
    assert f"exported 11 runs, {len(parallel)} spans, 0 errors" in err

    otlp_receiver.clear()
    code, err = _export(capsys, *where, "--otlp", otlp_receiver.url, "--jobs", "1")
    assert code == 0, err
    assert _spans(otlp_receiver) == parallel


@pytest.mark.parametrize("world", ["local", "postgres"])
def test_a_full_chunk_answers_early_and_its_other_runs_are_sent_once(
    world, request, harness_out, otlp_receiver, capsys, monkeypatch
):
    """A worker stops a chunk once it holds ``CHUNK_SPANS`` spans and hands back the runs it did not
    reach; on world-postgres those are runs whose logs were being read in one statement."""
    monkeypatch.setattr(export_parallel, "CHUNK_RUNS", 6)
    where = (
        ["--dir", str(harness_out / "local-data")]
        if world == "local"
        else ["--world", "postgres", "--url", request.getfixturevalue("harness_pg_url")]
    )
    assert _export(capsys, *where, "--otlp", otlp_receiver.url, "--jobs", "2")[0] == 0
    whole = _spans(otlp_receiver)
    otlp_receiver.clear()
    monkeypatch.setattr(export_parallel, "CHUNK_SPANS", 1)  # every chunk answers after its first run
    code, err = _export(capsys, *where, "--otlp", otlp_receiver.url, "--jobs", "2")
    assert code == 0, err
    assert f"exported 11 runs, {len(whole)} spans, 0 errors" in err
    assert len(otlp_receiver.spans) == len(whole) and _spans(otlp_receiver) == whole  # each span once


def test_the_export_path_makes_no_sdk_span_objects(harness_out, otlp_receiver, capsys, monkeypatch):
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a ReadableSpan was built on the export path")

    monkeypatch.setattr(ReadableSpan, "__init__", refuse)
    for jobs in ("1", "2"):
        otlp_receiver.clear()
        code, err = _export(
            capsys, "--dir", str(harness_out / "local-data"), "--otlp", otlp_receiver.url, "--jobs", jobs
        )
        assert code == 0 and "exported 11 runs" in err, err
        assert len(otlp_receiver.by_id()) > 50


def test_a_refused_request_counts_its_runs_as_errors(harness_out, endpoint, capsys, monkeypatch):
    monkeypatch.setattr(export_parallel, "CHUNK_RUNS", 4)  # 11 runs: three requests
    endpoint.script = [(400, {}, b"")]
    code, err = _export(capsys, "--dir", str(harness_out / "local-data"), "--otlp", endpoint.url, "--jobs", "2")
    assert code == 1 and "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("exported "))
    runs, errors = int(line.split()[1]), int(line.split(", ")[2].split()[0])
    assert runs + errors == 11 and errors in (3, 4)  # the runs of the refused request, no others
    assert "HTTP 400" in err


def test_a_collector_refusing_everything_ends_the_export_in_one_line(harness_out, endpoint, capsys, monkeypatch):
    monkeypatch.setattr(export_parallel, "CHUNK_RUNS", 2)
    endpoint.always = (400, {}, b"")
    code, err = _export(capsys, "--dir", str(harness_out / "local-data"), "--otlp", endpoint.url, "--jobs", "2")
    assert code == 1 and "giving up" in err and "Traceback" not in err


async def _die(*args: Any, **kwargs: Any) -> Any:
    os._exit(3)  # as the OOM killer would


async def _die_reading(*args: Any, **kwargs: Any) -> Any:
    os._exit(3)
    yield  # an async generator, as ``run_logs`` is


def test_a_worker_that_dies_is_a_one_line_error(harness_out, otlp_receiver, capsys, monkeypatch):
    monkeypatch.setattr(export_parallel, "event_log", _die)  # the workers' warm-up (the parent lists only)
    monkeypatch.setattr(export_parallel, "run_logs", _die_reading)  # and their readers
    monkeypatch.setattr(export_parallel, "known_logs", _die_reading)
    code, err = _export(capsys, "--dir", str(harness_out / "local-data"), "--otlp", otlp_receiver.url, "--jobs", "2")
    assert code == 1 and "worker process died" in err and "Traceback" not in err


def test_workers_export_only_the_selected_runs(harness_out, otlp_receiver, capsys, monkeypatch):
    monkeypatch.setattr(export_parallel, "CHUNK_RUNS", 1)
    where = ["--dir", str(harness_out / "local-data"), "--otlp", otlp_receiver.url, "--status", "completed"]
    code, err = _export(capsys, *where, "--jobs", "2")
    assert code == 0, err
    parallel = _spans(otlp_receiver)
    statuses = {s.attributes.get("workflow.run.status") for s in parallel.values() if s.name.startswith("run ")}
    assert statuses == {"completed"}
    otlp_receiver.clear()
    assert _export(capsys, *where, "--jobs", "1")[0] == 0
    assert _spans(otlp_receiver) == parallel


def test_a_world_error_in_a_worker_ends_the_export_as_in_one_process(harness_out, tmp_path, capsys):
    """The error's class crosses back from the worker: a directory in no layout is the user's to fix (2)."""
    data = tmp_path / "data"
    shutil.copytree(harness_out / "local-data", data)
    (data / "events" / f"wrun_{ULID()}").mkdir()  # a per-run folder beside flat files
    answers = [_export(capsys, "--dir", str(data), "--otlp", "http://127.0.0.1:9", "--jobs", j) for j in ("2", "1")]
    assert answers[0] == answers[1]
    code, err = answers[0]
    assert code == 2 and "mixes the flat (4.x) and per-run world-local layouts" in err and "Traceback" not in err


def test_workers_read_the_run_files_and_report_a_broken_one_as_one_process_does(
    harness_out, tmp_path, otlp_receiver, capsys, monkeypatch
):
    """With ``--jobs`` the parent only lists names (runs, and the flat events folder once); the
    workers read every run and event file, and a cut run file is skipped and named alike."""
    from telemetry.backends import local

    data = tmp_path / "data"
    shutil.copytree(harness_out / "local-data", data)
    broken = sorted((data / "runs").glob("*.json"))[0]
    old = broken.stat().st_mtime_ns
    broken.write_bytes(broken.read_bytes()[:30])
    os.utime(broken, ns=(old, old))  # cut long ago: unreadable, not being written
    in_parent: list[str] = []
    real = local.read_bytes
    monkeypatch.setattr(local, "read_bytes", lambda path: in_parent.append(path) or real(path))
    code, err = _export(capsys, "--dir", str(data), "--otlp", otlp_receiver.url, "--jobs", "2")
    assert in_parent == []  # the workers (forked, with their own copy of the list) read them all
    parallel = _spans(otlp_receiver)
    otlp_receiver.clear()
    alone = _export(capsys, "--dir", str(data), "--otlp", otlp_receiver.url, "--jobs", "1")
    assert code == alone[0] == 1
    assert "exported 10 runs" in err and f"skipped 1 run with unreadable records (first: run {broken.stem}" in err
    assert err.splitlines()[-1] == alone[1].splitlines()[-1]
    assert _spans(otlp_receiver) == parallel
