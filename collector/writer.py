"""The single writer: batches from every request, committed together, acknowledged after.

Requests hand a ``Batch`` to ``submit`` and wait for its future; the writer thread takes every
batch waiting (group commit), writes them in one transaction, commits (fsync), and only then
resolves the futures, so a 200 means the spans are on disk. The queue is bounded in spans:
past the bound ``submit`` raises ``Overloaded`` at once and the request is answered 503 with
``Retry-After``, which keeps memory bounded under any load.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field

from .otlp import SpanRecord
from .store import EventRow, RunInfo, Store

__all__ = ["Batch", "Overloaded", "Writer"]

log = logging.getLogger("collector.writer")


class Overloaded(Exception):
    """The write queue is full; try again later."""


@dataclass
class Batch:
    spans: list[SpanRecord] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    runs: list[RunInfo] = field(default_factory=list)
    sentry_drops: list[tuple[str | None, str, str]] = field(default_factory=list)  # (run id, rule, summary)
    future: asyncio.Future | None = None
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def size(self) -> int:
        return len(self.spans) + len(self.events) + len(self.runs) + len(self.sentry_drops) + 1


class Writer:
    def __init__(
        self,
        store: Store,
        *,
        max_pending: int = 200_000,
        max_age_s: float | None = None,
        max_bytes: int | None = None,
        retention_every_s: float = 30.0,
    ) -> None:
        self.store = store
        self.max_pending = max_pending
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.retention_every_s = retention_every_s
        self._queue: queue.Queue[Batch | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="wft-writer", daemon=True)
        self.commits = 0
        self.retention_dropped = 0

    @property
    def pending(self) -> int:
        return self._pending

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    async def submit(self, batch: Batch) -> None:
        """Queue ``batch`` and wait until it is committed."""
        with self._lock:
            if self._pending + batch.size > self.max_pending:
                raise Overloaded(f"write queue full ({self._pending} pending)")
            self._pending += batch.size
        batch.loop = asyncio.get_running_loop()
        batch.future = batch.loop.create_future()
        self._queue.put(batch)
        await batch.future

    def _run(self) -> None:
        conn = self.store.connect()
        last_retention = time.monotonic()
        while True:
            first = self._queue.get()
            if first is None:
                break
            batches = [first]
            stop = False
            while len(batches) < 256:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batches.append(more)
            error: BaseException | None = None
            try:
                conn.execute("BEGIN IMMEDIATE")
                touched: set[str] = set()
                for batch in batches:
                    touched |= self.store.write(conn, batch.spans, batch.events, batch.runs)
                    self.store.record_sentry_drops(conn, batch.sentry_drops)
                self.store.refresh_runs(conn, touched)
                conn.execute("COMMIT")
                self.commits += 1
            except BaseException as exc:  # the requests learn of it; the writer keeps going
                error = exc
                log.error("store write failed: %s", exc)
                try:
                    conn.execute("ROLLBACK")
                except Exception:
                    pass
            for batch in batches:
                with self._lock:
                    self._pending -= batch.size
                if batch.future is not None and batch.loop is not None and not batch.loop.is_closed():
                    try:
                        batch.loop.call_soon_threadsafe(_settle, batch.future, error)
                    except RuntimeError:  # the loop closed in between: nobody is waiting
                        pass
            if time.monotonic() - last_retention > self.retention_every_s and (self.max_age_s or self.max_bytes):
                last_retention = time.monotonic()
                self._retention(conn)
            if stop:
                break
        conn.close()

    def _retention(self, conn) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            dropped = self.store.enforce_retention(conn, max_age_s=self.max_age_s, max_bytes=self.max_bytes)
            conn.execute("COMMIT")
            self.retention_dropped += dropped
            if dropped:
                log.info("retention dropped %d spans", dropped)
        except Exception as exc:
            log.error("retention failed: %s", exc)
            conn.execute("ROLLBACK")

    def run_retention_now(self) -> None:
        """For tests and admin: enforce retention on a fresh connection, synchronously."""
        conn = self.store.connect()
        try:
            self._retention(conn)
        finally:
            conn.close()


def _settle(future: asyncio.Future, error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
