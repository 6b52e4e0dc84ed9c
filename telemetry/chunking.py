"""How many runs a worker process gets at a time, for ``wft export --jobs`` and the follower's
catch-up alike.

Both hand a big world's runs out to worker processes in tasks. Every task costs the process that
hands them out a hand-over, an answer to take in and a request ended short, and wakes it while the
workers have the cores, so tasks are big while many runs are left; at the end they are small, so
the workers finish together rather than one waiting out the other's big last task (guided
self-scheduling). A worker answers early once a task's spans reach ``CHUNK_SPANS`` and hands back
the runs it did not reach, so a task of long runs never holds gigabytes.

The values are read from this module when used, so one setting governs both users.
"""

from __future__ import annotations

from collections import deque
from typing import TypeVar

__all__ = ["CHUNK_RUNS", "CHUNK_RUNS_MAX", "CHUNK_SPANS", "chunk_size", "next_task"]

T = TypeVar("T")

#: runs per task handed to a worker, at least (the last tasks: they share out evenly)
CHUNK_RUNS = 32
#: runs per task, at most: while many runs are left, each task is this big (``chunk_size``)
CHUNK_RUNS_MAX = 256
#: spans after which a worker answers with what it has (bounds the memory of a task of long runs)
CHUNK_SPANS = 20_000


def chunk_size(left: int, jobs: int) -> int:
    """Runs in the next task when ``left`` runs are still to be handed out: a share of them,
    between ``CHUNK_RUNS`` and ``CHUNK_RUNS_MAX``. Tasks of 32 runs cost 6-12% more CPU per
    event, all processes, than tasks of 256 on the bench's worlds."""
    share = -(-left // (2 * jobs))  # the tasks in flight are up to twice the workers
    return max(CHUNK_RUNS, min(CHUNK_RUNS_MAX, share))


def next_task(pending: deque[T], jobs: int, *, last: bool) -> list[T] | None:
    """The next task's runs, taken from ``pending`` (given, not handed out yet): ``chunk_size`` of
    them once no more will come (``last``), before that only a full task (``CHUNK_RUNS_MAX``);
    None when there is no task to hand out yet."""
    if not pending or (not last and len(pending) < CHUNK_RUNS_MAX):
        return None
    size = chunk_size(len(pending), jobs) if last else CHUNK_RUNS_MAX
    return [pending.popleft() for _ in range(min(size, len(pending)))]
