"""telemetry/sentry_envelope.py: envelopes the real sentry-sdk writes, their variants, and broken ones."""

from __future__ import annotations

import io
import json

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from telemetry.sentry import classify, workflow_ids
from telemetry.sentry_envelope import MAX_EVENT_DEPTH, BadEnvelope, event_for_rules, parse_envelope

from .test_sentry import DIAG

# An attachment whose bytes look like envelope structure: only the declared length keeps it whole.
ATTACHMENT = b'first line\n{"type":"event","length":2}\n\n\nlast line without newline'


class _Capture(Transport):
    """Keeps what the SDK would send (no network)."""

    def __init__(self, options=None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)


@pytest.fixture(scope="module")
def sdk_envelope() -> Envelope:
    """A real envelope from sentry-sdk: an exception event with an attachment."""
    sentry_sdk.init(dsn="http://publickey@127.0.0.1:9/3", transport=_Capture, default_integrations=False)
    try:
        transport = sentry_sdk.get_client().transport
        with sentry_sdk.new_scope() as scope:
            scope.add_attachment(bytes=ATTACHMENT, filename="log.txt", content_type="text/plain")
            try:
                raise RuntimeError("a real failure\nwith a second line")
            except RuntimeError:
                sentry_sdk.capture_exception()
        sentry_sdk.flush(5)
        envelopes = list(transport.envelopes)
    finally:
        sentry_sdk.get_client().close()
        sentry_sdk.init()
    assert envelopes, "sentry-sdk sent nothing"
    return envelopes[0]


def _lines(body: bytes) -> list[bytes]:
    return body.split(b"\n")


def _sdk_items(body: bytes) -> list[tuple[str, object]]:
    """What sentry-sdk's own parser reads from ``body``: (type, JSON for events, bytes otherwise)."""
    envelope = Envelope.deserialize_from(io.BytesIO(body))
    return [
        (item.type, json.loads(item.get_bytes()) if item.type == "event" else item.get_bytes())
        for item in envelope.items
    ]


def _ours(body: bytes) -> list[tuple[str, object]]:
    _, items = parse_envelope(body)
    return [(item.type, json.loads(item.payload) if item.type == "event" else item.payload) for item in items]


def test_sdk_envelope_is_read_item_by_item_and_byte_for_byte(sdk_envelope):
    body = sdk_envelope.serialize()
    header, items = parse_envelope(body)
    assert header == _lines(body)[0] + b"\n"
    assert json.loads(header)["event_id"] == sdk_envelope.headers["event_id"]
    assert [i.type for i in items] == [i.type for i in sdk_envelope.items]
    assert {"event", "attachment"} <= {i.type for i in items}
    assert [i.payload for i in items] == [i.get_bytes() for i in sdk_envelope.items]
    attachment = next(i for i in items if i.type == "attachment")
    assert attachment.payload == ATTACHMENT  # newlines and header-like lines inside stay in the payload
    assert header + b"".join(i.raw for i in items) == body  # the relay can forward exactly what it got
    assert _ours(body) == _sdk_items(body)


def test_item_raw_is_header_line_payload_and_newline(sdk_envelope):
    body = sdk_envelope.serialize()
    _, items = parse_envelope(body)
    for item in items:
        head, _, rest = item.raw.partition(b"\n")
        assert json.loads(head)["length"] == len(item.payload)
        assert rest == item.payload + b"\n"


def _without_lengths(envelope: Envelope) -> bytes:
    """The same envelope with implicit lengths (payload up to the newline), as the protocol allows."""
    out = envelope.serialize().split(b"\n", 1)[0] + b"\n"
    for item in envelope.items:
        payload = item.get_bytes()
        assert b"\n" not in payload
        out += json.dumps({k: v for k, v in item.headers.items() if k != "length"}).encode() + b"\n" + payload + b"\n"
    return out


@pytest.fixture
def event_only(sdk_envelope) -> Envelope:
    return Envelope(headers=dict(sdk_envelope.headers), items=[i for i in sdk_envelope.items if i.type == "event"])


def test_newline_delimited_items(event_only):
    body = _without_lengths(event_only)
    header, items = parse_envelope(body)
    assert len(items) == 1 and items[0].type == "event"
    assert items[0].payload == event_only.items[0].get_bytes()
    assert header + b"".join(i.raw for i in items) == body
    assert _ours(body) == _sdk_items(body)


@pytest.mark.parametrize("lengths", [True, False], ids=["length", "newline"])
def test_missing_trailing_newline(event_only, lengths):
    body = event_only.serialize() if lengths else _without_lengths(event_only)
    assert body.endswith(b"\n")
    cut = body[:-1]
    header, items = parse_envelope(cut)
    assert len(items) == 1 and items[0].payload == event_only.items[0].get_bytes()
    assert items[0].raw == _lines(body)[1] + b"\n" + items[0].payload  # no newline invented
    assert header + b"".join(i.raw for i in items) == cut
    assert _ours(cut) == _sdk_items(cut)


def test_mixed_items_and_empty_payloads(sdk_envelope):
    event = next(i for i in sdk_envelope.items if i.type == "event").get_bytes()
    session = b'{"sid":"abc","status":"ok","errors":0}'
    body = (
        sdk_envelope.serialize().split(b"\n", 1)[0]
        + b"\n"
        + json.dumps({"type": "attachment", "length": 0}).encode()
        + b"\n\n"
        + json.dumps({"type": "event", "length": len(event)}).encode()
        + b"\n"
        + event
        + b"\n"
        + json.dumps({"type": "session"}).encode()
        + b"\n"
        + session
        + b"\n"
    )
    header, items = parse_envelope(body)
    assert [(i.type, i.payload) for i in items] == [("attachment", b""), ("event", event), ("session", session)]
    assert header + b"".join(i.raw for i in items) == body
    assert _ours(body) == _sdk_items(body)


