"""Reading a world-local dir while the real SDK writes it (the harness app, every demo workflow).

The SDK writes each record to ``<name>.tmp.<ULID>`` and renames or links it into place; a reader
that took the temp files for records crashed on half-written JSON (2 of 2 tries before). Here
the change feed and the reader run pass after pass during the whole drive: no error, no event
lost between passes or read twice, and the logs read live end up exactly the finished world's.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from telemetry.backends.local import LocalWorld
from telemetry.reading import all_runs, event_log

from .conftest import HARNESS


@pytest.mark.parametrize("notify", [True, False], ids=["inotify", "mtime-scan"])
def test_reading_while_the_sdk_writes(live_local_app, tmp_path, notify):
    data = Path(live_local_app["DATA_DIR"])
    driver = subprocess.Popen(
        ["bash", str(HARNESS / "run.sh"), "drive", live_local_app["URL"], str(tmp_path / "summary.json")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    world = LocalWorld(data, allow_missing=True, grace=30, notify=notify)
    seen: dict[str, list[str]] = {}
    named: set[str] = set()
    passes = 0

    async def one_pass(token: str | None) -> str | None:
        changes = await world.events.changes(token)
        named.update(changes.runs)
        for run_id in changes.runs:
            ids = [e.event_id for e in await event_log(world, run_id, resolve_data="none")]
            assert len(ids) == len(set(ids)) and ids == sorted(ids), run_id
            before = seen.get(run_id, [])
            assert set(before) <= set(ids), f"{run_id}: an event read before is gone"
            seen[run_id] = ids
        return changes.token

    async def follow() -> None:
        nonlocal passes
        token = None
        while driver.poll() is None:
            token = await one_pass(token)
            passes += 1
            await asyncio.sleep(0.02)
        settle = time.monotonic() + 3  # the last writes, and the racy-mtime window, pass
        while time.monotonic() < settle:
            token = await one_pass(token)
            await asyncio.sleep(0.1)

    try:
        asyncio.run(follow())
    finally:
        if driver.poll() is None:
            driver.kill()
        driver.wait(timeout=60)
    assert driver.returncode == 0, driver.stderr.read() if driver.stderr else ""
    assert passes > 20  # the reads really overlapped the writes

    finished = LocalWorld(data)

    async def final() -> dict[str, list[str]]:
        return {
            run.run_id: [e.event_id for e in await event_log(finished, run.run_id, resolve_data="none")]
            async for run in all_runs(finished)
        }

    expected = asyncio.run(final())

    assert len(expected) >= 11
    assert named == set(expected)  # the feed named every run
    assert seen == expected  # and every event of each was read live
