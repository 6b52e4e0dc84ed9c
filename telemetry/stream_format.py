"""Stream chunks in the SDK's format: each value serialized and framed as ``@workflow/core`` does.

An SDK app reads a run's stream (``run.getReadable()``) through ``getDeserializeStream``, which
expects every chunk to be one *frame*::

    frame := u32_be(len(body)) || body
    body  := b"devl" || utf8(devalue.stringify(value, reducers))       # the value
           | b"encr" || nonce(12) || AES-256-GCM(b"devl" || …)         # the same, encrypted

``devalue.stringify`` is devalue 5.x with the SDK's reducers (``getCommonReducers``): a
``Date`` becomes ``["Date", <ISO string>]`` through a reference, bytes become
``["Uint8Array", <base64>]``, a ``Map``/``Set`` an array of entries. :func:`devalue_stringify`
reproduces that output byte for byte for the Python values that have a JavaScript
counterpart, so a chunk written here is the chunk the SDK would have written for the same value.

Each world then stores one frame per chunk its own way, and closes the stream its own way;
the functions at the end of this module are those framings:

* world-local: one file per chunk, ``b"\\x00" + frame``; the close is a file holding ``b"\\x01"``.
* world-postgres: one row per chunk (``data`` = frame, ``eof`` false); the close is a row with
  empty ``data`` and ``eof`` true.
* world-vercel: ``PUT …/stream/<name>`` with the frame as the body; a batch is the frames each
  prefixed with its u32 length, sent with ``X-Stream-Multi: true``; the close is a bodiless PUT
  with ``X-Stream-Done: true``. A read (``GET …/stream/<name>``) answers the frames back to back.

Decoding (:class:`StreamDecoder`) accepts what ``getDeserializeStream`` accepts, including the
legacy newline-delimited devalue text, and never raises on a chunk it cannot open: an ``encr``
frame without a key comes out as :class:`~telemetry.payloads.Encrypted`, an unknown format as
:class:`~telemetry.payloads.Opaque`.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .payloads import UNDEFINED, Encrypted, JSError, JSRegExp, Opaque, devalue_parse

__all__ = [
    "DEVALUE_PREFIX",
    "ENCRYPTED_PREFIX",
    "LOCAL_EOF_FILE",
    "MAX_FRAME_SIZE",
    "POSTGRES_EOF_ROW",
    "VERCEL_MULTI_HEADER",
    "VERCEL_DONE_HEADER",
    "StreamDecoder",
    "StreamFormatError",
    "decode_chunks",
    "devalue_stringify",
    "encode_chunk",
    "frame",
    "local_chunk_file",
    "parse_local_chunk_file",
    "postgres_row",
    "serialize_value",
    "split_multi_chunks",
    "vercel_multi_body",
]

#: The format prefix of a devalue payload (``SerializationFormat.DEVALUE_V1``).
DEVALUE_PREFIX = b"devl"
#: The format prefix of an AES-GCM payload (``SerializationFormat.ENCRYPTED``).
ENCRYPTED_PREFIX = b"encr"
#: The largest frame body the SDK writes or reads (``MAX_FRAME_SIZE``, 100 MB); a length header
#: above it means bytes that are not frames at all, as the SDK's reader decides too.
MAX_FRAME_SIZE = 100_000_000

_HEADER = struct.Struct(">I")


class StreamFormatError(ValueError):
    """A value the SDK could not serialize either (a function, a ``__proto__`` key, a cycle of sets…)."""


# --------------------------------------------------------------------------------------------
# devalue.stringify with the SDK's reducers
# --------------------------------------------------------------------------------------------

_UNDEFINED, _NAN, _POS_INF, _NEG_INF, _NEG_ZERO = -1, -3, -4, -5, -6
_MAX_SAFE_INTEGER = 2**53 - 1
_ESCAPES = {
    '"': '\\"',
    "<": "\\u003C",
    "\\": "\\\\",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
    "\b": "\\b",
    "\f": "\\f",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
_NEEDS_ESCAPE = re.compile('["<\\\\\x00-\x1f\u2028\u2029]')
_SURROGATE = re.compile("[\ud800-\udfff]")
_ARRAY_INDEX = re.compile(r"^(?:0|[1-9][0-9]*)$")
_MAX_ARRAY_INDEX = 2**32 - 2


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    return _ESCAPES.get(char) or f"\\u{ord(char):04x}"


def _js_string(text: str) -> str:
    """devalue's ``stringify_string``: JSON-like, plus ``<`` and U+2028/9 escaped."""
    return f'"{_NEEDS_ESCAPE.sub(_escape, text)}"'


