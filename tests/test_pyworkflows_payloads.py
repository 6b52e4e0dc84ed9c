"""Differential: ``telemetry.payloads`` decodes what vercel-workflow's own serializer writes, as it does.

Values are generated (hypothesis), encoded by vercel-workflow's ``PayloadEncoder`` into the ``devl`` bytes it
stores, and decoded twice: by vercel-workflow (``hydrate``) and by us (``decode_payload``). Both must give the
value back.
"""

from __future__ import annotations

import base64
import gzip
import json
import math
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vercel.workflow._internal import serialization as ser  # noqa: I001 - the SDK under comparison

from telemetry.payloads import MAX_DECOMPRESSED_BYTES, Undecodable, decode_payload, to_jsonable

_SAFE_INT = 2**53 - 1

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-_SAFE_INT, _SAFE_INT)
    | st.integers(min_value=2**64, max_value=2**80)  # BigInt
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(max_size=12)  # bytes: ["Uint8Array", i] -> ["ArrayBuffer", <base64>]
    | st.binary(max_size=12).map(bytearray)  # a bare ["ArrayBuffer", <base64>]
    | st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)).map(
        lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)
    )
)
hashables = st.none() | st.booleans() | st.integers(-_SAFE_INT, _SAFE_INT) | st.text(max_size=8) | st.binary(max_size=4)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(st.text(max_size=8), inner, max_size=5)
        | st.frozensets(hashables, max_size=5).map(set)  # one-element sets included: test_one_element_set
    ),
    max_leaves=25,
)


def _same(left: Any, right: Any) -> bool:
    if isinstance(left, float) and isinstance(right, float):
        return left == right and math.copysign(1, left) == math.copysign(1, right) or (left == right == 0.0)
    if isinstance(left, bool) or isinstance(right, bool):
        return left is right
    if isinstance(left, int) and isinstance(right, int):  # vercel-workflow revives a BigInt as JsBigInt(int)
        return int(left) == int(right)
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(_same(left[k], right[k]) for k in left)
    if isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        return len(left) == len(right) and all(_same(a, b) for a, b in zip(left, right, strict=True))
    if isinstance(left, datetime) and isinstance(right, datetime):
        return abs(left - right) < timedelta(milliseconds=1)
    if isinstance(left, (bytes, bytearray)) and isinstance(right, (bytes, bytearray)):
        return bytes(left) == bytes(right)
    return type(left) is type(right) and left == right  # type: ignore[no-any-return]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_our_decoding_agrees_with_vercel_workflow(value):
    encoded = ser.PayloadEncoder(compression=False).encode(value)
    assert encoded[:4] == b"devl"
    theirs = ser.hydrate(encoded, what="differential")
    ours = decode_payload(encoded)
    assert _same(ours, theirs), (encoded, ours, theirs)
    assert _same(ours, value), (encoded, ours, value)


def test_shared_references_and_cycles_survive():
    shared = {"k": [1, 2]}
    value = {"a": shared, "b": shared, "c": [shared]}
    ours = decode_payload(ser.PayloadEncoder(compression=False).encode(value))
    assert ours == value and ours["a"] is ours["b"] is ours["c"][0]


@pytest.mark.parametrize("value", [b"A", b"AB", b"\x00\x00\x00", b"", {"blob": b"\x00\x01"}, bytearray(b"xyz")])
def test_bytes(value):
    """``bytes`` is ``["Uint8Array", ref]`` -> ``["ArrayBuffer", <base64>]``: decoded once, padded or not."""
    encoded = ser.PayloadEncoder(compression=False).encode(value)
    assert _same(decode_payload(encoded), ser.hydrate(encoded, what="differential"))
    assert _same(decode_payload(encoded), value)


def test_unpadded_base64_and_narrow_views():
    """devalue's JS encoder may drop the ``=`` padding, and writes offset/length for a view narrower than
    its buffer (``new Uint8Array(buf, 1, 2)``); vercel-workflow's parser reads both, so must we."""
    assert decode_payload(b'devl[["Uint8Array",1],["ArrayBuffer","QQ"]]') == b"A"
    narrow = b'devl[["Uint8Array",1,1,2],["ArrayBuffer","AAECAw=="]]'
    assert decode_payload(narrow) == ser.hydrate(narrow, what="view") == b"\x01\x02"
    ints = b'devl[["Int16Array",1,2,1],["ArrayBuffer","AAABAP//"]]'
    assert decode_payload(ints) == [1] and ser.hydrate(ints, what="view") == b"\x01\x00"  # theirs: raw bytes


@pytest.mark.parametrize("value", [{5}, {None}, {"a": {"ab"}}, {b"k"}, [{1}, {2, 3}]])
def test_one_element_set(value):
    """devalue's ``["Set", <element>]`` is not the TypeScript SDK's ``["Set", <array of elements>]``."""
    encoded = ser.PayloadEncoder(compression=False).encode(value)
    assert _same(decode_payload(encoded), ser.hydrate(encoded, what="differential"))
    assert _same(decode_payload(encoded), value)


