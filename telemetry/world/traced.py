"""``traced(world)``: every world call becomes a CLIENT span named as the SDK names it.

Span names and attributes copy ``instrumentObject`` in world-local/world-vercel
(``world.runs.get``, ``world.events.create step_completed``, ``world.streams.writeToStream``),
so our spans line up with the SDK's own in any backend. Failures go through
``throw_with_trace``; a post-completion conflict on a stream write goes through
``record_benign`` instead and is re-raised unchanged for the caller to handle.

Each World call has one explicit method below that names its span and the run/step it is
about, so a reader sees what is traced without running anything; they all share
:meth:`_Tracing.call`. Anything not listed (a backend's extra methods and attributes) is the
wrapped world's, untraced; ``events.logs`` (many runs' logs in one call) passes each of its
round trips through :class:`~telemetry.world.Around`, so those are spans too. With no tracer
provider a call costs one check and one extra await (bench section 3).
"""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any, Generic, TypeVar

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from .. import semconv
from .._otel import tracer_for
from ..tracing import is_benign_conflict, record_benign, throw_with_trace
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
from .protocol import Events, Hooks, Runs, Steps, Streams, World

__all__ = ["TracedEvents", "TracedHooks", "TracedRuns", "TracedSteps", "TracedStreams", "TracedWorld", "traced"]

R = TypeVar("R")
N = TypeVar("N")  # the wrapped namespace protocol (Runs, Steps…)


