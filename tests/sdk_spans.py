"""Spans made by the real OpenTelemetry SDK, shaped like a workflow app's, for ingest tests."""

from __future__ import annotations

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

RUN = "wrun_01KQKXJQGJ78X9YSF34QG3GHFX"
CONFLICT = (
    f"Stream write failed: HTTP 409 (PUT https://vercel-workflow.com/api/v2/runs/{RUN}/stream/strm_x_user): "
    '{"success":false,"error":"conflict","message":"Run \\"' + RUN + '\\" is already completed"}'
)


def make_sdk_spans(count: int = 3, *, service: str = "shop"):
    """Real SDK spans: a parent, children with attributes, one benign conflict, one real error."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("workflow")
    with tracer.start_as_current_span(
        "WORKFLOW demo", attributes={"workflow.run.id": RUN, "workflow.name": "workflow//./w//demo"}
    ):
        for i in range(count):
            with tracer.start_as_current_span(
                f"STEP s{i}",
                attributes={
                    "workflow.run.id": RUN,
                    "step.id": f"step_{i}",
                    "n": i,
                    "f": 1.5,
                    "ok": True,
                    "tags": ["a", "b"],
                },
            ):
                pass
        with tracer.start_as_current_span(
            "world.streams.writeToStream", attributes={"workflow.run.id": RUN, "error.type": "HTTP 409"}
        ) as late:
            late.record_exception(Exception(CONFLICT))
            late.set_status(Status(StatusCode.ERROR, CONFLICT))
        with tracer.start_as_current_span(
            "world.events.create step_completed", attributes={"workflow.run.id": RUN}
        ) as real:
            real.record_exception(Exception("boom"))
            real.set_status(Status(StatusCode.ERROR, "boom"))
    provider.shutdown()
    return memory.get_finished_spans()
