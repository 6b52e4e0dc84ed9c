"""The span builder's short cuts give what the general rules give, on the harness's real logs.

``runtrace`` keeps span ids per run and encodes a step's usual arguments without ``to_jsonable``;
each must agree with the general rule it stands for (``span_id_for``, ``trace_id_for``, JSON of
``to_jsonable``), also when real arguments are made to hold what the short cut must refuse (NaN,
a Map's bool keys, a Date).
"""

from __future__ import annotations

import asyncio
import json
import math
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from telemetry.backends.local import LocalWorld
from telemetry.payloads import UNDEFINED, to_jsonable
from telemetry.reading import all_runs, event_log
from telemetry.runtrace import MAX_PAYLOAD_CHARS, RunTraceBuilder, build_run_trace
from telemetry.trace_identity import span_id_for, trace_id_for
from telemetry.world import TERMINAL_RUN_EVENT_TYPES


def _logs(data_dir):
    async def go():
        world = LocalWorld(data_dir)
        try:
            return [(run, await event_log(world, run.run_id)) async for run in all_runs(world)]
        finally:
            await world.close()

    return asyncio.run(go())


def _reference(value: Any) -> str:
    text = json.dumps(to_jsonable(value), ensure_ascii=False, default=str)
    return text if len(text) <= MAX_PAYLOAD_CHARS else text[: MAX_PAYLOAD_CHARS - 1] + "…"


def test_ids_are_the_identity_rules(harness_out):
    logs = _logs(harness_out / "local-data")
    assert logs
    for run, events in logs:
        builder = RunTraceBuilder(run.run_id, run)
        builder.feed(events)
        assert builder.trace_id == trace_id_for(run.run_id, run)
        assert builder.closed
        for key in builder.closed:
            for span in builder.span_data([key]):
                assert span.span_id == span_id_for(builder.trace_id, run.run_id, key)


def test_step_arguments_encode_as_to_jsonable_does(harness_out):
    logs = _logs(harness_out / "local-data")
    created = [
        (run, event, terminal)
        for run, events in logs
        for terminal in [e for e in events if e.event_type in TERMINAL_RUN_EVENT_TYPES][:1]
        for event in events
        if event.event_type == "step_created" and "input" in (event.event_data or {})
    ]
    assert any(UNDEFINED in event.event_data["input"].values() for _, event, _ in created)
    variants = [
        lambda args: args,
        lambda args: [*args, math.nan],  # JSON.stringify makes it null
        lambda args: [*args, {True: 1, None: 2}],  # a Map's keys, as devalue decodes them
        lambda args: [*args, {"at": datetime(2026, 1, 1, tzinfo=UTC)}],
        lambda args: [*args, [args]],
        lambda args: [*args, "x" * MAX_PAYLOAD_CHARS],
    ]
    checked = 0
    for run, event, terminal in created:
        for variant in variants:
            arguments = dict(event.event_data["input"])
            arguments["args"] = variant(list(arguments.get("args", [])))
            changed = replace(event, event_data={**event.event_data, "input": arguments})
            # the step alone, closed by the run's end
            trace = build_run_trace(run.run_id, [changed, terminal], run)
            (step,) = [s for s in trace.data if s.attributes.get("step.id") == event.correlation_id]
            assert step.attributes["step.input"] == _reference(arguments)
            checked += 1
    assert checked >= len(variants)
