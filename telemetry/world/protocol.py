"""A typed async ``World``, modelled on ``@workflow/world``'s interface (4.x names).

Each namespace is its own narrow protocol so a reader that only lists runs need not pretend
to write streams. Streams use the 4.x argument order (name first), as the SDK's 4.8 does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Protocol, TypeVar, runtime_checkable

from .model import (
    Event,
    EventRequest,
    EventResult,
    Hook,
    Page,
    Pagination,
    ResolveData,
    RunStatus,
    Step,
    StreamChunks,
    StreamInfo,
    WorkflowRun,
)

R = TypeVar("R")


class Around(Protocol):
    """What a world call that is made of several round trips (``events.logs``) runs each of them
    through: ``traced`` passes one that makes each a span, as it makes its own calls spans.
    ``pending`` is the round trip, made but not started; ``run_id`` the run it reads, if one."""

    def __call__(self, pending: Awaitable[R], run_id: str | None, /) -> Awaitable[R]: ...


class Runs(Protocol):
    async def get(self, run_id: str, *, resolve_data: ResolveData = "all") -> WorkflowRun: ...

    async def list(
        self,
        *,
        workflow_name: str | None = None,
        status: RunStatus | None = None,
        pagination: Pagination | None = None,
        resolve_data: ResolveData = "all",
    ) -> Page[WorkflowRun]: ...


class Steps(Protocol):
    async def get(self, run_id: str | None, step_id: str, *, resolve_data: ResolveData = "all") -> Step: ...

    async def list(
        self, *, run_id: str, pagination: Pagination | None = None, resolve_data: ResolveData = "all"
    ) -> Page[Step]: ...


class Events(Protocol):
    async def get(self, run_id: str, event_id: str, *, resolve_data: ResolveData = "all") -> Event: ...

    async def list(
        self, *, run_id: str, pagination: Pagination | None = None, resolve_data: ResolveData = "all"
    ) -> Page[Event]: ...

    async def list_by_correlation_id(
        self,
        *,
        correlation_id: str,
        run_id: str | None = None,
        pagination: Pagination | None = None,
        resolve_data: ResolveData = "all",
    ) -> Page[Event]: ...

    async def create(self, run_id: str | None, event: EventRequest) -> EventResult: ...


class Hooks(Protocol):
    async def get(self, hook_id: str) -> Hook: ...

    async def get_by_token(self, token: str) -> Hook: ...

    async def list(self, *, run_id: str | None = None, pagination: Pagination | None = None) -> Page[Hook]: ...


class Streams(Protocol):
    async def write(self, name: str, run_id: str, chunk: bytes | str) -> None: ...

    async def write_multi(self, name: str, run_id: str, chunks: Sequence[bytes | str]) -> None: ...

    async def close(self, name: str, run_id: str) -> None: ...

    async def list(self, run_id: str) -> list[str]: ...

    async def get_chunks(
        self, name: str, run_id: str, *, limit: int = 100, cursor: str | None = None
    ) -> StreamChunks: ...

    async def get_info(self, name: str, run_id: str) -> StreamInfo: ...


@runtime_checkable
class World(Protocol):
    """Storage and streams of a world. Worlds that store writes to a finished run without
    complaint (local, postgres) say so with ``accepts_post_completion_writes = True``.

    The namespaces are read-only properties so a world may declare its own narrower types
    for them (``runs: LocalRuns``); a plain attribute member would demand exactly ``Runs``."""

    @property
    def runs(self) -> Runs: ...

    @property
    def steps(self) -> Steps: ...

    @property
    def events(self) -> Events: ...

    @property
    def hooks(self) -> Hooks: ...

    @property
    def streams(self) -> Streams: ...
