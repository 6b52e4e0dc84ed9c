"""``make bench``: every benchmark in one run, each reported as a ratio against a baseline
measured in the same run (the machine is shared and noisy), plus absolute figures.
Writes bench/results.md and prints the same table."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

from sections import dashboard, freshness, ingest, pipeline, traced_overhead  # noqa: E402

HARNESS = ROOT.parent / "shared" / "sdk-harness"


def harness_output() -> Path:
    reuse = os.environ.get("WFT_HARNESS_OUT")
    if reuse and (Path(reuse) / "postgres" / "world.sql").exists():
        return Path(reuse)
    out = Path(tempfile.mkdtemp(prefix="wft-bench-harness-"))
    for world in ("local", "postgres"):
        subprocess.run(
            ["bash", str(HARNESS / "run.sh"), world, str(out)], check=True, capture_output=True, timeout=1200
        )
    return out


def machine() -> str:
    cpu = next(
        (
            l.split(":", 1)[1].strip()
            for l in Path("/proc/cpuinfo").read_text().splitlines()
            if l.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def main() -> int:
    out = harness_output()
    rows: list[dict] = []
    for name, section in (
        ("pipeline", pipeline),
        ("ingest", ingest),
        ("traced", traced_overhead),
        ("freshness", freshness),
        ("dashboard", dashboard),
    ):
        started = time.monotonic()
        try:
            rows += section.run(out)
        except Exception as error:  # one broken section must not hide the others
            traceback.print_exc()
            rows.append(
                {
                    "benchmark": name,
                    "ours": "error",
                    "baseline": "",
                    "ratio": "",
                    "target": "",
                    "verdict": f"**error**: {error}",
                }
            )
        print(f"[bench] {name} done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    header = (
        "| benchmark | ours | baseline (same run) | ratio | target | verdict |\n| --- | --- | --- | --- | --- | --- |\n"
    )
    table = header + "".join(
        f"| {r['benchmark']} | {r['ours']} | {r['baseline']} | {r['ratio']} | {r['target']} | {r['verdict']} |\n"
        for r in rows
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = f"# Benchmark results\n\nMeasured {stamp} on {machine()}.\n\n{table}"
    (HERE / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
