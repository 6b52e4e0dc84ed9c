"""Sentry envelopes, parsed without losing a byte: what the relay forwards and the dry-run reads.

An envelope is a JSON header line, then items (a JSON item header line and a payload, whose
length the header may give). Each item keeps its exact original bytes so a relay can forward
what it keeps unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

__all__ = ["BadEnvelope", "Item", "parse_envelope"]


class BadEnvelope(ValueError):
    pass


@dataclass
class Item:
    type: str
    payload: bytes
    raw: bytes  # header line + payload + newline, exactly as received


def parse_envelope(body: bytes) -> tuple[bytes, list[Item]]:
    """(envelope header line, items) of a Sentry envelope, keeping every item's original bytes."""
    header, sep, rest = body.partition(b"\n")
    try:
        json.loads(header or b"{}")
    except json.JSONDecodeError as error:
        raise BadEnvelope(f"envelope header is not JSON: {error}") from None
    items: list[Item] = []
    position = 0
    while position < len(rest):
        end = rest.find(b"\n", position)
        line = rest[position : end if end >= 0 else len(rest)]
        if not line.strip():
            position = (end + 1) if end >= 0 else len(rest)
            continue
        try:
            item_header = json.loads(line)
        except json.JSONDecodeError as error:
            raise BadEnvelope(f"item header is not JSON: {error}") from None
        start = (end + 1) if end >= 0 else len(rest)
        length = item_header.get("length")
        if isinstance(length, int):
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
        items.append(Item(type=str(item_header.get("type", "")), payload=payload, raw=rest[position:stop]))
        position = stop
    return header + sep, items
