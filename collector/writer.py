"""The single writer: batches from every request, committed together, acknowledged after.

Requests hand a ``Batch`` to ``submit`` and wait for its future; the writer thread takes every
batch waiting (group commit), writes them in one transaction, commits (fsync), and only then
resolves the futures, so a 200 means the spans are on disk. The queue is bounded in spans:
past the bound ``submit`` raises ``Overloaded`` at once and the request is answered 503 with
``Retry-After``, which keeps memory bounded under any load.

One request never fails another. When a group's transaction raises, the group is written again
batch by batch (one savepoint each, still one commit): the batches the store takes are committed,
and only a batch that raised gets its own error. A fault of the storage itself (disk full,
read-only, I/O error, locked) fails every batch with ``StoreUnavailable`` (the request is answered
503 with ``Retry-After``); nothing of the group is written, one line is logged when the fault
starts and one when the store takes writes again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import queue
import shutil
import sqlite3
import threading
import time
from dataclasses import dataclass, field

from .otlp import SpanRecord
from .store import EventRow, PreparedSpans, RunInfo, Store

__all__ = ["Batch", "Overloaded", "StoreUnavailable", "Writer", "storage_fault"]

log = logging.getLogger("collector.writer")


#: the writer connection's page cache (KiB; SQLite's default is 2 MiB). Index rows land at random
#: places in ``span_index`` (keyed by trace and span id): once the pages a commit touches outgrow
#: the cache, each insert reads its page back from the file, and ingest slows as the store grows
#: (a 40k-span run's last quarter cost 1.4× its first with 2 MiB, 1.3× with 16 MiB, 0.9-1.15× with
#: this). Pages are allocated as they are used: this much more RSS at most, for the one connection
#: that writes.
WRITER_CACHE_KIB = 32 * 1024


#: how often a store that failed is tried again while no request comes (seconds)
PROBE_EVERY_S = 5.0
#: the free space below which the disk counts as still full (no probe is tried)
PROBE_FREE_BYTES = 1024 * 1024


class Overloaded(Exception):
    """The write queue is full; try again later."""


class StoreUnavailable(Exception):
    """The storage under the store cannot take writes now (full, read-only, failing, locked);
    the same request can succeed later. ``retry_after``: seconds a client should wait."""

    def __init__(self, reason: str, *, retry_after: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


#: SQLite primary result codes that are faults of the storage, not of the data: (what, retry after s)
_STORAGE_CODES = {
    sqlite3.SQLITE_FULL: ("the disk holding the store is full", 30),
    sqlite3.SQLITE_READONLY: ("the store is read-only", 30),
    sqlite3.SQLITE_IOERR: ("the disk holding the store failed a read or write", 10),
    sqlite3.SQLITE_CANTOPEN: ("the store cannot be opened", 10),
    sqlite3.SQLITE_PERM: ("the store may not be written", 30),
    sqlite3.SQLITE_BUSY: ("the store is locked by another process", 5),
    sqlite3.SQLITE_LOCKED: ("the store is locked", 5),
    sqlite3.SQLITE_NOMEM: ("out of memory writing the store", 5),
    sqlite3.SQLITE_PROTOCOL: ("the store's lock protocol failed", 5),
}
_STORAGE_ERRNOS = {
    errno.ENOSPC: _STORAGE_CODES[sqlite3.SQLITE_FULL],
    errno.EDQUOT: ("the disk quota of the store is used up", 30),
    errno.EROFS: _STORAGE_CODES[sqlite3.SQLITE_READONLY],
    errno.EIO: _STORAGE_CODES[sqlite3.SQLITE_IOERR],
    errno.EACCES: _STORAGE_CODES[sqlite3.SQLITE_PERM],
}


def storage_fault(error: BaseException) -> StoreUnavailable | None:
    """``error`` as a ``StoreUnavailable`` when it is the storage's fault, else None (the data's)."""
    if isinstance(error, StoreUnavailable):
        return error
    known: tuple[str, int] | None = None
    if isinstance(error, sqlite3.Error):
        code = getattr(error, "sqlite_errorcode", None)
        known = _STORAGE_CODES.get(code & 0xFF) if isinstance(code, int) else None
        if known is None and isinstance(error, sqlite3.OperationalError):
            text = str(error)  # errors raised before SQLite gave a code (e.g. when opening)
            if "disk is full" in text:
                known = _STORAGE_CODES[sqlite3.SQLITE_FULL]
            elif "readonly" in text or "read-only" in text:
                known = _STORAGE_CODES[sqlite3.SQLITE_READONLY]
            elif "disk I/O error" in text or "unable to open" in text or "locked" in text:
                known = _STORAGE_CODES[sqlite3.SQLITE_IOERR]
    elif isinstance(error, OSError) and error.errno is not None:
        known = _STORAGE_ERRNOS.get(error.errno)
    if known is None:
        return None
    what, retry_after = known
    return StoreUnavailable(f"{what} ({error})", retry_after=retry_after)


@dataclass
class Batch:
    spans: list[SpanRecord] = field(default_factory=list)
    #: ``spans`` made ready to store by the request (``Store.prepare_spans``), leaving the writer only the SQL
    prepared: PreparedSpans | None = None
    events: list[EventRow] = field(default_factory=list)
    runs: list[RunInfo] = field(default_factory=list)
    sentry_drops: list[tuple[str | None, str, str]] = field(default_factory=list)  # (run id, rule, summary)
    future: asyncio.Future[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None

    @property
    def to_store(self) -> list[SpanRecord] | PreparedSpans:
        return self.spans if self.prepared is None else self.prepared

    @property
    def size(self) -> int:
        spans = len(self.spans) if self.prepared is None else self.prepared.count
        return spans + len(self.events) + len(self.runs) + len(self.sentry_drops) + 1


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
        self._fault: str | None = None  # the storage fault being lived through, if any
        self._conn: sqlite3.Connection | None = None  # the writer thread's own

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def fault(self) -> str | None:
        """The storage fault the last commit met (cleared by the next that succeeds), if any."""
        return self._fault

    @property
    def ended(self) -> bool:
        """Whether the writer thread was started and has ended (by ``stop``, or by a bug)."""
        return self._thread.ident is not None and not self._thread.is_alive()

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
        last_retention = time.monotonic()
        while True:
            try:  # while a storage fault lasts, the store is tried again when no request does it
                first = self._queue.get(timeout=PROBE_EVERY_S if self._fault is not None else None)
            except queue.Empty:
                self._probe()
                continue
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
            errors = self._write_group(batches)
            for batch, error in zip(batches, errors, strict=True):
                with self._lock:
                    self._pending -= batch.size
                if batch.future is not None and batch.loop is not None and not batch.loop.is_closed():
                    try:
                        batch.loop.call_soon_threadsafe(_settle, batch.future, error)
                    except RuntimeError:  # the loop closed in between: nobody is waiting
                        pass
            due = time.monotonic() - last_retention > self.retention_every_s
            if due and (self.max_age_s or self.max_bytes) and self._conn is not None:
                last_retention = time.monotonic()
                self._retention(self._conn)
            if stop:
                break
        self._disconnect()

    def _connect(self) -> sqlite3.Connection:
        """The writer's connection, opened again after a storage fault (a file opened read-only
        stays read-only on that connection; a new one sees the store as it is now)."""
        if self._conn is None:
            conn = self.store.connect()
            conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
            self._conn = conn
        return self._conn

    def _disconnect(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def _write_group(self, batches: list[Batch]) -> list[BaseException | None]:
        """Write and commit ``batches``; the error each one's request gets (None: committed)."""
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            conn.execute("BEGIN IMMEDIATE")
            for batch in batches:  # each write folds its spans into their runs' summaries
                self.store.write(conn, batch.to_store, batch.events, batch.runs)
                self.store.record_sentry_drops(conn, batch.sentry_drops)
            conn.execute("COMMIT")
        except BaseException as error:  # the requests learn of it; the writer keeps going
            if conn is not None:
                _rollback(conn)
            fault = storage_fault(error)
            if fault is None and conn is None and isinstance(error, Exception):
                fault = StoreUnavailable(f"the store cannot be opened ({error})", retry_after=10)
            if fault is not None or not isinstance(error, Exception) or conn is None:
                return [self._storage_failed(fault or error)] * len(batches)
            if len(batches) == 1:
                log.error("store write failed for one request (%s); the request is refused", _describe(error))
                return [error]
            return self._write_one_by_one(conn, batches)
        self._committed()
        return [None] * len(batches)

    def _write_one_by_one(self, conn: sqlite3.Connection, batches: list[Batch]) -> list[BaseException | None]:
        """The group again, each batch in its own savepoint: the ones the store refuses are left out."""
        errors: list[BaseException | None] = [None] * len(batches)
        try:
            conn.execute("BEGIN IMMEDIATE")
            for i, batch in enumerate(batches):
                conn.execute("SAVEPOINT batch")
                try:
                    self.store.write(conn, batch.to_store, batch.events, batch.runs)
                    self.store.record_sentry_drops(conn, batch.sentry_drops)
                except Exception as error:
                    if storage_fault(error) is not None:
                        raise
                    conn.execute("ROLLBACK TO batch")
                    errors[i] = error
                    log.error("store write failed for one request (%s); the request is refused", _describe(error))
                conn.execute("RELEASE batch")
            conn.execute("COMMIT")
        except BaseException as error:
            _rollback(conn)
            return [self._storage_failed(storage_fault(error) or error)] * len(batches)
        self._committed()
        return errors

    def _probe(self) -> None:
        """Try the store with a write of nothing (``Store.probe``): a fault that ended is over
        (``/healthz`` well again) even if no request came to find out. Not while the disk holding
        it has less than ``PROBE_FREE_BYTES`` free: a one-page commit can fit in WAL space SQLite
        already holds on a disk that is full for every real write."""
        try:
            free = shutil.disk_usage(self.store.path.parent).free
        except OSError:
            free = PROBE_FREE_BYTES
        if free < PROBE_FREE_BYTES:
            return
        try:
            self.store.probe(self._connect())
        except BaseException as error:
            self._storage_failed(storage_fault(error) or error)
            return
        self._committed()

    def _storage_failed(self, error: BaseException) -> BaseException:
        """Log the start of a storage fault once (later ones at debug) and return what requests get;
        the next group starts on a new connection."""
        self._disconnect()
        if self._fault is None:
            log.error("store unavailable, requests are answered 503 until it recovers: %s", error)
        else:
            log.debug("store still unavailable: %s", error)
        self._fault = str(error)
        return error

    def _committed(self) -> None:
        self.commits += 1
        if self._fault is not None:
            log.warning("store writable again (after: %s)", self._fault)
            self._fault = None

    def _retention(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            dropped = self.store.enforce_retention(conn, max_age_s=self.max_age_s, max_bytes=self.max_bytes)
            conn.execute("COMMIT")
            self.retention_dropped += dropped
            if dropped:
                log.info("retention dropped %d spans", dropped)
        except Exception as exc:
            log.error("retention failed: %s", exc)
            _rollback(conn)

    def run_retention_now(self) -> None:
        """For tests and admin: enforce retention on a fresh connection, synchronously."""
        conn = self.store.connect()
        try:
            self._retention(conn)
        finally:
            conn.close()


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:  # SQLite may have rolled back itself (e.g. on a full disk)
            pass


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _settle(future: asyncio.Future[None], error: BaseException | None) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
