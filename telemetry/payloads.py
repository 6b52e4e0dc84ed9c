"""Decoding the SDK's serialized payloads into Python values.

Every user value (run input/output, step input/result, hook metadata/payload, stream chunk)
is stored as bytes: a 4-byte format prefix and a body. ``devl`` is ``devalue.stringify`` JSON
(a flat value table whose entries point at each other by index, so repeated and cyclic
references survive); ``encr`` is AES-GCM ciphertext we cannot read without the run's key.
The SDK registers its own revivers (``["Date", <index>]`` pointing at the reduced value)
on top of devalue's built-in forms (``["Date", "<iso>"]``); both are accepted here.
"""

from __future__ import annotations

import array
import base64
import json
import math
import struct
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "UNDEFINED",
    "Encrypted",
    "JSError",
    "JSRegExp",
    "JSValue",
    "Opaque",
    "decode_payload",
    "devalue_parse",
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


class DevalueError(ValueError):
    pass


def _b64(value: Any) -> bytes:
    if value == "." or value == "":
        return b""
    return base64.b64decode(value)


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


def _collection(items: list, kind: str) -> Any:
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
    if type_name in _TYPED or type_name in ("Uint8Array", "Uint8ClampedArray", "ArrayBuffer"):
        return _typed(type_name, _b64(payload))
    if type_name in ("Map", "Set"):
        return _collection(list(payload), type_name)
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


def devalue_parse(text: str | bytes) -> Any:
    """Parse ``devalue.stringify`` output (with the SDK's custom types) into Python values."""
    parsed = json.loads(text)
    if isinstance(parsed, int) and not isinstance(parsed, bool):
        if parsed in _SPECIAL:
            return _SPECIAL[parsed]
        raise DevalueError("invalid devalue input")
    if not isinstance(parsed, list) or not parsed:
        raise DevalueError("invalid devalue input")
    values = parsed
    hydrated: dict[int, Any] = {}

    def hydrate(index: Any) -> Any:
        if not isinstance(index, int) or isinstance(index, bool):
            raise DevalueError(f"invalid reference {index!r}")
        if index < 0:
            if index in _SPECIAL:
                return _SPECIAL[index]
            raise DevalueError(f"invalid reference {index}")
        if index in hydrated:
            return hydrated[index]
        if index >= len(values):
            raise DevalueError(f"reference {index} out of range")
        value = values[index]
        if not isinstance(value, (list, dict)):
            hydrated[index] = value
        elif isinstance(value, dict):
            obj: dict[str, Any] = {}
            hydrated[index] = obj
            for key, ref in value.items():
                obj[key] = hydrate(ref)
        elif value and isinstance(value[0], str):
            hydrated[index] = _typed_entry(value)
        elif value and value[0] == _SPARSE:
            items: list[Any] = [UNDEFINED] * int(value[1])
            hydrated[index] = items
            for i in range(2, len(value), 2):
                items[value[i]] = hydrate(value[i + 1])
        else:
            items = []
            hydrated[index] = items
            items.extend(UNDEFINED if ref == _HOLE else hydrate(ref) for ref in value)
        return hydrated[index]

    def _typed_entry(value: list) -> Any:
        type_name = value[0]
        reference = value[1] if len(value) == 2 else None
        if isinstance(reference, int) and not isinstance(reference, bool) and type_name not in ("Object", "null"):
            return _revive(type_name, hydrate(reference))  # the SDK's custom-reviver form
        if type_name == "Set":
            return _collection([hydrate(v) for v in value[1:]], "Set")
        if type_name == "Map":
            return _collection([(hydrate(value[i]), hydrate(value[i + 1])) for i in range(1, len(value), 2)], "Map")
        if type_name == "null":
            return {value[i]: hydrate(value[i + 1]) for i in range(1, len(value), 2)}
        if type_name == "RegExp":
            return JSRegExp(value[1], value[2] if len(value) > 2 else "")
        if type_name == "Object":
            return hydrate(value[1])
        return _revive(type_name, value[1] if len(value) > 1 else None)

    return hydrate(0)


def decode_payload(value: Any) -> Any:
    """Decode one stored payload: ``devl`` bytes to Python values, ``encr`` kept opaque.

    Non-bytes values are legacy (spec version 1) JSON payloads and are returned as they are.
    """
    if not isinstance(value, (bytes, bytearray, memoryview)):
        return value
    raw = bytes(value)
    prefix = raw[:4]
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
    if isinstance(value, (JSValue, Opaque, JSRegExp)):
        return {}
    if value is UNDEFINED:
        return None
    return value
