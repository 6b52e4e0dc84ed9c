"""OpenTelemetry for Python workflow apps built on ``vercel-workflow`` (PyPI), which has none of its own.

``VercelWorkflowInstrumentor().instrument()`` (or ``opentelemetry-instrument`` through the
``opentelemetry_instrumentor`` entry point) patches, at class level, vercel-workflow's two World
implementations (the local world and the Vercel world) so that:

- every World call is a CLIENT span named as the TypeScript SDK's ``instrumentObject`` names it
  (``world.runs.get``, ``world.events.create step_completed``, ``world.streams.writeToStream``…, the same
  names ``telemetry.world.traced`` gives our own world calls), with ``workflow.run.id`` / ``step.id``.
  A failure goes through ``telemetry.tracing.throw_with_trace``;
- a stream write that lost the race with the run's end (the Vercel world's 409 on a finished run) goes
  through ``record_benign`` instead: DEBUG log, status left Unset, ``workflow.conflict="benign"``, counted,
  and — the chunk being lost either way — not raised into the step, so a straggler does not fail and
  retry a step of a finished run (``raise_benign_stream_conflicts=True`` keeps the SDK's raise);
- the local world raises nothing for such a write: it stores the chunk. A write to a run whose end this
  process recorded (its ``run_completed`` / ``run_failed`` / ``run_cancelled`` went through an instrumented
  world) is recorded the same way — benign, counted, the span says ``workflow.stream.after_run_end`` — so
  a straggler looks alike on both worlds. It costs one dict lookup; a run ended by another process is not
  recognised (rare: the local world's embedded queue delivers each message in the process that queued it);
- each queue delivery the runtime handles is a CONSUMER span, ``WORKFLOW <workflowName>`` for a replay and
  ``STEP <stepName>`` for a step attempt (the 4.x TS names), annotated from the events the delivery writes
  (attempt, retry, failure, run outcome);
- the trace context travels with the run as in the TS SDK: ``run_created`` gets a ``workflow.start <name>``
  span whose ``traceparent`` is stored in ``executionContext.traceCarrier`` (the key
  ``telemetry.trace_identity`` reads to put the event-log trace in the same trace), and queue messages carry
  ``traceCarrier`` so every delivery, in any process, parents under that span. One run, one trace.

The delivery spans wrap the handler a ``Workflows`` registry hands its world, so ``instrument()`` must run
before the registry is created (``opentelemetry-instrument`` does); World spans work either way. With no
tracer provider every wrapper costs one check; ``uninstrument()`` puts the original functions back.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]  # mypy 1.x misses this re-export of opentelemetry-instrumentation 0.66b2
    BaseInstrumentor,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from .._otel import tracer_for
from ..errors import EntityConflictError
from ..payloads import decode_payload
from ..semconv import (
    ERROR_TYPE,
    PEER_SERVICE,
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
    STEP_ATTEMPT,
    STEP_ID,
    STEP_NAME,
    WORKFLOW_NAME,
    WORKFLOW_RUN_ID,
)
from ..tracing import is_benign_conflict, record_benign, throw_with_trace

__all__ = ["REQUIREMENT", "WORLD_SPANS", "VercelWorkflowInstrumentor"]

log = logging.getLogger("telemetry.instrumentation.vercel_workflow")

#: What ``instrumentation_dependencies()`` declares (and the ``vercel-workflow`` extra installs).
REQUIREMENT: Final = "vercel-workflow >= 0.12"

#: Where vercel-workflow keeps its World classes. The package exports no public World type, so, like every
#: ``opentelemetry-instrumentation-*`` package, we patch where the code lives: (module, class, peer, rpc.system).
_WORLDS: Final = (
    ("vercel.workflow._internal.worlds.local", "LocalWorld", "world-local", "local"),
    ("vercel.workflow._internal.worlds.vercel", "VercelWorld", "workflow-server", "http"),
)

_MESSAGING_SYSTEM: Final = "messaging.system"
_MESSAGING_DESTINATION: Final = "messaging.destination.name"
_MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
_MESSAGING_OPERATION: Final = "messaging.operation.type"
_DELIVERY_COUNT: Final = "messaging.delivery.attempt"
_WORKFLOW_OPERATION: Final = "workflow.operation"
_RUN_STATUS: Final = "workflow.run.status"
_STEP_STATUS: Final = "step.status"
_STEP_ERROR_NAME: Final = "step.error.name"
_STEP_ERROR_MESSAGE: Final = "step.error.message"
_STEP_WILL_RETRY: Final = "step.retry.will_retry"
_CONTINUATION_DELAY: Final = "workflow.queue.continuation_delay_s"
_QUEUE_SYSTEM: Final = "vercel-queue"
#: on a stream write the local world stored although the run had already ended (it raises no conflict)
_AFTER_RUN_END: Final = "workflow.stream.after_run_end"
_TERMINAL_RUN: Final = frozenset({"completed", "failed", "cancelled"})


#: vercel-workflow World method -> the span name the TS SDK's ``instrumentObject`` gives the same call
#: (4.x names, as ``telemetry.world.traced`` uses). ``events_create`` gets `` <eventType>`` appended.
WORLD_SPANS: Final[Mapping[str, str]] = {
    "runs_get": "world.runs.get",
    "steps_get": "world.steps.get",
    "hooks_get_by_token": "world.hooks.getByToken",
    "events_create": "world.events.create",
    "events_list": "world.events.list",
    "streams_write": "world.streams.writeToStream",
    "streams_write_multi": "world.streams.writeToStreamMulti",
    "streams_close": "world.streams.closeStream",
    "streams_list": "world.streams.listStreamsByRunId",
    "streams_get_chunks": "world.streams.getStreamChunks",
    "streams_get_info": "world.streams.getStreamInfo",
}
_STREAM_WRITES: Final = frozenset({"streams_write", "streams_write_multi", "streams_close"})


class _Execution:
    """The delivery span in progress (a ``WORKFLOW`` replay or a ``STEP`` attempt) and what it learned."""

    __slots__ = ("span", "is_step")

    def __init__(self, span: Span, is_step: bool) -> None:
        self.span = span
        self.is_step = is_step


_execution: ContextVar[_Execution | None] = ContextVar("wft_vercel_workflow_execution", default=None)


class _Carriers:
    """Each run's stored trace carrier, so a message published outside the run's trace (the first one,
    after ``start()``; a hook resume from a web request) still joins it. Bounded: most recent runs."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._items: OrderedDict[str, dict[str, str]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, run_id: str, carrier: Mapping[str, str]) -> None:
        with self._lock:
            self._items[run_id] = dict(carrier)
            self._items.move_to_end(run_id)
            while len(self._items) > self._limit:
                self._items.popitem(last=False)

    def get(self, run_id: str) -> dict[str, str] | None:
        with self._lock:
            return self._items.get(run_id)


