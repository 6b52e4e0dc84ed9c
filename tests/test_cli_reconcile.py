"""``wft reconcile`` on the real TS SDK harness with OpenTelemetry on.

One harness run exports through an OTLP proxy in the test to two collectors (``wft serve``
processes following the same world): one gets every span (reconciliation clean), the other the
same requests less some ``STEP`` spans (the `double` step of the sequential run, and the failed
first attempt of the retried step). Both modes of the command, ``--collector URL`` and
``--store FILE`` with the world, find exactly those gaps and exit 1; on the complete copy they
exit 0. A copy of the world with one step's events deleted shows app spans whose step is not in the
log. The time breakdowns of the real runs add up to their durations."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from telemetry.reconcile import GapKinds

from .conftest import HARNESS, get_json, http, summary, wft
from .pgserver import free_port
from .threaded_server import serve_in_thread

PROTOBUF = "application/x-protobuf"


class Serve:
    """``wft serve`` as a process of its own, stopped by its pid."""

    def __init__(self, store: Path, data_dir: Path) -> None:
        self.store = store
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        store.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = store.parent / "serve.log"
        self.log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "telemetry", "serve", "--port", str(port), "--store", str(store)]
            + ["--world", "local", "--dir", str(data_dir), "--retention-age", "0"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.process.poll() is None, self.log_path.read_text()
            try:
                if http("GET", self.url + "/healthz", timeout=2)[0] == 200:
                    return
            except OSError:  # not listening yet
                pass
            assert time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.log.close()


def _attributes(span) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in span.attributes if kv.value.WhichOneof("value") == "string_value"}


def withheld(span) -> bool:
    """The STEP spans the proxy keeps from the second collector."""
    if not span.name.startswith("STEP "):
        return False
    attributes = _attributes(span)
    name = attributes.get("step.name", "")
    return name.endswith("//double") or (name.endswith("//flakyOnce") and attributes.get("step.status") == "running")


def start_proxy(full: str, partial: str):
    """An OTLP/HTTP endpoint that sends each request on to ``full`` as it came and to ``partial``
    without the ``withheld`` spans; it answers the app only when both took theirs."""
    dropped: list[dict[str, str]] = []

    async def traces(request: web.Request) -> web.Response:
        body = await request.read()  # inflated by aiohttp if the exporter compressed it
        assert request.content_type == PROTOBUF
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                keep = [s for s in scope.spans if not withheld(s)]
                dropped.extend(_attributes(s) for s in scope.spans if withheld(s))
                del scope.spans[:]
                scope.spans.extend(keep)
        async with aiohttp.ClientSession() as session:
            for url, data in ((full, body), (partial, export.SerializeToString())):
                async with session.post(url + "/v1/traces", data=data, headers={"Content-Type": PROTOBUF}) as answer:
                    if answer.status != 200:
                        return web.Response(status=503, headers={"Retry-After": "1"})
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    url, stop = serve_in_thread(app)
    return url, stop, dropped


def _settled(service: Serve, results: dict) -> None:
    deadline = time.monotonic() + 60
    while True:
        runs = {r["runId"]: r for r in get_json(f"{service.url}/api/runs?limit=100")["data"]}
        if all(runs.get(r["runId"], {}).get("status") == r["status"] for r in results.values()):
            return
        assert time.monotonic() < deadline, "the collector did not load the harness runs"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def harness_with_otel(tmp_path_factory):
    """The harness run once, exporting through the proxy: (out dir, results, full, partial, dropped)."""
    root = tmp_path_factory.mktemp("reconcile")
    out = root / "harness"
    data = out / "local-data"
    full = Serve(root / "full" / "store.sqlite3", data)
    partial = Serve(root / "partial" / "store.sqlite3", data)
    proxy, stop_proxy, dropped = start_proxy(full.url, partial.url)
    try:
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": proxy, "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}
        result = subprocess.run(
            ["bash", str(HARNESS / "run.sh"), "local", str(out)], capture_output=True, text=True, timeout=900, env=env
        )
        assert result.returncode == 0, result.stderr[-3000:]
        results = summary(out, "local")
        _settled(full, results)
        _settled(partial, results)
        yield out, results, full, partial, dropped
    finally:
        stop_proxy()
        full.stop()
        partial.stop()


def _reconcile(*args: str, env: dict | None = None) -> tuple[int, str, str]:
    done = wft("reconcile", "--grace", "0", *args, env=env, timeout=120)
    return done.returncode, done.stdout, done.stderr


def test_complete_spans_reconcile_clean(harness_with_otel):
    out, results, full, _, _ = harness_with_otel
    for scenario, expected in results.items():
        view = get_json(f"{full.url}/api/runs/{expected['runId']}")
        found = view["reconciliation"]
        assert found["instrumented"] and found["clean"], (scenario, found)
        assert found["logAttempts"] == found["appAttempts"] and found["workflowSpans"] >= 1, scenario
    code, stdout, stderr = _reconcile("--collector", full.url)
    assert code == 0, stdout + stderr
    assert stdout.strip() == f"{len(results)} runs checked: 0 with gaps (0 gaps)"
    code, stdout, stderr = _reconcile("--world", "local", "--dir", str(out / "local-data"), "--store", str(full.store))
    assert code == 0 and stdout.strip() == f"{len(results)} runs checked: 0 with gaps (0 gaps)", stdout + stderr


def test_withheld_step_spans_are_gaps_and_named(harness_with_otel):
    out, results, _, partial, dropped = harness_with_otel
    sequential, retry = results["sequential"]["runId"], results["retry"]["runId"]
    assert {d["workflow.run.id"] for d in dropped} == {sequential, retry} and len(dropped) == 2
    double = next(d["step.id"] for d in dropped if d["step.name"].endswith("//double"))
    flaky = next(d["step.id"] for d in dropped if d["step.name"].endswith("//flakyOnce"))
    by_collector = _reconcile("--collector", partial.url)
    by_store = _reconcile("--dir", str(out / "local-data"), "--store", str(partial.store))
    for code, stdout, stderr in (by_collector, by_store):
        assert code == 1, stdout + stderr
        lines = stdout.strip().splitlines()
        assert lines[-1] == f"{len(results)} runs checked: 2 with gaps (2 gaps)"
        assert sorted(lines[:-1]) == sorted(
            [
                f"{sequential}  sequentialWorkflow  completed  step double ({double}): 1 attempt in the event log,"
                " no app span (never exported, or exported elsewhere)",
                f"{retry}  retryWorkflow  completed  step flakyOnce ({flaky}): 2 attempts in the event log,"
                " 1 in the app's spans",
            ]
        )
    code, stdout, _ = _reconcile("--collector", partial.url, "--json")
    report = json.loads(stdout)
    assert code == 1 and report["withGaps"] == 2 and report["checked"] == len(results)
    kinds = {r["runId"]: [g["kind"] for g in r["reconciliation"]["gaps"]] for r in report["runs"]}
    assert kinds == {sequential: [GapKinds.STEP_NOT_EXPORTED], retry: [GapKinds.ATTEMPTS_DIFFER]}
    # judged too early, the same gaps are only pending: spans may still be on their way
    code, stdout, _ = _reconcile("--collector", partial.url, "--grace", "1h", "--workflow", "retryWorkflow")
    assert code == 0 and "1 runs checked: 0 with gaps (0 gaps), 1 too recent to judge (--grace 1h)" in stdout
    view = get_json(f"{partial.url}/api/runs/{retry}")
    assert view["reconciliation"]["gaps"] == [] and view["reconciliation"]["pending"] == 1  # default grace: 30 s
    assert "wft_reconcile_runs_with_gaps" in http("GET", f"{partial.url}/metrics")[2].decode()


def test_app_spans_of_steps_missing_from_the_log(harness_with_otel, tmp_path):
    out, results, full, _, _ = harness_with_otel
    hook = results["hook"]["runId"]
    cut = tmp_path / "local-data"
    shutil.copytree(out / "local-data", cut)
    events = {p: json.loads(p.read_text()) for p in (cut / "events").glob(f"{hook}-*.json")}
    step_id = next(
        e["correlationId"]
        for e in events.values()
        if e["eventType"] == "step_created" and e["eventData"]["stepName"].endswith("//processApproval")
    )
    for path, event in events.items():
        if event.get("correlationId") == step_id:
            path.unlink()
    code, stdout, stderr = _reconcile("--dir", str(cut), "--store", str(full.store), "--json")
    assert code == 1, stdout + stderr
    (run,) = json.loads(stdout)["runs"]
    (gap,) = run["reconciliation"]["gaps"]
    assert run["runId"] == hook and gap["kind"] == GapKinds.STEP_NOT_IN_LOG and gap["stepId"] == step_id
    assert len(gap["spanIds"]) == 1 and "not in the run's event log" in gap["message"]


def test_time_breakdowns_of_real_runs_add_up(harness_with_otel):
    _, results, full, _, _ = harness_with_otel
    for scenario, expected in results.items():
        view = get_json(f"{full.url}/api/runs/{expected['runId']}")
        timing = view["timeBreakdown"]
        parts = {p["name"]: p for p in timing["parts"]}
        assert sum(p["ns"] for p in parts.values()) == timing["endNs"] - timing["startNs"], scenario
        (root,) = [
            s for s in view["spans"] if s["source"] == "world" and s["attributes"].get("workflow.span.kind") == "run"
        ]
        assert (timing["startNs"], timing["endNs"]) == (root["startTimeUnixNano"], root["endTimeUnixNano"]), scenario
        assert timing["appSpans"] and not timing["live"] and parts["world"]["ms"] > 0, scenario
        assert timing["sdk"]["queueOverheadMs"] is not None, scenario
    retry = {
        p["name"]: p for p in get_json(f"{full.url}/api/runs/{results['retry']['runId']}")["timeBreakdown"]["parts"]
    }
    assert retry["backoff"]["summedMs"] >= 900  # the ~1 s retry delay
    parallel = get_json(f"{full.url}/api/runs/{results['parallel']['runId']}")["timeBreakdown"]
    executing = next(p for p in parallel["parts"] if p["name"] == "executing")
    assert executing["summedMs"] > executing["ms"]  # three steps at once, counted once in the wall time
    # their code waits 100, 200 and 300 ms: a parallel step's event write does not take that from them
    assert executing["ms"] >= 300, parallel
    # the SDK's queue measure of the invocation that ends a sleep includes the sleep: it stays sleeping
    analysis = get_json(f"{full.url}/api/runs/{results['sleep']['runId']}/analysis")
    sleeping = next(p for p in analysis["timeBreakdown"]["parts"] if p["name"] == "sleeping")
    assert sleeping["summedMs"] >= 1000 and sleeping["ms"] >= 900, analysis["timeBreakdown"]


def test_one_line_errors(tmp_path, collector):
    code, _, stderr = _reconcile()
    assert (
        code == 2 and stderr.strip() == "wft reconcile: pass --store FILE (with the world options) or --collector URL"
    )
    code, _, stderr = _reconcile("--store", str(tmp_path / "missing.sqlite3"))
    assert code == 2 and stderr.strip() == f"wft reconcile: --store: no such file: {tmp_path / 'missing.sqlite3'}"
    (tmp_path / "not-a-store").write_text("hello")
    code, _, stderr = _reconcile("--store", str(tmp_path / "not-a-store"), "--dir", str(tmp_path))
    assert code == 2 and "is not a collector store" in stderr and len(stderr.strip().splitlines()) == 1
    code, _, stderr = _reconcile("--collector", f"http://user:secret@127.0.0.1:{free_port()}/")
    assert code == 2 and "cannot reach the collector at http://127.0.0.1:" in stderr and "secret" not in stderr
    code, _, stderr = _reconcile("--collector", "http://127.0.0.1:1", "--grace", "soon")
    assert code == 2 and "--grace: not a duration" in stderr
    token = "t" * 24
    service = collector(token=token)
    code, _, stderr = _reconcile("--collector", service.url)
    assert code == 2 and stderr.strip() == "wft reconcile: the collector wants a token: pass --token or set WFT_TOKEN"
    code, stdout, stderr = _reconcile("--collector", service.url, env={"WFT_TOKEN": token})
    assert code == 0 and stdout.strip() == "0 runs checked: 0 with gaps (0 gaps)", stderr


def test_logs_are_checked_as_they_are_read_not_held_a_chunk_at_a_time(harness_out, tmp_path, monkeypatch):
    """``wft reconcile`` from the world checks each log as it arrives: a chunk of 256 long runs' logs
    held at once would be gigabytes (it held the whole chunk's before checking one). The findings
    still come in the order the runs were listed."""
    import argparse
    import asyncio

    from collector.store import Store
    from telemetry.backends.local import LocalWorld
    from telemetry.commands import reconcile as command

    real_logs, real_reconcile = command.run_logs, command.reconcile
    held = {"read": 0, "checked": 0, "most": 0}

    async def counted_logs(*args, **kwargs):
        async for item in real_logs(*args, **kwargs):
            held["read"] += 1
            held["most"] = max(held["most"], held["read"] - held["checked"])
            yield item

    def counted_reconcile(*args, **kwargs):
        held["checked"] += 1
        return real_reconcile(*args, **kwargs)

    monkeypatch.setattr(command, "run_logs", counted_logs)
    monkeypatch.setattr(command, "reconcile", counted_reconcile)
    world = LocalWorld(harness_out / "local-data")
    args = argparse.Namespace(status=None, workflow=None, limit=None)
    found = asyncio.run(command.from_world(world, Store(tmp_path / "store.sqlite3").connect(), args, 0))
    listed = [run.run_id for run in asyncio.run(_listed(harness_out / "local-data"))]
    assert held["checked"] == found.checked == len(listed) > 1
    assert held["most"] == 1  # one log read and not yet checked at a time


async def _listed(data: Path) -> list:
    from telemetry.backends.local import LocalWorld
    from telemetry.reading import all_runs

    world = LocalWorld(data)
    try:
        return [run async for run in all_runs(world, resolve_data="none")]
    finally:
        await world.close()