def js_number(value: float) -> str:
    """``String(value)`` for a finite JavaScript number (``Number::toString``)."""
    if value == 0:
        return "0"
    sign, digit_tuple, exponent = Decimal(repr(float(value))).as_tuple()
    assert isinstance(exponent, int)  # finite: repr of a finite float is never 'nan'/'inf'
    digits = "".join(map(str, digit_tuple)).rstrip("0") or "0"
    exponent += len("".join(map(str, digit_tuple))) - len(digits)
    k = len(digits)
    n = k + exponent  # value = 0.d1…dk × 10^n
    minus = "-" if sign else ""
    if k <= n <= 21:
        return f"{minus}{digits}{'0' * (n - k)}"
    if 0 < n <= 21:
        return f"{minus}{digits[:n]}.{digits[n:]}"
    if -6 < n <= 0:
        return f"{minus}0.{'0' * -n}{digits}"
    power = n - 1
    mantissa = digits if k == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{minus}{mantissa}e{'+' if power >= 0 else '-'}{abs(power)}"


def _iso(moment: datetime) -> str:
    """``Date.prototype.toISOString``: UTC, milliseconds, ``Z`` (a naive datetime is UTC)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    year = moment.year
    stamp = moment.strftime("%m-%dT%H:%M:%S") + f".{moment.microsecond // 1000:03d}Z"
    return f"{year:04d}-{stamp}"


def _same_value_zero(value: Any) -> Any:
    """A JavaScript ``Set`` member or ``Map`` key: ``-0`` is stored as ``0`` (SameValueZero)."""
    return 0.0 if isinstance(value, float) and value == 0 else value


def _object_keys(keys: Iterable[str]) -> list[str]:
    """A JavaScript object's own key order: array-index keys ascending, then the rest as inserted."""
    indexes: list[str] = []
    others: list[str] = []
    for key in keys:
        if _ARRAY_INDEX.match(key) and int(key) <= _MAX_ARRAY_INDEX:
            indexes.append(key)
        else:
            others.append(key)
    indexes.sort(key=int)
    return [*indexes, *others]


class _Stringifier:
    """devalue 5.x ``stringify`` (the flat table of values, deduplicated) over Python values.

    Primitives share a slot by value and containers by identity, as in devalue; the SDK's
    reducers are applied to the types they match (``Date``, ``Uint8Array``, ``Map``, ``Set``,
    ``BigInt``, ``Error``, ``RegExp``), in the reducers' order.
    """

    def __init__(self) -> None:
        self.table: list[str] = []
        self.indexes: dict[tuple[str, Any], int] = {}
        self.keep: list[Any] = []  # containers whose id() is a key: keep them alive while we run

    def slot(self, key: tuple[str, Any]) -> int | None:
        found = self.indexes.get(key)
        if found is not None:
            return found
        self.indexes[key] = len(self.table)
        self.table.append("")
        return None

    def reduced(self, index: int, reducer: str, value: Any) -> int:
        self.table[index] = f'["{reducer}",{self.flatten(value)}]'
        return index

    def flatten(self, thing: Any) -> int:
        if thing is UNDEFINED:
            return _UNDEFINED
        if isinstance(thing, bool):
            key: tuple[str, Any] = ("bool", thing)
        elif isinstance(thing, int) and abs(thing) <= _MAX_SAFE_INTEGER:
            key = ("num", float(thing))  # 1 and 1.0 are one JavaScript number, one slot
        elif isinstance(thing, int):
            key = ("bigint", thing)
        elif isinstance(thing, float):
            if math.isnan(thing):
                return _NAN
            if math.isinf(thing):
                return _POS_INF if thing > 0 else _NEG_INF
            if thing == 0 and math.copysign(1.0, thing) < 0:
                return _NEG_ZERO
            key = ("num", thing)
        elif isinstance(thing, str) or thing is None:
            key = ("str", thing)
        else:
            self.keep.append(thing)
            key = ("obj", id(thing))
        found = self.slot(key)
        if found is not None:
            return found
        index = len(self.table) - 1
        self.table[index] = self.entry(index, thing)
        return index

    def entry(self, index: int, thing: Any) -> str:
        if thing is None:
            return "null"
        if isinstance(thing, bool):
            return "true" if thing else "false"
        if isinstance(thing, int) and abs(thing) > _MAX_SAFE_INTEGER:
            self.reduced(index, "BigInt", str(thing))
            return self.table[index]
        if isinstance(thing, (int, float)):
            return js_number(float(thing)) if isinstance(thing, float) else str(thing)
        if isinstance(thing, str):
            return _js_string(thing)
        if isinstance(thing, datetime):
            return self.reduced_entry(index, "Date", _iso(thing))
        if isinstance(thing, (bytes, bytearray, memoryview)):
            raw = bytes(thing)
            return self.reduced_entry(index, "Uint8Array", base64.b64encode(raw).decode() if raw else ".")
        if isinstance(thing, JSError):
            stack = UNDEFINED if thing.stack is None else thing.stack
            return self.reduced_entry(index, "Error", {"name": thing.name, "message": thing.message, "stack": stack})
        if isinstance(thing, JSRegExp):
            return self.reduced_entry(index, "RegExp", {"source": thing.source, "flags": thing.flags})
        if isinstance(thing, dict):
            if all(isinstance(k, str) for k in thing):
                parts = []
                for name in _object_keys(thing):
                    if name == "__proto__":
                        raise StreamFormatError("cannot serialize an object with a __proto__ key")
                    parts.append(f"{_js_string(name)}:{self.flatten(thing[name])}")
                return "{" + ",".join(parts) + "}"
            return self.reduced_entry(index, "Map", [[_same_value_zero(k), v] for k, v in thing.items()])
        if isinstance(thing, (set, frozenset)):
            return self.reduced_entry(index, "Set", [_same_value_zero(v) for v in thing])
        if isinstance(thing, (list, tuple)):
            return "[" + ",".join(str(self.flatten(item)) for item in thing) + "]"
        raise StreamFormatError(f"cannot serialize a {type(thing).__name__} as the SDK does")

    def reduced_entry(self, index: int, reducer: str, value: Any) -> str:
        self.reduced(index, reducer, value)
        return self.table[index]


