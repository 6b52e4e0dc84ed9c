"""Edge validation of OTLP spans: what a span must be for the store to keep it, and what it may carry.

Every span is checked here before anything reaches the writer, so one client's odd span can
neither fail a group commit nor break a page later. The rules (README, "Bad input"):

- **Refused** (counted in ``partial_success``, its siblings stored): a trace id that is not 16
  bytes or is all zero, a span id that is not 8 bytes or is all zero, a parent or link id of the
  wrong length; a start time of 0 or one more than ``MAX_CLOCK_SKEW_NS`` ahead of the collector's
  clock (2^63 ns and beyond included: such a span would pin its run to the top of the runs list
  for good); an end before the start or past the same bound; an event time at or past 2^63 ns; a
  value nested deeper than ``MAX_DEPTH``; a ``workflow.run.id`` longer than ``MAX_RUN_ID_LENGTH``; all
  the spans of a resource whose ``service.name`` is not a string. Clamping any of these would store
  a time, an id or a key the client never sent.
- **Kept, cut like the OTel SDK cuts** (and marked with ``LIMITED``): attributes, events and links
  past the SDK's default count limits are dropped, strings and bytes past ``MAX_VALUE_LENGTH``
  are truncated. A conforming SDK never sends more; the marks say what was cut.
- **NaN and ±Infinity doubles** are kept as the strings ``"NaN"``, ``"Infinity"`` and
  ``"-Infinity"``, as the OTLP-JSON mapping writes them, so the store and the API hold strict JSON.
"""

from __future__ import annotations

import base64
import math
from typing import Any

from telemetry.semconv import WORKFLOW_RUN_ID

__all__ = [
    "ATTRIBUTE_COUNT_LIMIT",
    "EVENT_ATTRIBUTE_COUNT_LIMIT",
    "EVENT_COUNT_LIMIT",
    "LIMITED",
    "LINK_ATTRIBUTE_COUNT_LIMIT",
    "LINK_COUNT_LIMIT",
    "MAX_CLOCK_SKEW_NS",
    "MAX_DEPTH",
    "MAX_RUN_ID_LENGTH",
    "MAX_TIME_NS",
    "MAX_VALUE_LENGTH",
    "Invalid",
    "SpanLimiter",
    "check_ids",
    "check_resource",
    "check_run_id",
    "check_times",
    "json_double",
]

#: ``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` / ``OTEL_ATTRIBUTE_COUNT_LIMIT``: the SDK's default (also resources)
ATTRIBUTE_COUNT_LIMIT = 128
#: ``OTEL_SPAN_EVENT_COUNT_LIMIT``: the SDK's default
EVENT_COUNT_LIMIT = 128
#: ``OTEL_SPAN_LINK_COUNT_LIMIT``: the SDK's default
LINK_COUNT_LIMIT = 128
#: ``OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT``: the SDK's default
EVENT_ATTRIBUTE_COUNT_LIMIT = 128
#: ``OTEL_LINK_ATTRIBUTE_COUNT_LIMIT``: the SDK's default
LINK_ATTRIBUTE_COUNT_LIMIT = 128
#: ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` has no default in the SDK; ours bounds what one value costs a page
#: (characters of a string, bytes of a bytes value, entries of an array or map; keys, names and messages too)
MAX_VALUE_LENGTH = 64 * 1024
#: nesting of array and map values (the SDK's span attributes are flat: arrays of scalars are depth 2)
MAX_DEPTH = 8
#: a run id is a key the runs list, the pages' URLs and the API's paths carry (the SDK's are 31 characters)
MAX_RUN_ID_LENGTH = 256
#: the largest time SQLite's signed 64-bit integers hold
MAX_TIME_NS = 2**63 - 1
#: how far ahead of the collector's clock a span may start or end (clients' clocks drift; years do not)
MAX_CLOCK_SKEW_NS = 3600 * 10**9
#: the attribute that says what the limits cut from a span, e.g. ``"attributes=3 values=1"``
LIMITED = "wft.limits.truncated"

_NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}


class Invalid(ValueError):
    """A span the store does not take; the message is the reason ``partial_success`` gives."""