class _Tracing:
    """What every traced call of one world shares: who the peer is, and where spans go."""

    __slots__ = ("peer_service", "rpc_system", "tracer_provider")

    def __init__(self, peer_service: str, rpc_system: str, tracer_provider: trace.TracerProvider | None) -> None:
        self.peer_service = peer_service
        self.rpc_system = rpc_system
        self.tracer_provider = tracer_provider

    def call(self, span_name: str, run_id: str | None, step_id: str | None, pending: Awaitable[R]) -> Awaitable[R]:
        """``pending`` (a world call, made but not yet started) run inside a span named ``span_name``.

        It takes the call already made rather than a function and its arguments: a coroutine
        does nothing until awaited, so awaiting it inside the span times and parents it exactly,
        and with tracing off the world's own coroutine is handed back untouched (one check,
        no repacking of arguments, no extra frame). ``run_id``/``step_id`` become attributes.
        """
        tracer = tracer_for(self.tracer_provider)
        if tracer is None:
            return pending
        return self._in_span(tracer, span_name, run_id, step_id, pending)

    async def _in_span(
        self, tracer: trace.Tracer, span_name: str, run_id: str | None, step_id: str | None, pending: Awaitable[R]
    ) -> R:
        attributes: dict[str, str] = {
            semconv.RPC_SYSTEM: self.rpc_system,
            semconv.RPC_SERVICE: self.peer_service,
            semconv.RPC_METHOD: span_name,
            semconv.PEER_SERVICE: self.peer_service,
        }
        if run_id is not None:
            attributes[semconv.WORKFLOW_RUN_ID] = run_id
        if step_id is not None:
            attributes[semconv.STEP_ID] = step_id
        with tracer.start_as_current_span(
            span_name,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await pending
            except Exception as error:
                if is_benign_conflict(error, operation=span_name):
                    record_benign(span, error)
                    raise
                throw_with_trace(span, error)
            _result_attributes(span, result, run_id=run_id, step_id=step_id)
            return result


def _result_attributes(span: trace.Span, result: object, *, run_id: str | None, step_id: str | None) -> None:
    """Run and step ids the arguments did not carry, taken from what the world returned (as the SDK does)."""
    entity: object = result
    if isinstance(result, EventResult):
        entity = result.event or result.step or result
    if run_id is None:
        found = getattr(entity, "run_id", None)
        if isinstance(found, str):
            span.set_attribute(semconv.WORKFLOW_RUN_ID, found)
    if step_id is None:
        found = getattr(entity, "step_id", None)
        if isinstance(found, str):
            span.set_attribute(semconv.STEP_ID, found)


class _TracedNamespace(Generic[N]):
    """Common part of the namespace wrappers: calls not defined on the subclass go to the world untraced."""

    def __init__(self, inner: N, tracing: _Tracing) -> None:
        self._inner = inner
        self._tracing = tracing

    def __getattr__(self, name: str) -> Any:
        if name == "_inner":  # not set yet (copy, unpickling): don't recurse into ourselves
            raise AttributeError(name)
        return getattr(self._inner, name)


class TracedRuns(_TracedNamespace[Runs]):
    async def get(self, run_id: str, *, resolve_data: ResolveData = "all") -> WorkflowRun:
        return await self._tracing.call(
            "world.runs.get", run_id, None, self._inner.get(run_id, resolve_data=resolve_data)
        )

    async def list(
        self,
        *,
        workflow_name: str | None = None,
        status: RunStatus | None = None,
        pagination: Pagination | None = None,
        resolve_data: ResolveData = "all",
    ) -> Page[WorkflowRun]:
        return await self._tracing.call(
            "world.runs.list",
            None,
            None,
            self._inner.list(
                workflow_name=workflow_name, status=status, pagination=pagination, resolve_data=resolve_data
            ),
        )


class TracedSteps(_TracedNamespace[Steps]):
    async def get(self, run_id: str | None, step_id: str, *, resolve_data: ResolveData = "all") -> Step:
        return await self._tracing.call(
            "world.steps.get", run_id, step_id, self._inner.get(run_id, step_id, resolve_data=resolve_data)
        )

    async def list(
        self, *, run_id: str, pagination: Pagination | None = None, resolve_data: ResolveData = "all"
    ) -> Page[Step]:
        return await self._tracing.call(
            "world.steps.list",
            run_id,
            None,
            self._inner.list(run_id=run_id, pagination=pagination, resolve_data=resolve_data),
        )


class TracedEvents(_TracedNamespace[Events]):
    """Also ``logs`` (many runs' logs in one call) where the world has it, each of its round trips a
    ``world.events.list`` span: a world without it still has none, so readers read log by log."""

    def __getattr__(self, name: str) -> Any:
        if name != "logs":
            return super().__getattr__(name)
        inner: Any = self._inner  # ``logs`` is no part of the Events protocol: some worlds have it
        logs = inner.logs  # AttributeError for a world without it, as for the world itself
        tracing = self._tracing

        def around(pending: Awaitable[R], run_id: str | None) -> Awaitable[R]:
            return tracing.call("world.events.list", run_id, None, pending)

        def traced_logs(after: Any, **options: Any) -> Any:
            return logs(after, around=around, **options)

        return traced_logs

    async def get(self, run_id: str, event_id: str, *, resolve_data: ResolveData = "all") -> Event:
        return await self._tracing.call(
            "world.events.get", run_id, None, self._inner.get(run_id, event_id, resolve_data=resolve_data)
        )

    async def list(
        self, *, run_id: str, pagination: Pagination | None = None, resolve_data: ResolveData = "all"
    ) -> Page[Event]:
        return await self._tracing.call(
            "world.events.list",
            run_id,
            None,
            self._inner.list(run_id=run_id, pagination=pagination, resolve_data=resolve_data),
        )

    async def list_by_correlation_id(
        self,
        *,
        correlation_id: str,
        run_id: str | None = None,
        pagination: Pagination | None = None,
        resolve_data: ResolveData = "all",
    ) -> Page[Event]:
        return await self._tracing.call(
            "world.events.listByCorrelationId",
            run_id,
            None,
            self._inner.list_by_correlation_id(
                correlation_id=correlation_id, run_id=run_id, pagination=pagination, resolve_data=resolve_data
            ),
        )

    async def create(self, run_id: str | None, event: EventRequest) -> EventResult:
        """``world.events.create <eventType>``; a step's events also carry ``step.id`` (their correlation id)."""
        span_name = f"world.events.create {event.event_type}" if event.event_type else "world.events.create"
        correlation = event.correlation_id
        step_id = correlation if correlation is not None and correlation.startswith("step_") else None
        return await self._tracing.call(span_name, run_id, step_id, self._inner.create(run_id, event))


class TracedHooks(_TracedNamespace[Hooks]):
    async def get(self, hook_id: str) -> Hook:
        return await self._tracing.call("world.hooks.get", None, None, self._inner.get(hook_id))

    async def get_by_token(self, token: str) -> Hook:
        return await self._tracing.call("world.hooks.getByToken", None, None, self._inner.get_by_token(token))

    async def list(self, *, run_id: str | None = None, pagination: Pagination | None = None) -> Page[Hook]:
        return await self._tracing.call(
            "world.hooks.list", run_id, None, self._inner.list(run_id=run_id, pagination=pagination)
        )


class TracedStreams(_TracedNamespace[Streams]):
    """Stream calls under the SDK's 4.x streamer names (``writeToStream``, ``getStreamChunks``…)."""

    async def write(self, name: str, run_id: str, chunk: bytes | str) -> None:
        await self._tracing.call("world.streams.writeToStream", run_id, None, self._inner.write(name, run_id, chunk))

    async def write_multi(self, name: str, run_id: str, chunks: Sequence[bytes | str]) -> None:
        await self._tracing.call(
            "world.streams.writeToStreamMulti", run_id, None, self._inner.write_multi(name, run_id, chunks)
        )

    async def close(self, name: str, run_id: str) -> None:
        await self._tracing.call("world.streams.closeStream", run_id, None, self._inner.close(name, run_id))

    async def list(self, run_id: str) -> list[str]:
        return await self._tracing.call("world.streams.listStreamsByRunId", run_id, None, self._inner.list(run_id))

    async def get_chunks(self, name: str, run_id: str, *, limit: int = 100, cursor: str | None = None) -> StreamChunks:
        return await self._tracing.call(
            "world.streams.getStreamChunks",
            run_id,
            None,
            self._inner.get_chunks(name, run_id, limit=limit, cursor=cursor),
        )

    async def get_info(self, name: str, run_id: str) -> StreamInfo:
        return await self._tracing.call("world.streams.getStreamInfo", run_id, None, self._inner.get_info(name, run_id))


class TracedWorld:
    """A world whose calls are spans; anything else is the wrapped world's."""

    def __init__(
        self,
        world: World,
        *,
        peer_service: str,
        rpc_system: str | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._world = world
        system = rpc_system or getattr(world, "rpc_system", None) or "local"
        self._tracing = _Tracing(peer_service, system, tracer_provider)
        self.runs = TracedRuns(world.runs, self._tracing)
        self.steps = TracedSteps(world.steps, self._tracing)
        self.events = TracedEvents(world.events, self._tracing)
        self.hooks = TracedHooks(world.hooks, self._tracing)
        self.streams = TracedStreams(world.streams, self._tracing)

    @property
    def peer_service(self) -> str:
        return self._tracing.peer_service

    @property
    def rpc_system(self) -> str:
        return self._tracing.rpc_system

    @property
    def tracer_provider(self) -> trace.TracerProvider | None:
        return self._tracing.tracer_provider

    def __getattr__(self, name: str) -> Any:
        if name == "_world":  # not set yet (copy, unpickling): don't recurse into ourselves
            raise AttributeError(name)
        return getattr(self._world, name)


def traced(
    world: World,
    *,
    peer_service: str,
    rpc_system: str | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> TracedWorld:
    """Wrap ``world`` so each call is a span. With no tracer provider it adds one cheap check."""
    return TracedWorld(world, peer_service=peer_service, rpc_system=rpc_system, tracer_provider=tracer_provider)
