"""Where a run's spans go: its trace id and deterministic span ids.

If the run stored a W3C ``traceparent`` (the app runs OpenTelemetry), its spans join that trace
under the carrier's span, beside the SDK's own spans. Otherwise the trace id is the run's ULID
as 128 bits, so a run id alone finds its trace. Span ids hash (trace, run, entity): rebuilding a
log yields the same ids, which makes re-exporting harmless.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ulid import ULID

__all__ = ["parse_traceparent", "span_id_for", "trace_id_for"]


def parse_traceparent(run: Any) -> tuple[int, int] | None:
    carrier = ((run.execution_context or {}).get("traceCarrier") or {}) if run else {}
    value = carrier.get("traceparent") if isinstance(carrier, dict) else None
    if not isinstance(value, str):
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    try:
        trace_id, span_id = int(parts[1], 16), int(parts[2], 16)
    except ValueError:
        return None
    return (trace_id, span_id) if trace_id and span_id else None


def trace_id_for(run_id: str, run: Any = None) -> int:
    """The trace a run's spans join: its stored traceparent's, else its ULID's 128 bits."""
    carried = parse_traceparent(run)
    if carried:
        return carried[0]
    try:
        return int(ULID.from_str(run_id.removeprefix("wrun_"))) or 1
    except ValueError:  # 5.x tagged run ids are not strict ULIDs
        return int.from_bytes(hashlib.sha256(run_id.encode()).digest()[:16], "big") or 1


def span_id_for(trace_id: int, run_id: str, key: str) -> int:
    """A span id that depends only on (trace, run, entity key), never zero."""
    digest = hashlib.sha256(f"{trace_id:032x}/{run_id}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") or 1
