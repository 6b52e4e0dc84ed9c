"""Writing a run's stream without leaking post-completion conflicts.

A stream write can lose the race with the run's end (seed issue #1949: a step's write lands
after the workflow returned). world-vercel answers such a write with 409 "Run … is already
completed"; the SDK let that escape as an unhandled rejection. world-local and
world-postgres are worse in a quieter way: they **store the chunk after the run ended, or
after the stream's EOF, where no reader will ever see it — the data is lost silently**.

``StreamWriter`` treats both the same: the write is dropped, recorded through
``record_benign`` (DEBUG log line, counter, span attribute ``workflow.conflict="benign"``)
and never raised. On worlds that accept such writes it checks the run's status first, so
the loss becomes visible instead of silent. Any other failure is raised through
``throw_with_trace``.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span

from ._otel import tracer_for
from .errors import EntityConflictError
from .tracing import is_benign_conflict, record_benign, throw_with_trace
from .world import TERMINAL_STATUSES, World

__all__ = ["StreamWriter", "stream_name"]

_OPERATIONS = {
    "write": "streams.writeToStream",
    "write_multi": "streams.writeToStreamMulti",
    "close": "streams.closeStream",
}


def stream_name(run_id: str, namespace: str | None = None) -> str:
    """The SDK's stream id for a run: ``strm_<ULID>_user[_<base64url(namespace)>]``."""
    name = f"strm_{run_id.removeprefix('wrun_')}_user"
    if namespace:
        name += "_" + base64.urlsafe_b64encode(namespace.encode()).rstrip(b"=").decode()
    return name


class StreamWriter:
    """Writes and closes one stream of one run; ``dropped`` counts benign post-completion losses."""

    def __init__(
        self,
        world: World,
        run_id: str,
        *,
        namespace: str | None = None,
        name: str | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.world = world
        self.run_id = run_id
        self.name = name or stream_name(run_id, namespace)
        self.written = 0
        self.dropped = 0
        self._provider = tracer_provider
        self._logger = logger
        self._check_run = bool(getattr(world, "accepts_post_completion_writes", False))
        self._terminal: str | None = None

    async def write(self, chunk: bytes | str) -> bool:
        """Append one chunk. False when it was dropped as a benign post-completion write."""
        return await self._mutate("write", chunk, 1)

    async def write_many(self, chunks: Sequence[bytes | str]) -> bool:
        return await self._mutate("write_multi", list(chunks), len(chunks))

    async def close(self) -> bool:
        return await self._mutate("close", None, 0)

    async def __aenter__(self) -> StreamWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _mutate(self, operation: str, payload: object, count: int) -> bool:
        tracer = tracer_for(self._provider)
        if tracer is None:
            return await self._attempt(operation, payload, count, INVALID_SPAN)
        attributes = {
            "workflow.run.id": self.run_id,
            "workflow.stream.name": self.name,
            "workflow.stream.operation": operation,
        }
        with tracer.start_as_current_span(
            f"workflow.stream.{operation}",
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            return await self._attempt(operation, payload, count, span)

    async def _attempt(self, operation: str, payload: object, count: int, span: Span) -> bool:
        streams = self.world.streams
        try:
            if self._check_run:
                await self._refuse_if_terminal()
            if operation == "write":
                await streams.write(self.name, self.run_id, payload)  # type: ignore[arg-type]
            elif operation == "write_multi":
                await streams.write_multi(self.name, self.run_id, payload)  # type: ignore[arg-type]
            else:
                await streams.close(self.name, self.run_id)
        except Exception as error:
            if is_benign_conflict(error, operation=_OPERATIONS[operation]):
                record_benign(span, error, logger=self._logger)
                self.dropped += count
                return False
            throw_with_trace(span, error)
        self.written += count
        return True

    async def _refuse_if_terminal(self) -> None:
        """Raise the conflict world-vercel would, for worlds that would store the write silently."""
        if self._terminal is None:
            run = await self.world.runs.get(self.run_id, resolve_data="none")
            if run.status in TERMINAL_STATUSES:
                self._terminal = run.status
        if self._terminal is not None:
            raise EntityConflictError(f'Run "{self.run_id}" is already {self._terminal}', run_id=self.run_id)
