"""An in-memory world for the core unit tests only: not an SDK world, and never used to
stand in for one in tests of world reading (those use real harness data)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from telemetry.errors import EntityConflictError, WorkflowRunNotFoundError
from telemetry.world import (
    TERMINAL_STATUSES,
    Event,
    EventRequest,
    EventResult,
    Page,
    StreamChunks,
    StreamInfo,
    WorkflowRun,
)


def vercel_stream_409(run_id: str) -> Exception:
    """The exact error world-vercel 4.7.4 raises for a stream write to a finished run."""
    body = '{"success":false,"error":"conflict","message":"Run \\"' + run_id + '\\" is already completed"}'
    return Exception(
        f"Stream write failed: HTTP 409 (PUT https://vercel-workflow.com/api/v2/runs/{run_id}/stream/"
        f"strm_x_user; x-vercel-id=iad1::abc; x-vercel-error=conflict): {body}"
    )


class FakeInMemoryWorld:
    """Runs and streams in dicts. ``post_completion`` picks how stream writes to a finished
    run behave: "reject" raises like world-vercel, "accept" stores silently like local/postgres."""

    rpc_system = "memory"

    def __init__(self, *, post_completion: str = "reject", conflict: Callable[[str], Exception] = vercel_stream_409):
        self.runs_by_id: dict[str, WorkflowRun] = {}
        self.chunks: dict[str, list[bytes]] = defaultdict(list)
        self.closed: set[str] = set()
        self.accepts_post_completion_writes = post_completion == "accept"
        self._conflict = conflict
        self.fail_next: Exception | None = None
        self.runs = _Runs(self)
        self.steps = _Nothing()
        self.events = _Events(self)
        self.hooks = _Nothing()
        self.streams = _Streams(self)

    def add_run(self, run_id: str, status: str = "running") -> WorkflowRun:
        now = datetime.now(UTC)
        run = WorkflowRun(
            run_id=run_id, status=status, workflow_name="workflow//./w//fn", deployment_id="dpl", created_at=now
        )
        self.runs_by_id[run_id] = run
        return run

    def _maybe_fail(self) -> None:
        if self.fail_next is not None:
            error, self.fail_next = self.fail_next, None
            raise error


class _Nothing:
    pass


class _Runs:
    def __init__(self, world: FakeInMemoryWorld) -> None:
        self.world = world

    async def get(self, run_id: str, *, resolve_data: str = "all") -> WorkflowRun:
        await asyncio.sleep(0)
        self.world._maybe_fail()
        try:
            return self.world.runs_by_id[run_id]
        except KeyError:
            raise WorkflowRunNotFoundError(run_id) from None

    async def list(self, *, workflow_name=None, status=None, pagination=None, resolve_data="all") -> Page[WorkflowRun]:
        runs = [r for r in self.world.runs_by_id.values() if status in (None, r.status)]
        return Page(data=runs)


class _Events:
    def __init__(self, world: FakeInMemoryWorld) -> None:
        self.world = world
        self.log: list[Event] = []

    async def list(self, *, run_id: str, pagination=None, resolve_data="all") -> Page[Event]:
        return Page(data=[e for e in self.log if e.run_id == run_id])

    async def create(self, run_id: str | None, event: EventRequest) -> EventResult:
        await asyncio.sleep(0)
        self.world._maybe_fail()
        run = self.world.runs_by_id[run_id]
        if event.event_type in ("run_completed", "run_failed", "run_cancelled"):
            if run.status in TERMINAL_STATUSES:
                raise EntityConflictError(f'Cannot transition run from terminal state "{run.status}"', run_id=run_id)
            run.status = event.event_type.removeprefix("run_")
        stored = Event(
            run_id=run_id,
            event_id=f"evnt_{len(self.log):026d}",
            event_type=event.event_type,
            created_at=datetime.now(UTC),
            correlation_id=event.correlation_id,
            event_data=event.event_data,
        )
        self.log.append(stored)
        return EventResult(event=stored, run=run)


class _Streams:
    def __init__(self, world: FakeInMemoryWorld) -> None:
        self.world = world

    async def _append(self, name: str, run_id: str, chunks: Sequence[bytes | str]) -> None:
        await asyncio.sleep(0)
        self.world._maybe_fail()
        run = self.world.runs_by_id[run_id]
        if run.status in TERMINAL_STATUSES and not self.world.accepts_post_completion_writes:
            raise self.world._conflict(run_id)
        self.world.chunks[name].extend(c.encode() if isinstance(c, str) else c for c in chunks)

    async def write(self, name: str, run_id: str, chunk: bytes | str) -> None:
        await self._append(name, run_id, [chunk])

    async def write_multi(self, name: str, run_id: str, chunks: Sequence[bytes | str]) -> None:
        await self._append(name, run_id, chunks)

    async def close(self, name: str, run_id: str) -> None:
        await self._append(name, run_id, [])
        self.world.closed.add(name)

    async def list(self, run_id: str) -> list[str]:
        return [n for n in self.world.chunks if run_id.removeprefix("wrun_") in n]

    async def get_chunks(self, name: str, run_id: str, *, limit: int = 100, cursor=None) -> StreamChunks:
        return StreamChunks(done=name in self.world.closed)

    async def get_info(self, name: str, run_id: str) -> StreamInfo:
        return StreamInfo(tail_index=len(self.world.chunks[name]) - 1, done=name in self.world.closed)
