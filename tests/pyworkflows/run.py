"""Run the workflows of ``apps`` into a data dir, in this process, and report what vercel-workflow says.

``python -m tests.pyworkflows.run DATA_DIR [--only a,b] [--spans FILE] [--otlp URL] [--sentry-dsn DSN]
[--sentry-drops FILE]`` prints one JSON document: per scenario, the run id and what vercel-workflow's own API
reports for the run (status, error, its steps with status/attempt/error, its event types, its streams). With
``--spans`` or ``--otlp`` the app is instrumented with ``VercelWorkflowInstrumentor`` and a real SDK tracer
provider, whose in-memory exporter is dumped to FILE as JSON lines and whose OTLP exporter sends to URL.
``--sentry-dsn`` turns on sentry-sdk with ``telemetry.sentry``'s filter; ``--sentry-drops`` writes what the
filter dropped, per rule, as JSON. A fresh process per data dir: vercel-workflow binds its world, queue and
registry when ``apps`` is imported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from typing import Any

SCENARIOS = (
    "sequential",
    "fan_out",
    "retrying",
    "fatal",
    "failing",
    "bulky",
    "sleeper",
    "approval",
    "waiting",
    "streaming",
    "racing",
)
#: how long the straggler step of ``racing`` sleeps before writing after its run completed
STRAGGLER_DELAY = 1.5


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("--only", default=",".join(SCENARIOS))
    parser.add_argument("--spans", help="instrument and dump the finished spans here (JSON lines)")
    parser.add_argument("--otlp", help="instrument and also export the spans to this OTLP/HTTP base URL")
    parser.add_argument("--sentry-dsn", help="sentry-sdk with telemetry.sentry's filter, sending here")
    parser.add_argument("--sentry-level", default="WARNING", help="log level that becomes a Sentry event")
    parser.add_argument("--sentry-drops", help="with --sentry-dsn: write the filter's drop counts here (JSON)")
    return parser.parse_args()


def main() -> int:
    args = _parse()
    _watch_vercel_workflow_log()
    os.environ["WORKFLOW_LOCAL_DATA_DIR"] = args.data_dir
    os.environ.setdefault("WORKFLOW_TARGET_WORLD", "local")
    exporter = None
    if args.spans or args.otlp:
        exporter = _instrument(args.otlp)
    if args.sentry_dsn:
        _sentry(args.sentry_dsn, args.sentry_level)
    report = asyncio.run(_drive(args.only.split(",")))
    if exporter is not None:
        from opentelemetry import trace

        trace.get_tracer_provider().shutdown()  # type: ignore[attr-defined]  # the SDK provider: flushes OTLP
        if args.spans:
            _dump_spans(exporter, args.spans)
    if args.sentry_dsn:
        import sentry_sdk

        sentry_sdk.flush(10)
        if args.sentry_drops:
            from telemetry.sentry import drop_counts

            with open(args.sentry_drops, "w") as fh:
                json.dump(drop_counts(), fh)
    json.dump(report, sys.stdout, indent=1, sort_keys=True)
    return 0


def _instrument(otlp: str | None = None) -> Any:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from telemetry.instrumentation.vercel_workflow import VercelWorkflowInstrumentor

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "pyworkflows"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    if otlp:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp.rstrip('/')}/v1/traces")))
    trace.set_tracer_provider(provider)
    VercelWorkflowInstrumentor().instrument()
    return exporter


def _dump_spans(exporter: Any, path: str) -> None:
    with open(path, "w") as fh:
        for span in exporter.get_finished_spans():
            fh.write(span.to_json(indent=None) + "\n")


def _sentry(dsn: str, level: str) -> None:
    import logging

    from sentry_sdk.integrations.logging import LoggingIntegration

    from telemetry.sentry import init

    init(
        dsn,
        default_integrations=False,
        integrations=[LoggingIntegration(level=logging.INFO, event_level=getattr(logging, level))],
    )


async def _drive(only: list[str]) -> dict[str, Any]:
    from vercel.workflow import start
    from vercel.workflow._internal import world as w

    from . import apps

    starts = {
        "sequential": lambda: start(apps.sequential, 3),
        "fan_out": lambda: start(apps.fan_out, 4),
        "retrying": lambda: start(apps.retrying, "quota"),
        "fatal": lambda: start(apps.fatal, "ord_42"),
        "failing": lambda: start(apps.failing, "printer"),
        "bulky": lambda: start(apps.bulky, 200),
        "sleeper": lambda: start(apps.sleeper, 1),
        "approval": lambda: start(apps.approval, "approve-me"),
        "waiting": lambda: start(apps.approval, "nobody-answers"),
        "streaming": lambda: start(apps.streaming, ["alpha", "beta", "gamma"]),
        "racing": lambda: start(apps.racing, STRAGGLER_DELAY),
    }
    runs = {name: await starts[name]() for name in only}
    waiters = []
    for name, run in runs.items():
        if name == "approval":
            waiters.append(_resume_when_ready("approve-me", run))
        elif name == "waiting":
            waiters.append(_until_hook("nobody-answers"))
        else:
            waiters.append(_settle(run))
    await asyncio.gather(*waiters)
    if "racing" in runs:  # the straggler writes after its run completed: wait for that write
        await _until_stream_written(runs["racing"].run_id)
        await _until_replayed_after_end(runs["racing"].run_id)
    world = w.get_world()
    report = {name: await describe(world, run.run_id) for name, run in runs.items()}
    await world.aclose()
    return report


async def _settle(run: Any) -> None:
    try:
        await asyncio.wait_for(run.return_value(), 60)
    except TimeoutError:
        raise
    except Exception:  # a failing run: its failure is part of the report
        pass


async def _until_hook(token: str) -> Any:
    from vercel.workflow import HookNotFoundError, get_hook_by_token

    deadline = time.monotonic() + 30
    while True:
        try:
            return await get_hook_by_token(token)
        except HookNotFoundError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def _resume_when_ready(token: str, run: Any) -> None:
    from . import apps

    await _until_hook(token)
    await apps.Approval(approved=True, by="ops").resume(token)
    await _settle(run)


async def _until_stream_written(run_id: str) -> None:
    from vercel.workflow._internal import world as w

    world = w.get_world()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        names = await world.streams_list(run_id)
        if any(name.endswith("_user_" + _b64("late")) for name in names):
            step_done = await _steps_done(world, run_id)
            if step_done:
                return
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the straggler of {run_id} never wrote")


class _Sightings(logging.Filter):
    """Log messages of ``vercel.workflow`` seen so far (a logger filter: handlers, and the last-resort
    printing of WARNINGs to stderr, stay as they are)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return True


