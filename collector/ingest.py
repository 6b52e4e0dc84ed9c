"""``POST /v1/traces``: OTLP/HTTP ingestion with bounded memory.

The body is read in chunks and counted before and after decompression (we decompress
ourselves, incrementally, with an output cap), so an oversized body or a gzip bomb is refused
with 413 after at most ``max_body`` bytes, never held whole. Spans are answered 200 only after
the writer has committed them; a full queue answers 503 with ``Retry-After``, and so does a store
that cannot be written (disk full, read-only): 503 rather than 507 because OTLP exporters retry
503 and drop on 507.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .metrics import Metrics
from .otlp import JSON, PROTOBUF, BadPayload, decode_request, encode_response, records_from, set_attribute
from .policy import apply_benign_policy
from .validate import LIMITED
from .writer import Batch, Overloaded, StoreUnavailable, Writer, storage_fault

__all__ = ["Ingest", "TooLarge", "read_limited"]

log = logging.getLogger("collector.ingest")
_CHUNK = 64 * 1024


class TooLarge(Exception):
    pass


class _Inflater:
    """Incremental gzip/deflate with a hard cap on output. A gzip body may hold several members
    (what ``cat a.gz b.gz`` makes, and what every gzip reader reads whole); each is inflated in turn."""

    def __init__(self, encoding: str, limit: int) -> None:
        self._wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        self._z = zlib.decompressobj(self._wbits) if encoding in ("gzip", "deflate") else None
        self._gzip = encoding == "gzip"
        self.limit = limit
        self.out = bytearray()

    def feed(self, data: bytes) -> None:
        if self._z is None:
            self._append(data)
            return
        while data:
            if self._z.eof:  # the member ended and more follows
                if not self._gzip:
                    raise zlib.error("data after the end of the deflate stream")
                self._z = zlib.decompressobj(self._wbits)
            chunk = self._z.decompress(data, self.limit - len(self.out) + 1)
            self._append(chunk)
            data = self._z.unconsumed_tail or (self._z.unused_data if self._z.eof else b"")

    def finish(self) -> bytes:
        if self._z is not None:
            self._append(self._z.flush(self.limit - len(self.out) + 1))
            if not self._z.eof:
                raise zlib.error("truncated compressed body")
        return bytes(self.out)

    def _append(self, chunk: bytes) -> None:
        if len(self.out) + len(chunk) > self.limit:
            raise TooLarge()
        self.out += chunk


async def read_limited(request: web.Request, limit: int, *, keep_raw: bool = False) -> tuple[bytes, bytes]:
    """(body as received if ``keep_raw``, decompressed body), reading to EOF in chunks and refusing
    (``TooLarge``) past ``limit`` bytes before or after decompression."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise web.HTTPUnsupportedMediaType(
            text=f"unsupported Content-Encoding {encoding!r} (use gzip, deflate or none)"
        )
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge()
    inflater = _Inflater(encoding, limit)
    raw = bytearray()
    received = 0
    async for chunk in request.content.iter_chunked(_CHUNK):
        received += len(chunk)
        if received > limit:
            raise TooLarge()
        if keep_raw:
            raw += chunk
        inflater.feed(chunk)
    return bytes(raw), inflater.finish()


class Ingest:
    def __init__(
        self,
        writer: Writer,
        metrics: Metrics,
        *,
        max_body: int,
        forward: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        self.writer = writer
        self.metrics = metrics
        self.max_body = max_body
        self.forward = forward

    async def handle(self, request: web.Request) -> web.Response:
        content_type = request.content_type
        if content_type not in (PROTOBUF, JSON):
            self.metrics.requests_rejected += 1
            return web.Response(status=415, text=f"unsupported Content-Type {content_type!r}: use {PROTOBUF} or {JSON}")
        try:
            _, body = await read_limited(request, self.max_body)
            otlp = decode_request(body, content_type)
        except TooLarge:
            self.metrics.requests_rejected += 1
            return web.Response(
                status=413, text=f"request body over {self.max_body} bytes (before or after decompression)"
            )
        except zlib.error as error:
            self.metrics.requests_rejected += 1
            return web.Response(status=400, text=f"bad compressed body: {error}")
        except BadPayload as error:
            self.metrics.requests_rejected += 1
            return web.Response(status=400, text=str(error))
        records, rejected, reason = records_from(otlp)
        benign = sum(1 for r in records if apply_benign_policy(r))
        try:
            await self.writer.submit(Batch(spans=records))
        except Overloaded:
            self.metrics.requests_overloaded += 1
            return web.Response(status=503, headers={"Retry-After": "1"}, text="collector is overloaded; retry later")
        except StoreUnavailable as error:
            return self._unavailable(error)
        except Exception as error:  # the store refused this request's spans (the rest of its group is stored)
            self.metrics.requests_rejected += 1
            return web.Response(status=422, text=f"the store refused these spans ({type(error).__name__})")
        self.metrics.spans_accepted += len(records)
        self.metrics.spans_rejected += rejected
        self.metrics.spans_benign += benign
        if self.forward is not None and records:
            if benign:
                _mark_benign(otlp, {(r.trace_id, r.span_id) for r in records if r.benign})
            try:
                await self.forward(otlp.SerializeToString())
            except OSError as error:  # stored, but not spooled for upstream: the client's retry re-stores (upsert)
                fault = storage_fault(error)
                if fault is None:
                    raise
                return self._unavailable(fault)
        limited = sum(1 for r in records if LIMITED in r.attributes)
        message = f"{rejected} spans rejected: {reason}" if rejected else ""
        if limited:
            cut = f"{limited} spans cut to the collector's limits (see their {LIMITED} attribute)"
            message = f"{message}; {cut}" if message else cut
        return web.Response(body=encode_response(content_type, rejected, message), content_type=content_type)

    def _unavailable(self, error: StoreUnavailable) -> web.Response:
        self.metrics.requests_unavailable += 1
        return web.Response(
            status=503,
            headers={"Retry-After": str(error.retry_after)},
            text=f"the collector cannot store spans now: {error.reason}; retry later",
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
                    set_attribute(span, "workflow.conflict", "benign")
                    set_attribute(span, "workflow.original_status", f"ERROR: {original}" if original else "ERROR")
