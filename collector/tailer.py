"""The world tailer inside the service: ``telemetry.follow.Follower`` writing into the store.

The follower runs in its own thread with its own event loop, so reading the world (files, or
the PostgreSQL connection) and rebuilding spans never happen on the service's event loop: a
slow disk, a huge run or a FIFO in the world directory cannot stall the OTLP receiver or the
API. Batches go to the single writer from that loop (``Writer.submit`` is thread-safe);
forwarding upstream hops back to the service's loop. On stop the thread is asked to finish and
waited for about a second; a thread stuck in a read the OS will not interrupt is abandoned (it is
a daemon thread), so the service still stops promptly.

A pass delivers the runs that changed in batches (``Follower(deliver_many=…)``): one writer commit
per batch, not per run. Between passes it waits ``interval``, or less when the world says it is
being written (world-postgres's queue notifications, ``Follower.pause``): a step that finishes is
in the store within milliseconds while an idle collector polls only four times a second.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from telemetry.errors import WorkflowWorldError
from telemetry.export import run_resource
from telemetry.follow import Checkpoint, Delivery, Follower
from telemetry.otlp_encode import OtlpEncoder
from telemetry.payloads import to_jsonable
from telemetry.world import epoch_ns

from .metrics import Metrics
from .otlp import records_from
from .store import EventRow, RunInfo
from .workflow_metrics import WorkflowMetrics, waiting_in_store
from .writer import Batch, Overloaded, Writer

__all__ = ["Tailer"]

log = logging.getLogger("collector.tailer")

Forward = Callable[[bytes], Coroutine[Any, Any, None]]


def checkpoint_paths(path: str) -> tuple[str, str | None]:
    """(SQLite checkpoint, JSON checkpoint of the previous format to migrate) for ``path``:
    ``….follow.json`` became ``….follow.sqlite3``."""
    if path.endswith(".json"):
        return path.removesuffix(".json") + ".sqlite3", path
    return path, None


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
        forward: Forward | None = None,
        stop_timeout: float = 1.0,
    ) -> None:
        self.world = world
        self.writer = writer
        self.metrics = metrics
        self.forward = forward
        self.interval = interval
        self.stop_timeout = stop_timeout
        path, legacy = checkpoint_paths(checkpoint_path)
        resource = run_resource(world_kind)
        self._encoder = OtlpEncoder(resource)  # spans straight to OTLP: no SDK span objects on the way
        self.follower = Follower(
            world,
            None,
            Checkpoint(path, legacy=legacy),
            resource=resource,
            interval=interval,
            span_data=True,
            deliver_many=self._deliver,  # the runs of a pass in one commit (a catch-up: a batch at a time)
        )
        self.last_pass_seconds = 0.0
        self.failing: str | None = None  # why the last pass failed, until one succeeds (``/healthz``)
        self._main_loop: asyncio.AbstractEventLoop | None = None
        self._halt = threading.Event()
        self._worker: tuple[asyncio.AbstractEventLoop, asyncio.Task[None]] | None = None
        metrics.gauges["wft_tailer_unreadable_runs"] = lambda: len(self.follower.problems)
        metrics.gauges["wft_tailer_pass_seconds"] = lambda: self.last_pass_seconds
        #: per-workflow RED metrics from the events each delivery brings (``workflow_metrics``)
        self.workflows = WorkflowMetrics()
        metrics.register(self.workflows)

    # -- in the tailer's thread ----------------------------------------------------------------
    async def _submit(self, batch: Batch) -> None:
        while True:  # our own writes wait their turn instead of failing
            try:
                await self.writer.submit(batch)
                return
            except Overloaded:
                await asyncio.sleep(0.2)

    async def _deliver(self, batch: list[Delivery]) -> None:
        """One commit per batch of changed runs: their new events, what the world says of each, their
        new spans (a pass over a few runs is one batch; a catch-up, one per few hundred spans)."""
        rows = [
            EventRow(
                e.run_id,
                e.event_id,
                e.event_type,
                e.correlation_id,
                epoch_ns(e.created_at),
                json.dumps(to_jsonable(e.event_data), default=str) if e.event_data else None,
            )
            for delivery in batch
            for e in delivery.events
        ]
        spans = [span for delivery in batch for span in delivery.spans]
        payload = self._encoder.request(spans) if spans else None
        records = records_from(payload)[0] if payload is not None else []
        for record in records:
            record.source = "world"
        runs = [d.run for d in batch]
        await self._submit(
            Batch(
                spans=records,
                events=rows,
                runs=[RunInfo(run.run_id, run.workflow_name, run.status, epoch_ns(run.created_at)) for run in runs],
            )
        )
        self.metrics.tailer_spans += len(records)
        newest = max((d.events[-1].created_at for d in batch if d.events), default=None)
        if newest is not None:
            self.metrics.tailer_lag_seconds = max(0.0, time.time() - newest.timestamp())
        if self.forward is not None and payload is not None and self._main_loop is not None:
            sent = asyncio.run_coroutine_threadsafe(self.forward(payload.SerializeToString()), self._main_loop)
            await asyncio.wrap_future(sent)
        # last: a delivery that failed above is offered again and counted then; the checkpoint says
        # what an earlier delivery (or process) already counted of a run not followed here yet
        self.workflows.feed_deliveries(batch, self.follower.checkpoint.get)

    def _seed_waiting(self) -> None:
        """What live runs wait on as the store says, before the first pass: a restart does not forget
        a hook that waits for days (its run may not change for as long)."""
        try:
            conn = self.writer.store.connect()
            try:
                self.workflows.seed(waiting_in_store(conn))
            finally:
                conn.close()
        except sqlite3.Error as error:  # the gauges start empty instead; the tailer goes on
            log.warning("world tailer: could not read what runs wait on from the store: %s", error)

    async def _passes(self) -> None:
        self._seed_waiting()
        while not self._halt.is_set():
            started = time.perf_counter()
            try:
                await self.follower.poll()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a world hiccup must not kill the service
                reason = str(error) if isinstance(error, WorkflowWorldError) else f"{type(error).__name__}: {error}"
                if reason != self.failing:
                    log.warning("world tailer: %s; retrying every second", reason)
                    self.failing = reason
                delay = 1.0
            else:
                if self.failing is not None:
                    log.info("world tailer: reading again")
                    self.failing = None
                delay = self.interval
            self.last_pass_seconds = time.perf_counter() - started
            # a world that says it is being written (world-postgres) is read at once, not at the next poll
            await self.follower.pause(delay, self._halt.is_set, wake=self.failing is None)

    def _thread_main(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(self._passes())
            self._worker = (loop, task)
            ready.set()
            try:
                loop.run_until_complete(task)
            except asyncio.CancelledError:
                pass
            try:
                loop.run_until_complete(asyncio.wait_for(self.world.close(), timeout=0.5))
            except Exception:  # closing is best effort on the way out
                pass
        finally:
            ready.set()
            loop.close()

    # -- on the service's loop -----------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Follow the world until ``stop`` is set (or this task is cancelled)."""
        self._main_loop = asyncio.get_running_loop()
        ready = threading.Event()
        thread = threading.Thread(target=self._thread_main, args=(ready,), name="wft-tailer", daemon=True)
        thread.start()
        try:
            await stop.wait()
        finally:
            self._halt.set()
            if self._worker is not None:
                loop, task = self._worker
                try:
                    loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:  # its loop already closed
                    pass
            deadline = time.monotonic() + self.stop_timeout
            while thread.is_alive() and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            if thread.is_alive():
                log.warning("world tailer: a read did not return within %.1f s; leaving it behind", self.stop_timeout)
            else:
                self.follower.checkpoint.close()
