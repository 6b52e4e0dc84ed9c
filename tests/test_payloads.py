"""Decoding against payloads serialized by the real SDK (tests/fixtures/make_devalue_cases.mjs)."""

import base64
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import pytest

from telemetry.payloads import (
    UNDEFINED,
    Encrypted,
    JSError,
    JSRegExp,
    Opaque,
    decode_payload,
    devalue_parse,
    split_frames,
    to_jsonable,
)

CASES = {
    k: base64.b64decode(v)
    for k, v in json.loads((Path(__file__).parent / "fixtures/devalue_cases.json").read_text()).items()
}


def decoded(name):
    return decode_payload(CASES[name])


def test_primitives_and_undefined():
    assert decoded("primitives") == {"s": "x", "n": 1.5, "t": True, "f": False, "z": None}
    assert decoded("undefined_in_object") == {"a": UNDEFINED, "b": 1}
    assert decoded("top_undefined") is UNDEFINED
    assert to_jsonable(decoded("undefined_in_object")) == {"b": 1}


def test_special_numbers():
    nan, inf, ninf, nzero, zero = decoded("specials")
    assert math.isnan(nan) and inf == math.inf and ninf == -math.inf
    assert nzero == 0 and math.copysign(1, nzero) == -1
    assert zero == 0 and math.copysign(1, zero) == 1


def test_custom_types():
    assert decoded("date") == datetime(2026, 11, 22, 3, 38, 48, 117000, tzinfo=UTC)
    assert decoded("map") == {"a": 1, "b": datetime(2020, 1, 1, tzinfo=UTC)}
    assert decoded("set") == {1, "two", 3}
    assert decoded("set_one") == {7}
    assert decoded("bigint") == 12345678901234567890
    assert decoded("bytes") == bytes([0, 1, 2, 253, 254, 255])
    assert decoded("empty_bytes") == b""
    assert decoded("int32") == [-1, 2, 2147483647]
    assert decoded("regexp") == JSRegExp("ab+c", "gi")
    assert decoded("url") == "https://example.com/a?b=c"
    error = decoded("error")
    assert isinstance(error, JSError) and (error.name, error.message) == ("TypeError", "bad thing")
    assert error.stack.startswith("TypeError: bad thing")


def test_references_repeated_cyclic_sparse_nested():
    repeated = decoded("repeated")
    assert repeated["first"] is repeated["second"] == {"k": "v"}
    cyclic = decoded("cyclic")
    assert cyclic["self"] is cyclic and cyclic["name"] == "loop"
    sparse = decoded("sparse")
    assert len(sparse) == 11 and sparse[0] == 1 and sparse[1] is UNDEFINED and sparse[2] == 3 and sparse[10] == "far"
    nested = decoded("nested")
    assert nested == {"list": [{"when": datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)}, {1: {"x"}}]}


def test_builtin_devalue_forms_are_accepted_too():
    assert devalue_parse('[["Date","2026-01-01T00:00:00.000Z"]]') == datetime(2026, 1, 1, tzinfo=UTC)
    assert devalue_parse('[["Set",1,2],"a","b"]') == {"a", "b"}
    assert devalue_parse('[["Map",1,2],"k","v"]') == {"k": "v"}
    assert devalue_parse('[["BigInt","5"]]') == 5
    assert devalue_parse('[["null","a",1],2]') == {"a": 2}
    assert devalue_parse('[["RegExp","x","g"]]') == JSRegExp("x", "g")
    assert devalue_parse("[[1,-2,1],7]") == [7, UNDEFINED, 7]


@pytest.mark.parametrize("bad", ["[]", "{}", "-9", "[[5]]", '[{"a":"x"}]'])
def test_malformed_devalue_is_a_value_error(bad):
    with pytest.raises(ValueError):
        devalue_parse(bad)


def test_encrypted_and_unknown_formats_stay_opaque():
    blob = b"encr" + bytes(range(40))
    value = decode_payload(blob)
    assert isinstance(value, Encrypted) and value.encrypted and value.data == blob
    assert to_jsonable(value) == {"encrypted": True}
    assert decode_payload(b"zzzzabc") == Opaque("zzzz", b"zzzzabc")
    assert decode_payload({"legacy": "json"}) == {"legacy": "json"}


