"""collector/ingest.py: reading bodies (limits before and after decompression, chunked), content
types and encodings, answers, the queue bound and forwarding. The handler runs on a real aiohttp
server on 127.0.0.1 with a real writer and SQLite store; clients are aiohttp and the real OTel exporter.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import multiprocessing
import os
import signal
import sqlite3
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import brotli
import pytest
import zstandard
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from collector.admission import DECODED_FACTOR, Admission
from collector.content_coding import BadData, TooLarge
from collector.ingest import INLINE_DECODE_BYTES, Ingest, read_limited
from collector.metrics import Metrics
from collector.otlp import JSON, PROTOBUF
from collector.store import Store
from collector.writer import Writer

from .sdk_spans import make_sdk_spans


@dataclass
class Served:
    url: str
    store: Store
    writer: Writer
    metrics: Metrics
    forwarded: list[tuple[bytes, set[str]]] = field(default_factory=list)  # (payload, span ids on disk then)
    admission: Admission | None = None

    def span_ids(self) -> set[str]:
        conn = sqlite3.connect(self.store.path)
        try:
            return {row[0] for row in conn.execute("SELECT span_id FROM spans")}
        finally:
            conn.close()


async def _read_endpoint(request: web.Request) -> web.Response:
    """``read_limited`` on its own: what it returns, or how it refuses."""
    limit = int(request.query["limit"])
    try:
        raw, body = await read_limited(request, limit, keep_raw=request.query.get("raw") == "1")
    except TooLarge:
        return web.Response(status=413)
    except BadData as error:
        return web.Response(status=400, text=str(error))
    return web.json_response({"raw": raw.hex(), "body": body.hex()})


@contextlib.asynccontextmanager
async def _serve(
    tmp_path,
    *,
    max_body: int = 1 << 20,
    max_pending: int = 200_000,
    forward: bool = False,
    budget: int = 64 << 20,
    start_writer: bool = True,
):
    store = Store(tmp_path / "store.sqlite3")
    writer = Writer(store, max_pending=max_pending)
    metrics = Metrics()
    admission = Admission(budget, max_body=max_body)
    served = Served("", store, writer, metrics, admission=admission)

    async def forward_to(payload: bytes) -> None:
        served.forwarded.append((payload, await asyncio.to_thread(served.span_ids)))

    ingest = Ingest(writer, metrics, max_body=max_body, forward=forward_to if forward else None, admission=admission)
    app = web.Application()
    app.router.add_post("/v1/traces", ingest.handle)
    app.router.add_post("/read", _read_endpoint)
    app.on_cleanup.append(ingest.cleanup)  # as collector.app does: its decoder process
    if start_writer:
        writer.start()
    runner = web.AppRunner(app, auto_decompress=False, access_log=None, lingering_time=0)  # as collector.app runs it
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    served.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield served
    finally:
        await runner.cleanup()
        await asyncio.to_thread(writer.stop)


async def _post(url: str, data, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        async with session.post(url, data=data, headers=headers) as response:
            return response.status, dict(response.headers), await response.read()


def _protobuf(count: int = 2) -> tuple[bytes, set[str]]:
    spans = make_sdk_spans(count)
    return encode_spans(spans).SerializeToString(), {f"{s.context.span_id:016x}" for s in spans}


def _chunks(body: bytes, size: int = 100):
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(body), size):
            yield body[i : i + size]

    return gen()


PB = {"Content-Type": PROTOBUF}


@pytest.mark.parametrize("compression", list(Compression), ids=lambda c: c.value)
def test_real_exporter_with_each_compression(tmp_path, compression):
    spans = make_sdk_spans(3)

    async def go():
        async with _serve(tmp_path) as served:
            exporter = OTLPSpanExporter(endpoint=f"{served.url}/v1/traces", compression=compression)
            result = await asyncio.to_thread(exporter.export, spans)
            await asyncio.to_thread(exporter.shutdown)
            return result, served.span_ids(), served.metrics

    result, stored, metrics = asyncio.run(go())
    assert result.name == "SUCCESS"
    assert stored == {f"{s.context.span_id:016x}" for s in spans}
    assert metrics.spans_accepted == len(spans) and metrics.spans_benign == 1


def test_spans_are_on_disk_when_the_answer_comes(tmp_path):
    body, ids = _protobuf()

    async def go():
        async with _serve(tmp_path) as served:
            status, headers, reply = await _post(f"{served.url}/v1/traces", body, PB)
            return status, headers, reply, served.span_ids()

    status, headers, reply, on_disk = asyncio.run(go())
    assert status == 200 and headers["Content-Type"].startswith(PROTOBUF)
    response = ExportTraceServiceResponse()
    response.ParseFromString(reply)
    assert not response.HasField("partial_success")
    assert on_disk == ids


@pytest.mark.parametrize(
    "content_type, status",
    [
        ("text/plain", 415),
        ("application/octet-stream", 415),
        ("application/protobuf", 415),
        ("application/x-protobuf", 200),
        ("application/x-protobuf; charset=binary", 200),
        ("application/json; charset=utf-8", 200),
    ],
)
def test_content_types(tmp_path, content_type, status):
    body, _ = _protobuf(1)
    if content_type.startswith(JSON):
        body = json.dumps(json_format.MessageToDict(ExportTraceServiceRequest.FromString(body))).encode()

    async def go():
        async with _serve(tmp_path) as served:
            got, headers, text = await _post(f"{served.url}/v1/traces", body, {"Content-Type": content_type})
            return got, headers, text, served.metrics.requests_rejected

    got, headers, text, rejected = asyncio.run(go())
    assert got == status
    if status == 415:
        assert b"unsupported Content-Type" in text and rejected == 1
    else:
        assert headers["Content-Type"].split(";")[0] == content_type.split(";")[0] and rejected == 0


def test_no_content_type_is_415(tmp_path):
    async def go():
        async with _serve(tmp_path) as served:
            async with aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session:
                async with session.post(f"{served.url}/v1/traces", data=b"{}") as response:
                    return response.status

    assert asyncio.run(go()) == 415


@pytest.mark.parametrize(
    "encoding, encode, status",
    [
        ("identity", lambda b: b, 200),
        ("gzip", gzip.compress, 200),
        ("GZIP", gzip.compress, 200),
        ("x-gzip", gzip.compress, 200),
        ("deflate", zlib.compress, 200),
        ("br", brotli.compress, 200),
        ("zstd", zstandard.compress, 200),
        ("ZSTD", zstandard.compress, 200),
        ("gzip, br", lambda b: brotli.compress(gzip.compress(b)), 415),  # codings in a row: not taken
        ("compress", lambda b: b, 415),
        ("lz4", lambda b: b, 415),
    ],
)
def test_content_encodings(tmp_path, encoding, encode, status):
    body, ids = _protobuf(1)

    async def go():
        async with _serve(tmp_path) as served:
            got, _, text = await _post(f"{served.url}/v1/traces", encode(body), {**PB, "Content-Encoding": encoding})
            return got, text, served.span_ids()

    got, text, stored = asyncio.run(go())
    assert got == status
    assert stored == (ids if status == 200 else set())
    if status == 415:
        assert b"unsupported Content-Encoding" in text


def test_limit_before_decompression(tmp_path):
    body, ids = _protobuf(2)
    limit = len(body)

    async def go():
        async with _serve(tmp_path, max_body=limit) as served:
            url = f"{served.url}/v1/traces"
            at_limit = await _post(url, body, PB)
            over = await _post(url, body + b"\x00", PB)  # Content-Length over the limit: refused unread
            chunked_over = await _post(url, _chunks(body + b"\x00" * 64), PB)  # no Content-Length
            return at_limit[0], over, chunked_over, served.metrics.requests_rejected, served.span_ids()

    at_limit, over, chunked_over, rejected, stored = asyncio.run(go())
    assert at_limit == 200 and stored == ids
    assert over[0] == 413 and str(limit) in over[2].decode()
    assert chunked_over[0] == 413
    assert rejected == 2


@pytest.mark.parametrize(
    "encoding, compress",
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("br", brotli.compress), ("zstd", zstandard.compress)],
)
def test_limit_after_decompression(tmp_path, encoding, compress):
    body, ids = _protobuf(3)
    limit = len(body)
    exactly, over = compress(body), compress(body + b"\x00")
    assert len(over) < limit  # small on the wire: only the inflated size is over

    async def go():
        async with _serve(tmp_path, max_body=limit) as served:
            url = f"{served.url}/v1/traces"
            headers = {**PB, "Content-Encoding": encoding}
            return (
                (await _post(url, exactly, headers))[0],
                (await _post(url, over, headers))[0],
                (await _post(url, _chunks(over, 7), headers))[0],
                served.span_ids(),
            )

    at_limit, refused, refused_chunked, stored = asyncio.run(go())
    assert (at_limit, refused, refused_chunked) == (200, 413, 413)
    assert stored == ids


@pytest.mark.parametrize(
    "encoding, compress",
    [
        ("gzip", lambda b: gzip.compress(b, compresslevel=9)),
        ("br", lambda b: brotli.compress(b, quality=5)),
        ("zstd", zstandard.compress),  # its header declares 64 MiB: refused before decoding
        ("zstd", lambda b: (c := zstandard.ZstdCompressor().compressobj()).compress(b) + c.flush()),  # streamed
    ],
)
def test_a_compression_bomb_is_refused_quickly(tmp_path, encoding, compress):
    bomb = compress(bytes(64 * 1024 * 1024))

    async def go():
        async with _serve(tmp_path, max_body=1 << 20) as served:
            started = time.monotonic()
            status, _, text = await _post(f"{served.url}/v1/traces", bomb, {**PB, "Content-Encoding": encoding})
            return status, text, time.monotonic() - started

    status, text, elapsed = asyncio.run(go())
    assert len(bomb) < (1 << 20) and status == 413 and b"after decompression" in text
    assert elapsed < 5  # stopped after the limit, not after inflating 64 MiB


@pytest.mark.parametrize(
    "encoding, body, reason",
    [
        ("br", b"not brotli at all", b"invalid brotli data"),
        ("br", brotli.compress(b"\x00" * 1000)[:-2], b"truncated"),
        ("zstd", b"not zstd at all", b"invalid zstd data"),
        ("zstd", zstandard.compress(b"\x00" * 1000)[:-2], b"truncated"),
        ("gzip", b"not gzip", b"bad compressed body"),
    ],
)
def test_a_body_that_does_not_decode_is_a_400(tmp_path, encoding, body, reason):
    async def go():
        async with _serve(tmp_path) as served:
            got = await _post(f"{served.url}/v1/traces", body, {**PB, "Content-Encoding": encoding})
            return got, served.metrics.requests_rejected, served.span_ids()

    (status, _, text), rejected, stored = asyncio.run(go())
    assert status == 400 and reason in text and rejected == 1 and stored == set()


def test_chunked_gzip_json(tmp_path):
    spans = make_sdk_spans(2)
    document = json_format.MessageToDict(encode_spans(spans))  # base64 ids: accepted too
    body = gzip.compress(json.dumps(document).encode())

    async def go():
        async with _serve(tmp_path) as served:
            status, headers, reply = await _post(
                f"{served.url}/v1/traces",
                _chunks(body, 33),
                {"Content-Type": JSON, "Content-Encoding": "gzip"},
            )
            return status, headers, reply, served.span_ids()

    status, headers, reply, stored = asyncio.run(go())
    assert status == 200 and headers["Content-Type"].startswith(JSON) and json.loads(reply) == {}
    assert stored == {f"{s.context.span_id:016x}" for s in spans}


@pytest.mark.parametrize(
    "body, encoding",
    [
        (b"not gzip at all", "gzip"),
        (gzip.compress(b"\x0a\x00" * 100)[:-12], "gzip"),  # cut before its end
        (zlib.compress(b"x" * 100)[:10], "deflate"),
    ],
)
def test_broken_compressed_bodies_are_400(tmp_path, body, encoding):
    async def go():
        async with _serve(tmp_path) as served:
            status, _, text = await _post(f"{served.url}/v1/traces", body, {**PB, "Content-Encoding": encoding})
            return status, text, served.metrics.requests_rejected

    status, text, rejected = asyncio.run(go())
    assert status == 400 and b"bad compressed body" in text and rejected == 1


def test_multi_member_gzip_is_read_whole(tmp_path):
    first, first_ids = _protobuf(1)
    second, second_ids = _protobuf(1)  # concatenated protobuf messages are one merged message

    async def go():
        async with _serve(tmp_path) as served:
            body = gzip.compress(first) + gzip.compress(second)
            assert gzip.decompress(body) == first + second  # what any gzip reader makes of it
            status, _, _ = await _post(f"{served.url}/v1/traces", body, {**PB, "Content-Encoding": "gzip"})
            return status, served.span_ids()

    status, stored = asyncio.run(go())
    assert status != 200 or stored == first_ids | second_ids


@pytest.mark.parametrize(
    "body, content_type, text",
    [
        (b"\xff\xff\xff", PROTOBUF, b"invalid protobuf"),
        (b"", JSON, b"invalid JSON"),
        (b"[1]", JSON, b"must be an object"),
    ],
)
def test_undecodable_bodies_are_400(tmp_path, body, content_type, text):
    async def go():
        async with _serve(tmp_path) as served:
            return await _post(f"{served.url}/v1/traces", body, {"Content-Type": content_type})

    status, _, reply = asyncio.run(go())
    assert status == 400 and text in reply


def test_deeply_nested_json_is_400(tmp_path):
    async def go():
        async with _serve(tmp_path) as served:
            return await _post(f"{served.url}/v1/traces", b"[" * 100_000, {"Content-Type": JSON})

    status = asyncio.run(go())[0]
    assert status == 400, status


def test_an_empty_protobuf_body_is_an_empty_success(tmp_path):
    async def go():
        async with _serve(tmp_path, forward=True) as served:
            status, _, _ = await _post(f"{served.url}/v1/traces", b"", PB)
            return status, served.span_ids(), served.forwarded

    status, stored, forwarded = asyncio.run(go())
    assert status == 200 and stored == set() and forwarded == []


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_partial_success_answer(tmp_path, content_type):
    request = encode_spans(make_sdk_spans(2))
    spans = request.resource_spans[0].scope_spans[0].spans
    spans[0].trace_id = bytes(16)
    kept = {s.span_id.hex() for s in list(spans)[1:]}
    body = request.SerializeToString()
    if content_type == JSON:
        body = json.dumps(json_format.MessageToDict(request)).encode()

    async def go():
        async with _serve(tmp_path) as served:
            status, _, reply = await _post(f"{served.url}/v1/traces", body, {"Content-Type": content_type})
            return status, reply, served.span_ids(), served.metrics

    status, reply, stored, metrics = asyncio.run(go())
    response = ExportTraceServiceResponse()
    if content_type == JSON:
        json_format.Parse(reply, response)
    else:
        response.ParseFromString(reply)
    assert status == 200 and response.partial_success.rejected_spans == 1
    assert "invalid trace id" in response.partial_success.error_message
    assert stored == kept and metrics.spans_rejected == 1 and metrics.spans_accepted == len(kept)


def test_a_full_queue_is_503_with_retry_after(tmp_path):
    body, _ = _protobuf(1)

    async def go():
        async with _serve(tmp_path, max_pending=1) as served:
            status, headers, _ = await _post(f"{served.url}/v1/traces", body, PB)
            return status, headers, served.metrics.requests_overloaded, served.span_ids()

    status, headers, overloaded, stored = asyncio.run(go())
    assert status == 503 and int(headers["Retry-After"]) >= 1
    assert overloaded == 1 and stored == set()


def test_the_budget_stays_charged_until_the_writer_commits(tmp_path):
    body, ids = _protobuf(3)

    async def go():
        async with _serve(tmp_path, start_writer=False) as served:
            assert served.admission is not None
            answer = asyncio.create_task(_post(f"{served.url}/v1/traces", body, PB))
            for _ in range(200):
                if served.admission.charged:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.3)  # read, decoded and queued: the writer is not running
            held, on_disk = served.admission.charged, served.span_ids()
            served.writer.start()
            status, _, _ = await answer
            return held, on_disk, status, served.admission.charged, served.span_ids()

    held, on_disk, status, after, stored = asyncio.run(go())
    assert held == DECODED_FACTOR * len(body) and on_disk == set()
    assert status == 200 and after == 0 and stored == ids


def test_a_compressed_body_inflating_past_the_budget_is_refused_and_the_client_reads_why(tmp_path):
    sent = gzip.compress(b"\x00" * (1 << 20))  # 1 KiB on the wire, 1 MiB inflated

    async def go():
        async with _serve(tmp_path, max_body=2 << 20, budget=DECODED_FACTOR * (64 << 10)) as served:
            headers = {**PB, "Content-Encoding": "gzip"}
            status, answer_headers, text = await _post(f"{served.url}/v1/traces", _chunks(sent, 64), headers)
            return status, answer_headers, text, served.metrics.requests_rejected, served.admission

    status, headers, text, rejected, admission = asyncio.run(go())
    assert status == 413 and headers["Connection"] == "close" and b"--max-pending-bytes" in text
    assert rejected == 1 and admission.charged == 0 and admission.refusals["too_large"] == 1


def test_forwarding_sends_what_was_stored_after_it_was_stored(tmp_path):
    spans = make_sdk_spans(2)
    body = encode_spans(spans).SerializeToString()
    ids = {f"{s.context.span_id:016x}" for s in spans}

    async def go():
        async with _serve(tmp_path, forward=True) as served:
            status, _, _ = await _post(f"{served.url}/v1/traces", body, PB)
            return status, served.forwarded

    status, forwarded = asyncio.run(go())
    assert status == 200 and len(forwarded) == 1
    payload, on_disk_then = forwarded[0]
    assert on_disk_then == ids  # forwarded only once committed
    sent = {
        s.span_id.hex(): s
        for rs in ExportTraceServiceRequest.FromString(payload).resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    }
    assert set(sent) == ids
    for span in spans:
        out = sent[f"{span.context.span_id:016x}"]
        attributes = {kv.key: kv.value.string_value for kv in out.attributes}
        if span.name == "world.streams.writeToStream":  # the benign conflict goes upstream downgraded
            assert out.status.code == 0 and out.status.message == ""
            assert attributes["workflow.conflict"] == "benign"
            assert attributes["workflow.original_status"] == f"ERROR: {span.status.description}"
        else:
            assert out.status.code == span.status.status_code.value
            assert "workflow.conflict" not in attributes


def test_nothing_is_forwarded_when_every_span_was_rejected(tmp_path):
    request = encode_spans(make_sdk_spans(1))
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                span.span_id = bytes(8)

    async def go():
        async with _serve(tmp_path, forward=True) as served:
            status, _, reply = await _post(f"{served.url}/v1/traces", request.SerializeToString(), PB)
            return status, reply, served.forwarded

    status, reply, forwarded = asyncio.run(go())
    assert status == 200 and ExportTraceServiceResponse.FromString(reply).partial_success.rejected_spans > 0
    assert forwarded == []


# ---- read_limited on its own --------------------------------------------------------------------


@pytest.mark.parametrize("keep_raw", [False, True])
def test_read_limited_returns_raw_and_inflated(tmp_path, keep_raw):
    plain = b"0123456789" * 500
    sent = gzip.compress(plain)

    async def go():
        async with _serve(tmp_path) as served:
            url = f"{served.url}/read?limit={len(plain)}&raw={int(keep_raw)}"
            return await _post(url, _chunks(sent, 50), {"Content-Encoding": "gzip"})

    status, _, reply = asyncio.run(go())
    answer = json.loads(reply)
    assert status == 200 and bytes.fromhex(answer["body"]) == plain
    assert bytes.fromhex(answer["raw"]) == (sent if keep_raw else b"")


@pytest.mark.parametrize(
    "data, headers, limit, status",
    [
        (b"x" * 10, {}, 10, 200),
        (b"x" * 11, {}, 10, 413),
        (b"", {}, 0, 200),
        (gzip.compress(b"x" * 100), {"Content-Encoding": "gzip"}, 100, 200),
        (gzip.compress(b"x" * 101), {"Content-Encoding": "gzip"}, 100, 413),  # inflated over
        (gzip.compress(b"x" * 11), {"Content-Encoding": "gzip"}, 11, 413),  # on the wire over (31 bytes)
        (zlib.compress(b"y" * 1000), {"Content-Encoding": "deflate"}, 999, 413),
        (b"x", {"Content-Encoding": "compress"}, 10, 415),
    ],
)
def test_read_limited_bounds(tmp_path, data, headers, limit, status):
    async def go():
        async with _serve(tmp_path) as served:
            return await _post(f"{served.url}/read?limit={limit}", data, headers)

    assert asyncio.run(go())[0] == status


def _large(invalid: int = 0) -> tuple[bytes, set[str]]:
    """A body past ``INLINE_DECODE_BYTES`` (decoded in the decoder process), its first ``invalid``
    spans refused by validation; the span ids that are kept."""
    request = encode_spans(make_sdk_spans(400))
    spans = [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    for span in spans[:invalid]:
        span.trace_id = bytes(16)
    body = request.SerializeToString()
    assert len(body) > INLINE_DECODE_BYTES
    return body, {s.span_id.hex() for s in spans[invalid:]}


def test_a_large_body_is_decoded_in_a_decoder_process_with_the_same_answer(tmp_path):
    """Stored, counted, answered (partial success) and forwarded (benign conflicts downgraded) as a
    small body decoded on the loop is; and it was decoded in another process."""
    body, kept = _large(invalid=3)

    async def go():
        async with _serve(tmp_path, forward=True) as served:
            status, _, reply = await _post(f"{served.url}/v1/traces", body, PB)
            return status, reply, served.span_ids(), served.metrics, served.forwarded, multiprocessing.active_children()

    status, reply, stored, metrics, forwarded, children = asyncio.run(go())
    assert children, "no decoder process was started"
    response = ExportTraceServiceResponse.FromString(reply)
    assert status == 200 and response.partial_success.rejected_spans == 3
    assert "invalid trace id" in response.partial_success.error_message
    assert stored == kept and metrics.spans_accepted == len(kept) and metrics.spans_rejected == 3
    assert len(forwarded) == 1
    sent = [
        s
        for rs in ExportTraceServiceRequest.FromString(forwarded[0][0]).resource_spans
        for ss in rs.scope_spans
        for s in ss.spans
    ]
    benign = [s for s in sent if s.name == "world.streams.writeToStream"]
    assert benign and all(s.status.code == 0 for s in benign)
    assert metrics.spans_benign == len({s.span_id for s in benign if s.span_id.hex() in kept})


def test_a_large_undecodable_body_is_400(tmp_path):
    async def go():
        async with _serve(tmp_path) as served:
            return await _post(f"{served.url}/v1/traces", b"\xff" * (INLINE_DECODE_BYTES + 1), PB)

    status, _, text = asyncio.run(go())
    assert status == 400 and text.startswith(b"invalid protobuf")


def test_a_dead_decoder_process_fails_only_its_requests_and_is_replaced(tmp_path):
    """Killed (out of memory, say): the request it would have decoded is answered 503 + Retry-After,
    nothing of it is stored, and the next one gets a new decoder process."""
    first, first_ids = _large()
    second, _ = _large()
    third, third_ids = _large()

    async def go():
        async with _serve(tmp_path) as served:
            url = f"{served.url}/v1/traces"
            answers = [await _post(url, first, PB)]
            (decoder,) = multiprocessing.active_children()
            os.kill(decoder.pid, signal.SIGKILL)
            decoder.join(10)
            answers.append(await _post(url, second, PB))
            small, small_ids = _protobuf(2)  # decoded on the loop meanwhile: unaffected
            answers.append(await _post(url, small, PB))
            answers.append(await _post(url, third, PB))
            return answers, served.span_ids(), small_ids

    answers, stored, small_ids = asyncio.run(go())
    assert [a[0] for a in answers] == [200, 503, 200, 200]
    assert answers[1][1]["Retry-After"] == "1"
    assert stored == first_ids | small_ids | third_ids
