"""The collector store's span blobs, as read back: shared by the store and ``wft reconcile --store``.

A blob holds the spans of one run from one request: zstandard over ``[resources, spans]``, each
span a list (trace id, span id, parent, name, kind, start, end, status code, status message,
attributes, events, links, resource position, scope, source, benign). New blobs are JSON (orjson);
blobs from before, and the rare one JSON cannot hold exactly, are CBOR. The first byte tells them
apart: a JSON document starts with ``[``, a CBOR array with its header. The format lives here, not
in the collector, because a command reading a store file must not import the service.
"""

from __future__ import annotations

import threading
from typing import Any, Final

import cbor2
import orjson
import zstandard

__all__ = ["BLOB_FIELDS", "blob_json", "read_blob"]

#: the positions of a span's fields in a blob
BLOB_FIELDS: Final = (
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "kind",
    "start_ns",
    "end_ns",
    "status_code",
    "status_message",
    "attributes",
    "events",
    "links",
    "resource",
    "scope",
    "source",
    "benign",
)

_codecs = threading.local()  # zstandard's decompressor objects are not for two threads at once


def _decompressed(data: bytes) -> bytes:
    d: zstandard.ZstdDecompressor | None = getattr(_codecs, "d", None)
    if d is None:
        d = _codecs.d = zstandard.ZstdDecompressor()
    return d.decompress(data)


def blob_json(data: bytes) -> bytes | None:
    """A blob's JSON text (``[resources, spans]``), for a reader that decodes it its own way; None
    for a CBOR blob (told apart by the first byte: a JSON blob starts with ``[``)."""
    raw = _decompressed(data)
    return raw if raw[:1] == b"[" else None


def read_blob(data: bytes) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """A blob's resources and its spans (each a list in ``BLOB_FIELDS`` order)."""
    raw = _decompressed(data)
    resources, items = orjson.loads(raw) if raw[:1] == b"[" else cbor2.loads(raw)
    return resources, items