def test_length_delimited_item_without_separating_newline(event_only):
    event = event_only.items[0].get_bytes()
    item = json.dumps({"type": "event", "length": len(event)}).encode() + b"\n" + event
    body = b"{}\n" + item + item + b"\n"  # no newline between the first payload and the second header
    _, items = parse_envelope(body)
    assert [i.payload for i in items] == [event, event]
    assert items[0].raw == item


def test_blank_lines_between_items_are_skipped(event_only):
    event = event_only.items[0].get_bytes()
    item = json.dumps({"type": "event"}).encode() + b"\n" + event + b"\n"
    _, items = parse_envelope(b"{}\n\n" + item + b"\n  \n" + item)
    assert [i.payload for i in items] == [event, event]


@pytest.mark.parametrize("body", [b'{"event_id":"0123"}', b'{"event_id":"0123"}\n', b"", b"\n"])
def test_header_only_envelopes_have_no_items(body):
    header, items = parse_envelope(body)
    assert items == [] and header.rstrip(b"\n") == body.rstrip(b"\n")


def test_item_type_is_a_string_even_when_absent_or_not_a_string():
    _, items = parse_envelope(b'{}\n{"length":1}\na\n{"type":5,"length":1}\nb\n')
    assert [(i.type, i.payload) for i in items] == [("", b"a"), ("5", b"b")]


@pytest.mark.parametrize(
    "body, message",
    [
        (b"not json\n", "envelope header is not JSON"),
        (b'{"event_id":\n', "envelope header is not JSON"),
        (b"{}\nnot json\npayload\n", "item header is not JSON"),
        (b'{}\n{"type":"event","length":50}\n{"short":1}\n', "shorter than its declared length"),
        (b'{}\n{"type":"event","length":3}\nab', "shorter than its declared length"),
    ],
)
def test_broken_envelopes_are_bad_envelope(body, message):
    with pytest.raises(BadEnvelope, match=message):
        parse_envelope(body)


def test_bad_envelope_is_a_value_error():
    assert issubclass(BadEnvelope, ValueError)


@pytest.mark.parametrize("item_header", [b"[]", b'"event"', b"5", b"null"])
def test_item_header_that_is_not_an_object(item_header):
    with pytest.raises(BadEnvelope):
        parse_envelope(b"{}\n" + item_header + b"\npayload\n")


def test_item_header_that_is_not_utf8():
    with pytest.raises(BadEnvelope):
        parse_envelope(b'{}\n{"type":"\xff\xfe"}\npayload\n')


@pytest.mark.parametrize("where", ["envelope", "item"])
def test_deeply_nested_header(where):
    nested = b"[" * 100_000
    body = nested + b"\n" if where == "envelope" else b"{}\n" + nested + b"\npayload\n"
    with pytest.raises(BadEnvelope):
        parse_envelope(body)


# ---- event_for_rules: odd shapes never reach the rules -------------------------------------------

RUN_ID = "wrun_01KQKXJQGJ78X9YSF34QG3GHFX"


@pytest.mark.parametrize(
    "field, value",
    [
        ("tags", 5),
        ("tags", [1, [2], ["a", "b", "c"], ["k", {"x": 1}]]),
        ("tags", {"workflow.run.id": ["not", "a", "string"]}),
        ("contexts", [1, 2]),
        ("contexts", {"trace": 5}),
        ("exception", 5),
        ("exception", {"values": 5}),
        ("exception", {"values": [5, None, {"stacktrace": 5, "mechanism": "x"}]}),
        ("exception", {"values": [{"stacktrace": {"frames": [5, {"function": {"x": 1}}]}}]}),
        ("logentry", 5),
        ("message", {"formatted": "x"}),
        ("breadcrumbs", {"values": 5}),
    ],
)
def test_odd_shapes_are_judged_without_raising(field, value):
    view = event_for_rules(json.dumps({"event_id": "e" * 32, field: value}).encode())
    assert view is not None
    classify(view)  # raised AttributeError/TypeError/ValueError before (the relay answered 500)
    run_id, _ = workflow_ids(view)
    assert run_id is None or isinstance(run_id, str)


def test_the_rules_still_see_what_can_be_read():
    legacy = {"exception": [{"type": "Error", "value": DIAG}], "tags": [["workflow.run.id", RUN_ID], [1]]}
    view = event_for_rules(json.dumps(legacy).encode())
    assert view is not None and classify(view) is not None  # the legacy list spelling is read
    assert workflow_ids(view)[0] == RUN_ID and view["tags"] == {"workflow.run.id": RUN_ID}


@pytest.mark.parametrize("payload", [b"", b"not json", b"[1]", b'"x"', b"\xff\xfe", b"[" * 100_000])
def test_what_is_not_an_object_is_not_judged(payload):
    assert event_for_rules(payload) is None


def test_an_event_deeper_than_the_limit_is_not_judged():
    nested: object = "bottom"
    for _ in range(MAX_EVENT_DEPTH):
        nested = [nested]
    assert event_for_rules(json.dumps({"extra": nested}).encode()) is None
    assert event_for_rules(json.dumps({"extra": nested[0]}).encode()) is not None


@pytest.mark.parametrize("length", [-1, True, 1.5, "3", 2**70, "DIGITS"])
def test_a_length_that_is_not_a_byte_count_is_bad(length):
    with pytest.raises(BadEnvelope):
        header = json.dumps({"type": "event", "length": length}).encode().replace(b'"DIGITS"', b"9" * 5000)
        parse_envelope(b"{}\n" + header + b"\nabc\n")
