"""Small helpers shared by the benchmark sections."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def verdict(value: float, target: float, *, higher_is_better: bool, unit: str) -> str:
    ok = value >= target if higher_is_better else value <= target
    if ok:
        return "met"
    gap = (target / value if higher_is_better else value / target) if value else float("inf")
    return (
        f"**missed** by {gap:.2f}× (target {target:g} {unit})"
        if gap < 1.1
        else f"**missed** by {gap:.1f}× (target {target:g} {unit})"
    )


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


def start_server(argv: list[str], port: int, log: Path | None = None) -> subprocess.Popen:
    """Start ``argv`` and wait for ``/healthz`` on ``port``; its output goes to ``log`` (or nowhere)."""
    if log is None:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        with log.open("ab") as sink:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen(argv, stdout=sink, stderr=sink)
    import urllib.request

    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{argv[0]} did not start")


def psql_runner(server: Any) -> Callable[..., str]:
    """``psql(*args, input=None)`` against a ``tests.pgserver`` server's ``world`` database
    (``input`` feeds ``COPY … FROM STDIN``); a failure raises with psql's own message."""
    env = {**os.environ, "PGPASSWORD": "world"}

    def psql(*args: str, input: str | None = None) -> str:
        done = subprocess.run(
            [str(server.bin / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"]
            + ["-p", str(server.port), "-U", "world", "-d", "world", *args],
            input=input,
            capture_output=True,
            text=True,
            env=env,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()[-300:]}")
        return done.stdout

    return psql
