"""Decoding the SDK's serialized payloads into Python values.

Every user value (run input/output, step input/result, hook metadata/payload, stream chunk)
is stored as bytes: a 4-byte format prefix and a body. ``devl`` is ``devalue.stringify`` JSON
(a flat value table whose entries point at each other by index, so repeated and cyclic
references survive); ``encr`` is AES-GCM ciphertext we cannot read without the run's key.
The TypeScript SDK registers its own revivers (``["Date", <index>]`` pointing at the reduced
value) on top of devalue's built-in forms (``["Date", "<iso>"]``), which is what the Python
SDK (``vercel-workflow``) writes; both are accepted here.

Spec version 5 writers wrap a payload of 1 KiB or more in ``zstd`` (a zstd frame) or ``gzip``
(a gzip stream) around the ``devl`` bytes. Those are unpacked under a size cap: the bytes come
from the world, so a corrupt frame or a decompression bomb becomes an :class:`Undecodable`
value (kept, with the reason) instead of an exception or an unbounded allocation.
"""

from __future__ import annotations

import array
import base64
import binascii
import json
import json.scanner
import math
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TypeGuard, cast

from .decompress import BadData, TooLarge, decompressor

__all__ = [
    "MAX_DECOMPRESSED_BYTES",
    "MAX_SPARSE_LENGTH",
    "UNDEFINED",
    "Encrypted",
    "JSError",
    "JSRegExp",
    "JSValue",
    "Opaque",
    "Undecodable",
    "decode_payload",
    "devalue_parse",
    "one_value_decoder",
    "split_frames",
    "to_jsonable",
]


class _Undefined:
    """JavaScript ``undefined`` (distinct from ``null``/None)."""

    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "undefined"

    def __bool__(self) -> bool:
        return False


UNDEFINED = _Undefined()


@dataclass(frozen=True, slots=True)
class Encrypted:
    """An ``encr`` payload: kept as ciphertext, never decoded."""

    data: bytes
    encrypted: bool = True

    def __repr__(self) -> str:
        return f"<encrypted {len(self.data)} bytes>"


@dataclass(frozen=True, slots=True)
class Opaque:
    """Bytes in a format we do not know (kept, not guessed at)."""

    format: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A payload in a format we read (``zstd``, ``gzip``) whose bytes could not be unpacked:
    corrupt, truncated, or bigger than :data:`MAX_DECOMPRESSED_BYTES` once unpacked.

    A value, not an exception, so one bad payload costs that value and not the whole run's view.
    """

    format: str
    reason: str
    data: bytes = field(repr=False)


@dataclass(slots=True)
class JSError:
    name: str
    message: str
    stack: str | None = None
    cause: Any = None


@dataclass(frozen=True, slots=True)
class JSRegExp:
    source: str
    flags: str = ""


@dataclass(slots=True)
class JSValue:
    """A value of an SDK or user type with no Python counterpart (a stream handle, a class
    instance): its type name and its reduced payload."""

    type: str
    value: Any = field(default=None)


_SPECIAL = {-1: UNDEFINED, -3: math.nan, -4: math.inf, -5: -math.inf, -6: -0.0}
_HOLE = -2
_SPARSE = -7
_TYPED = {
    "Int8Array": "b",
    "Int16Array": "h",
    "Int32Array": "i",
    "Uint16Array": "H",
    "Uint32Array": "I",
    "Float32Array": "f",
    "Float64Array": "d",
    "BigInt64Array": "q",
    "BigUint64Array": "Q",
}


#: The most a compressed payload may unpack to. The SDKs compress what they would otherwise have
#: stored as it is, so a real payload is never near this; a bomb stops here.
MAX_DECOMPRESSED_BYTES: Final = 32 * 1024 * 1024
#: Longest sparse array accepted: its length is a number in the input, not bounded by the input's size.
MAX_SPARSE_LENGTH: Final = 1 << 20
#: Ceiling on the window a zstd frame may ask the decoder to allocate (the frame header says how much).
_ZSTD_MAX_WINDOW: Final = 1 << 25
_BYTES_PER_ELEMENT = {
    "Int8Array": 1,
    "Uint8Array": 1,
    "Uint8ClampedArray": 1,
    "Int16Array": 2,
    "Uint16Array": 2,
    "Int32Array": 4,
    "Uint32Array": 4,
    "Float32Array": 4,
    "Float64Array": 8,
    "BigInt64Array": 8,
    "BigUint64Array": 8,
    "DataView": 1,
}


class DevalueError(ValueError):
    pass


def _b64(value: Any) -> bytes:
    """Base64 with or without its ``=`` padding (devalue's own encoder and Node's differ on it)."""
    if value == "." or value == "":
        return b""
    if not isinstance(value, str):
        raise DevalueError(f"expected base64 text, got {type(value).__name__}")
    try:
        return base64.b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as error:
        raise DevalueError(f"invalid base64: {error}") from None


def _date(value: Any) -> datetime | None:
    if not isinstance(value, str) or value == ".":
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


def _typed(type_name: str, raw: bytes) -> Any:
    if type_name in ("Uint8Array", "Uint8ClampedArray", "ArrayBuffer", "DataView"):
        return raw
    values = array.array(_TYPED[type_name])
    values.frombytes(raw)
    if sys.byteorder != "little":  # JS typed arrays are little-endian on every platform Node runs
        values.byteswap()
    return values.tolist()


def _collection(items: list[Any], kind: str) -> Any:
    """A JS Map/Set as a dict/set when its keys are hashable, else as a list."""
    try:
        if kind == "Map":
            return {k: v for k, v in items}
        return set(items)
    except TypeError:
        return [tuple(pair) for pair in items] if kind == "Map" else list(items)


def _revive(type_name: str, payload: Any) -> Any:
    """A value the SDK's reducers turned into ``payload`` (its ``getCommonRevivers``)."""
    if type_name == "Date":
        return _date(payload)
    if type_name == "BigInt":
        return int(payload)
    if type_name in _BYTES_PER_ELEMENT or type_name == "ArrayBuffer":
        # devalue's own form points a view at an ``["ArrayBuffer", <base64>]`` entry, already bytes
        # by now; the TypeScript SDK's reducer points it at the base64 text itself
        raw = bytes(payload) if isinstance(payload, (bytes, bytearray)) else _b64(payload)
        return _typed(type_name, raw)
    if type_name in ("Map", "Set"):
        if not isinstance(payload, list):
            raise DevalueError(f"{type_name} of {type(payload).__name__}")
        return _collection(payload, type_name)
    if type_name in ("Error", "DOMException") and isinstance(payload, dict):
        return JSError(
            name=str(payload.get("name", type_name)),
            message=str(payload.get("message", "")),
            stack=payload.get("stack"),
            cause=payload.get("cause"),
        )
    if type_name == "RegExp" and isinstance(payload, dict):
        return JSRegExp(payload.get("source", ""), payload.get("flags", ""))
    if type_name in ("URL", "URLSearchParams"):
        return "" if payload == "." else payload
    return JSValue(type_name, payload)


