"""The world tailer inside the service: ``telemetry.follow.Follower`` writing into the store."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan

from telemetry.export import run_resource
from telemetry.follow import Checkpoint, Follower
from telemetry.payloads import to_jsonable

from .metrics import Metrics
from .otlp import records_from
from .store import EventRow, RunInfo
from .writer import Batch, Overloaded, Writer

__all__ = ["Tailer"]

log = logging.getLogger("collector.tailer")


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1e9)


class Tailer:
    def __init__(
        self,
        world: Any,
        writer: Writer,
        metrics: Metrics,
        checkpoint_path: str,
        *,
        world_kind: str,
        interval: float = 0.25,
        forward: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        self.world = world
        self.writer = writer
        self.metrics = metrics
        self.forward = forward
        self.follower = Follower(
            world, self._deliver, Checkpoint(checkpoint_path), resource=run_resource(world_kind), interval=interval
        )

    async def _submit(self, batch: Batch) -> None:
        while True:  # our own writes wait their turn instead of failing
            try:
                await self.writer.submit(batch)
                return
            except Overloaded:
                await asyncio.sleep(0.2)

    async def _deliver(self, run: Any, events: list[Any], spans: list[ReadableSpan]) -> None:
        """One commit per changed run: its events, what the world says of it, its new spans."""
        rows = [
            EventRow(
                e.run_id,
                e.event_id,
                e.event_type,
                e.correlation_id,
                _ns(e.created_at),
                json.dumps(to_jsonable(e.event_data), default=str) if e.event_data else None,
            )
            for e in events
        ]
        payload = encode_spans(spans) if spans else None
        records = records_from(payload)[0] if payload is not None else []
        for record in records:
            record.source = "world"
        await self._submit(
            Batch(
                spans=records,
                events=rows,
                runs=[RunInfo(run.run_id, run.workflow_name, run.status, _ns(run.created_at))],
            )
        )
        self.metrics.tailer_spans += len(records)
        if events:
            self.metrics.tailer_lag_seconds = max(0.0, time.time() - events[-1].created_at.timestamp())
        if self.forward is not None and payload is not None:
            await self.forward(payload.SerializeToString())

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.follower.run(stop)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a world hiccup must not kill the service
                log.warning("world tailer: %s; retrying in 1s", error)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=1.0)
                except TimeoutError:
                    pass