_SIGHTINGS = _Sightings()


def _watch_vercel_workflow_log() -> None:
    """See vercel-workflow's DEBUG lines too (Sentry's logging integration ignores DEBUG)."""
    logger = logging.getLogger("vercel.workflow")
    logger.setLevel(logging.DEBUG)
    logger.addFilter(_SIGHTINGS)


async def _until_replayed_after_end(run_id: str) -> None:
    """The straggler's completion re-queues its finished run; that replay's ``run_started`` meets the run's
    end (an EntityConflictError vercel-workflow handles, logging one DEBUG line). Wait for it, so what the
    replay did is in the data and the spans before the world closes."""
    said = f"Workflow run {run_id} is already finished or started"
    deadline = time.monotonic() + 30
    while said not in _SIGHTINGS.messages:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the straggler's replay of {run_id} never ran")
        await asyncio.sleep(0.02)


async def _steps_done(world: Any, run_id: str) -> bool:
    page = await world.events_list(run_id)
    terminal = {e.correlation_id for e in page.data if e.event_type in ("step_completed", "step_failed")}
    created = {e.correlation_id for e in page.data if e.event_type == "step_created"}
    return bool(created) and created <= terminal


def _b64(text: str) -> str:
    import base64

    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def describe(world: Any, run_id: str) -> dict[str, Any]:
    """What vercel-workflow's own World API reports for one run."""
    from vercel.workflow._internal import serialization as ser

    run = await world.runs_get(run_id)
    events = (await world.events_list(run_id)).data
    steps: dict[str, Any] = {}
    for event in events:
        if event.event_type == "step_created":
            step = await world.steps_get(run_id, event.correlation_id)
            steps[step.step_id] = {
                "name": step.step_name,
                "status": step.status,
                "attempt": step.attempt,
                "error": _error_text(ser, step.error),
            }
    streams = {}
    for name in await world.streams_list(run_id):
        info = await world.streams_get_info(run_id, name)
        page = await world.streams_get_chunks(run_id, name)
        streams[name] = {"done": info.done, "chunks": len(page.data)}
    return {
        "run_id": run_id,
        "workflow": run.workflow_name,
        "status": run.status,
        "error": _error_text(ser, run.error),
        "error_code": run.error_code,
        "events": [e.event_type for e in events],
        "steps": steps,
        "streams": streams,
    }


def _error_text(ser: Any, error: Any) -> str | None:
    if error is None:
        return None
    try:
        hydrated = ser.hydrate_error(error, what="report")
    except Exception as failure:  # noqa: BLE001 - reported, not raised
        return f"<unreadable: {failure}>"
    return f"{type(hydrated).__name__}: {hydrated}"


if __name__ == "__main__":
    sys.exit(main())