def _is_index(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def one_value_decoder(decoder: json.JSONDecoder) -> Callable[[str], Any]:
    """``decoder.decode`` without its Python wrapper (two whitespace matches around the C scanner,
    most of the cost of decoding a small document), where the text is one JSON value from its first
    character to its end or to JSON whitespace; any other text goes through ``decode``, which
    raises its own error. For the hot paths that decode one small document each: records, tables."""
    scan = json.scanner.make_scanner(cast(Any, decoder))  # the C scanner (typeshed types its argument as one)

    def decode(text: str) -> Any:
        try:
            value, end = scan(text, 0)
        except StopIteration:
            return decoder.decode(text)
        if end != len(text) and text[end:].strip(" \t\n\r"):
            return decoder.decode(text)  # extra data after the value
        return value

    return decode


_JSON = json.JSONDecoder()
_decode_table = one_value_decoder(_JSON)
_MISSING: Any = object()  # a table entry not hydrated yet
_SCALARS = (str, int, float, bool, type(None))


def _json_table(text: str | bytes) -> Any:
    """The devalue table: one shared decoder on text (``json.loads`` of bytes first guesses their
    encoding, which devalue's UTF-8 never needs; a BOM or another encoding still goes that way)."""
    try:
        if isinstance(text, (bytes, bytearray)):
            try:
                text = text.decode()
            except UnicodeDecodeError:
                return json.loads(text)
        if text[:1] == "\ufeff":
            return json.loads(text)
        return _decode_table(text)
    except RecursionError:
        raise DevalueError("devalue input nested too deep") from None


def _shallow(values: list[Any]) -> Any:
    """What ``devalue_parse`` makes of a table whose first entry is a plain object or array whose
    references point at scalar entries, devalue's specials, or plain objects and arrays of those
    (``[[]]``, ``[{"decision":1,"by":2},"approved","alice"]``, a step's arguments
    ``[{"args":1,"closureVars":-1,"thisVal":-1},[2],5]``: most payloads), without the general walk;
    ``_MISSING`` for any other table: deeper, shared or cyclic entries, typed or sparse ones, or a
    reference that is not right (the walk says what)."""
    return _plain(values, values[0], len(values), 1, set())


def _plain(values: list[Any], entry: Any, size: int, depth: int, taken: set[int]) -> Any:
    """Table ``entry`` (a plain object or array) built from the entries it points at: scalars,
    specials, and (``depth`` more levels) plain objects and arrays each pointed at once."""
    kind = entry.__class__
    if kind is dict:
        obj: dict[str, Any] = {}
        for key, ref in entry.items():
            value = _plain_ref(values, ref, size, depth, taken)
            if value is _MISSING:
                return _MISSING
            obj[key] = value
        return obj
    if kind is not list or (entry and (isinstance(entry[0], str) or entry[0] == _SPARSE)):
        return _MISSING  # a typed entry or a sparse array: the walk's
    items: list[Any] = []
    for ref in entry:
        if ref == _HOLE:
            items.append(UNDEFINED)
            continue
        value = _plain_ref(values, ref, size, depth, taken)
        if value is _MISSING:
            return _MISSING
        items.append(value)
    return items


def _plain_ref(values: list[Any], ref: Any, size: int, depth: int, taken: set[int]) -> Any:
    if ref.__class__ is not int:  # a bool is no reference either
        return _MISSING
    if ref < 0:
        return _SPECIAL.get(ref, _MISSING)
    if ref >= size:
        return _MISSING
    value = values[ref]
    if value.__class__ is dict or value.__class__ is list:
        if not depth or ref in taken or ref == 0:  # deeper, shared or cyclic: the walk's
            return _MISSING
        taken.add(ref)
        return _plain(values, value, size, depth - 1, taken)
    return value


def devalue_parse(text: str | bytes) -> Any:
    """Parse ``devalue.stringify`` output (with the SDK's custom types) into Python values.

    Malformed input raises :class:`DevalueError` (a ``ValueError``), also when it is nested too
    deep or asks for an absurd sparse array: the text comes from the world, not from us.
    """
    parsed = _json_table(text)
    if parsed.__class__ is not list or not parsed:
        if _is_index(parsed):
            if parsed in _SPECIAL:
                return _SPECIAL[parsed]
        raise DevalueError("invalid devalue input")
    values: list[Any] = parsed
    if len(values) == 1 and isinstance(values[0], _SCALARS):  # ``[5]``, ``["done"]``: most results
        return values[0]
    shallow = _shallow(values)
    if shallow is not _MISSING:
        return shallow
    size = len(values)
    hydrated: list[Any] = [_MISSING] * size

    def hydrate(index: Any) -> Any:
        if index.__class__ is not int:  # a bool is no reference either
            raise DevalueError(f"invalid reference {index!r}")
        if index < 0:
            if index in _SPECIAL:
                return _SPECIAL[index]
            raise DevalueError(f"invalid reference {index}")
        if index >= size:
            raise DevalueError(f"reference {index} out of range")
        done = hydrated[index]
        if done is not _MISSING:
            return done
        value = values[index]
        kind = value.__class__
        if kind is dict:
            obj: dict[str, Any] = {}
            hydrated[index] = obj
            for key, ref in value.items():
                obj[key] = hydrate(ref)
            return obj
        if kind is not list:
            hydrated[index] = value
            return value
        if value and isinstance(value[0], str):
            hydrated[index] = _typed_entry(value)
        elif value and value[0] == _SPARSE:
            hydrated[index] = _sparse(value)
        else:
            items: list[Any] = []
            hydrated[index] = items
            items.extend(UNDEFINED if ref == _HOLE else hydrate(ref) for ref in value)
        return hydrated[index]

    def _sparse(value: list[Any]) -> list[Any]:
        length = value[1] if len(value) > 1 else None
        if not _is_index(length) or not 0 <= length <= MAX_SPARSE_LENGTH:
            raise DevalueError(f"invalid sparse array length {length!r}")
        items: list[Any] = [UNDEFINED] * length
        for i in range(2, len(value) - 1, 2):
            slot = value[i]
            if not _is_index(slot) or not 0 <= slot < length:
                raise DevalueError(f"invalid sparse array index {slot!r}")
            items[slot] = hydrate(value[i + 1])
        return items

    def _is_plain_array(index: int) -> bool:
        """Whether table entry ``index`` is a plain array: what the TypeScript SDK's Set reducer
        (``Array.from(set)``) points at, and what a Python element of a one-element Set cannot be."""
        entry = values[index] if 0 <= index < len(values) else None
        return isinstance(entry, list) and not (entry and (isinstance(entry[0], str) or entry[0] == _SPARSE))

    def _typed_entry(value: list[Any]) -> Any:
        type_name = value[0]
        reference = value[1] if len(value) == 2 else None
        if type_name == "Set" and _is_index(reference) and not _is_plain_array(reference):
            reference = None  # devalue's own one-element Set ``["Set", <element>]``
        if _is_index(reference) and type_name not in ("Object", "null"):
            return _revive(type_name, hydrate(reference))  # the SDK's custom-reviver form
        if type_name == "Set":
            return _collection([hydrate(v) for v in value[1:]], "Set")
        if type_name == "Map":
            return _collection([(hydrate(value[i]), hydrate(value[i + 1])) for i in range(1, len(value) - 1, 2)], "Map")
        if type_name == "null":
            return {value[i]: hydrate(value[i + 1]) for i in range(1, len(value) - 1, 2)}
        if type_name == "RegExp":
            return JSRegExp(value[1], value[2] if len(value) > 2 else "")
        if type_name == "Object":
            return hydrate(value[1])
        if type_name in _BYTES_PER_ELEMENT and len(value) == 4:  # a view narrower than its buffer
            buffer, offset, count = hydrate(value[1]), value[2], value[3]
            if not isinstance(buffer, bytes) or not _is_index(offset) or not _is_index(count):
                raise DevalueError(f"invalid {type_name} view")
            return _typed(type_name, buffer[offset : offset + count * _BYTES_PER_ELEMENT[type_name]])
        return _revive(type_name, value[1] if len(value) > 1 else None)

    try:
        return hydrate(0)
    except RecursionError:
        raise DevalueError("devalue input nested too deep") from None
    except (TypeError, KeyError, IndexError) as error:  # a table entry of the wrong shape
        raise DevalueError(f"invalid devalue input: {error!r}") from None


def decode_payload(value: Any, *, max_decompressed: int = MAX_DECOMPRESSED_BYTES) -> Any:
    """Decode one stored payload: ``devl`` bytes to Python values, ``encr`` kept opaque,
    ``zstd``/``gzip`` unpacked (at most ``max_decompressed`` bytes) and then decoded.

    Non-bytes values are legacy (spec version 1) JSON payloads and are returned as they are.
    A ``devl`` body that does not parse raises ``ValueError`` (the record holding it is corrupt);
    compressed bytes that cannot be unpacked come back as :class:`Undecodable`.
    """
    kind = value.__class__
    if kind is bytes:  # what both readers hand over: no copy
        raw = value
        if raw[:4] == b"devl":
            return devalue_parse(raw[4:])
    elif not isinstance(value, (bytes, bytearray, memoryview)):
        return value
    else:
        raw = bytes(value)
    prefix = raw[:4]
    if prefix in (b"zstd", b"gzip"):
        name = prefix.decode()
        try:
            unpacking = decompressor(name, max_decompressed, max_window=_ZSTD_MAX_WINDOW, one_frame=True)
            unpacking.feed(raw[4:])
            inner = unpacking.finish()
        except TooLarge:
            return Undecodable(name, f"unpacks to more than {max_decompressed} bytes", raw)
        except BadData as problem:
            return Undecodable(name, str(problem), raw)
        if inner[:4] in (b"zstd", b"gzip"):  # no SDK nests them; refusing keeps the cap a cap
            return Undecodable(name, f"{inner[:4].decode('ascii', 'replace')} payload inside {name}", raw)
        return decode_payload(inner)
    if prefix == b"devl":
        return devalue_parse(raw[4:])
    if prefix == b"encr":
        return Encrypted(raw)
    return Opaque(prefix.decode("ascii", "replace"), raw)


def split_frames(data: bytes) -> list[bytes]:
    """Stream chunk frames: repeated ``uint32 big-endian length`` + serialized bytes."""
    frames = []
    offset = 0
    while offset + 4 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        offset += 4
        frames.append(data[offset : offset + length])
        offset += length
    return frames


def to_jsonable(value: Any) -> Any:
    """What ``JSON.stringify`` would make of a decoded value (for display and comparison)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items() if v is not UNDEFINED}
    if isinstance(value, (list, tuple)):
        return [None if v is UNDEFINED else to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return {}  # JSON.stringify(new Set()) is "{}"
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        return None
    if isinstance(value, (bytes, bytearray)):
        return {str(i): b for i, b in enumerate(value)}
    if isinstance(value, JSError):
        return {}
    if isinstance(value, Encrypted):
        return {"encrypted": True}
    if isinstance(value, Undecodable):
        return {"undecodable": f"{value.format}: {value.reason}"}
    if isinstance(value, (JSValue, Opaque, JSRegExp)):
        return {}
    if value is UNDEFINED:
        return None
    return value