_PAD = "all systems nominal " * 80  # 1.6 KB of text: over vercel-workflow's 1 KiB compression threshold


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(value=values)
def test_compressed_payloads_agree(codec, value, monkeypatch):
    """Spec-5 payloads of 1 KiB or more are ``zstd``/``gzip`` + the ``devl`` bytes (vercel-workflow's
    ``compression.maybe_compress``); ours must unpack and decode them as vercel-workflow does."""
    monkeypatch.setenv("WORKFLOW_COMPRESSION_CODEC", codec)
    monkeypatch.delenv("WORKFLOW_DISABLE_COMPRESSION", raising=False)
    encoded = ser.PayloadEncoder(compression=True).encode({"pad": _PAD, "value": value})
    assert encoded[:4] == codec.encode()
    ours, theirs = decode_payload(encoded), ser.hydrate(encoded, what="differential")
    assert _same(ours, theirs), (encoded[:4], ours, theirs)


def test_the_fixtures_compressed_payloads_decode():
    """The ``bulky`` run of tests/fixtures/pylocal-cut: real zstd payloads written by vercel-workflow."""
    fixture = Path(__file__).parent / "fixtures" / "pylocal-cut"
    seen = 0
    for path in sorted(fixture.rglob("*.json")):
        for blob in _uint8arrays(json.loads(path.read_text())):
            if blob[:4] == b"zstd":
                seen += 1
                assert _same(decode_payload(blob), ser.hydrate(blob, what=path.name)), path
    assert seen == 2


def _uint8arrays(record: Any) -> list[bytes]:
    if isinstance(record, dict):
        if record.get("__type") == "Uint8Array":
            return [base64.b64decode(record["data"])]
        return [blob for value in record.values() for blob in _uint8arrays(value)]
    if isinstance(record, list):
        return [blob for value in record for blob in _uint8arrays(value)]
    return []


def _zstd(data: bytes, *, declare_size: bool = True) -> bytes:
    """A zstd payload; the one-shot API writes the content size in the frame header, the streaming one
    (like Node's encoder) does not."""
    if declare_size:
        return b"zstd" + zstandard.ZstdCompressor(level=3).compress(data)
    compressor = zstandard.ZstdCompressor(level=3).compressobj()
    return b"zstd" + compressor.compress(data) + compressor.flush()


def test_bombs_stop_at_the_cap_and_are_undecodable():
    """A few KB that unpack to 64 MiB: refused at the cap (with and without a declared size), as a value."""
    body = b"devl" + b'["' + b"A" * (64 << 20) + b'"]'
    bombs = (_zstd(body), _zstd(body, declare_size=False), b"gzip" + gzip.compress(body, mtime=0))
    assert zstandard.frame_content_size(bombs[0][4:]) == len(body) and zstandard.frame_content_size(bombs[1][4:]) == -1
    for bomb in bombs:
        assert len(bomb) < 100_000
        tracemalloc.start()
        try:
            value = decode_payload(bomb)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert isinstance(value, Undecodable) and value.format == bomb[:4].decode(), value
        assert value.reason == f"unpacks to more than {MAX_DECOMPRESSED_BYTES} bytes"
        assert peak < MAX_DECOMPRESSED_BYTES * 2  # bounded by the cap, not by what the bomb declares
        assert to_jsonable(value) == {"undecodable": f"{value.format}: {value.reason}"}


def test_the_cap_is_exact():
    body = ser.PayloadEncoder(compression=False).encode("x" * 5000)
    for packed in (_zstd(body), _zstd(body, declare_size=False), b"gzip" + gzip.compress(body)):
        assert decode_payload(packed, max_decompressed=len(body)) == "x" * 5000
        assert isinstance(decode_payload(packed, max_decompressed=len(body) - 1), Undecodable)


def test_corrupt_compressed_payloads_are_undecodable_not_raised():
    good = ser.PayloadEncoder(compression=True).encode("all systems nominal " * 100)
    assert good[:4] == b"zstd"
    gz = b"gzip" + gzip.compress(ser.PayloadEncoder(compression=False).encode("y" * 2000))
    cases = {
        "truncated zstd frame": good[:-7],
        "trailing bytes after the zstd frame": good + b"junk",
        "invalid zstd data": b"zstd" + b"not a frame at all",
        "truncated gzip stream": gz[:-9],
        "invalid gzip data": b"gzip" + b"\x1f\x8b but then nonsense",
        "zstd payload inside gzip": b"gzip" + gzip.compress(good),
    }
    for reason, blob in {**cases, "empty zstd": b"zstd", "empty gzip": b"gzip"}.items():
        value = decode_payload(blob)
        assert isinstance(value, Undecodable), (reason, value)
        if reason in cases:
            assert reason in value.reason, value
        with pytest.raises(ser.SerializationError):  # vercel-workflow refuses each of them too
            ser.hydrate(blob, what=reason)
    assert decode_payload(gz) == "y" * 2000
    inner_corrupt = _zstd(b"devl[[not json")
    with pytest.raises(ValueError):  # the frame unpacks; what it holds is a corrupt devl body, as if stored plain
        decode_payload(inner_corrupt)
