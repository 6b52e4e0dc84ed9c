"""Synthetic worlds for the benchmarks, made from real harness output by copying its runs under
fresh ids (shapes, payloads and timings stay the SDK's own)."""

from __future__ import annotations

import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ulid import ULID

_ID = re.compile(r"\b(wrun|step|evnt|hook|wait|wevt)_([0-9A-Z]{26})\b")


def _fresh(mapping: dict[str, str], match: re.Match) -> str:
    old = match.group(0)
    if old not in mapping:
        mapping[old] = f"{match.group(1)}_{ULID()}"
    return mapping[old]


def scale_local(source: Path, target: Path, runs: int) -> int:
    """A world-local data dir with ``runs`` runs, copied round-robin from ``source``; returns events."""
    shutil.rmtree(target, ignore_errors=True)
    for sub in ("runs", "steps", "events"):
        (target / sub).mkdir(parents=True)
    originals = sorted(p.stem for p in (source / "runs").glob("*.json"))
    files = {
        rid: [(sub, p) for sub in ("runs", "steps", "events") for p in sorted((source / sub).glob(f"{rid}*.json"))]
        for rid in originals
    }
    events = 0
    for i in range(runs):
        rid = originals[i % len(originals)]
        mapping: dict[str, str] = {}
        for sub, path in files[rid]:
            text = _ID.sub(lambda m: _fresh(mapping, m), path.read_text())
            name = _ID.sub(lambda m: _fresh(mapping, m), path.name)
            (target / sub / name).write_text(text)
            events += sub == "events"
    return events


def big_run(source: Path, target: Path, steps: int) -> str:
    """A world-local dir holding one completed run with ``steps`` sequential steps, built from the
    real sequential run's events (its first step's events repeated with fresh ids and times)."""
    shutil.rmtree(target, ignore_errors=True)
    for sub in ("runs", "steps", "events"):
        (target / sub).mkdir(parents=True)
    summary = json.loads((source.parent / "local-runs-summary.json").read_text())["results"]["sequential"]
    rid = summary["runId"]
    logs = [json.loads(p.read_text()) for p in sorted((source / "events").glob(f"{rid}-*.json"))]
    head = [e for e in logs if e["eventType"] in ("run_created", "run_started")]
    first_step = logs[[e["eventType"] for e in logs].index("step_created")]["correlationId"]
    step_events = [e for e in logs if e.get("correlationId") == first_step]
    tail = [e for e in logs if e["eventType"] == "run_completed"]
    run = json.loads((source / "runs" / f"{rid}.json").read_text())
    new_run = f"wrun_{ULID()}"
    t = datetime.now(UTC) - timedelta(hours=1)

    def emit(event: dict, correlation: str | None) -> None:
        nonlocal t
        t += timedelta(milliseconds=1)
        event = {
            **event,
            "runId": new_run,
            "eventId": f"evnt_{ULID.from_timestamp(t.timestamp())}",
            "createdAt": t.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        }
        if correlation:
            event["correlationId"] = correlation
        (target / "events" / f"{new_run}-{event['eventId']}.json").write_text(json.dumps(event))

    for e in head:
        emit(e, None)
    for _ in range(steps):
        step_id = f"step_{ULID()}"
        for e in step_events:
            emit(e, step_id)
    for e in tail:
        emit(e, None)
    run.update(
        runId=new_run,
        createdAt=head[0]["createdAt"],
        completedAt=t.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    )
    (target / "runs" / f"{new_run}.json").write_text(json.dumps(run))
    return new_run
