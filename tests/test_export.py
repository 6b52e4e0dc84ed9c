"""export: ``OtlpSink`` posting to real HTTP endpoints (retry, refusal, headers, gzip), and
``wft export`` with worker processes sending every span once, the same spans as one process."""

from __future__ import annotations

import asyncio
import gzip
import math
import os
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
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

from bench.synth import scale_local
from telemetry import chunking
from telemetry.backends.local import LocalWorld
from telemetry.cli import main
from telemetry.commands import export_parallel
from telemetry.commands.export_parallel import GIVE_UP_AFTER
from telemetry.errors import WorkflowWorldError
from telemetry.export import ExportError, OtlpSink, run_resource
from telemetry.otlp_encode import OtlpEncoder, RunBatcher
from telemetry.reading import all_runs, event_log
from telemetry.runtrace import build_run_trace
from telemetry.semconv import WORKFLOW_RUN_ID

from .conftest import summary
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
    refuse_runs: set[str] = field(default_factory=set)  # answer 400 to any request with a span of these runs


@pytest.fixture
def endpoint():
    scripted = Scripted()

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        with scripted.lock:
            scripted.seen.append((dict(request.headers), body))
            answer = scripted.script.pop(0) if scripted.script else scripted.always
            bad = sorted(scripted.refuse_runs.intersection(_runs_in(body))) if scripted.refuse_runs else []
            if bad:
                answer = (400, {"Content-Type": "text/plain"}, ("a span of " + ", ".join(bad)).encode())
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


