"""10. A follower over a world-vercel deployment whose live runs wait (on hooks, say): the calls a
pass makes to the workflow server in the steady state, with live runs read at their own pace
(``telemetry.backends.vercel.LivePace``) against the same follower reading every live run's tail on
every pass, as it did before, in the same run.

The server is the test suite's fake of the Vercel workflow server (``tests/fake_vercel_backend.py``,
proven against ``@workflow/world-vercel``'s own client there): the Vercel backend cannot run here.
Time is the pace's clock, stepped by the follower's 2 s interval, so a simulated ten minutes take
seconds; the steady state is the second half, after every idle run has reached the cap.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from ulid import ULID

from telemetry.backends.vercel import IDLE_READ_MAX, VercelConfig, VercelWorld
from telemetry.follow import Checkpoint, Follower
from tests.fake_vercel_backend import FakeVercelBackend, seed_run

from .common import verdict

INTERVAL = 2.0  # a follower's poll interval on world-vercel
SIMULATED = 4 * IDLE_READ_MAX  # seconds of follower life; the second half is measured
SIZES = (100, 1_000)


def _calls_per_second(live_runs: int, paced: bool) -> tuple[float, float]:
    """(server calls a second in the steady state, follower CPU seconds) for ``live_runs`` waiting runs."""
    fake = FakeVercelBackend()
    _, stop = fake.serve()
    try:
        for _ in range(live_runs):
            seed_run(fake, f"wrun_{ULID()}", 1, finish=False)
        world = VercelWorld(VercelConfig.from_env({"VERCEL_TOKEN": fake.token, "VERCEL_WORKFLOW_SERVER_URL": fake.url}))
        clock = [0.0]
        world.pace.clock = lambda: clock[0]
        if not paced:
            world.pace.due = lambda run_id, now=None: True  # the feed before the pace: every live run, every pass
        follower = Follower(world, lambda run, events, spans: None, Checkpoint(None))
        loop = asyncio.new_event_loop()
        calls, passes = 0, 0
        cpu = time.process_time()
        try:
            while clock[0] <= SIMULATED:
                fake.requests.clear()
                loop.run_until_complete(follower.poll())
                if clock[0] >= SIMULATED / 2:
                    calls, passes = calls + len(fake.requests), passes + 1
                clock[0] += INTERVAL
            cpu = time.process_time() - cpu
        finally:
            loop.run_until_complete(world.close())
            loop.close()
        return calls / (passes * INTERVAL), cpu
    finally:
        stop()


def run(harness_out: Any) -> list[dict[str, str]]:
    rows = []
    for size in SIZES:
        paced, paced_cpu = _calls_per_second(size, True)
        every, every_cpu = _calls_per_second(size, False)
        target = size / IDLE_READ_MAX * 2 + 3 / INTERVAL  # a log read and a run read per run per cap, the listing
        rows.append(
            {
                "benchmark": f"10. follower over world-vercel, {size:,} live runs waiting (fake workflow server),"
                f" steady state: calls to the server a second",
                "ours": f"{paced:,.1f} calls/s (follower CPU {paced_cpu:.1f} s for {SIMULATED:.0f} simulated s)",
                "baseline": f"{every:,.1f} calls/s reading every live run each pass (CPU {every_cpu:.1f} s)",
                "ratio": f"{paced / every:.3f}×",
                "target": f"≤ {target:,.0f} calls/s (each idle run read once per {IDLE_READ_MAX:.0f} s)",
                "verdict": verdict(paced, target, higher_is_better=False, unit="calls/s"),
            }
        )
    return rows
