"""4. Freshness: a step completes in the real SDK → its span is in /api/runs/{id}.
Measured from the store's own receive time of each step span against the step's
``step_completed`` time, over 60+ steps, on both worlds. Baseline: the tailer's poll interval."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.harness_app import run_status, start_workflow

from .common import free_port, start_server, verdict

HARNESS = Path(__file__).resolve().parents[3] / "shared" / "sdk-harness"
RUNS = 22  # 3 steps each
INTERVAL = 0.25


def drive(app_url: str, runs: int = RUNS) -> list[str]:
    """Start ``runs`` 3-step sequential runs in the live app, 150 ms apart, and wait until they
    completed and the tailer had two more polls; returns their run ids."""
    started = []
    for _ in range(runs):
        started.append(start_workflow(app_url, "sequential", [1]))
        time.sleep(0.15)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and any(run_status(app_url, r) != "completed" for r in started):
        time.sleep(0.2)
    time.sleep(2 * INTERVAL + 1)
    return started


def lags(store: Path, runs: list[str]) -> list[float]:
    """Seconds from each step's end (its step_completed) to the store receiving its span, sorted."""
    conn = sqlite3.connect(store)
    try:
        marks = ",".join("?" * len(runs))
        rows = conn.execute(
            "SELECT received_ns - end_ns FROM spans"
            f" WHERE source = 'world' AND entity = 'step' AND run_id IN ({marks})",
            runs,
        ).fetchall()
    finally:
        conn.close()
    return sorted(r[0] / 1e9 for r in rows)


def pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(len(values) * q))]


def _measure(world: str) -> list[float]:
    state = Path(tempfile.mkdtemp(prefix=f"wft-bench-fresh-{world}-"))
    served = subprocess.run(
        ["bash", str(HARNESS / "run.sh"), "serve", world, str(state / "app")],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if served.returncode != 0:
        raise RuntimeError(served.stderr[-500:])
    info = dict(line.split("=", 1) for line in served.stdout.splitlines() if "=" in line)
    port = free_port()
    world_args = (
        ["--world", "local", "--dir", info["DATA_DIR"]]
        if world == "local"
        else ["--world", "postgres", "--url", info["DATABASE_URL"]]
    )
    store = state / "store.sqlite3"
    collector = start_server(
        [sys.executable, "-m", "telemetry", "serve", "--port", str(port), "--store", str(store), *world_args], port
    )
    try:
        runs = drive(info["URL"])
    finally:
        collector.terminate()
        collector.wait(30)
        subprocess.run(["bash", str(HARNESS / "run.sh"), "stop", str(state / "app")], capture_output=True, timeout=120)
    return lags(store, runs)


def run(harness_out: Path) -> list[dict]:
    rows = []
    for world in ("local", "postgres"):
        measured = _measure(world)
        if len(measured) < 50:
            raise RuntimeError(f"only {len(measured)} step spans measured on {world}")
        p50, p95 = pct(measured, 0.5), pct(measured, 0.95)
        rows.append(
            {
                "benchmark": f"4. freshness, world-{world}: step completed → span in /api/runs/{{id}}"
                f" ({len(measured)} steps)",
                "ours": f"p50 {p50 * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms",
                "baseline": f"{INTERVAL * 1000:.0f} ms tailer poll interval",
                "ratio": f"{p95 / INTERVAL:.2f}× (p95 / interval)",
                "target": "p95 < 500 ms",
                "verdict": verdict(p95, 0.5, higher_is_better=False, unit="s"),
            }
        )
    return rows
