"""Tailing a world: export each finished step, sleep, hook and run as soon as it is in the log.

Each poll asks the world how many events each run has (a directory listing, or one grouped
query), rebuilds only the runs whose count changed and sends the spans not sent before. The
checkpoint (span ids sent, events seen, per run) is written atomically after every
acknowledged export, so a restart — after ``kill -9`` too — resumes with no gap. Delivery is
at-least-once: a batch acknowledged just before a crash, whose checkpoint write was lost, is
sent again — the same spans with the same deterministic ids, which id-keyed stores collapse.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan

from .reading import event_log
from .runtrace import build_run_trace

__all__ = ["Checkpoint", "Follower"]

log = logging.getLogger("telemetry.follow")


@dataclass
class _RunState:
    events: int = 0
    sent: set[str] = field(default_factory=set)
    complete: bool = False


class Checkpoint:
    """What has been sent, per run; persisted as JSON with write-then-rename."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = Path(path) if path else None
        self.runs: dict[str, _RunState] = {}
        if self.path and self.path.exists():
            try:
                data = json.loads(self.path.read_text())
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"checkpoint {self.path} is not valid JSON ({error}); move it away to start over"
                ) from None
            for run_id, state in data.get("runs", {}).items():
                self.runs[run_id] = _RunState(
                    state.get("events", 0), set(state.get("sent", [])), bool(state.get("complete"))
                )

    def state(self, run_id: str) -> _RunState:
        return self.runs.setdefault(run_id, _RunState())

    def save(self) -> None:
        if not self.path:
            return
        data = {
            "version": 1,
            "runs": {
                k: {"events": v.events, "sent": sorted(v.sent), "complete": v.complete} for k, v in self.runs.items()
            },
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temp = self.path.with_name(self.path.name + ".tmp")
        with temp.open("w") as fh:
            json.dump(data, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, self.path)


class Follower:
    """One poll at a time: ``poll()`` returns the spans it delivered; ``run()`` loops until stopped."""

    def __init__(
        self,
        world: Any,
        deliver: Callable[[Any, list[Any], list[ReadableSpan]], Any],
        checkpoint: Checkpoint,
        *,
        resource: Resource | None = None,
        include_payloads: bool = True,
        interval: float = 0.25,
    ) -> None:
        """``deliver(run, events, new_spans)`` is called once for every run whose log changed
        (``new_spans`` may be empty); the run counts as sent once it returns."""
        self.world = world
        self.deliver = deliver
        self.checkpoint = checkpoint
        self.resource = resource
        self.include_payloads = include_payloads
        self.interval = interval

    async def poll(self) -> int:
        counts = await self.world.events.counts_by_run()
        sent = 0
        for run_id, count in sorted(counts.items()):
            state = self.checkpoint.state(run_id)
            if count == state.events:
                continue
            try:
                run = await self.world.runs.get(run_id, resolve_data="none")
            except Exception as error:  # a run file not yet written: next poll
                log.debug("follow: run %s not readable yet: %s", run_id, error)
                continue
            events = await event_log(self.world, run_id)
            trace = build_run_trace(run_id, events, run, resource=self.resource, include_payloads=self.include_payloads)
            # a finished run keeps no ids, so a later change to its log sends its spans again (same ids)
            ids = {f"{s.context.span_id:016x}": s for s in trace.spans}
            fresh = [s for span_id, s in ids.items() if span_id not in state.sent]
            result = self.deliver(run, events, fresh)
            if asyncio.iscoroutine(result):
                await result
            sent += len(fresh)
            state.events = len(events)
            state.complete = trace.complete
            # a finished run keeps only its event count: the checkpoint does not grow with every span ever sent
            state.sent = set() if trace.complete else set(ids)
            self.checkpoint.save()
        return sent

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self.poll()
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
            except TimeoutError:
                pass