def json_double(value: float) -> float | str:
    """A double as strict JSON holds it: NaN and ±Infinity as the OTLP-JSON mapping's strings."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else _NON_FINITE[value]


def check_ids(span: Any) -> None:
    """``span``: a protobuf ``Span``. Raises ``Invalid`` for ids of the wrong length or all zero."""
    if len(span.trace_id) != 16 or span.trace_id == bytes(16):
        raise Invalid("invalid trace id")
    if len(span.span_id) != 8 or span.span_id == bytes(8):
        raise Invalid("invalid span id")
    if span.parent_span_id and len(span.parent_span_id) != 8:
        raise Invalid("invalid parent span id")
    for link in span.links:
        if len(link.trace_id) != 16 or len(link.span_id) != 8:
            raise Invalid("invalid link id")


def check_resource(resource: dict[str, Any]) -> None:
    """Raises ``Invalid`` when ``service.name``, which the store keeps in a column of its own, is not a string."""
    name = resource.get("service.name")
    if name is not None and not isinstance(name, str):
        raise Invalid("service.name is not a string")


def check_run_id(attributes: dict[str, Any]) -> None:
    """Raises ``Invalid`` for a ``workflow.run.id`` too long to be a run's key (and its page's URL)."""
    run_id = attributes.get(WORKFLOW_RUN_ID)
    if isinstance(run_id, str) and len(run_id) > MAX_RUN_ID_LENGTH:
        raise Invalid(f"{WORKFLOW_RUN_ID} longer than {MAX_RUN_ID_LENGTH} characters")


def check_times(span: Any, now_ns: int) -> None:
    """Raises ``Invalid`` unless 0 < start <= end <= now + skew (and every event time fits 64 bits)."""
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    latest = min(now_ns + MAX_CLOCK_SKEW_NS, MAX_TIME_NS)
    if start == 0:
        raise Invalid("start time missing")
    if start > latest:
        raise Invalid("start time too far in the future")
    if end < start:
        raise Invalid("end time before start time")
    if end > latest:
        raise Invalid("end time too far in the future")
    for event in span.events:
        if event.time_unix_nano > MAX_TIME_NS:
            raise Invalid("event time out of range")


class SpanLimiter:
    """Converts one span's (or resource's) protobuf values to JSON values within the limits,
    counting what it cut; ``Invalid`` for values nested deeper than ``MAX_DEPTH``."""

    __slots__ = ("attributes_dropped", "events_dropped", "links_dropped", "values_truncated")

    def __init__(self) -> None:
        self.attributes_dropped = 0
        self.events_dropped = 0
        self.links_dropped = 0
        self.values_truncated = 0

    def summary(self) -> str:
        """What was cut, as ``LIMITED``'s value ("" when nothing)."""
        if not (self.attributes_dropped or self.events_dropped or self.links_dropped or self.values_truncated):
            return ""
        parts = [
            f"{name}={count}"
            for name, count in (
                ("attributes", self.attributes_dropped),
                ("events", self.events_dropped),
                ("links", self.links_dropped),
                ("values", self.values_truncated),
            )
            if count
        ]
        return " ".join(parts)

    def text(self, value: str) -> str:
        if len(value) <= MAX_VALUE_LENGTH:
            return value
        self.values_truncated += 1
        return value[:MAX_VALUE_LENGTH]

    def attributes(self, items: Any, limit: int = ATTRIBUTE_COUNT_LIMIT) -> dict[str, Any]:
        """``items``: repeated ``KeyValue``. The first ``limit`` are kept, as the SDK keeps them."""
        if len(items) > limit:
            self.attributes_dropped += len(items) - limit
            items = items[:limit]
        # the common values (short strings, ints: nearly all of a workflow span's) inline; the rest,
        # and anything to cut, through ``value``/``text`` (this loop is most of an ingested span's cost)
        out: dict[str, Any] = {}
        for kv in items:
            key = kv.key
            if len(key) > MAX_VALUE_LENGTH:
                key = self.text(key)
            v = kv.value
            kind = v.WhichOneof("value")
            if kind == "string_value":
                s = v.string_value
                out[key] = s if len(s) <= MAX_VALUE_LENGTH else self.text(s)
            elif kind == "int_value":
                out[key] = v.int_value
            else:
                out[key] = self.value(v, 1)
        return out

    def value(self, v: Any, depth: int = 1) -> Any:
        """One ``AnyValue`` at nesting ``depth`` (an attribute's own value is depth 1)."""
        kind = v.WhichOneof("value")
        if kind == "string_value":
            return self.text(v.string_value)
        if kind == "int_value" or kind == "bool_value":
            return getattr(v, kind)
        if kind == "double_value":
            return json_double(v.double_value)
        if kind == "bytes_value":
            raw = v.bytes_value
            if len(raw) > MAX_VALUE_LENGTH:
                self.values_truncated += 1
                raw = raw[:MAX_VALUE_LENGTH]
            return base64.b64encode(raw).decode()
        if kind is None:
            return None
        if depth >= MAX_DEPTH:
            raise Invalid(f"attribute value nested deeper than {MAX_DEPTH} levels")
        entries = v.array_value.values if kind == "array_value" else v.kvlist_value.values
        if len(entries) > MAX_VALUE_LENGTH:
            self.values_truncated += 1
            entries = entries[:MAX_VALUE_LENGTH]
        if kind == "array_value":
            return [self.value(x, depth + 1) for x in entries]
        return {self.text(kv.key): self.value(kv.value, depth + 1) for kv in entries}
