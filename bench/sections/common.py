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


def child_pids(pid: int) -> list[int]:
    """The live processes ``pid`` started (a collector's decoder process), and theirs."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:  # the thread ended meanwhile
            pass
    return found + [g for c in found for g in child_pids(c)]


def _own_cpu_s(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:  # gone meanwhile (then its time is in its parent's cutime)
        return 0.0
    # utime + stime + cutime + cstime (children already reaped), in clock ticks (USER_HZ = 100)
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / 100


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a server and every process it started: all of it is the cost of the work,
    whichever core it ran on."""
    return _own_cpu_s(pid) + sum(_own_cpu_s(c) for c in child_pids(pid))


def peak_rss_mib(pid: int) -> float:
    """Peak RSS (``VmHWM``) of a server plus the peaks of its live child processes, in MiB."""
    total = 0.0
    for p in [pid, *child_pids(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total