def devalue_stringify(value: Any) -> str:
    """``devalue.stringify(value, <the SDK's reducers>)`` for a Python value.

    Python → JavaScript: ``None`` null, ``UNDEFINED`` undefined, bool, int (a BigInt beyond
    2**53), float, str, ``dict`` with str keys → object (any other keys → ``Map``), list/tuple →
    array, set → ``Set``, ``datetime`` → ``Date`` (naive means UTC), bytes → ``Uint8Array``,
    :class:`~telemetry.payloads.JSError` → ``Error``, :class:`~telemetry.payloads.JSRegExp` → ``RegExp``.
    """
    stringifier = _Stringifier()
    index = stringifier.flatten(value)
    if index < 0:
        return str(index)
    return "[" + ",".join(stringifier.table) + "]"


def _utf8(text: str) -> bytes:
    """``TextEncoder.encode``: a lone surrogate becomes U+FFFD, a split pair is joined."""
    if _SURROGATE.search(text):
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text.encode()


def serialize_value(value: Any) -> bytes:
    """The format-prefixed payload of one value: ``b"devl"`` + devalue text."""
    return DEVALUE_PREFIX + _utf8(devalue_stringify(value))


def frame(body: bytes) -> bytes:
    """``u32_be(len) || body``, refusing what the SDK's reader would refuse."""
    if len(body) > MAX_FRAME_SIZE:
        raise StreamFormatError(f"a stream chunk of {len(body)} bytes exceeds the SDK's frame limit ({MAX_FRAME_SIZE})")
    return _HEADER.pack(len(body)) + body


def encode_chunk(value: Any, *, encrypt: Callable[[bytes], bytes] | None = None) -> bytes:
    """One stream chunk exactly as ``getSerializeStream`` writes it: the value serialized,
    encrypted when ``encrypt`` is given (it returns the whole ``b"encr"…`` payload), framed."""
    body = serialize_value(value)
    if encrypt is not None:
        body = encrypt(body)
    return frame(body)


# --------------------------------------------------------------------------------------------
# Reading: getDeserializeStream
# --------------------------------------------------------------------------------------------


