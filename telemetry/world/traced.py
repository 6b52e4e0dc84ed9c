"""``traced(world)``: every world call becomes a CLIENT span named as the SDK names it.

Span names and attributes copy ``instrumentObject`` in world-local/world-vercel
(``world.runs.get``, ``world.events.create step_completed``, ``world.streams.writeToStream``),
so our spans line up with the SDK's own in any backend. Failures go through
``throw_with_trace``; a post-completion conflict on a stream write goes through
``record_benign`` instead and is re-raised unchanged for the caller to handle.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from .._otel import tracer_for
from ..tracing import is_benign_conflict, record_benign, throw_with_trace
from . import protocol

__all__ = ["traced", "SPAN_METHODS"]

#: Python method -> the SDK's method name, per namespace.
SPAN_METHODS: dict[str, dict[str, str]] = {
    "runs": {"get": "get", "list": "list"},
    "steps": {"get": "get", "list": "list"},
    "events": {"get": "get", "list": "list", "list_by_correlation_id": "listByCorrelationId", "create": "create"},
    "hooks": {"get": "get", "get_by_token": "getByToken", "list": "list"},
    "streams": {
        "write": "writeToStream",
        "write_multi": "writeToStreamMulti",
        "close": "closeStream",
        "list": "listStreamsByRunId",
        "get_chunks": "getStreamChunks",
        "get_info": "getStreamInfo",
    },
}

_PROTOCOLS = {
    "runs": protocol.Runs,
    "steps": protocol.Steps,
    "events": protocol.Events,
    "hooks": protocol.Hooks,
    "streams": protocol.Streams,
}


def _position(namespace: str, method: str, param: str) -> int | None:
    """Index of ``param`` among the positional parameters of the protocol method, if any."""
    params = list(inspect.signature(getattr(_PROTOCOLS[namespace], method)).parameters.values())[1:]
    for index, p in enumerate(params):
        if p.name == param:
            return index if p.kind is p.POSITIONAL_OR_KEYWORD else None
    return None


def _argument(args: tuple, kwargs: dict, index: int | None, name: str) -> Any:
    if index is not None and index < len(args):
        return args[index]
    return kwargs.get(name)


class _Call:
    """Static facts about one wrapped method, computed once per world."""

    __slots__ = ("span_name", "run_index", "step_index", "is_create", "has_step_param")

    def __init__(self, namespace: str, method: str) -> None:
        self.span_name = f"world.{namespace}.{SPAN_METHODS[namespace][method]}"
        self.run_index = _position(namespace, method, "run_id")
        self.step_index = _position(namespace, method, "step_id")
        self.has_step_param = "step_id" in inspect.signature(getattr(_PROTOCOLS[namespace], method)).parameters
        self.is_create = namespace == "events" and method == "create"


class _TracedNamespace:
    def __init__(self, inner: Any, namespace: str, world: TracedWorld) -> None:
        self._inner = inner
        for method in SPAN_METHODS[namespace]:
            target = getattr(inner, method, None)
            if target is not None:
                setattr(self, method, self._wrap(target, _Call(namespace, method), world))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @staticmethod
    def _wrap(target: Callable[..., Awaitable[Any]], call: _Call, world: TracedWorld) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(target)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            tracer = tracer_for(world.tracer_provider)
            if tracer is None:
                return await target(*args, **kwargs)
            name, attributes = world.start_attributes(call, args, kwargs)
            with tracer.start_as_current_span(
                name,
                kind=SpanKind.CLIENT,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    result = await target(*args, **kwargs)
                except Exception as error:
                    if is_benign_conflict(error, operation=call.span_name):
                        record_benign(span, error)
                        raise
                    throw_with_trace(span, error)
                _result_attributes(span, result, attributes)
                return result

        return wrapper


def _result_attributes(span: trace.Span, result: Any, start: dict[str, Any]) -> None:
    entity = getattr(result, "event", None) or getattr(result, "step", None) or result
    if "workflow.run.id" not in start:
        run_id = getattr(entity, "run_id", None)
        if isinstance(run_id, str):
            span.set_attribute("workflow.run.id", run_id)
    if "step.id" not in start:
        step_id = getattr(entity, "step_id", None)
        if isinstance(step_id, str):
            span.set_attribute("step.id", step_id)


class TracedWorld:
    """A world whose calls are spans; anything else is the wrapped world's."""

    def __init__(
        self,
        world: Any,
        *,
        peer_service: str,
        rpc_system: str | None = None,
        tracer_provider: trace.TracerProvider | None = None,
    ) -> None:
        self._world = world
        self.peer_service = peer_service
        self.rpc_system = rpc_system or getattr(world, "rpc_system", None) or "local"
        self.tracer_provider = tracer_provider
        for namespace in SPAN_METHODS:
            setattr(self, namespace, _TracedNamespace(getattr(world, namespace), namespace, self))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._world, name)

    def start_attributes(self, call: _Call, args: tuple, kwargs: dict) -> tuple[str, dict[str, Any]]:
        name = call.span_name
        step_id = _argument(args, kwargs, call.step_index, "step_id") if call.has_step_param else None
        if call.is_create:
            event = _argument(args, kwargs, 1, "event")
            event_type = getattr(event, "event_type", None)
            if event_type:
                name = f"{name} {event_type}"
            correlation = getattr(event, "correlation_id", None)
            if isinstance(correlation, str) and correlation.startswith("step_"):
                step_id = correlation
        attributes: dict[str, Any] = {
            "rpc.system": self.rpc_system,
            "rpc.service": self.peer_service,
            "rpc.method": name,
            "peer.service": self.peer_service,
        }
        run_id = _argument(args, kwargs, call.run_index, "run_id")
        if isinstance(run_id, str):
            attributes["workflow.run.id"] = run_id
        if isinstance(step_id, str):
            attributes["step.id"] = step_id
        return name, attributes


def traced(
    world: Any,
    *,
    peer_service: str,
    rpc_system: str | None = None,
    tracer_provider: trace.TracerProvider | None = None,
) -> Any:
    """Wrap ``world`` so each call is a span. With no tracer provider it adds one cheap check."""
    return TracedWorld(world, peer_service=peer_service, rpc_system=rpc_system, tracer_provider=tracer_provider)
