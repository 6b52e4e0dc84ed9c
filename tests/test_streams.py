import asyncio
import logging

import pytest
from opentelemetry.trace import StatusCode

from telemetry.errors import WorkflowWorldError
from telemetry.streams import StreamWriter, stream_name
from telemetry.tracing import benign_counts
from telemetry.world import EventRequest, traced

from .fakes import FakeInMemoryWorld

RUN = "wrun_01M80NBG3NGY5GD01AVW90YHQD"


def test_stream_name_matches_the_sdk():
    # Names seen in the harness's world-local data for the stream scenario.
    assert stream_name(RUN) == "strm_01M80NBG3NGY5GD01AVW90YHQD_user"
    assert stream_name(RUN, "text") == "strm_01M80NBG3NGY5GD01AVW90YHQD_user_dGV4dA"


@pytest.mark.parametrize("mode", ["reject", "accept"])
def test_write_after_completion_is_dropped_not_raised(spans, caplog, mode):
    provider, exporter = spans
    caplog.set_level(logging.DEBUG, logger="telemetry.conflicts")
    world = FakeInMemoryWorld(post_completion=mode)
    world.add_run(RUN)
    writer = StreamWriter(world, RUN, tracer_provider=provider)

    async def scenario():
        assert await writer.write(b"one") is True
        await world.events.create(RUN, EventRequest("run_completed"))
        assert await writer.write(b"late") is False
        assert await writer.write_many([b"x", b"y"]) is False
        assert await writer.close() is False

    asyncio.run(scenario())
    assert world.chunks[writer.name] == [b"one"]  # nothing stored where no reader would see it
    assert (writer.written, writer.dropped) == (1, 3)
    assert sum(benign_counts().values()) == 3
    late = [s for s in exporter.get_finished_spans() if s.attributes.get("workflow.conflict") == "benign"]
    assert [s.name for s in late] == ["workflow.stream.write", "workflow.stream.write_multi", "workflow.stream.close"]
    assert all(s.status.status_code is StatusCode.UNSET for s in late)
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 3


def test_other_errors_propagate_through_throw_with_trace(spans):
    provider, exporter = spans
    world = FakeInMemoryWorld()
    world.add_run(RUN)
    world.fail_next = WorkflowWorldError("PUT -> HTTP 500", status=500)
    writer = StreamWriter(world, RUN, tracer_provider=provider)
    with pytest.raises(WorkflowWorldError):
        asyncio.run(writer.write(b"a"))
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes["error.type"] == "HTTP 500"
    assert benign_counts() == {}


def test_traced_world_and_writer_count_a_conflict_once(spans):
    provider, exporter = spans
    inner = FakeInMemoryWorld()
    inner.add_run(RUN, status="completed")
    writer = StreamWriter(
        traced(inner, peer_service="workflow-server", tracer_provider=provider), RUN, tracer_provider=provider
    )
    assert asyncio.run(writer.write(b"late")) is False
    assert sum(benign_counts().values()) == 1
    world_span, writer_span = exporter.get_finished_spans()
    assert world_span.name == "world.streams.writeToStream"
    assert world_span.parent.span_id == writer_span.context.span_id
    assert world_span.attributes["workflow.conflict"] == writer_span.attributes["workflow.conflict"] == "benign"


@pytest.mark.parametrize("mode", ["reject", "accept"])
def test_race_fifty_writers_while_the_run_completes(mode):
    """No exception escapes; benign counter == dropped writes; every other write is stored."""
    world = FakeInMemoryWorld(post_completion=mode)
    world.add_run(RUN)
    errors: list[BaseException] = []

    async def race():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: errors.append(context.get("exception")))

        async def writer_task(i: int) -> StreamWriter:
            writer = StreamWriter(world, RUN, name=f"strm_{i}")
            for n in range(20):
                await writer.write(f"{i}:{n}")
            return writer

        async def complete_soon():
            for _ in range(10):
                await asyncio.sleep(0)
            await world.events.create(RUN, EventRequest("run_completed"))

        results = await asyncio.gather(*(writer_task(i) for i in range(50)), complete_soon())
        return results[:-1]

    writers = asyncio.run(race())
    dropped = sum(w.dropped for w in writers)
    stored = sum(len(world.chunks[w.name]) for w in writers)
    assert errors == []
    assert 0 < dropped < 50 * 20
    assert sum(benign_counts().values()) == dropped
    assert stored == sum(w.written for w in writers) == 50 * 20 - dropped