def _traces(world: Any, include_payloads: bool = True) -> list[Any]:
    async def go() -> list[Any]:
        try:
            return [
                build_run_trace(
                    run.run_id,
                    await event_log(world, run.run_id),
                    run,
                    resource=RESOURCE,
                    include_payloads=include_payloads,
                )
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
    monkeypatch.setattr(chunking, "CHUNK_RUNS", 2)  # 11 runs: six chunks over two workers
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
    monkeypatch.setattr(chunking, "CHUNK_RUNS", 6)
    where = (
        ["--dir", str(harness_out / "local-data")]
        if world == "local"
        else ["--world", "postgres", "--url", request.getfixturevalue("harness_pg_url")]
    )
    assert _export(capsys, *where, "--otlp", otlp_receiver.url, "--jobs", "2")[0] == 0
    whole = _spans(otlp_receiver)
    otlp_receiver.clear()
    monkeypatch.setattr(chunking, "CHUNK_SPANS", 1)  # every chunk answers after its first run
    code, err = _export(capsys, *where, "--otlp", otlp_receiver.url, "--jobs", "2")
    assert code == 0, err
    assert f"exported 11 runs, {len(whole)} spans, 0 errors" in err
    assert len(otlp_receiver.spans) == len(whole) and _spans(otlp_receiver) == whole  # each span once


def _task_sizes(runs: int, jobs: int) -> list[int]:
    sizes = []
    while runs:
        sizes.append(min(runs, chunking.chunk_size(runs, jobs)))
        runs -= sizes[-1]
    return sizes


@pytest.mark.parametrize("jobs", [1, 2, 8])
def test_tasks_are_big_while_many_runs_are_left_and_small_at_the_end(jobs):
    low, high = chunking.CHUNK_RUNS, chunking.CHUNK_RUNS_MAX
    for runs in (1, low - 1, low + 1, 300, 5000, 100_000):
        sizes = _task_sizes(runs, jobs)
        assert sum(sizes) == runs and sizes == sorted(sizes, reverse=True)
        left = runs
        for size in sizes:
            assert min(low, left) <= size <= high
            left -= size
        if runs >= 2 * jobs * high:  # big tasks first, and few small ones at the end
            assert sizes[0] == high and len(sizes) <= runs / high + 8 * jobs
        assert sizes[-1] <= low  # the last tasks are the smallest: the workers finish together


def test_workers_get_big_tasks_from_a_big_world(harness_out, tmp_path, otlp_receiver, capsys, monkeypatch):
    """Each task costs the parent a hand-over, an answer and a request ended short: a world of
    many runs goes out in tasks of ``chunk_size`` runs (most of them ``CHUNK_RUNS_MAX``), not in
    tasks of the smallest size, and every span still once."""
    runs = 300
    monkeypatch.setattr(chunking, "CHUNK_RUNS_MAX", 64)  # a big world, to scale: 300 runs
    data = tmp_path / "data"
    scale_local(harness_out / "local-data", data, runs)
    tasks: list[int] = []

    class Counting(export_parallel.ProcessPoolExecutor):
        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            if args and isinstance(args[0], list):
                tasks.append(len(args[0]))
            return super().submit(fn, *args, **kwargs)

    monkeypatch.setattr(export_parallel, "ProcessPoolExecutor", Counting)
    code, err = _export(capsys, "--dir", str(data), "--otlp", otlp_receiver.url, "--jobs", "2")
    assert code == 0, err
    assert tasks == _task_sizes(runs, 2) and tasks[0] == 64  # with 32 runs a task: ten tasks
    assert len(tasks) < runs / chunking.CHUNK_RUNS
    assert f"exported {runs} runs, {len(otlp_receiver.by_id())} spans, 0 errors" in err
    assert len(otlp_receiver.spans) == len(otlp_receiver.by_id())  # each span once


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
    monkeypatch.setattr(chunking, "CHUNK_RUNS", 4)  # 11 runs: three requests
    endpoint.script = [(403, {}, b"")]  # refused, not for its data (a 400 sends it again run by run)
    code, err = _export(capsys, "--dir", str(harness_out / "local-data"), "--otlp", endpoint.url, "--jobs", "2")
    assert code == 1 and "Traceback" not in err
    line = next(x for x in err.splitlines() if x.startswith("exported "))
    runs, errors = int(line.split()[1]), int(line.split(", ")[2].split()[0])
    assert runs + errors == 11 and errors in (3, 4)  # the runs of the refused request, no others
    assert "HTTP 403" in err


def test_a_collector_refusing_everything_ends_the_export_in_one_line(harness_out, endpoint, capsys, monkeypatch):
    monkeypatch.setattr(chunking, "CHUNK_RUNS", 2)
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
    monkeypatch.setattr(chunking, "CHUNK_RUNS", 1)
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


# -- wft export in one process: runs share requests ---------------------------------------------
@pytest.fixture(scope="module")
def many_runs(harness_out, tmp_path_factory) -> Path:
    """The harness's runs copied under fresh ids (``bench.synth``) until their spans fill more than
    four requests of the sink's batch size."""
    source = harness_out / "local-data"
    spans = sum(len(t.data) for t in _traces(LocalWorld(source)))
    copies = math.ceil(4.5 * OtlpSink().batch_size / spans)
    world = tmp_path_factory.mktemp("export-batching") / "data"
    scale_local(source, world, copies * len(list((source / "runs").glob("*.json"))))
    return world


def _sent(bodies: list[bytes]) -> dict[bytes, tuple[bytes, tuple[Any, ...], bytes]]:
    """Span id → (the span's message bytes, its resource's attributes but the per-process
    ``service.instance.id``, its scope's bytes), from gzipped request bodies."""
    out = {}
    for body in bodies:
        for resource_spans in _request(body).resource_spans:
            resource = tuple(
                (kv.key, kv.value.SerializeToString())
                for kv in resource_spans.resource.attributes
                if kv.key != "service.instance.id"
            )
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    out[span.span_id] = (span.SerializeToString(), resource, scope_spans.scope.SerializeToString())
    return out


def _runs_in(body: bytes) -> list[str]:
    """The run ids of a request's spans, in the order they first appear."""
    ids = (
        next(kv.value.string_value for kv in span.attributes if kv.key == WORKFLOW_RUN_ID)
        for resource_spans in _request(body).resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    )
    return list(dict.fromkeys(ids))


def _summary(err: str) -> tuple[int, int, int]:
    """(runs, spans, errors) of the ``exported N runs, M spans, E errors`` line."""
    line = next(x for x in err.splitlines() if x.startswith("exported "))
    runs, spans, errors = (int(part.split()[-2]) for part in line.split(" in ")[0].split(", "))
    return runs, spans, errors


def _failures(err: str) -> list[str]:
    """The lines naming the runs of a failed request (not the final ``giving up``)."""
    lines = [x.removeprefix("wft export: ") for x in err.splitlines() if x.startswith("wft export: ")]
    return [x for x in lines if not x.startswith("giving up") and "OTLP export of" in x]


@pytest.mark.parametrize("payloads", [True, False])
def test_one_process_sends_runs_in_shared_requests_the_spans_it_sent_a_run_at_a_time(
    many_runs, endpoint, capsys, payloads
):
    """Before, ``wft export --jobs 1`` posted each run's spans alone (``send_data`` per run); now
    runs share requests, and the spans are the same bytes, only fewer requests carry them."""
    traces = _traces(LocalWorld(many_runs), include_payloads=payloads)
    sink = OtlpSink(endpoint.url)
    for trace in traces:
        sink.send_data(trace.data, RESOURCE)
    alone = _sent([body for _, body in endpoint.seen])
    assert len(endpoint.seen) == len(traces)
    endpoint.seen.clear()

    options = [] if payloads else ["--no-payloads"]
    code, err = _export(capsys, "--dir", str(many_runs), "--otlp", endpoint.url, "--jobs", "1", *options)
    assert code == 0, err
    bodies = [body for _, body in endpoint.seen]
    assert _sent(bodies) == alone  # byte for byte, each span once
    assert _summary(err) == (len(traces), len(alone), 0)
    sizes = [sum(len(ss.spans) for rs in _request(b).resource_spans for ss in rs.scope_spans) for b in bodies]
    biggest = max(len(t.data) for t in traces)
    assert sum(sizes) == len(alone) and len(bodies) < len(traces) / 10
    assert all(sink.batch_size - biggest < size <= sink.batch_size for size in sizes[:-1])  # full but for a run


@pytest.mark.parametrize("bound", ["spans", "bytes"])
def test_a_request_names_exactly_the_runs_with_spans_in_it(harness_out, bound):
    traces = _traces(LocalWorld(harness_out / "local-data"))
    if bound == "spans":
        batcher = RunBatcher(OtlpEncoder(RESOURCE), max_spans=7)
    else:  # requests closed by size, some before a run's first span goes in
        sizes = sorted(len(OtlpEncoder(RESOURCE).span(s)) for t in traces for s in t.data)
        batcher = RunBatcher(OtlpEncoder(RESOURCE), max_spans=10_000, max_bytes=3 * sizes[len(sizes) // 2])
    requests = [r for t in traces for r in batcher.add(t.run_id, t.data)]
    last = batcher.flush()
    requests += [last] if last is not None else []
    assert batcher.flush() is None and batcher.holding == []
    owner = {s.span_id.to_bytes(8, "big"): t.run_id for t in traces for s in t.data}
    seen: list[str] = []
    for body, count, runs in requests:
        spans = [s for rs in ExportTraceServiceRequest.FromString(body).resource_spans for s in rs.scope_spans[0].spans]
        assert count == len(spans) and (count <= 7 or bound == "bytes")
        assert runs == list(dict.fromkeys(owner[s.span_id] for s in spans))
        seen.extend(runs)
    assert len(requests) > len(traces) / 2
    if bound == "bytes":
        return
    for trace in traces:  # a run that fits in a request is not split across two
        assert seen.count(trace.run_id) == (1 if len(trace.data) <= 7 else math.ceil(len(trace.data) / 7))


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_refused_batch_counts_and_names_exactly_its_runs(many_runs, endpoint, capsys, jobs):
    traces = {t.run_id: len(t.data) for t in _traces(LocalWorld(many_runs))}
    endpoint.script = [(200, {}, b""), (403, {"Content-Type": "text/plain"}, b"bad batch")]  # the second request
    code, err = _export(capsys, "--dir", str(many_runs), "--otlp", endpoint.url, "--jobs", jobs)
    assert code == 1 and "Traceback" not in err and "giving up" not in err
    refused = _runs_in(endpoint.seen[1][1])
    assert len(refused) > 1
    assert _summary(err) == (
        len(traces) - len(refused),
        sum(traces.values()) - sum(traces[r] for r in refused),
        len(refused),
    )
    [line] = _failures(err)
    assert line.startswith(f"{len(refused)} runs (") and "HTTP 403 Forbidden: bad batch" in line
    named = [word.strip("(),:") for word in line.split() if word.strip("(),:") in traces]
    assert named == refused[: export_parallel.NAMED_RUNS]  # the first few: a request holds up to hundreds
    if len(refused) > export_parallel.NAMED_RUNS:
        assert f" and {len(refused) - export_parallel.NAMED_RUNS} more)" in line


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_a_request_refused_for_one_runs_data_fails_that_run_alone(many_runs, endpoint, capsys, jobs):
    """A receiver that answers 400 to one run's spans (its data, not the client): the request that
    held it with others is sent again a run at a time, and only that run fails (all of the
    request's runs did)."""
    traces = {t.run_id: len(t.data) for t in _traces(LocalWorld(many_runs))}
    bad = sorted(traces)[len(traces) // 2]
    endpoint.refuse_runs = {bad}
    code, err = _export(capsys, "--dir", str(many_runs), "--otlp", endpoint.url, "--jobs", jobs)
    assert code == 1 and "Traceback" not in err and "giving up" not in err
    assert _summary(err) == (len(traces) - 1, sum(traces.values()) - traces[bad], 1)
    shared, alone = _failures(err)
    assert "HTTP 400 Bad Request" in shared and shared.endswith("sending them again a run at a time")
    assert alone.startswith(f"run {bad}: OTLP export of {traces[bad]} spans") and f"a span of {bad}" in alone
    delivered = [run for _, body in endpoint.seen if bad not in _runs_in(body) for run in _runs_in(body)]
    assert sorted(set(delivered)) == sorted(set(traces) - {bad})


def test_a_receiver_that_refuses_every_request_for_its_data_is_not_sent_each_run(many_runs, endpoint, capsys):
    """400 to every request after the first: each request is tried again run by run only until
    ``GIVE_UP_AFTER`` of its runs were refused too; its other runs then fail together, unsent."""
    traces = {t.run_id: len(t.data) for t in _traces(LocalWorld(many_runs))}
    endpoint.script = [(200, {}, b"")]
    endpoint.always = (400, {"Content-Type": "text/plain"}, b"no")
    code, err = _export(capsys, "--dir", str(many_runs), "--otlp", endpoint.url, "--jobs", "1")
    assert code == 1 and "Traceback" not in err
    first = set(_runs_in(endpoint.seen[0][1]))
    shared = [body for _, body in endpoint.seen[1:] if len(set(_runs_in(body))) > 1]
    alone = [body for _, body in endpoint.seen[1:] if len(set(_runs_in(body))) == 1]
    refused = len(shared) // 2  # each refused request, then the rest of its runs together once
    assert refused >= 2 and len(shared) == 2 * refused and len(alone) == GIVE_UP_AFTER * refused
    assert _summary(err) == (len(first), sum(traces[r] for r in first), len(traces) - len(first))


def _first_requests(many_runs: Path, endpoint: Scripted, capsys, jobs: str) -> list[list[str]]:
    """The runs of each request a clean export sends (the next export sends the same)."""
    assert _export(capsys, "--dir", str(many_runs), "--otlp", endpoint.url, "--jobs", jobs)[0] == 0
    requests = [_runs_in(body) for _, body in endpoint.seen]
    endpoint.seen.clear()
    return requests


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_three_bad_runs_at_the_start_do_not_end_the_export(many_runs, endpoint, capsys, jobs):
    """Three runs' data refused before any run was counted: the runs sent alone meanwhile went
    through, so the endpoint takes data; the export goes on (it gave up: 3 failures, 0 runs counted)."""
    traces = {t.run_id: len(t.data) for t in _traces(LocalWorld(many_runs))}
    first = _first_requests(many_runs, endpoint, capsys, jobs)[0]
    endpoint.refuse_runs = {first[1], first[4], first[7]}
    code, err = _export(capsys, "--dir", str(many_runs), "--otlp", endpoint.url, "--jobs", jobs)
    assert code == 1 and "giving up" not in err
    assert _summary(err) == (len(traces) - 3, sum(traces.values()) - sum(traces[r] for r in endpoint.refuse_runs), 3)


def test_a_request_whose_first_runs_are_bad_still_sends_its_others(many_runs, endpoint, capsys):
    """The first three runs of a refused request refused alone too: the others are tried once
    together, not failed unsent (a receiver refusing everything would refuse that too)."""
    traces = {t.run_id: len(t.data) for t in _traces(LocalWorld(many_runs))}
    second = _first_requests(many_runs, endpoint, capsys, "1")[1]
    endpoint.refuse_runs = set(second[:3])
    code, err = _export(capsys, "--dir", str(many_runs), "--otlp", endpoint.url, "--jobs", "1")
    assert code == 1 and "giving up" not in err
    assert _summary(err)[::2] == (len(traces) - 3, 3)
    together = [set(_runs_in(body)) for _, body in endpoint.seen if set(_runs_in(body)) == set(second[3:])]
    assert len(together) == 1


def test_a_receiver_down_while_a_request_is_sent_run_by_run_fails_the_rest_at_once(many_runs, endpoint, capsys):
    """A refused request being sent again run by run, and the receiver goes down (503 until the
    timeout): the request's other runs fail with that run, unsent (each would wait out the timeout)."""
    traces = {t.run_id: len(t.data) for t in _traces(LocalWorld(many_runs))}
    requests = _first_requests(many_runs, endpoint, capsys, "1")
    endpoint.script = [(200, {}, b""), (400, {}, b""), (200, {}, b"")]  # the second refused, its first run taken
    endpoint.always = (503, {"Retry-After": "0.1"}, b"")
    code, err = _export(capsys, "--dir", str(many_runs), "--otlp", endpoint.url, "--jobs", "1", "--timeout", "0.5")
    assert code == 1 and "Traceback" not in err
    alone = [body for _, body in endpoint.seen if len(set(_runs_in(body))) == 1]
    assert len({_runs_in(body)[0] for body in alone}) == 2  # the run taken, and the one the outage failed
    assert _summary(err)[0] == len(requests[0]) + 1 and sum(_summary(err)[::2]) == len(traces)


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_an_endpoint_that_is_down_ends_the_export_after_three_failed_requests(many_runs, capsys, jobs):
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    code, err = _export(capsys, "--dir", str(many_runs), "--otlp", url, "--jobs", jobs, "--timeout", "0.5")
    assert code == 1 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("wft export: giving up: OTLP export of")
    failed = _failures(err)
    assert len(failed) == GIVE_UP_AFTER and all("runs (" in line and "Connection refused" in line for line in failed)


def test_runs_read_before_a_world_error_are_still_sent(many_runs, endpoint, capsys, monkeypatch):
    """One process holds small runs back to fill a request: a world error later still sends them."""
    from telemetry import reading

    read: list[str] = []
    real = reading.event_log

    async def failing(world: Any, run_id: str, **options: Any) -> Any:
        if len(read) == 20:
            raise WorkflowWorldError("the world went away")
        read.append(run_id)
        return await real(world, run_id, **options)

    monkeypatch.setattr(reading, "event_log", failing)  # how one process reads logs (``run_logs``)
    code, err = _export(capsys, "--dir", str(many_runs), "--otlp", endpoint.url, "--jobs", "1")
    assert code == 1 and "the world went away" in err and "Traceback" not in err
    assert len(endpoint.seen) == 1 and set(_runs_in(endpoint.seen[0][1])) == set(read)


def test_runs_listed_before_a_listing_error_are_still_sent(many_runs, endpoint, capsys, monkeypatch):
    """A world error while listing (one process): the runs listed before it wait in a chunk for
    their logs to be read together; they still go out (they were dropped: nothing was sent)."""
    from telemetry.commands import export as export_command

    listed: list[str] = []
    real = export_command.all_runs

    async def failing(listing: Any, **options: Any) -> Any:
        async for run in real(listing, **options):
            if len(listed) == 10:
                raise WorkflowWorldError("the listing went away")
            listed.append(run.run_id)
            yield run

    monkeypatch.setattr(export_command, "all_runs", failing)
    code, err = _export(capsys, "--dir", str(many_runs), "--otlp", endpoint.url, "--jobs", "1")
    assert code == 1 and "the listing went away" in err and "Traceback" not in err
    assert {run for _, body in endpoint.seen for run in _runs_in(body)} == set(listed)


def test_workers_send_the_runs_listed_before_a_listing_error(harness_pg_url, otlp_receiver, capsys, monkeypatch):
    """The same with worker processes, on world-postgres (listed a page of ids at a time): the runs
    of the chunk being filled and of the chunks in flight still go out."""
    from telemetry.backends.postgres import PostgresWorld

    pages = 0
    runs_type = type(PostgresWorld(harness_pg_url).runs)
    real = runs_type.id_page

    async def failing(self: Any, before: str | None, limit: int) -> list[str]:
        nonlocal pages
        pages += 1
        if pages == 2:
            raise WorkflowWorldError("the listing went away")
        return await real(self, before, limit)

    monkeypatch.setattr(runs_type, "id_page", failing)
    monkeypatch.setattr(export_parallel, "ID_PAGE", 4)
    args = ("--world", "postgres", "--url", harness_pg_url, "--otlp", otlp_receiver.url, "--jobs", "2")
    code, err = _export(capsys, *args)
    assert code == 1 and "the listing went away" in err and "Traceback" not in err
    sent = {span.attributes[WORKFLOW_RUN_ID] for span in otlp_receiver.spans if WORKFLOW_RUN_ID in span.attributes}
    assert len(sent) == 4


def test_one_process_sends_a_run_read_again_later_with_the_others(harness_out, tmp_path, otlp_receiver, capsys):
    """A record cut a moment ago (a copy in progress) is read again after the listing; the runs
    read meanwhile wait in the request being filled, and every span goes out once."""
    assert _export(capsys, "--dir", str(harness_out / "local-data"), "--otlp", otlp_receiver.url, "--jobs", "1")[0] == 0
    whole_world = _spans(otlp_receiver)
    otlp_receiver.clear()
    otlp_receiver.requests = 0
    data = tmp_path / "data"
    shutil.copytree(harness_out / "local-data", data)
    run_id = summary(harness_out, "local")["retry"]["runId"]
    cut = sorted((data / "events").glob(f"{run_id}-*.json"))[1]
    whole = cut.read_bytes()
    cut.write_bytes(whole[: len(whole) // 2])
    mend = threading.Timer(1.5, cut.write_bytes, [whole])
    mend.start()
    try:
        code, err = _export(capsys, "--dir", str(data), "--otlp", otlp_receiver.url, "--jobs", "1")
    finally:
        mend.join()
    assert code == 0, err
    assert _summary(err) == (11, len(whole_world), 0)
    assert _spans(otlp_receiver) == whole_world and len(otlp_receiver.spans) == len(whole_world)  # run read whole
    assert otlp_receiver.requests < 11  # it shared a request with runs read before it