class _EndedRuns:
    """The runs whose end this process recorded, and how each ended. Bounded: most recent runs."""

    def __init__(self, limit: int = 10_000) -> None:
        self._limit = limit
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, run_id: str, status: str) -> None:
        with self._lock:
            self._items[run_id] = status
            self._items.move_to_end(run_id)
            while len(self._items) > self._limit:
                self._items.popitem(last=False)

    def get(self, run_id: str) -> str | None:
        return self._items.get(run_id)  # a single dict read: atomic under the GIL


class _State:
    """What one ``instrument()`` call set up; ``uninstrument()`` undoes exactly this."""

    def __init__(self, tracer_provider: trace.TracerProvider | None, raise_benign: bool) -> None:
        self.tracer_provider = tracer_provider
        self.raise_benign = raise_benign
        self.enabled = True
        self.carriers = _Carriers()
        self.ended = _EndedRuns()
        self.originals: list[tuple[type, str, Any]] = []

    def tracer(self) -> trace.Tracer | None:
        if not self.enabled:
            return None
        return tracer_for(self.tracer_provider)


class VercelWorkflowInstrumentor(BaseInstrumentor):  # type: ignore[misc]  # BaseInstrumentor is Any to mypy (above)
    """``instrument(tracer_provider=None, raise_benign_stream_conflicts=False)`` / ``uninstrument()``."""

    _state: _State | None = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return (REQUIREMENT,)

    def _instrument(self, **kwargs: Any) -> None:
        state = _State(kwargs.get("tracer_provider"), bool(kwargs.get("raise_benign_stream_conflicts", False)))
        for module_name, class_name, peer, rpc_system in _WORLDS:
            try:
                cls = getattr(importlib.import_module(module_name), class_name)
            except (ImportError, AttributeError) as error:  # a vercel-workflow that moved its worlds
                log.warning("vercel-workflow world %s.%s not instrumented: %s", module_name, class_name, error)
                continue
            for method, name in WORLD_SPANS.items():
                original = cls.__dict__.get(method)
                if original is None:
                    continue
                _patch(state, cls, method, _world_wrapper(state, original, method, name, peer, rpc_system))
            original_handler_factory = cls.__dict__.get("create_queue_handler")
            if original_handler_factory is not None:
                _patch(state, cls, "create_queue_handler", _handler_factory(state, original_handler_factory))
            original_queue = cls.__dict__.get("queue")
            if original_queue is not None:
                _patch(state, cls, "queue", _queue_wrapper(state, original_queue))
        VercelWorkflowInstrumentor._state = state

    def _uninstrument(self, **kwargs: Any) -> None:
        state = VercelWorkflowInstrumentor._state
        if state is None:
            return
        state.enabled = False  # handlers already handed to the queue keep their wrapper: make it a pass-through
        for cls, method, original in reversed(state.originals):
            setattr(cls, method, original)
        state.originals.clear()
        VercelWorkflowInstrumentor._state = None


