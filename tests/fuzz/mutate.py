"""Structure-aware mutations of real bodies: OTLP protobuf (as messages), OTLP-JSON (as documents),
Sentry envelopes (header, item headers, event payloads), then a byte-level pass now and then.

Every mutator takes a ``random.Random`` and returns new bytes; the seed makes a run repeatable.
Values come from lists of the kinds that broke the collector before (times at and past 2^63,
non-finite doubles, ids of every wrong length, deep nesting, odd shapes of Sentry fields) and
random ones around them.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import math
import random
import re
import time
import zlib
from typing import Any

import brotli
import zstandard
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

NOW = time.time_ns()
TIMES = [0, 1, NOW, NOW - 1, NOW + 10**9, NOW + 2 * 3600 * 10**9, 2**53, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
ID_LENGTHS = [0, 1, 4, 7, 8, 9, 12, 15, 16, 17, 24, 32]
DOUBLES = [math.nan, math.inf, -math.inf, -0.0, 1e308, -1e308, 5e-324, 0.1]
INTS = [0, -1, 2**63 - 1, -(2**63), 2**31, -(2**31) - 1, 409, 503]
TEXTS = [
    "",
    "x",
    "wrun_01KQKXJQGJ78X9YSF34QG3GHFX",
    "ünïcödé ☃ 𝄞",
    "<script>alert(1)</script>",
    "'; DROP TABLE spans; --",
    '"quoted" \\ back\\slash',
    "NaN",
    "Infinity",
    "\x00nul\x01",
    "Stream write failed: HTTP 409 (PUT https://x/v2/runs/wrun_01KQKXJQGJ78X9YSF34QG3GHFX/stream/s):"
    ' {"message":"Run \\"wrun_01KQKXJQGJ78X9YSF34QG3GHFX\\" is already completed"}',
]
#: attributes the collector reads itself (run ids, summaries, the benign policy): worth aiming at
HOT_KEYS = [
    "workflow.run.id",
    "workflow.name",
    "workflow.span.kind",
    "workflow.run.status",
    "step.id",
    "error.type",
    "http.response.status_code",
    "http.request.method",
    "url.full",
    "workflow.stream.operation",
    "service.name",
    "exception.type",
    "exception.message",
]
ENUMS = [0, 1, 2, 3, 5, 6, 99, -1, 2**31 - 1, -(2**31)]


def deep(levels: int) -> str:
    """A placeholder ``dumps`` writes as ``levels`` nested arrays and objects (json.dumps itself
    recurses, and the point is nesting past what a recursive parser survives)."""
    return f"\x00deep:{levels}\x00"


def digits(count: int) -> str:
    """A placeholder ``dumps`` writes as a bare number of ``count`` digits (Python will not make one
    past 4,300 digits itself, nor read one back)."""
    return f"\x00digits:{count}\x00"


_DEEP = re.compile(rb'"\\u0000deep:(\d+)\\u0000"')
_DIGITS = re.compile(rb'"\\u0000digits:(\d+)\\u0000"')


def dumps(document: Any) -> bytes:
    def nested(match: re.Match[bytes]) -> bytes:
        levels = int(match.group(1))
        opening = b"".join(b"[" if i % 2 else b'{"k":' for i in range(levels))
        closing = b"".join(b"]" if i % 2 else b"}" for i in reversed(range(levels)))
        return opening + b'"bottom"' + closing

    text = _DEEP.sub(nested, json.dumps(document).encode())
    return _DIGITS.sub(lambda match: b"9" * int(match.group(1)), text)


def text(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.5:
        return rng.choice(TEXTS)
    if roll < 0.6:
        return "y" * rng.choice([1000, 65 * 1024, 70 * 1024])
    return "".join(
        chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0xD7FF)])) for _ in range(rng.randint(0, 40))
    )


# ---- OTLP protobuf --------------------------------------------------------------------------------


def any_value(rng: random.Random, depth: int = 0) -> AnyValue:
    roll = rng.random()
    if depth < 12 and roll < 0.15:
        if rng.random() < 0.5:
            return AnyValue(array_value={"values": [any_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]})
        return AnyValue(
            kvlist_value={
                "values": [KeyValue(key=text(rng), value=any_value(rng, depth + 1)) for _ in range(rng.randint(0, 3))]
            }
        )
    if roll < 0.2:
        return _deep(rng.choice([7, 8, 9, 20, 40]))
    if roll < 0.4:
        return AnyValue(double_value=rng.choice(DOUBLES + [rng.uniform(-1e9, 1e9)]))
    if roll < 0.55:
        return AnyValue(int_value=rng.choice(INTS + [rng.randint(-(2**63), 2**63 - 1)]))
    if roll < 0.6:
        return AnyValue(bool_value=rng.random() < 0.5)
    if roll < 0.65:
        return AnyValue(bytes_value=rng.randbytes(rng.choice([0, 3, 70 * 1024])))
    if roll < 0.68:
        return AnyValue()  # no value at all
    return AnyValue(string_value=text(rng))


def _deep(levels: int) -> AnyValue:
    value = AnyValue(string_value="bottom")
    for i in range(levels):
        value = (
            AnyValue(array_value={"values": [value]})
            if i % 2
            else AnyValue(kvlist_value={"values": [KeyValue(key="k", value=value)]})
        )
    return value


def _spans(request: ExportTraceServiceRequest) -> list[Span]:
    return [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def _attribute_lists(request: ExportTraceServiceRequest) -> list[Any]:
    lists: list[Any] = [rs.resource.attributes for rs in request.resource_spans]
    for span in _spans(request):
        lists.append(span.attributes)
        lists.extend(e.attributes for e in span.events)
        lists.extend(link.attributes for link in span.links)
    return lists


def _set(attributes: Any, key: str, value: AnyValue) -> None:
    for kv in attributes:
        if kv.key == key:
            kv.value.CopyFrom(value)
            return
    attributes.append(KeyValue(key=key, value=value))


def _op_ids(request: ExportTraceServiceRequest, rng: random.Random) -> None:
    span = rng.choice(_spans(request))
    field = rng.choice(["trace_id", "span_id", "parent_span_id", "link"])
    value = bytes(rng.choice(ID_LENGTHS)) if rng.random() < 0.3 else rng.randbytes(rng.choice(ID_LENGTHS))
    if field == "link":
        link = span.links.add()
        link.trace_id, link.span_id = (value, span.span_id) if rng.random() < 0.5 else (span.trace_id, value)
    else:
        setattr(span, field, value)


def _op_times(request: ExportTraceServiceRequest, rng: random.Random) -> None:
    span = rng.choice(_spans(request))
    roll = rng.random()
    if roll < 0.4:
        span.start_time_unix_nano = rng.choice(TIMES)
    elif roll < 0.7:
        span.end_time_unix_nano = rng.choice(TIMES + [max(span.start_time_unix_nano - 1, 0)])
    elif roll < 0.85:
        span.start_time_unix_nano, span.end_time_unix_nano = span.end_time_unix_nano, span.start_time_unix_nano
    else:
        event = span.events.add()
        event.name = text(rng)
        event.time_unix_nano = rng.choice(TIMES)


def _op_attribute(request: ExportTraceServiceRequest, rng: random.Random) -> None:
    target = rng.choice(_attribute_lists(request))
    key = rng.choice(HOT_KEYS) if rng.random() < 0.5 else text(rng)
    _set(target, key, any_value(rng))


def _op_many(request: ExportTraceServiceRequest, rng: random.Random) -> None:
    span = rng.choice(_spans(request))
    count = rng.choice([127, 128, 129, 300])
    what = rng.choice(["attributes", "events", "links", "resource"])
    if what == "attributes":
        span.attributes.extend(KeyValue(key=f"k{i}", value=AnyValue(int_value=i)) for i in range(count))
    elif what == "events":
        for i in range(count):
            span.events.add(name=f"e{i}", time_unix_nano=span.start_time_unix_nano)
    elif what == "links":
        for _ in range(count):
            span.links.add(trace_id=span.trace_id, span_id=span.span_id)
    else:
        request.resource_spans[0].resource.attributes.extend(
            KeyValue(key=f"r{i}", value=AnyValue(string_value="v")) for i in range(count)
        )


def _op_fields(request: ExportTraceServiceRequest, rng: random.Random) -> None:
    span = rng.choice(_spans(request))
    roll = rng.random()
    if roll < 0.25:
        span.name = text(rng)
    elif roll < 0.45:
        span.kind = rng.choice(ENUMS)  # open enums take any int32
    elif roll < 0.65:
        span.status.code = rng.choice(ENUMS)
        span.status.message = text(rng)
    elif roll < 0.8:
        request.resource_spans[0].scope_spans[0].scope.name = text(rng)
    else:
        span.trace_state = text(rng)


def _op_structure(request: ExportTraceServiceRequest, rng: random.Random) -> None:
    roll = rng.random()
    spans = _spans(request)
    if roll < 0.3:  # the same span twice, or a sibling with the same ids
        request.resource_spans[0].scope_spans[0].spans.append(copy.deepcopy(rng.choice(spans)))
    elif roll < 0.5:
        del request.resource_spans[0].scope_spans[0].spans[:]
    elif roll < 0.7:
        request.resource_spans.add()  # an empty resource
    else:
        scope_spans = request.resource_spans[0].scope_spans.add()
        scope_spans.spans.append(copy.deepcopy(rng.choice(spans)))


OTLP_OPS = [_op_ids, _op_times, _op_attribute, _op_attribute, _op_many, _op_fields, _op_structure]


def mutate_otlp(seed: bytes, rng: random.Random) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(seed)
    for _ in range(rng.randint(1, 4)):
        if not _spans(request):
            break
        try:
            rng.choice(OTLP_OPS)(request, rng)
        except DecodeError:  # deepcopy of a span nested past protobuf's own depth limit
            pass
    return request


# ---- OTLP-JSON -----------------------------------------------------------------------------------


def json_value(rng: random.Random, depth: int = 0) -> Any:
    roll = rng.random()
    if depth < 6 and roll < 0.15:
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if depth < 6 and roll < 0.3:
        return {text(rng): json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return rng.choice(
        [
            None,
            True,
            0,
            -1,
            2**63,
            2**64,
            -(2**63) - 1,
            10**30,
            1.5,
            1e308,
            "NaN",
            "Infinity",
            "-Infinity",
            "18446744073709551615",
            digits(5000),
            "9223372036854775808",
            "-5",
            "1e3",
            "SPAN_KIND_SERVER",
            "STATUS_CODE_ERROR",
            "FOO",
            "00" * 16,
            "zz" * 8,
            base64.b64encode(b"x" * 9).decode(),
            text(rng),
            [],
            {},
        ]
    )


def _nodes(document: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in the document."""
    found: list[tuple[Any, Any]] = []
    stack = [document]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, value in items:
            found.append((node, key))
            if isinstance(value, dict | list):
                stack.append(value)
    return found