def test_split_frames():
    frames = split_frames(b"\x00\x00\x00\x03abc\x00\x00\x00\x00\x00\x00\x00\x01z")
    assert frames == [b"abc", b"", b"z"]


def _deep_chain(depth: int) -> str:
    """``[[1],[2],…,0]``: an array inside an array ``depth`` times, in a few bytes per level."""
    return json.dumps([[i + 1] for i in range(depth)] + [0])


@pytest.mark.parametrize(
    "hostile",
    [
        "[[-7,1000000000000]]",  # a sparse array whose length is just a number in the input
        "[[-7,2,5,0],1]",  # a sparse index past its length
        '[["Map",1],5]',  # the SDK's Map form pointing at a number
        '[["Uint8Array",1],["ArrayBuffer",7]]',  # base64 that is not text
        "[" * 100_000 + "]" * 100_000,  # JSON nested too deep
        _deep_chain(50_000),  # references nested too deep
    ],
)
def test_hostile_devalue_is_a_value_error_not_a_crash(hostile):
    with pytest.raises(ValueError):
        devalue_parse(hostile)


def _walked(monkeypatch: pytest.MonkeyPatch, table: str) -> object:
    """``devalue_parse`` with its shortcut for shallow tables off: the general walk's answer."""
    import telemetry.payloads as payloads

    with monkeypatch.context() as patched:
        patched.setattr(payloads, "_shallow", lambda values: payloads._MISSING)
        try:
            return devalue_parse(table)
        except ValueError as error:
            return ("error", str(error))


@pytest.mark.parametrize(
    "table",
    [
        "[[]]",
        '[{"decision":1,"by":2},"approved","alice"]',
        '[[1,-2,2,-1,-3],"a",null]',  # a hole, undefined, NaN
        '[{"a":-6,"b":-4,"c":-5},0]',  # -0.0 and the infinities
        '[[1,1],{"shared":true}]',  # a reference to an object: the walk's
        '[{"self":0}]',  # a cycle: the walk's
        '[["Date","2024-01-01T00:00:00.000Z"]]',  # a typed entry
        "[[-7,3,0,1],5]",  # a sparse array
        '[{"a":9}]',  # out of range
        '[{"a":true}]',  # a bool is no reference
        '[{"a":1.0},2]',  # nor a float
        "[[-2.0,1],7]",  # a float hole, as the walk reads it
        '[{"a":-9}]',  # no such special
        '[[1],"x"]',
        '[{"args":1,"closureVars":-1,"thisVal":-1},[2],5]',  # a step's arguments: two levels
        '[{"a":1,"b":2},{"x":3},[3,-2,-1],"y"]',
        "[[1,1],[2],3]",  # the same array twice: the walk's
        "[[1],[0]]",  # a cycle through the first entry
        "[[1],[2],[3],4]",  # three levels deep
        '[[1],{"k":2},["Date","2024-01-01T00:00:00.000Z"]]',  # a typed entry one level down
        '[[1],{"k":9}]',  # out of range one level down
    ],
)
def test_the_shortcut_for_shallow_tables_is_the_walk(monkeypatch, table):
    """Most payloads are an object or array of scalars (or of such objects and arrays); they skip
    the general walk, which must not change a thing: the same value, of the same types, or the
    same error."""
    try:
        fast: object = devalue_parse(table)
    except ValueError as error:
        fast = ("error", str(error))
    walked = _walked(monkeypatch, table)
    assert repr(fast) == repr(walked)  # repr tells -0.0, NaN, undefined, bool and int apart


def test_the_shortcut_agrees_with_the_walk_on_every_sdk_case(monkeypatch):
    for name, raw in CASES.items():
        if raw[:4] != b"devl":
            continue
        text = raw[4:].decode()
        try:
            fast: object = devalue_parse(text)
        except ValueError as error:
            fast = ("error", str(error))
        assert repr(fast) == repr(_walked(monkeypatch, text)), name
