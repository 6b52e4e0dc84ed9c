"""Synthetic worlds for the benchmarks, made from real harness output by copying its records under
fresh ids (shapes, payloads and timings stay the SDK's own). Nothing here writes an SDK record
from scratch: every record is a real one with its ids (and, where said, its times) replaced.

Fresh ids are ULIDs minted in the order the originals sort, so a copy's event log reads back in
the same order as the original (readers order events by id, as the SDK does).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ulid import ULID

_ID = re.compile(r"\b(wrun|step|evnt|hook|wait|wevt)_([0-9A-Z]{26})\b")
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_TIME_KEYS = ("createdAt", "startedAt", "completedAt", "updatedAt", "retryAfter")


class _Ulids:
    """Monotonic ULIDs: each one greater than the last, like the SDK's own (same-millisecond ids
    get incremented instead of random tails, so mint order is sort order)."""

    def __init__(self) -> None:
        self._last = 0

    def at(self, moment: datetime | None = None) -> str:
        candidate = int(ULID.from_timestamp(moment.timestamp()) if moment else ULID())
        if candidate <= self._last:
            candidate = self._last + 1
        self._last = candidate
        return str(ULID.from_int(candidate))


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _write(path: Path, record: dict[str, Any]) -> None:
    path.write_text(json.dumps(record, indent=2))  # world-local's own formatting


def _fresh_world(target: Path) -> None:
    shutil.rmtree(target, ignore_errors=True)
    for sub in ("runs", "steps", "events"):
        (target / sub).mkdir(parents=True)


def scale_local(source: Path, target: Path, runs: int) -> int:
    """A world-local data dir with ``runs`` runs, copied round-robin from ``source``; returns events."""
    _fresh_world(target)
    originals = sorted(p.stem for p in (source / "runs").glob("*.json"))
    files = {
        rid: [
            (sub, p.name, p.read_text())
            for sub in ("runs", "steps", "events")
            for p in sorted((source / sub).glob(f"{rid}*.json"))
        ]
        for rid in originals
    }
    ulids = _Ulids()
    events = 0
    for i in range(runs):
        mapping: dict[str, str] = {}

        def fresh(match: re.Match[str], mapping: dict[str, str] = mapping) -> str:
            old = match.group(0)
            if old not in mapping:
                mapping[old] = f"{match.group(1)}_{ulids.at()}"
            return mapping[old]

        # events last and in id order, so their fresh ids keep the original order
        for sub, name, text in sorted(files[originals[i % len(originals)]], key=lambda f: f[0] == "events"):
            new_text = _ID.sub(fresh, text)
            (target / sub / _ID.sub(fresh, name)).write_text(new_text)
            events += sub == "events"
    return events


def _template(source: Path) -> dict[str, Any]:
    """The real run ``long_run`` grows: a completed run with a plain step (created, started,
    completed), preferring the harness's sequential workflow; its records and timings."""
    candidates = []
    for run_path in sorted((source / "runs").glob("*.json")):
        run = json.loads(run_path.read_text())
        logs = [json.loads(p.read_text()) for p in sorted((source / "events").glob(f"{run['runId']}-*.json"))]
        types = [e["eventType"] for e in logs]
        if run.get("status") != "completed" or "run_completed" not in types or "step_created" not in types:
            continue
        by_step: dict[str, list[dict[str, Any]]] = {}
        for e in logs:
            if e.get("correlationId", "").startswith("step_"):
                by_step.setdefault(e["correlationId"], []).append(e)
        plain = [
            s
            for s, evs in by_step.items()
            if [e["eventType"] for e in evs] == ["step_created", "step_started", "step_completed"]
        ]
        if not plain:
            continue
        step_events = by_step[plain[0]]
        later = [evs for s, evs in by_step.items() if s > plain[0]]
        gap = (
            _parse(later[0][0]["createdAt"]) - _parse(step_events[-1]["createdAt"])
            if later
            else timedelta(milliseconds=50)
        )
        candidates.append(
            {
                "run": run,
                "head": [e for e in logs if e["eventType"] in ("run_created", "run_started")],
                "steps": step_events,
                "step_record": json.loads((source / "steps" / f"{run['runId']}-{plain[0]}.json").read_text()),
                "tail": [e for e in logs if e["eventType"] == "run_completed"],
                "gap": max(gap, timedelta(milliseconds=1)),
                "sequential": run["workflowName"].endswith("sequentialWorkflow"),
            }
        )
    if not candidates:
        raise RuntimeError(f"{source}: no completed run with a plain step to grow")
    return sorted(candidates, key=lambda c: not c["sequential"])[0]


