"""A run's waterfall in the compact form the run page draws: one row per run, step, sleep and
hook (attempts are segments of their step's row, hook receipts are marks), the SDK's own spans
beside them. Compact on purpose: a 10,000-step run is a few MB, not tens."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from .queries import STITCHED, run_json, sentry_drops

__all__ = ["waterfall"]

_KIND = (("run ", "run"), ("step ", "step"), ("attempt ", "attempt"), ("sleep", "sleep"), ("hook ", "hook"))


def _kind(name: str) -> str | None:
    for prefix, kind in _KIND:
        if name.startswith(prefix):
            return kind
    return None


def waterfall(conn: sqlite3.Connection, run_id: str) -> dict[str, Any] | None:
    run = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if run is None:
        return None
    spans = conn.execute(
        "SELECT trace_id, span_id, parent_span_id, name, start_ns, end_ns, status_code, status_message, source, benign,"
        " json_extract(attributes, '$.\"step.attempt\"') AS attempt, json_extract(attributes, '$.\"step.status\"') AS step_status,"
        f" events FROM spans WHERE {STITCHED} ORDER BY start_ns, span_id",
        (run_id, run_id),
    ).fetchall()
    t0 = min((s["start_ns"] for s in spans), default=run["start_ns"] or 0)

    def ms(ns: int) -> float:
        return round((ns - t0) / 1e6, 3)

    rows: list[dict[str, Any]] = []
    by_id: dict[str, dict[str, Any]] = {}
    attempts: list[Any] = []
    sdk: list[dict[str, Any]] = []
    depth: dict[str, int] = {}
    for s in spans:
        kind = _kind(s["name"]) if s["source"] == "world" else None
        if kind == "attempt":
            attempts.append(s)
            continue
        if kind is None:
            d = depth.get(s["parent_span_id"], -1) + 1 if s["parent_span_id"] else 0
            depth[s["span_id"]] = d
            sdk.append(
                {
                    "id": s["span_id"],
                    "trace": s["trace_id"],
                    "name": s["name"],
                    "s": ms(s["start_ns"]),
                    "d": round((s["end_ns"] - s["start_ns"]) / 1e6, 3),
                    "status": s["status_code"],
                    "benign": bool(s["benign"]),
                    "depth": d,
                }
            )
            continue
        row = {
            "id": s["span_id"],
            "trace": s["trace_id"],
            "kind": kind,
            "name": s["name"],
            "s": ms(s["start_ns"]),
            "d": round((s["end_ns"] - s["start_ns"]) / 1e6, 3),
            "status": s["status_code"],
            "benign": bool(s["benign"]),
            "segments": [],
        }
        if kind == "step":
            row["attempts"] = s["attempt"]
            row["stepStatus"] = s["step_status"]
        if kind == "hook":
            row["marks"] = [
                {"t": ms(e["time_ns"]), "name": e["name"]}
                for e in json.loads(s["events"])
                if e["name"] == "hook_received"
            ]
        rows.append(row)
        by_id[s["span_id"]] = row
    for a in attempts:
        parent = by_id.get(a["parent_span_id"])
        if parent is not None:
            parent["segments"].append(
                {
                    "id": a["span_id"],
                    "s": ms(a["start_ns"]),
                    "d": round((a["end_ns"] - a["start_ns"]) / 1e6, 3),
                    "status": a["status_code"],
                    "n": a["attempt"],
                }
            )
    events = conn.execute("SELECT count(*) FROM run_events WHERE run_id = ?", (run_id,)).fetchone()[0]
    return {
        "run": run_json(run),
        "t0": t0,
        "rows": rows,
        "sdk": sdk,
        "eventsCount": events,
        "sentryDropped": sentry_drops(conn, run_id),
    }
