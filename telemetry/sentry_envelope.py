"""Sentry envelopes, parsed without losing a byte: what the relay forwards and the dry-run reads.

An envelope is a JSON header line, then items (a JSON item header line and a payload, whose
length the header may give). Each item keeps its exact original bytes so a relay can forward
what it keeps unchanged.

Whatever a client sends, the result is either the envelope or ``BadEnvelope`` with the reason:
headers must be UTF-8 JSON objects no deeper than ``MAX_HEADER_DEPTH``, a ``length`` a whole
number that fits. ``event_for_rules`` gives an event payload in the shapes the rules read
(``telemetry.sentry``), or None when it is not a JSON object the rules can judge.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["BadEnvelope", "Item", "MAX_EVENT_DEPTH", "MAX_HEADER_DEPTH", "event_for_rules", "parse_envelope"]

#: headers are flat in every Sentry SDK; a little room, no more (deeper ones are refused)
MAX_HEADER_DEPTH = 8
#: deeper events are not judged (they are passed on as they are); Sentry itself trims far less deep
MAX_EVENT_DEPTH = 64


class BadEnvelope(ValueError):
    pass


@dataclass
class Item:
    type: str
    payload: bytes
    raw: bytes  # header line + payload + newline, exactly as received
    header: Mapping[str, Any] | None = None  # the item header, parsed


def _object(line: bytes, what: str) -> dict[str, Any]:
    """A header line as a JSON object, or ``BadEnvelope`` saying why not."""
    try:
        value = json.loads(line)
    except UnicodeDecodeError:
        raise BadEnvelope(f"{what} is not UTF-8") from None
    except ValueError as error:  # not JSON, or a number of more digits than Python converts
        raise BadEnvelope(f"{what} is not JSON: {str(error)[:200]}") from None
    except RecursionError:
        raise BadEnvelope(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise BadEnvelope(f"{what} is not a JSON object")
    if _depth(value, MAX_HEADER_DEPTH) > MAX_HEADER_DEPTH:
        raise BadEnvelope(f"{what} is nested deeper than {MAX_HEADER_DEPTH} levels")
    return value


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value (a scalar is 0), counted up to ``limit + 1``; a loop, not recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level) for child in children if isinstance(child, dict | list))
    return deepest


def parse_envelope(body: bytes) -> tuple[bytes, list[Item]]:
    """(envelope header line, items) of a Sentry envelope, keeping every item's original bytes."""
    header, sep, rest = body.partition(b"\n")
    if header:
        _object(header, "envelope header")
    items: list[Item] = []
    position = 0
    while position < len(rest):
        end = rest.find(b"\n", position)
        line = rest[position : end if end >= 0 else len(rest)]
        if not line.strip():
            position = (end + 1) if end >= 0 else len(rest)
            continue
        item_header = _object(line, "item header")
        start = (end + 1) if end >= 0 else len(rest)
        length = item_header.get("length")
        if length is not None and (not isinstance(length, int) or isinstance(length, bool) or length < 0):
            raise BadEnvelope(f"item length {str(length)[:40]!r} is not a whole number of bytes")
        if length is not None:
            payload = rest[start : start + length]
            if len(payload) != length:
                raise BadEnvelope("item shorter than its declared length")
            stop = start + length
        else:
            newline = rest.find(b"\n", start)
            stop = newline if newline >= 0 else len(rest)
            payload = rest[start:stop]
        if stop < len(rest) and rest[stop : stop + 1] == b"\n":
            stop += 1
        kind = str(item_header.get("type", ""))
        items.append(Item(type=kind, payload=payload, raw=rest[position:stop], header=item_header))
        position = stop
    return header + sep, items


def event_for_rules(payload: bytes | Mapping[str, Any]) -> dict[str, Any] | None:
    """An event (its JSON payload, or already parsed) in the shapes the rules read, or None when it
    cannot be judged (not a JSON object, or nested deeper than ``MAX_EVENT_DEPTH``).

    Sentry's protocol allows more than one spelling and clients send odd ones (``"tags": 5``): the
    rules see ``tags`` as a mapping of strings (from an object or ``[[key, value], …]`` pairs),
    ``exception`` as ``{"values": [objects]}`` (a bare list is the legacy spelling), each with
    ``stacktrace.frames`` a list of objects and ``mechanism`` an object, ``logentry`` an object.
    Fields of the wrong shape are left out of this view; the event itself is forwarded as it was.
    """
    if isinstance(payload, Mapping):
        event: Any = dict(payload)
    else:
        try:
            event = json.loads(payload)
        except (ValueError, RecursionError):  # not UTF-8 or not JSON (json's errors are ValueErrors)
            return None
    if not isinstance(event, dict) or _depth(event, MAX_EVENT_DEPTH) > MAX_EVENT_DEPTH:
        return None
    view = dict(event)
    view["tags"] = _tags(event.get("tags"))
    view["exception"] = {"values": _exceptions(event.get("exception"))}
    logentry = event.get("logentry")
    view["logentry"] = logentry if isinstance(logentry, dict) else {}
    if not isinstance(event.get("message"), str | type(None)):
        view["message"] = json.dumps(event["message"])[:1000]
    return view


def _tags(tags: Any) -> dict[str, str]:
    pairs: Any
    if isinstance(tags, dict):
        pairs = tags.items()
    elif isinstance(tags, list):
        pairs = (p for p in tags if isinstance(p, list) and len(p) == 2)
    else:
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in pairs if _scalar(k) and _scalar(v)}


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def _exceptions(exception: Any) -> list[dict[str, Any]]:
    values = exception.get("values") if isinstance(exception, dict) else exception
    if not isinstance(values, list):
        return []
    out = []
    for value in values:
        if not isinstance(value, dict):
            continue
        value = dict(value)
        stacktrace = value.get("stacktrace")
        frames = stacktrace.get("frames") if isinstance(stacktrace, dict) else None
        value["stacktrace"] = {"frames": [f for f in frames if isinstance(f, dict)] if isinstance(frames, list) else []}
        if not isinstance(value.get("mechanism"), dict):
            value["mechanism"] = {}
        out.append(value)
    return out