def long_run(source: Path, target: Path, steps: int, *, runs: int = 1) -> list[str]:
    """A world-local dir holding ``runs`` completed runs of ``steps`` sequential steps each, grown
    from a real harness run: its run_created/run_started events, then one real step's
    step_created/step_started/step_completed events (and its step record) repeated ``steps``
    times with fresh step ids as correlation ids, then its run_completed, all with fresh event
    ids in id order and the SDK's own spacing between events. Returns the run ids."""
    template = _template(source)
    _fresh_world(target)
    head, step_events, tail = template["head"], template["steps"], template["tail"]
    t_run = _parse(head[0]["createdAt"])
    t_step = _parse(step_events[0]["createdAt"])
    head_offsets = [_parse(e["createdAt"]) - t_run for e in head]
    step_offsets = [_parse(e["createdAt"]) - t_step for e in step_events]
    tail_offsets = [_parse(e["createdAt"]) - _parse(step_events[-1]["createdAt"]) for e in tail]
    first_step = max(t_step - t_run, max(head_offsets))
    per_step = step_offsets[-1] + template["gap"]
    per_run = first_step + per_step * steps + max(tail_offsets, default=timedelta(0)) + timedelta(milliseconds=100)
    start = datetime.now(UTC) - per_run * runs - timedelta(minutes=1)
    events, step_ids, run_ids = _Ulids(), _Ulids(), []
    for i in range(runs):
        run_id = f"wrun_{ULID.from_timestamp((start + per_run * i).timestamp())}"
        t0 = start + per_run * i

        def emit(event: dict[str, Any], moment: datetime, correlation: str | None = None, run_id: str = run_id) -> None:
            record = {**event, "runId": run_id, "eventId": f"evnt_{events.at(moment)}", "createdAt": _iso(moment)}
            if correlation:
                record["correlationId"] = correlation
            _write(target / "events" / f"{run_id}-{record['eventId']}.json", record)

        for event, offset in sorted(zip(head, head_offsets, strict=True), key=lambda p: p[0]["eventId"]):
            emit(event, t0 + offset)
        t = t0 + first_step
        for _ in range(steps):
            step_id = f"step_{step_ids.at(t)}"
            for event, offset in zip(step_events, step_offsets, strict=True):
                emit(event, t + offset, step_id)
            shift = t - t_step
            step = {**template["step_record"], "runId": run_id, "stepId": step_id}
            for key in _TIME_KEYS:
                if isinstance(step.get(key), str):
                    step[key] = _iso(_parse(step[key]) + shift)
            _write(target / "steps" / f"{run_id}-{step_id}.json", step)
            t += per_step
        last = t - template["gap"]
        for event, offset in zip(tail, tail_offsets, strict=True):
            emit(event, last + offset)
        done = last + max(tail_offsets, default=timedelta(0))
        run = {**template["run"], "runId": run_id, "createdAt": _iso(t0), "startedAt": _iso(t0)}
        run.update(completedAt=_iso(done), updatedAt=_iso(done))
        _write(target / "runs" / f"{run_id}.json", run)
        run_ids.append(run_id)
    return run_ids


def cached(root: Path, key: str, build: Callable[[Path], Any]) -> tuple[Path, dict[str, Any]]:
    """``root/key``, built by ``build(dir)`` once and reused by later runs (a ``done.json``
    marker holding what ``build`` returned, how long it took and the bytes on disk says the
    copy is complete)."""
    target = root / key
    marker = target / "done.json"
    if marker.exists():
        return target / "world", json.loads(marker.read_text())
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    started = time.monotonic()
    info = {"result": build(target / "world"), "seconds": round(time.monotonic() - started, 1)}
    du = subprocess.run(["du", "-sB1", str(target)], capture_output=True, text=True).stdout.split()
    info["bytes"] = int(du[0]) if du else None
    marker.write_text(json.dumps(info))
    return target / "world", info


# --- world-postgres -------------------------------------------------------------------------

#: the tables copied, with their id-valued columns (every other column is copied as is, except
#: timestamps, shifted with the copy)
PG_TABLES = {
    "workflow_runs": ("id",),
    "workflow_steps": ("step_id", "run_id"),
    "workflow_events": ("id", "run_id", "correlation_id"),
}
#: each copy k is the original world moved k × this into the past (longer than the harness run,
#: so two copies never mint the same id)
PG_SHIFT_MS = 60_000


