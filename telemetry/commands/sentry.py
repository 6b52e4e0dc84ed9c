"""``wft sentry dry-run FILE``: which of your own recent events the rules would drop, and why."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

from ..sentry import RULES, classify
from ..sentry_envelope import BadEnvelope, parse_envelope
from .common import CliError, Handler


def _events(text: bytes) -> Iterator[dict[str, Any]]:
    """JSON lines of events, or one or more raw envelopes (detected by their item headers)."""
    lines = [line for line in text.split(b"\n") if line.strip()]
    if len(lines) >= 2:
        try:
            second = json.loads(lines[1])
        except json.JSONDecodeError:
            second = None
        if isinstance(second, dict) and "type" in second and "event_id" not in second:
            try:
                _, items = parse_envelope(text)
            except BadEnvelope as error:
                raise CliError(f"not a Sentry envelope: {error}") from None
            for number, item in enumerate(items, 1):
                if item.type == "event":
                    try:
                        event = json.loads(item.payload)
                    except (json.JSONDecodeError, UnicodeDecodeError):
                        raise CliError(f"envelope item {number}: event is not JSON") from None
                    if isinstance(event, dict):
                        yield event
            return
    for number, line in enumerate(lines, 1):
        try:
            event = json.loads(line)
        except json.JSONDecodeError as error:
            raise CliError(f"line {number}: not JSON ({error.msg})") from None
        except UnicodeDecodeError:
            raise CliError(f"line {number}: not UTF-8") from None
        if isinstance(event, dict):
            yield event


def _describe(event: dict[str, Any]) -> str:
    values = ((event.get("exception") or {}).get("values")) or []
    if values:
        text = f"{values[-1].get('type', '')}: {values[-1].get('value', '')}"
    else:
        logentry = event.get("logentry") or {}
        text = str(logentry.get("formatted") or logentry.get("message") or event.get("message") or "")
    return text.replace("\n", " ")[:120]


def configure(parser: argparse.ArgumentParser) -> Handler:
    sub = parser.add_subparsers(dest="sentry_command", metavar="COMMAND", required=True)
    dry = sub.add_parser("dry-run", help="print kept/dropped and the rule for each event in FILE, then totals")
    dry.add_argument("file", help="JSON lines of Sentry events, or raw envelopes ('-' for stdin)")
    sub.add_parser("rules", help="list the rules")

    def handle(args: argparse.Namespace) -> int:
        if args.sentry_command == "rules":
            for listed in RULES:
                print(f"{listed.id:26} {listed.reason}")
            return 0
        try:
            data = sys.stdin.buffer.read() if args.file == "-" else open(args.file, "rb").read()
        except OSError as error:
            raise CliError(f"cannot read {args.file}: {error.strerror}") from None
        totals: Counter[str] = Counter()
        kept = 0
        for event in _events(data):
            rule = classify(event)
            event_id = str(event.get("event_id") or "-")[:32]
            if rule:
                totals[rule.id] += 1
                print(f"dropped  {rule.id:26} {event_id:32}  {_describe(event)}")
            else:
                kept += 1
                print(f"kept     {'':26} {event_id:32}  {_describe(event)}")
        dropped = sum(totals.values())
        by_rule = ", ".join(f"{k} {v}" for k, v in sorted(totals.items()))
        print(f"{kept + dropped} events: {kept} kept, {dropped} dropped" + (f" ({by_rule})" if by_rule else ""))
        return 0

    return handle
