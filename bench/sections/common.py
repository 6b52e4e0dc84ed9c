"""Small helpers shared by the benchmark sections."""

from __future__ import annotations

import time


def verdict(value: float, target: float, *, higher_is_better: bool, unit: str) -> str:
    ok = value >= target if higher_is_better else value <= target
    if ok:
        return "met"
    gap = (target / value if higher_is_better else value / target) if value else float("inf")
    return f"**missed** by {gap:.1f}× (target {target:g} {unit})"


def best_of(fn, repeat: int = 3) -> float:
    """Seconds of the fastest of ``repeat`` runs (noise only ever adds time)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best