def _ulid_ms(text: str) -> int:
    value = 0
    for char in text[:10]:
        value = value * 32 + _CROCKFORD.index(char)
    return value


def _ulid_time(ms: int) -> str:
    chars = []
    for _ in range(10):
        chars.append(_CROCKFORD[ms & 31])
        ms >>= 5
    return "".join(reversed(chars))


def _shifted(old: str, k: int) -> str:
    """``old`` with its ULID's time moved k × PG_SHIFT_MS back, its random tail kept: the same
    id in copy k everywhere it appears (ids, run ids, correlation ids), in the same order."""
    prefix, ulid = old[:-26], old[-26:]
    return prefix + _ulid_time(_ulid_ms(ulid) - k * PG_SHIFT_MS) + ulid[10:]


def _idmap_rows(ids: list[str], first: int, last: int) -> Iterator[str]:
    for k in range(first, last):
        for old in ids:
            yield f"{k}\t{old}\t{_shifted(old, k)}\n"


def scale_postgres(psql: Callable[..., str], copies: int) -> int:
    """Grow a world-postgres database loaded from a harness dump to ``copies`` copies of the
    harness's runs (the original counts as copy 0). ``psql(*args, input=None)`` runs psql
    against it. Copy k has its ids and times moved k minutes back (``_shifted``), so the copies
    look like the same workload run earlier. Callable again with a larger ``copies``.
    Returns the number of events in the database afterwards."""
    psql(
        "-c",
        "CREATE SCHEMA IF NOT EXISTS bench_src;"
        + "".join(
            f"CREATE TABLE IF NOT EXISTS bench_src.{t} AS TABLE workflow.{t};"  # the originals, kept apart
            for t in PG_TABLES
        )
        + "CREATE TABLE IF NOT EXISTS bench_src.idmap (k int, old text, new text);"
        + "CREATE TABLE IF NOT EXISTS bench_src.done (k int);",
    )
    done = int(psql("-At", "-c", "SELECT coalesce(max(k), 0) FROM bench_src.done").strip() or 0)
    if copies - 1 <= done:
        return int(psql("-At", "-c", "SELECT count(*) FROM workflow.workflow_events").strip())
    ids = sorted(
        {
            line
            for line in psql(
                "-At",
                "-c",
                "SELECT id FROM bench_src.workflow_runs UNION SELECT step_id FROM bench_src.workflow_steps"
                " UNION SELECT id FROM bench_src.workflow_events"
                " UNION SELECT correlation_id FROM bench_src.workflow_events WHERE correlation_id IS NOT NULL",
            ).splitlines()
            if line
        }
    )
    times = [_ulid_ms(i[-26:]) for i in ids]
    if max(times) - min(times) >= PG_SHIFT_MS:
        raise RuntimeError("the harness world spans more than PG_SHIFT_MS; copies would collide")
    psql("-c", "TRUNCATE bench_src.idmap")
    psql("-c", "COPY bench_src.idmap FROM STDIN", input="".join(_idmap_rows(ids, done + 1, copies)))
    psql("-c", "CREATE INDEX IF NOT EXISTS idmap_old ON bench_src.idmap (old, k); ANALYZE bench_src.idmap")
    statements = []
    for table, id_columns in PG_TABLES.items():
        columns = [
            line.split("|")
            for line in psql(
                "-At",
                "-c",
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'workflow'"
                f" AND table_name = '{table}' AND is_generated = 'NEVER' ORDER BY ordinal_position",
            ).splitlines()
        ]
        joins = [
            f"{'LEFT JOIN' if name == 'correlation_id' else 'JOIN'} bench_src.idmap m_{name} ON m_{name}.old = s.{name}"
            + ("" if name == id_columns[0] else f" AND m_{name}.k = m_{id_columns[0]}.k")
            for name in id_columns
        ]
        values = []
        for name, kind in columns:
            if name in id_columns:
                values.append(f"m_{name}.new")
            elif kind.startswith("timestamp"):
                values.append(f"s.{name} - m_{id_columns[0]}.k * interval '{PG_SHIFT_MS} milliseconds'")
            else:
                values.append(f"s.{name}")
        statements.append(
            f"INSERT INTO workflow.{table} ({', '.join(n for n, _ in columns)}) SELECT {', '.join(values)}"
            f" FROM bench_src.{table} s {' '.join(joins)};"
        )
    psql("-c", "".join(statements) + f"INSERT INTO bench_src.done VALUES ({copies - 1}); ANALYZE;")
    return int(psql("-At", "-c", "SELECT count(*) FROM workflow.workflow_events").strip())