def _patch(state: _State, cls: type, method: str, wrapper: Any) -> None:
    state.originals.append((cls, method, cls.__dict__[method]))
    setattr(cls, method, wrapper)


# ---- World calls -------------------------------------------------------------------------------


def _world_wrapper(
    state: _State, original: Callable[..., Awaitable[Any]], method: str, name: str, peer: str, rpc_system: str
) -> Callable[..., Awaitable[Any]]:
    is_create = method == "events_create"
    is_stream_write = method in _STREAM_WRITES
    run_arg = None if method == "hooks_get_by_token" else 0

    @functools.wraps(original)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        """With tracing off, the world's own coroutine is handed back untouched: one check, no extra frame."""
        tracer = state.tracer()
        if tracer is None:
            return original(self, *args, **kwargs)
        return in_span(tracer, self, args, kwargs)

    async def in_span(tracer: trace.Tracer, self: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        span_name = name
        attributes: dict[str, Any] = {
            RPC_SYSTEM: rpc_system,
            RPC_SERVICE: peer,
            PEER_SERVICE: peer,
        }
        run_id = args[0] if run_arg is not None and args else kwargs.get("run_id")
        if isinstance(run_id, str):
            attributes[WORKFLOW_RUN_ID] = run_id
        event = (args[1] if len(args) > 1 else kwargs.get("data")) if is_create else None
        if method == "steps_get":
            step_id = args[1] if len(args) > 1 else kwargs.get("step_id")
            if isinstance(step_id, str):
                attributes[STEP_ID] = step_id
        if event is not None:
            event_type = getattr(event, "event_type", None)
            if event_type:
                span_name = f"{name} {event_type}"
            correlation = getattr(event, "correlation_id", None)
            if isinstance(correlation, str) and correlation.startswith("step_"):
                attributes[STEP_ID] = correlation
        attributes[RPC_METHOD] = span_name
        with _run_start(tracer, state, event, run_id) if is_create else _nothing():
            with tracer.start_as_current_span(
                span_name,
                kind=SpanKind.CLIENT,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                ended = state.ended.get(run_id) if is_stream_write and isinstance(run_id, str) else None
                try:
                    result = await original(self, *args, **kwargs)
                except Exception as error:
                    if is_stream_write and is_benign_conflict(error, operation=name):
                        record_benign(span, error)
                        if state.raise_benign:
                            raise
                        return None
                    throw_with_trace(span, error)
                if ended is not None and isinstance(run_id, str):  # stored (local world), yet the run had ended
                    _record_after_end(span, name, run_id, ended)
                if is_create:
                    _after_event(span, event, result)
                    _remember_end(state, result)
                return result

    return wrapper


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def _remember_end(state: _State, result: Any) -> None:
    """A run the world now says is over: later stream writes to it lost the race with its end."""
    run = getattr(result, "run", None)
    status = getattr(run, "status", None)
    run_id = getattr(run, "run_id", None)
    if status in _TERMINAL_RUN and isinstance(run_id, str):
        state.ended.add(run_id, status)


def _record_after_end(span: Span, operation: str, run_id: str, status: str) -> None:
    """A stream write the world stored after the run ended: what the Vercel world answers with a 409.

    The conflict is described, not raised: ``record_benign`` (the one place benign conflicts are logged
    and counted) gets the error the run's end amounts to, and the span says the chunk was stored anyway.
    """
    conflict = EntityConflictError(
        f'Run "{run_id}" is already {status}: {operation} after the run ended (the world stored it)',
        run_id=run_id,
    )
    if not is_benign_conflict(conflict, operation=operation):  # the shared rule decides, as for a 409
        return
    span.set_attribute(_AFTER_RUN_END, True)
    record_benign(span, conflict)


@contextmanager
def _run_start(tracer: trace.Tracer, state: _State, event: Any, run_id: Any) -> Iterator[None]:
    """For ``run_created``: the ``workflow.start <name>`` span, its traceparent stored on the run."""
    if getattr(event, "event_type", None) != "run_created":
        yield
        return
    data = event.event_data
    workflow = getattr(data, "workflow_name", "") or ""
    attributes: dict[str, Any] = {_WORKFLOW_OPERATION: "start", WORKFLOW_NAME: workflow}
    if isinstance(run_id, str):
        attributes[WORKFLOW_RUN_ID] = run_id
    with tracer.start_as_current_span(f"workflow.start {workflow}", kind=SpanKind.PRODUCER, attributes=attributes):
        context = dict(data.execution_context or {})
        carrier = context.get("traceCarrier")
        if not (isinstance(carrier, dict) and carrier.get("traceparent")):  # never overwrite the caller's
            carrier = {}
            propagate.inject(carrier)
            context["traceCarrier"] = carrier
            data.execution_context = context
        if isinstance(run_id, str) and carrier:
            state.carriers.remember(run_id, carrier)
        yield


def _after_event(span: Span, event: Any, result: Any) -> None:
    """Result attributes on the world span, and what the event says about the delivery in progress."""
    entity = getattr(result, "run", None) or getattr(result, "step", None) or getattr(result, "event", None)
    run_id = getattr(entity, "run_id", None)
    if run_id is None:
        props = getattr(getattr(result, "event", None), "server_props", None)
        run_id = getattr(props, "run_id", None)
    if isinstance(run_id, str):
        span.set_attribute(WORKFLOW_RUN_ID, run_id)
    execution = _execution.get()
    if execution is None or event is None:
        return
    kind = getattr(event, "event_type", "")
    target = execution.span
    if execution.is_step:
        if kind == "step_started":
            attempt = getattr(getattr(result, "step", None), "attempt", None)
            if isinstance(attempt, int):
                target.set_attribute(STEP_ATTEMPT, attempt)
            target.set_attribute(_STEP_STATUS, "running")
        elif kind == "step_completed":
            target.set_attribute(_STEP_STATUS, "completed")
        elif kind in ("step_retrying", "step_failed"):
            name, message = _error_facts(getattr(event.event_data, "error", None))
            target.set_attribute(_STEP_ERROR_NAME, name)
            target.set_attribute(_STEP_ERROR_MESSAGE, message)
            target.set_attribute(ERROR_TYPE, name)
            retrying = kind == "step_retrying"
            target.set_attribute(_STEP_WILL_RETRY, retrying)
            target.set_attribute(_STEP_STATUS, "retrying" if retrying else "failed")
            target.add_event("exception", {"exception.type": name, "exception.message": message})
            if retrying:
                retry_after = getattr(event.event_data, "retry_after", None)
                target.add_event("retry.scheduled", {"retry.after": str(retry_after)} if retry_after else {})
            else:
                target.set_status(Status(StatusCode.ERROR, f"{name}: {message}"))
    elif kind == "run_completed":
        target.set_attribute(_RUN_STATUS, "completed")
    elif kind == "run_failed":
        name, message = _error_facts(getattr(event.event_data, "error", None))
        code = getattr(event.event_data, "error_code", None)
        target.set_attribute(_RUN_STATUS, "failed")
        target.set_attribute(ERROR_TYPE, code or name)
        target.add_event("exception", {"exception.type": name, "exception.message": message})
        target.set_status(Status(StatusCode.ERROR, f"{name}: {message}"))


#: vercel-workflow's wire tags for Python built-ins (its ``error_serde``), back to the names a Python user raised
_PYTHON_NAMES: Final = {"RangeError": "ValueError", "ReferenceError": "NameError"}


def _error_facts(serialized: Any) -> tuple[str, str]:
    """(name, message) of a serialized error: vercel-workflow stores ``devl[["RangeError",1],{message,…}]``."""
    try:
        value = decode_payload(serialized)
    except Exception:  # a span attribute must never fail the delivery
        return "Error", ""
    payload = getattr(value, "value", None)
    if isinstance(payload, dict):  # JSValue(<tag>, {message, name?, …})
        tag = str(getattr(value, "type", "Error"))
        return str(payload.get("name") or _PYTHON_NAMES.get(tag, tag)), str(payload.get("message", ""))
    name = getattr(value, "name", None)
    if isinstance(name, str):  # JSError
        return name, str(getattr(value, "message", ""))
    if isinstance(value, dict):
        return str(value.get("name") or "Error"), str(value.get("message", ""))
    return "Error", str(value) if value is not None else ""


# ---- queue: messages carry the run's trace context; deliveries are spans -----------------------


def _queue_wrapper(state: _State, original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(original)
    async def wrapper(self: Any, queue_name: str, message: Any, *args: Any, **kwargs: Any) -> Any:
        tracer = state.tracer()
        if tracer is None or not hasattr(message, "trace_carrier") or message.trace_carrier:
            return await original(self, queue_name, message, *args, **kwargs)
        carrier = state.carriers.get(getattr(message, "run_id", "") or "")
        if carrier is None:
            carrier = {}
            propagate.inject(carrier)
        if carrier:
            message.trace_carrier = carrier
        return await original(self, queue_name, message, *args, **kwargs)

    return wrapper


def _handler_factory(state: _State, original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def create_queue_handler(self: Any, queue_name_prefix: str, handler: Any) -> Any:
        return original(self, queue_name_prefix, _traced_handler(state, handler))

    return create_queue_handler


def _workflow_name(queue_name: str) -> str:
    """``__wkf_workflow_<name>`` (or ``__<ns>_wkf_workflow_<name>``) -> ``<name>``."""
    marker = "wkf_workflow_"
    index = queue_name.find(marker)
    return queue_name[index + len(marker) :] if index >= 0 else queue_name


def _traced_handler(state: _State, handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(handler)
    async def traced(message: Any, *, attempt: int, queue_name: str, message_id: str) -> Any:
        tracer = state.tracer()
        if tracer is None or not isinstance(message, dict) or "runId" not in message:  # health checks too
            return await handler(message, attempt=attempt, queue_name=queue_name, message_id=message_id)
        run_id = str(message["runId"])
        carrier = message.get("traceCarrier")
        if isinstance(carrier, dict) and carrier:
            state.carriers.remember(run_id, carrier)
        else:
            carrier = state.carriers.get(run_id)
        parent = propagate.extract(carrier) if carrier else otel_context.get_current()
        step_id, step_name = message.get("stepId"), message.get("stepName")
        workflow = _workflow_name(queue_name)
        attributes: dict[str, Any] = {
            WORKFLOW_RUN_ID: run_id,
            WORKFLOW_NAME: workflow,
            _MESSAGING_SYSTEM: _QUEUE_SYSTEM,
            _MESSAGING_DESTINATION: queue_name,
            _MESSAGING_MESSAGE_ID: message_id,
            _MESSAGING_OPERATION: "process",
            _DELIVERY_COUNT: attempt,
        }
        if step_id:
            attributes.update({STEP_ID: str(step_id), STEP_NAME: str(step_name or "")})
            name = f"STEP {step_name}"
        else:
            attributes[_WORKFLOW_OPERATION] = "execute"
            name = f"WORKFLOW {workflow}"
        with tracer.start_as_current_span(
            name,
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            token = _execution.set(_Execution(span, bool(step_id)))
            try:
                result = await handler(message, attempt=attempt, queue_name=queue_name, message_id=message_id)
            except Exception as error:
                throw_with_trace(span, error)
            finally:
                _execution.reset(token)
            delay = getattr(result, "delay_seconds", None)
            if isinstance(delay, (int, float)):
                span.set_attribute(_CONTINUATION_DELAY, float(delay))
            return result

    return traced
