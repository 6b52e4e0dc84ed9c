"""Small helpers shared by the benchmark sections."""

from __future__ import annotations

import subprocess
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


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(argv: list[str], port: int) -> subprocess.Popen:
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import urllib.request

    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{argv[0]} did not start")