def mutate_json_document(document: Any, rng: random.Random) -> Any:
    document = copy.deepcopy(document)
    for _ in range(rng.randint(1, 4)):
        nodes = _nodes(document)
        if not nodes:
            break
        container, key = rng.choice(nodes)
        roll = rng.random()
        if roll < 0.6:
            container[key] = json_value(rng)
        elif roll < 0.7:
            container[key] = deep(rng.choice([10, 100, 900, 5000]))
        elif roll < 0.8 and isinstance(container, dict):
            del container[key]
        elif roll < 0.9 and isinstance(container, dict) and key in ("doubleValue", "intValue", "startTimeUnixNano"):
            container[key] = rng.choice(["NaN", "Infinity", "-Infinity", "9223372036854775808", 2**63, -1])
        else:
            value = container[key]
            if isinstance(value, list) and value:
                value.extend(copy.deepcopy(value) for _ in range(rng.randint(1, 3)))
    return document


def mutate_otlp_json(seed: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.5:  # through the message: the protobuf mutations, written as OTLP-JSON
        from .corpus import otlp_json

        try:
            return otlp_json(mutate_otlp(_protobuf_of(seed), rng).SerializeToString())
        except (ValueError, RecursionError, DecodeError):  # nested past what protobuf parses back
            pass
    return dumps(mutate_json_document(json.loads(seed), rng))


def _protobuf_of(json_body: bytes) -> bytes:
    from collector.otlp import JSON, decode_request

    return bytes(decode_request(json_body, JSON).SerializeToString())


# ---- Sentry envelopes ------------------------------------------------------------------------------

SENTRY_SHAPES: dict[str, list[Any]] = {
    "tags": [
        5,
        "x",
        [1, 2],
        [[1]],
        [["a", {}]],
        [["workflow.run.id", ["x"]]],
        {"workflow.run.id": {"nested": 1}},
        {"workflow.run.id": "wrun_" + "Z" * 26},
        {"workflow.run.id": "\ud800"},
        {"workflow.run.id": "r" * 10000},
        {"workflow.conflict": "benign"},
        None,
    ],
    "contexts": [5, [1], "x", {"trace": 5}, {"workflow": {"run_id": [1, {"x": None}]}}, None],
    "exception": [
        5,
        "x",
        [],
        [{"type": "Error", "value": "legacy list"}],
        {"values": 5},
        {"values": [5, "x", None]},
        {"values": [{"stacktrace": 5}]},
        {"values": [{"stacktrace": {"frames": 5}}]},
        {"values": [{"stacktrace": {"frames": [5, {"function": {"x": 1}}]}}]},
        {"values": [{"mechanism": 5, "type": ["x"], "value": {"y": 2}}]},
        {"values": [{"type": "EntityConflictError", "value": "Tried completing step, but step has already finished"}]},
    ],
    "message": [5, {"formatted": "x"}, ["x"], None],
    "logentry": [5, "x", {"formatted": 5, "message": ["x"]}],
    "event_id": [5, {"x": 1}, "e" * 1000, None, digits(5000)],
    "extra": [5, "x", {"deep": None}],
    "breadcrumbs": [5, {"values": 5}, {"values": [5]}],
}


def _envelope_parts(body: bytes) -> tuple[bytes, list[tuple[dict[str, Any], bytes]]]:
    from telemetry.sentry_envelope import parse_envelope

    header, items = parse_envelope(body)
    return header.rstrip(b"\n"), [(json.loads(i.raw.split(b"\n", 1)[0]), i.payload) for i in items]


def mutate_envelope(seed: bytes, rng: random.Random) -> bytes:
    header, items = _envelope_parts(seed)
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.1:  # the envelope header
            header = rng.choice(
                [
                    b"[1]",
                    b"5",
                    b"null",
                    b'"x"',
                    b"\xff\xfe",
                    dumps(deep(rng.choice([9, 50, 3000]))),
                    dumps({"event_id": digits(5000)}),
                    b"",
                ]
            )
        elif roll < 0.55 and items:  # an event payload's shapes
            index = rng.randrange(len(items))
            item_header, payload = items[index]
            try:
                event = json.loads(payload)
            except (ValueError, RecursionError):
                event = {}
            if not isinstance(event, dict):
                event = {}
            field = rng.choice(list(SENTRY_SHAPES))
            event[field] = rng.choice(SENTRY_SHAPES[field])
            if rng.random() < 0.2:
                event["extra"] = {"deep": deep(rng.choice([62, 63, 64, 500]))}
            if rng.random() < 0.3:
                event["exception"] = {"values": [{"type": "Error", "value": rng.choice(TEXTS)}]}
            new = dumps(event)
            item_header = {**item_header, "type": "event"}
            if "length" in item_header:
                item_header["length"] = len(new)
            items[index] = (item_header, new)
        elif roll < 0.8 and items:  # an item header
            index = rng.randrange(len(items))
            item_header, payload = items[index]
            item_header = dict(item_header)
            key = rng.choice(["length", "type", "content_type", "filename"])
            item_header[key] = rng.choice(
                [
                    len(payload) - 1,
                    len(payload) + 1,
                    -1,
                    2**70,
                    True,
                    1.5,
                    "10",
                    None,
                    0,
                    "event",
                    5,
                    [],
                    {},
                    digits(5000),
                ]
            )
            items[index] = (item_header, payload)
        elif roll < 0.9 and items:  # a payload that is not what it says
            index = rng.randrange(len(items))
            item_header, _ = items[index]
            payload = rng.choice([b"", b"not json", b"[1,2]", b"\xff\xfe", b"{", dumps(deep(2000))])
            items[index] = (
                {**item_header, "length": len(payload)} if "length" in item_header else item_header,
                payload,
            )
        else:  # more of the same, or fewer
            if items and rng.random() < 0.5:
                items.append(rng.choice(items))
            elif items:
                items.pop(rng.randrange(len(items)))
    out = header + b"\n"
    for item_header, payload in items:
        out += dumps(item_header) + b"\n" + payload + b"\n"
    return out


def mutate_event(seed_envelope: bytes, rng: random.Random) -> bytes:
    """A body for the legacy ``/store/`` endpoint: one event, its shapes mutated."""
    _, items = _envelope_parts(seed_envelope)
    events = [json.loads(p) for h, p in items if h.get("type") == "event"] or [{}]
    event = rng.choice(events)
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(list(SENTRY_SHAPES))
        event[field] = rng.choice(SENTRY_SHAPES[field])
    return dumps(event)


# ---- bytes and HTTP ---------------------------------------------------------------------------------


def mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    """A few blind edits: flips, cuts, inserts, splices of the body itself."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if not out:
            out += rng.randbytes(rng.randint(1, 16))
        elif roll < 0.35:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif roll < 0.55:
            del out[rng.randrange(len(out)) :]
        elif roll < 0.75:
            at = rng.randrange(len(out))
            out[at:at] = rng.choice([b"\x00", b"\xff", b"NaN", b"[", b"{", b"\n", rng.randbytes(rng.randint(1, 8))])
        else:
            start = rng.randrange(len(out))
            out[start:start] = out[start : start + rng.randint(1, 64)]
    return bytes(out)


_CODINGS = [(gzip.compress, "gzip"), (brotli.compress, "br"), (zstandard.compress, "zstd")]


def encode(body: bytes, rng: random.Random) -> tuple[bytes, dict[str, str]]:
    """The body with a Content-Encoding, sometimes a lie about it."""
    roll = rng.random()
    if roll < 0.55:
        return body, {}
    if roll < 0.7:
        return gzip.compress(body), {"Content-Encoding": "gzip"}
    if roll < 0.78:
        half = len(body) // 2
        return gzip.compress(body[:half]) + gzip.compress(body[half:]), {"Content-Encoding": "gzip"}
    if roll < 0.81:
        return zlib.compress(body), {"Content-Encoding": "deflate"}
    if roll < 0.84:
        return brotli.compress(body), {"Content-Encoding": "br"}
    if roll < 0.87:
        return zstandard.compress(body), {"Content-Encoding": "zstd"}
    if roll < 0.9:
        compress, encoding = rng.choice(
            [(gzip.compress, "gzip"), (brotli.compress, "br"), (zstandard.compress, "zstd")]
        )
        return compress(body)[: rng.randint(0, 40)], {"Content-Encoding": encoding}
    if roll < 0.95:
        return body, {"Content-Encoding": rng.choice(["gzip", "deflate", "br", "zstd", "x-nonsense", "GZIP"])}
    compress, encoding = rng.choice(_CODINGS)
    return compress(body) + rng.randbytes(4), {"Content-Encoding": encoding}
