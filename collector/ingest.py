"""``POST /v1/traces``: OTLP/HTTP ingestion with memory bounded in bytes.

Each request is admitted against the byte budget (``admission``) before a byte of its body is
read: from ``Content-Length``, refused at once with 503 + ``Retry-After`` when it cannot be held
now, 413 when it never could. A refused request's body is not read: the answer says
``Connection: close`` and the server runs with ``lingering_time=0`` (aiohttp would otherwise read
and discard up to 10 s of the body to keep the connection alive), so the connection is closed with
the body unread. Clients get the answer all the same, as the tests and the bench check: urllib3
(the OTel exporter's ``requests``) reads the answer after its send fails, aiohttp's client has it
before its send fails (the answer comes right after the headers).

A body is then read in chunks and counted before and after decompression (we decompress
ourselves, incrementally, with an output cap: ``content_coding``, for gzip, deflate, br and zstd), so
an oversized body or a compression bomb is refused
with 413 after at most ``max_body`` bytes, never held whole; a body without ``Content-Length``
(chunked) is charged to the budget as it arrives and refused when the budget is exceeded. Refused
halfway, a client is still sending: then the answer goes out first and what still comes is read
and dropped for a bounded time (``answer_then_drain``), or an asyncio client would fail on its
next write before reading the answer. The charge is held until the writer has committed the
spans (or refused them).

A body is decoded (protobuf or JSON → span records, validation, the benign policy, and the
records made ready to store: blobs encoded, index rows and summary facts computed) on the event
loop only when it is small (``INLINE_DECODE_BYTES``: a few milliseconds at most). A larger one is
decoded in a separate process (``DECODE_PROCESSES``), which sends back only what the writer
stores and the answer needs. Decoding is Python holding the GIL (upb's parse releases little):
in a thread it would take the GIL from the event loop and the writer for tens of milliseconds a
request, and unrelated small requests would wait behind it; in its own process it runs on the
other core, and this process keeps the loop, the writer's SQL and the small requests. A decoder
process that dies (killed, out of memory) fails only the requests it held, with 503 +
``Retry-After``, and a new one is started.

Spans are answered 200 only after the writer has committed them; a full queue answers 503 with
``Retry-After``, and so does a store that cannot be written (disk full, read-only): 503 rather
than 507 because OTLP exporters retry 503 and drop on 507.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import pickle
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from telemetry.semconv import WORKFLOW_CONFLICT

from .admission import DEFAULT_MAX_PENDING_BYTES, Admission, Refused, Ticket, client_key
from .content_coding import BadData, TooLarge, UnsupportedEncoding, body_decoder
from .metrics import Metrics
from .otlp import JSON, PROTOBUF, BadPayload, decode_request, encode_response, records_from, set_attribute
from .policy import apply_benign_policy
from .store import PreparedSpans, paused_gc, prepare_spans
from .validate import LIMITED
from .writer import Batch, Overloaded, StoreUnavailable, Writer, storage_fault

__all__ = [
    "DECODE_PROCESSES",
    "INLINE_DECODE_BYTES",
    "Decoded",
    "Ingest",
    "Outcome",
    "admit",
    "answer_then_drain",
    "Accept",
    "Answer",
    "count_refusal",
    "receive",
    "traces_answer",
    "decode",
    "read_limited",
    "refusal",
]

log = logging.getLogger("collector.ingest")
_CHUNK = 64 * 1024
#: bodies up to this size (decompressed) are decoded on the event loop: ~100 real workflow spans,
#: a couple of milliseconds, less than handing them to a decoder process and back would cost them
INLINE_DECODE_BYTES = 64 * 1024


@dataclass
class Decoded:
    """A request's body decoded: the span count, what the store takes (``prepared``), the spans
    refused (count, first reason), the keys of the spans the benign policy downgraded, how many
    spans were cut to the limits, and the message itself when decoded here (for forwarding;
    a decoder process does not send it back: it is parsed again, cheaply, if it is forwarded)."""

    count: int
    prepared: PreparedSpans
    rejected: int
    reason: str
    downgraded: list[tuple[str, str]]
    limited: int
    otlp: ExportTraceServiceRequest | None = None


def decode(body: bytes, content_type: str, *, keep_message: bool = True) -> Decoded:
    """Decode, validate, apply the benign policy and make the records ready to store (the writer is
    left only the SQL); ``BadPayload`` for a body that does not parse. Needs nothing but its
    arguments: runs on the loop or in a decoder process alike."""
    otlp = decode_request(body, content_type)
    records, rejected, reason = records_from(otlp)
    downgraded = [(r.trace_id, r.span_id) for r in records if apply_benign_policy(r)]
    limited = sum(1 for r in records if LIMITED in r.attributes)
    prepared = prepare_spans(records)
    return Decoded(len(records), prepared, rejected, reason, downgraded, limited, otlp if keep_message else None)


def _decode_elsewhere(body: bytes, content_type: str) -> bytes:
    """``decode`` in a decoder process: the message stays there, and the result goes back pickled
    (``_loaded``). Cyclic garbage collection is paused while decoding: it makes tens of containers
    a span, none of them cyclic, and the collections they trigger cost a sixth of the decode."""
    with paused_gc():
        decoded = decode(body, content_type, keep_message=False)
    return pickle.dumps(decoded, pickle.HIGHEST_PROTOCOL)


def _loaded(packed: bytes) -> Decoded:
    """A decoder process's result, loaded with cyclic collection paused: loading makes a few
    containers a span, and in this process (aiohttp, the writer, the store's caches) the collections
    they would trigger walk a large heap; the executor's own unpickling cannot be told so."""
    with paused_gc():
        decoded: Decoded = pickle.loads(packed)
    return decoded


def _follow_parent(parent: int) -> None:
    """The decoder process's initializer: exit when the collector is gone (killed, say: a pool shut
    down cleanly stops its processes, but nothing else tells them; they would wait forever)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="wft-decoder-parent", daemon=True).start()


#: processes decoding large bodies (the collector's own process is the other core's worth of work)
DECODE_PROCESSES = 1
#: how long a client waits before retrying a request whose decoder process died
_DECODER_RETRY_S = 1


def admit(request: web.Request, admission: Admission, *, route: str) -> Ticket:
    """Admit ``request`` by its headers alone (``Refused`` if not): its key for fairness is the peer
    address plus User-Agent (``client_key``), its size the Content-Length (None when chunked)."""
    key = client_key(request.remote, request.headers.get("User-Agent"))
    return admission.admit(key, request.content_length, route=route)


def count_refusal(refused: Refused, metrics: Metrics) -> None:
    """A request the budget refused, counted: a 503 as overloaded, anything else (413) as rejected."""
    if refused.status == 503:
        metrics.requests_overloaded += 1
    else:
        metrics.requests_rejected += 1


def refusal(refused: Refused) -> web.Response:
    """The answer to a request the budget refused: 503 + ``Retry-After`` or 413, closing the
    connection so its unread body is never read."""
    headers = {"Retry-After": str(refused.retry_after)} if refused.retry_after is not None else {}
    suffix = "; retry later" if refused.status == 503 else ""
    response = web.Response(status=refused.status, headers=headers, text=f"{refused.reason}{suffix}")
    response.force_close()
    return response


#: how long a body refused halfway is read and dropped after the answer (see ``answer_then_drain``)
DRAIN_S = 2.0


async def answer_then_drain(request: web.Request, response: web.Response, *, limit: int) -> web.StreamResponse:
    """Send ``response`` (closing the connection) to a request refused while its body was being read,
    then read and drop what is still coming, at most ``limit`` bytes and ``DRAIN_S`` seconds. A client
    that is still sending when the connection closes with its data unread gets a reset, and an
    asyncio client (aiohttp) then fails on the write before it reads the answer it was sent."""
    response.force_close()
    drained = 0
    try:
        await response.prepare(request)
        await response.write_eof()
        async with asyncio.timeout(DRAIN_S):
            while drained <= limit:
                chunk = await request.content.readany()
                if not chunk:
                    break
                drained += len(chunk)
    except (TimeoutError, OSError, HttpProcessingError):  # slow, gone or garbled: the connection is closed now
        pass
    return response


async def read_limited(
    request: web.Request, limit: int, *, keep_raw: bool = False, ticket: Ticket | None = None
) -> tuple[bytes, bytes]:
    """(body as received if ``keep_raw``, decoded body), reading to EOF in chunks and refusing
    (``TooLarge``) past ``limit`` bytes before or after decoding (``content_coding``: gzip, deflate,
    br, zstd; ``BadData`` for a body that does not decode). ``ticket``: charged for the bytes as
    they arrive (``Refused`` when the budget cannot take them)."""
    try:
        inflater = body_decoder(request.headers.get("Content-Encoding", "identity"), limit)
    except UnsupportedEncoding as error:
        raise web.HTTPUnsupportedMediaType(text=str(error)) from None
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge()
    raw = bytearray()
    received = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        received += len(chunk)
        if received > limit:
            raise TooLarge()
        if keep_raw:
            raw += chunk
        inflater.feed(chunk)
        if ticket is not None:
            ticket.read(len(chunk))
            ticket.grow(max(received, len(inflater.out)))
    body = inflater.finish()
    if ticket is not None:
        ticket.grow(len(body))
    return bytes(raw), body


@dataclass(frozen=True)
class Outcome:
    """What a request is answered, as an HTTP status (a transport maps it to its own): 200 with the
    spans refused (``rejected``) and why (``message``), or an error status, its reason and, for a
    503, when to retry (``Retry-After`` seconds)."""

    status: int
    message: str = ""
    retry_after: str | None = None
    rejected: int = 0


#: takes a request's body (decompressed) and its content type: what the client is answered
#: (``Ingest.accept``, the relay's), whatever the transport
Accept = Callable[[bytes, str], Awaitable[Outcome]]
#: the body of the answer to a request taken (a 200), in its content type
Answer = Callable[[Outcome, str], bytes]


def traces_answer(outcome: Outcome, content_type: str) -> bytes:
    """An ``ExportTraceServiceResponse``: ``partial_success`` when some spans were refused."""
    return encode_response(content_type, outcome.rejected, outcome.message)


async def receive(
    request: web.Request,
    accept: Accept,
    answer: Answer,
    *,
    admission: Admission,
    metrics: Metrics,
    max_body: int,
    route: str,
) -> web.StreamResponse:
    """One OTLP/HTTP request, whatever its signal: its content type checked, its size admitted by
    the budget before its body is read (``route``: the budget's name for it), its body read within
    ``max_body`` and decoded, taken by ``accept`` while the charge is held, and answered."""
    content_type = request.content_type
    if content_type not in (PROTOBUF, JSON):
        metrics.requests_rejected += 1
        unsupported = web.Response(
            status=415, text=f"unsupported Content-Type {content_type!r}: use {PROTOBUF} or {JSON}"
        )
        unsupported.force_close()  # its body is not read
        return unsupported
    try:
        ticket = admit(request, admission, route=route)
    except Refused as refused:
        count_refusal(refused, metrics)
        return refusal(refused)
    try:  # the charge is held until ``accept`` is done (the writer committed or refused the spans)
        try:
            _, body = await read_limited(request, max_body, ticket=ticket)
        except BadData as error:
            metrics.requests_rejected += 1
            return web.Response(status=400, text=f"bad compressed body: {error}")
        outcome = await accept(body, content_type)
    except Refused as refused:  # a body without Content-Length outgrew the budget while read
        count_refusal(refused, metrics)
        return await answer_then_drain(request, refusal(refused), limit=max_body)
    except TooLarge:
        metrics.requests_rejected += 1
        too_large = web.Response(status=413, text=f"request body over {max_body} bytes (before or after decompression)")
        return await answer_then_drain(request, too_large, limit=max_body)
    finally:
        ticket.release()
    if outcome.status != 200:
        headers = {"Retry-After": outcome.retry_after} if outcome.retry_after is not None else {}
        return web.Response(status=outcome.status, headers=headers, text=outcome.message)
    return web.Response(body=answer(outcome, content_type), content_type=content_type)


class Ingest:
    def __init__(
        self,
        writer: Writer,
        metrics: Metrics,
        *,
        max_body: int,
        forward: Callable[[bytes], Awaitable[None]] | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.writer = writer
        self.metrics = metrics
        self.max_body = max_body
        self.forward = forward
        self.admission = admission or Admission(DEFAULT_MAX_PENDING_BYTES, max_body=max_body)
        self._decoder: ProcessPoolExecutor | None = None  # started on the first large body

    async def _decode(self, body: bytes, content_type: str) -> Decoded:
        if len(body) <= INLINE_DECODE_BYTES:
            with paused_gc():
                return decode(body, content_type)
        if self._decoder is None:  # spawned, not forked: this process runs threads (the writer's)
            context = multiprocessing.get_context("spawn")
            self._decoder = ProcessPoolExecutor(
                DECODE_PROCESSES, mp_context=context, initializer=_follow_parent, initargs=(os.getpid(),)
            )
        decoder = self._decoder
        try:
            packed = await asyncio.get_running_loop().run_in_executor(decoder, _decode_elsewhere, body, content_type)
        except BrokenProcessPool:
            if self._decoder is decoder:  # the first request to learn of it starts a new one
                log.error("a decoder process died; its requests are answered 503 and a new one is started")
                decoder.shutdown(wait=False)
                self._decoder = None
            raise
        return _loaded(packed)

    async def cleanup(self, _app: web.Application) -> None:
        """``on_cleanup``: stop the decoder processes (decodes under way are abandoned: their
        requests are not answered anyway once the server is down)."""
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)
            self._decoder = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        return await receive(
            request,
            self.accept,
            traces_answer,
            admission=self.admission,
            metrics=self.metrics,
            max_body=self.max_body,
            route="otlp",
        )

    async def accept(self, body: bytes, content_type: str) -> Outcome:
        """Decode a request's body (protobuf or JSON), have the writer commit its spans, forward
        them: what the client is answered, whatever the transport (OTLP/HTTP here, OTLP/gRPC in
        ``otlp_grpc``). The caller holds the body's admission ticket until this returns."""
        try:
            decoded = await self._decode(body, content_type)
        except BadPayload as error:
            self.metrics.requests_rejected += 1
            return Outcome(400, str(error))
        except BrokenProcessPool:
            self.metrics.requests_unavailable += 1
            return Outcome(503, "the decoder process failed; retry later", str(_DECODER_RETRY_S))
        rejected, reason, downgraded = decoded.rejected, decoded.reason, decoded.downgraded
        benign = len(downgraded)
        try:
            await self.writer.submit(Batch(prepared=decoded.prepared))
        except Overloaded:
            self.metrics.requests_overloaded += 1
            retry = str(self.admission.retry_after())  # jittered like the budget's refusals
            return Outcome(503, "collector is overloaded; retry later", retry)
        except StoreUnavailable as error:
            return self._unavailable(error)
        except Exception as error:  # the store refused this request's spans (the rest of its group is stored)
            self.metrics.requests_rejected += 1
            return Outcome(422, f"the store refused these spans ({type(error).__name__})")
        self.metrics.spans_accepted += decoded.count
        self.metrics.spans_rejected += rejected
        self.metrics.spans_benign += benign
        if self.forward is not None and decoded.count:
            otlp = decoded.otlp or decode_request(body, content_type)  # a decoder process kept its own
            if benign:
                _mark_benign(otlp, set(downgraded))  # not the spans the app marked benign itself
            try:
                await self.forward(otlp.SerializeToString())
            except OSError as error:  # stored, but not spooled for upstream: the client's retry re-stores (upsert)
                fault = storage_fault(error)
                if fault is None:
                    raise
                return self._unavailable(fault)
        limited = decoded.limited
        message = f"{rejected} spans rejected: {reason}" if rejected else ""
        if limited:
            cut = f"{limited} spans cut to the collector's limits (see their {LIMITED} attribute)"
            message = f"{message}; {cut}" if message else cut
        return Outcome(200, message, rejected=rejected)

    def _unavailable(self, error: StoreUnavailable) -> Outcome:
        self.metrics.requests_unavailable += 1
        return Outcome(
            503, f"the collector cannot store spans now: {error.reason}; retry later", str(error.retry_after)
        )


def _mark_benign(otlp: ExportTraceServiceRequest, ids: set[tuple[str, str]]) -> None:
    """Forward what we stored: the downgraded spans go upstream downgraded too."""
    for resource_spans in otlp.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if (span.trace_id.hex(), span.span_id.hex()) in ids:
                    original = span.status.message
                    span.status.code = 0
                    span.status.message = ""
                    set_attribute(span, WORKFLOW_CONFLICT, "benign")
                    set_attribute(span, "workflow.original_status", f"ERROR: {original}" if original else "ERROR")
