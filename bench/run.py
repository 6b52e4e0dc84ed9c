"""``make bench``: every benchmark in one run, each reported as a ratio against a baseline
measured in the same run (the machine is shared and noisy), plus absolute figures.
Writes bench/results.md and prints the same table.

``python bench/run.py SECTION...`` runs only those sections (names below) and replaces only
their rows in bench/results.md, noting when they were measured; the other rows stay as they were.
"""

from __future__ import annotations

import os
import platform
import shutil
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

from sections import (  # noqa: E402 (after sys.path)
    dashboard,
    export_pace,
    freshness,
    ingest,
    overload,
    scaling,
    store_size,
    traced_overhead,
    vercel_pace,
)

HARNESS = ROOT.parent / "shared" / "sdk-harness"
RESULTS = HERE / "results.md"
HEADER = (
    "| benchmark | ours | baseline (same run) | ratio | target | verdict |\n| --- | --- | --- | --- | --- | --- |\n"
)

#: name → (module, the number its rows start with in the table)
SECTIONS = {
    "ingest": (ingest, "2"),
    "traced": (traced_overhead, "3"),
    "freshness": (freshness, "4"),
    "dashboard": (dashboard, "5"),
    "scaling": (scaling, "6"),
    "export": (export_pace, "7"),
    "overload": (overload, "8"),
    "size": (store_size, "9"),
    "vercel": (vercel_pace, "10"),
}


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
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{os.cpu_count()} cores ({cpu}), Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def _table_rows(rows: list[dict]) -> list[str]:
    return [
        f"| {r['benchmark']} | {r['ours']} | {r['baseline']} | {r['ratio']} | {r['target']} | {r['verdict']} |\n"
        for r in rows
    ]


def _merge(names: list[str], fresh_rows: list[str], stamp: str) -> str:
    """results.md with the rows of ``names`` replaced by ``fresh_rows`` (table order kept by
    section number) and a line saying when those sections were measured."""
    numbers = {SECTIONS[n][1] for n in names}
    try:
        lines = RESULTS.read_text().splitlines(keepends=True)
    except FileNotFoundError:
        lines = ["# Benchmark results\n", "\n"]
    notes: list[str] = []
    for line in lines:
        if line.startswith("|") or any(line.startswith(f"Section `{n}` ") for n in names):
            continue
        if line.strip() or (notes and notes[-1].strip()):  # no runs of blank lines
            notes.append(line)
    kept = [
        line
        for line in lines
        if line.startswith("| ")
        and not line.startswith(("| benchmark ", "| --- "))
        and line[2:].split(".", 1)[0] not in numbers
    ]
    order = {number: i for i, (_, number) in enumerate(SECTIONS.values())}
    table = sorted(kept + fresh_rows, key=lambda line: order.get(line[2:].split(".", 1)[0], len(order)))
    while notes and not notes[-1].strip():
        notes.pop()
    for n in names:
        notes += ["\n", f"Section `{n}` measured alone {stamp} on {machine()}.\n"]
    return "".join(notes) + "\n" + HEADER + "".join(table)


def main(argv: list[str]) -> int:
    unknown = [n for n in argv if n not in SECTIONS]
    if unknown:
        print(f"bench: unknown section {unknown[0]!r}; sections: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    names = argv or list(SECTIONS)
    # every temporary file of the run (sections' scratch stores and worlds, their subprocesses')
    # under one directory, removed at the end unless a section failed (its logs are in there). Its
    # mode lets other users through but not list it: a section's PostgreSQL runs as `postgres`,
    # in a directory of its own made inside.
    scratch = Path(tempfile.mkdtemp(prefix="wft-bench-run-"))
    scratch.chmod(0o711)
    tempfile.tempdir = str(scratch)
    os.environ["TMPDIR"] = str(scratch)
    failed = True
    try:
        failed = _run(argv, names)
    finally:
        if failed:
            print(f"[bench] a section failed: its temporary files are kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _run(argv: list[str], names: list[str]) -> bool:
    """Runs the sections and writes the results; whether any of them failed."""
    out = harness_output()
    rows: list[dict] = []
    for name in names:
        section = SECTIONS[name][0]
        started = time.monotonic()
        try:
            rows += section.run(out)
        except Exception as error:  # one broken section must not hide the others
            traceback.print_exc()
            rows.append(
                {
                    "benchmark": f"{SECTIONS[name][1]}. {name}",
                    "ours": "error",
                    "baseline": "",
                    "ratio": "",
                    "target": "",
                    "verdict": f"**error**: {error}",
                }
            )
        print(f"[bench] {name} done in {time.monotonic() - started:.0f}s", file=sys.stderr)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if argv:
        text = _merge(names, _table_rows(rows), stamp)
    else:
        text = f"# Benchmark results\n\nMeasured {stamp} on {machine()}.\n\n{HEADER}{''.join(_table_rows(rows))}"
    RESULTS.write_text(text)
    print(text)
    return any(r["verdict"].startswith("**error**") for r in rows)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
