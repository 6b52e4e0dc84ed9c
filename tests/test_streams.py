import asyncio
import logging
import os
from datetime import UTC, datetime

import pytest
from opentelemetry.trace import StatusCode

from telemetry.backends.vercel_keys import DeploymentKey
from telemetry.errors import WorkflowWorldError
from telemetry.stream_format import StreamFormatError, decode_chunks, encode_chunk
from telemetry.streams import StreamWriter, python_devalue, stream_name
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
    assert world.chunks[writer.name] == [encode_chunk(b"one")]  # nothing stored where no reader would see it
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


# ---- what a write stores --------------------------------------------------------------------------
VALUES = ["hello", 42, {"a": [1, "x"]}, b"\x00\xff", datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)]


def _writer(world: FakeInMemoryWorld, **options) -> StreamWriter:
    world.add_run(RUN)
    return StreamWriter(world, RUN, **options)


def test_values_are_stored_as_the_sdks_frames_one_chunk_each():
    world = FakeInMemoryWorld()
    writer = _writer(world)

    async def scenario():
        for value in VALUES[:2]:
            assert await writer.write(value) is True
        assert await writer.write_many(VALUES[2:]) is True
        assert await writer.close() is True

    asyncio.run(scenario())
    assert world.chunks[writer.name] == [encode_chunk(v) for v in VALUES]  # not b"hello", not str(42)
    assert decode_chunks(world.chunks[writer.name]) == VALUES
    assert writer.name in world.closed and (writer.written, writer.dropped) == (5, 0)


def test_raw_streams_store_bytes_unchanged_and_refuse_values():
    world = FakeInMemoryWorld()
    writer = _writer(world, raw=True)
    asyncio.run(writer.write_many([b"\x00raw", "tëxt", bytearray(b"ab")]))
    assert world.chunks[writer.name] == [b"\x00raw", "tëxt".encode(), b"ab"]
    with pytest.raises(TypeError, match="raw stream takes bytes or str"):
        asyncio.run(writer.write({"a": 1}))


def test_a_value_the_sdk_cannot_serialize_raises_before_anything_is_written(spans):
    provider, exporter = spans
    world = FakeInMemoryWorld()
    writer = _writer(world, tracer_provider=provider)
    with pytest.raises(StreamFormatError):
        asyncio.run(writer.write_many(["fine", object()]))  # the good value is not written either
    with pytest.raises(StreamFormatError):
        asyncio.run(writer.write({"__proto__": 1}))
    assert world.chunks[writer.name] == [] and writer.written == 0
    assert exporter.get_finished_spans() == ()  # no world call was made


def test_chunks_are_encrypted_with_the_worlds_run_key_through_traced(spans):
    provider, _ = spans
    world = FakeInMemoryWorld()
    key = DeploymentKey(os.urandom(32), "prj_streams").for_run(RUN)
    looked_up: list[str] = []
    world.run_key = lambda run_id: looked_up.append(run_id) or key  # as VercelWorld.run_key
    world.add_run(RUN)
    writer = StreamWriter(traced(world, peer_service="workflow-server", tracer_provider=provider), RUN)
    asyncio.run(writer.write_many(VALUES))
    asyncio.run(writer.write("again"))
    stored = world.chunks[writer.name]
    assert all(chunk[4:8] == b"encr" for chunk in stored)
    assert decode_chunks(stored, decrypt=key.decrypt) == [*VALUES, "again"]
    assert looked_up == [RUN]  # once per writer, not per chunk


def test_the_worlds_sdk_hint_picks_vercel_workflows_forms_and_sdk_overrides_it():
    world = FakeInMemoryWorld()
    world.streams.sdk = "python"  # what LocalWorld says for a vercel-workflow data dir
    python = _writer(world)
    typescript = StreamWriter(world, RUN, sdk="typescript")
    date = VALUES[-1]
    assert (python.sdk, typescript.sdk) == ("python", "typescript")
    assert python.encode(date)[4:] == b'devl[["Date","2026-01-02T03:04:05.678Z"],"2026-01-02T03:04:05.678Z"]'
    assert typescript.encode(date) == encode_chunk(date)
    assert decode_chunks([python.encode(v) for v in VALUES]) == VALUES  # our reader reads both forms
    assert StreamWriter(FakeInMemoryWorld(), RUN).sdk == "typescript"  # no hint: the TypeScript SDK


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (b"\x01\x02", '[["Uint8Array",2],"AQI=",["ArrayBuffer","AQI="]]'),
        (b"", '[["Uint8Array",2],".",["ArrayBuffer",""]]'),
        (2**60, '[["BigInt","1152921504606846976"],"1152921504606846976"]'),
        ({1, 2}, '[["Set",2,3],[2,3],1,2]'),
        ({1: "x"}, '[["Map",3,4],[2],[3,4],1,"x"]'),
        ("plain", '["plain"]'),
    ],
)
def test_python_devalue_rewrites_the_reduced_entries(value, text):
    assert python_devalue(value) == text