class StreamDecoder:
    """Values out of a stream's bytes, however the transport cut them (``getDeserializeStream``).

    Feed every read to :meth:`feed`; it returns the values completed by it. Like the SDK, the
    first read decides the mode: a plausible length header (1 byte to 100 MB) means frames,
    anything else the legacy newline-delimited devalue text. ``decrypt`` turns an ``encr``
    payload into the format-prefixed plaintext; without it (or when it fails) the frame is
    returned as :class:`~telemetry.payloads.Encrypted` rather than stopping the stream.
    """

    __slots__ = ("_buffer", "_framed", "_decrypt", "errors")

    def __init__(self, *, decrypt: Callable[[bytes], bytes] | None = None) -> None:
        self._buffer = bytearray()
        self._framed: bool | None = None
        self._decrypt = decrypt
        #: what went wrong with chunks that came out opaque or encrypted (decryption failures)
        self.errors: list[str] = []

    @property
    def pending(self) -> int:
        """Bytes of a frame not complete yet (a stream that ends with some was cut mid-frame)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Any]:
        if not data:
            return []
        if self._framed is None:
            probe = bytes(self._buffer) + bytes(data)
            if len(probe) < 4:
                self._buffer.extend(data)
                return []
            (length,) = _HEADER.unpack_from(probe, 0)
            self._framed = 0 < length < MAX_FRAME_SIZE
        if not self._framed:
            text = (bytes(self._buffer) + bytes(data)).decode("utf-8", "replace")
            self._buffer.clear()
            return [devalue_parse(line) for line in text.split("\n") if line]
        self._buffer.extend(data)
        return self._frames()

    def _frames(self) -> list[Any]:
        values: list[Any] = []
        buffer = self._buffer
        offset = 0
        while len(buffer) - offset >= 4:
            (length,) = _HEADER.unpack_from(buffer, offset)
            end = offset + 4 + length
            if len(buffer) < end:
                break
            values.append(self.value(bytes(buffer[offset + 4 : end])))
            offset = end
        del buffer[:offset]
        return values

    def value(self, body: bytes) -> Any:
        """One frame's body (a format-prefixed payload) as a value."""
        prefix = body[:4]
        if prefix == ENCRYPTED_PREFIX:
            if self._decrypt is None:
                return Encrypted(body)
            try:
                body = self._decrypt(body)
            except Exception as error:  # any failure to open it leaves it encrypted, never stops the read
                self.errors.append(f"cannot decrypt a stream chunk: {error}")
                return Encrypted(body)
            prefix = body[:4]
        if prefix == DEVALUE_PREFIX:
            return devalue_parse(body[4:])
        return Opaque(prefix.decode("ascii", "replace"), body)


def decode_chunks(chunks: bytes | Iterable[bytes], *, decrypt: Callable[[bytes], bytes] | None = None) -> list[Any]:
    """The values of a whole stream: its bytes back to back, or its chunks in order."""
    decoder = StreamDecoder(decrypt=decrypt)
    values: list[Any] = []
    for chunk in [chunks] if isinstance(chunks, (bytes, bytearray, memoryview)) else chunks:
        values.extend(decoder.feed(bytes(chunk)))
    return values


# --------------------------------------------------------------------------------------------
# Each world's framing of the chunks (one frame per chunk, and the close)
# --------------------------------------------------------------------------------------------

#: world-local's close: a chunk file whose EOF byte is 1 and that holds nothing else.
LOCAL_EOF_FILE = b"\x01"
#: world-postgres's close: ``(data, eof)`` of the row ``closeStream`` inserts.
POSTGRES_EOF_ROW: tuple[bytes, bool] = (b"", True)
#: world-vercel's headers on a stream PUT: a batch of chunks, and the close.
VERCEL_MULTI_HEADER = ("X-Stream-Multi", "true")
VERCEL_DONE_HEADER = ("X-Stream-Done", "true")


def local_chunk_file(chunk: bytes) -> bytes:
    """The bytes of world-local's ``<stream>-chnk_<ULID>.bin`` file for one chunk (EOF byte 0)."""
    return b"\x00" + chunk


def parse_local_chunk_file(body: bytes) -> tuple[bool, bytes]:
    """(is it the close, the chunk) of a world-local chunk file (``deserializeChunk``)."""
    return body[:1] == LOCAL_EOF_FILE, body[1:]


def postgres_row(chunk: bytes) -> tuple[bytes, bool]:
    """``(data, eof)`` of the ``workflow_stream_chunks`` row ``writeToStream`` inserts."""
    return chunk, False


def vercel_multi_body(chunks: Sequence[bytes | str]) -> bytes:
    """world-vercel's ``encodeMultiChunks``: each chunk prefixed with its u32 length, so the
    server stores them as separate chunks (one index each)."""
    parts: list[bytes] = []
    for chunk in chunks:
        raw = chunk.encode() if isinstance(chunk, str) else bytes(chunk)
        parts.append(_HEADER.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)


def split_multi_chunks(body: bytes) -> list[bytes]:
    """The chunks of a multi-chunk PUT body (the server's side of :func:`vercel_multi_body`)."""
    chunks: list[bytes] = []
    offset = 0
    while offset < len(body):
        if len(body) - offset < 4:
            raise StreamFormatError("multi-chunk body ends inside a length header")
        (length,) = _HEADER.unpack_from(body, offset)
        end = offset + 4 + length
        if end > len(body):
            raise StreamFormatError("multi-chunk body ends inside a chunk")
        chunks.append(body[offset + 4 : end])
        offset = end
    return chunks
