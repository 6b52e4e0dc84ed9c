"""Tailing a world: export each finished step, sleep, hook and run as soon as it is in the log.

**Cost is what changed.** Each pass asks the world's change feed (``events.changes(token)``)
which runs' logs may have grown, reads only those runs' new events (keyset: after the last event
id read) and feeds them to the ``RunTraceBuilder`` kept for each unfinished run; the spans that
closed since the last delivery go out. A live run of 10,000 steps is read once, not once per
change. After a restart a run's builder is rebuilt once, from its full log, when it next changes.

**Cost per run, not per round trip.** Where the world reads many runs' logs in one statement
(``events.logs``, world-postgres) a pass reads its runs a chunk at a time. With ``deliver_many``
the runs of a pass go out in batches (one request, one checkpoint transaction per batch, not per
run). A first pass over a big history can go to a ``ParallelCatchUp``: worker processes read,
build, encode and send the finished runs as ``wft export --jobs N`` does, and the follower keeps
builders only for the runs still going. Between passes, a world that says it is being written
(``events.wait``: world-postgres's queue notifications) is read at once, not at the next poll.

**Events that commit out of id order.** Event ids are ULIDs minted by the writers, so a writer
can commit an event whose id is below one already read (concurrent step handlers, clock skew).
When the feed knows the smallest new id of a run (``Changes.since``, world-postgres) the run is
re-read from just before it; otherwise from ``lookback`` seconds (of ULID time) before the last
id read. Events already fed are skipped by id; an event older than the newest one fed makes the
run's builder rebuild from the full log, so the spans are exactly those of a one-shot export.

**Checkpoint** (SQLite in WAL mode, stdlib ``sqlite3``): per run the events fed, the last event
id, whether the run finished and the span ids sent while it is unfinished (a finished run keeps
no ids), plus the feed's token and the runs to retry. Each acknowledged delivery is one small
transaction (O(changed), never a rewrite of the whole file): one per run, or one per batch.
A JSON checkpoint of the previous format is migrated on first open.

* ``kill -9`` safety: SQLite's WAL commit is atomic, so a restart sees the checkpoint as of the
  last committed delivery, never a torn one. ``synchronous=NORMAL``: a power loss (not a process
  crash) may roll back the last commits, which only sends their spans again.
* At-least-once: the checkpoint advances only after ``deliver`` (``deliver_many``, the catch-up's
  ``post``) returned (the sink acknowledged) and the feed's token only after every run it named
  was delivered or queued for retry. A batch
  acknowledged just before a crash whose commit was lost is sent again: the same spans with the
  same deterministic ids, which id-keyed stores collapse.

**Unreadable runs.** A reader raises ``UnreadableEventsError`` when a record of a run's log stays
unreadable; the follower logs it once, lists it in ``problems`` and goes on with every other run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing
import multiprocessing.util
import os
import sqlite3
import sys
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.resources import Resource
from ulid import ULID

from . import chunking
from .backends.records import UnreadableRun
from .errors import UnreadableEventsError, WorkflowRunNotFoundError, WorkflowWorldError
from .otlp_encode import OtlpEncoder, RequestBatcher
from .reading import empty_log, event_log, run_records, stalled_runs
from .runtrace import RunTraceBuilder, SpanData, readable_span
from .world import Event, Pagination, WorkflowRun

if TYPE_CHECKING:
    from .backends import BackendConfig

__all__ = ["Checkpoint", "Delivery", "Follower", "ParallelCatchUp", "RunState"]

log = logging.getLogger("telemetry.follow")

_UNREAD = object()  # the token was not read from the checkpoint yet
_TOKEN_SAVE_EVERY = 5.0  # seconds: how stale the saved token of an idle follower may get
_LIST_RUNS_AT = 200  # runs in one pass from which their records are read by listing, a page at a time
_CHUNK = 100  # runs read together (their logs in one statement where the world can)
_IN_CHUNK = 500  # run ids per ``IN (...)`` list of a checkpoint query
#: events a chunk's prefetch holds at most: past it the chunk's other runs are read on their own, so a
#: chunk of long runs (10^4 steps: ~3×10^4 events, ~35 MB each) is not held whole
PREFETCH_EVENTS = 50_000
_STATUSES = frozenset({"pending", "running", "completed", "failed", "cancelled"})

_SQLITE_MAGIC = b"SQLite format 3\x00"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, events INTEGER NOT NULL, last_id TEXT, complete INTEGER NOT NULL,
  todo INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sent (run_id TEXT NOT NULL, span_id TEXT NOT NULL, PRIMARY KEY (run_id, span_id))
  WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runs_todo ON runs (todo) WHERE todo = 1;
"""


def _span_id(span: SpanData) -> str:
    return f"{span.span_id:016x}"


def _resume_before(event_id: str, seconds: float) -> str:
    """A keyset cursor ``seconds`` of ULID time before ``event_id`` (the id itself when it holds
    no ULID): reading after it re-reads what a late writer may have committed behind the id."""
    prefix, tail = event_id[:-26], event_id[-26:]
    try:
        ms = ULID.from_str(tail).milliseconds
    except ValueError:
        return event_id
    return prefix + str(ULID.from_int(max(0, ms - int(seconds * 1000)) << 80))


@dataclass
class RunState:
    """What the checkpoint keeps of one run."""

    events: int = 0
    last_id: str | None = None
    complete: bool = False


class Checkpoint:
    """What has been sent, per run, in a SQLite file (``None``: in memory, for one-shot use).

    ``legacy``: a JSON checkpoint of the previous format to import when ``path`` does not exist
    yet (renamed to ``<legacy>.migrated`` afterwards). A JSON checkpoint at ``path`` itself is
    migrated in place. Anything else at ``path`` is refused with a one-line ``ValueError``.
    """

    def __init__(self, path: str | os.PathLike[str] | None, *, legacy: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None
        imported: dict[str, Any] | None = None
        source: Path | None = None
        if self.path is not None:
            if self.path.exists() and not _is_sqlite(self.path):
                imported, source = _read_legacy(self.path), self.path
            elif not self.path.exists() and legacy is not None and Path(legacy).exists():
                if _is_sqlite(Path(legacy)):  # already this format under the old name: adopt it
                    _adopt(Path(legacy), self.path)
                else:
                    imported, source = _read_legacy(Path(legacy)), Path(legacy)
        if self.path is not None and imported is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.path.with_name(self.path.name + ".migrating")
            temp.unlink(missing_ok=True)
            conn = _connect(temp)
            _import_v1(conn, imported)
            conn.close()
            os.replace(temp, self.path)
            if source is not None and source != self.path:
                os.replace(source, source.with_name(source.name + ".migrated"))
            log.info("checkpoint %s: migrated %d runs from the JSON format of %s", self.path, len(imported), source)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = _connect(self.path if self.path is not None else ":memory:")
        except sqlite3.DatabaseError as error:
            raise ValueError(f"checkpoint {self.path} cannot be opened ({error}); move it away to start over") from None

    # -- reading -----------------------------------------------------------------------------
    @property
    def token(self) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'token'").fetchone()
        return None if row is None else str(row[0])

    def get(self, run_id: str) -> RunState | None:
        row = self._db.execute("SELECT events, last_id, complete FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if row is None else RunState(int(row[0]), row[1], bool(row[2]))

    def known(self, run_ids: Iterable[str]) -> set[str]:
        """Which of ``run_ids`` the checkpoint holds, a few hundred a query: a first pass over 10^5
        runs asked run by run spent 0.37 s here, serially, before any worker had a run."""
        ids = list(run_ids)
        found: set[str] = set()
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            query = f"SELECT run_id FROM runs WHERE run_id IN ({','.join('?' * len(chunk))})"
            found.update(r[0] for r in self._db.execute(query, chunk))
        return found

    def sent(self, run_id: str) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT span_id FROM sent WHERE run_id = ?", (run_id,))}

    def todo(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT run_id FROM runs WHERE todo = 1 ORDER BY run_id")]

    def runs(self) -> dict[str, RunState]:
        """Every run's state (for inspection and tests: O(runs))."""
        return {
            r[0]: RunState(int(r[1]), r[2], bool(r[3]))
            for r in self._db.execute("SELECT run_id, events, last_id, complete FROM runs")
        }

    # -- writing: each call is one transaction ------------------------------------------------
    def record(self, run_id: str, state: RunState, sent: Iterable[str] = ()) -> None:
        """A delivered run: its state and the span ids just sent (a finished run drops its ids)."""
        self.record_many([(run_id, state, sent)])

    def record_many(self, runs: Iterable[tuple[str, RunState, Iterable[str]]]) -> None:
        """Delivered runs (run id, state, span ids just sent), in one transaction: an acknowledged
        batch of many runs costs one commit."""
        items = list(runs)
        with self._db:
            self._db.executemany(
                "INSERT INTO runs (run_id, events, last_id, complete, todo) VALUES (?, ?, ?, ?, 0)"
                " ON CONFLICT (run_id) DO UPDATE SET events = excluded.events, last_id = excluded.last_id,"
                " complete = excluded.complete, todo = 0",
                ((run_id, state.events, state.last_id, int(state.complete)) for run_id, state, _ in items),
            )
            self._db.executemany(
                "DELETE FROM sent WHERE run_id = ?", ((run_id,) for run_id, state, _ in items if state.complete)
            )
            self._db.executemany(
                "INSERT OR IGNORE INTO sent (run_id, span_id) VALUES (?, ?)",
                ((run_id, s) for run_id, state, sent in items if not state.complete for s in sent),
            )

    def advance(self, token: str | None, todo: Iterable[str] = (), done: Iterable[str] = ()) -> None:
        """The feed's new token, with the runs to retry next pass (``todo``) and those retried now."""
        with self._db:
            self._db.executemany("UPDATE runs SET todo = 0 WHERE run_id = ?", ((r,) for r in done))
            self._db.executemany(
                "INSERT INTO runs (run_id, events, last_id, complete, todo) VALUES (?, 0, NULL, 0, 1)"
                " ON CONFLICT (run_id) DO UPDATE SET todo = 1",
                ((r,) for r in todo),
            )
            if token is None:
                self._db.execute("DELETE FROM meta WHERE key = 'token'")
            else:
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('token', ?)", (token,))

    def close(self) -> None:
        self._db.close()


def _connect(target: Path | str) -> sqlite3.Connection:
    if str(target) != ":memory:" and not Path(target).exists():
        # private from the start (SQLite gives its -wal/-shm files the same mode): run and span ids only,
        # but nobody else's business
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = sqlite3.connect(str(target), isolation_level="DEFERRED", check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(_SCHEMA)
    with conn:
        conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('version', '2')")
    version = conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()
    if version is None or version[0] != "2":
        conn.close()
        raise sqlite3.DatabaseError(f"checkpoint format {version[0] if version else '?'} is not supported")
    return conn


def _is_sqlite(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(len(_SQLITE_MAGIC))
    return head == _SQLITE_MAGIC or head == b""


def _adopt(old: Path, new: Path) -> None:
    """Move a SQLite checkpoint to its new name, its WAL folded in first (the WAL file is per name)."""
    conn = sqlite3.connect(str(old))
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    new.parent.mkdir(parents=True, exist_ok=True)
    os.replace(old, new)
    for suffix in ("-wal", "-shm"):
        Path(str(old) + suffix).unlink(missing_ok=True)


def _read_legacy(path: Path) -> dict[str, Any]:
    """The runs of a version-1 JSON checkpoint: ``{"version": 1, "runs": {id: {events, sent, complete}}}``."""
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"checkpoint {path} is not valid JSON ({error}); move it away to start over") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs", {}), dict):
        raise ValueError(f"checkpoint {path} is not a wft checkpoint; move it away to start over")
    runs: dict[str, Any] = data.get("runs", {})
    return runs


def _import_v1(conn: sqlite3.Connection, runs: dict[str, Any]) -> None:
    """v1 kept no last event id: a migrated run is re-read once and compared by event count."""
    with conn:
        for run_id, state in runs.items():
            state = state if isinstance(state, dict) else {}
            complete = bool(state.get("complete"))
            conn.execute(
                "INSERT OR REPLACE INTO runs (run_id, events, last_id, complete, todo) VALUES (?, ?, NULL, ?, 0)",
                (run_id, int(state.get("events", 0) or 0), int(complete)),
            )
            if not complete:
                conn.executemany(
                    "INSERT OR IGNORE INTO sent (run_id, span_id) VALUES (?, ?)",
                    ((run_id, str(s)) for s in state.get("sent", [])),
                )


@dataclass
class _Live:
    """An unfinished run being followed: its builder and what is not delivered yet."""

    builder: RunTraceBuilder
    sent: set[str]
    delivered: int = 0  # builder.closed[:delivered] went out
    pending: list[Event] = field(default_factory=list)  # events fed but not delivered yet
    rebuilt: bool = True  # the spans to consider are all finished ones, not closed[delivered:]


@dataclass
class Delivery:
    """One run's share of a delivery: its record, the events read since its last delivery and
    its spans not sent before (SDK ``ReadableSpan`` objects, or ``SpanData`` with ``span_data=True``;
    may be empty)."""

    run: WorkflowRun
    events: list[Event]
    spans: list[Any]


@dataclass
class _Staged:
    """A delivery waiting for its batch to be acknowledged, with what then becomes true of its run."""

    run_id: str
    live: _Live
    delivery: Delivery
    ids: list[str]
    delivered: int
    state: RunState


#: ``deliver(run, events, new_spans)``: one run at a time
Deliver = Callable[[WorkflowRun, list[Event], list[Any]], Awaitable[None] | None]
#: ``deliver_many(deliveries)``: the runs of a batch in one call (one request, one commit)
DeliverMany = Callable[[list[Delivery]], Awaitable[None] | None]
Progress = Callable[[int, int, int], None]


@dataclass
class _Plan:
    """What a pass reads of one run: its events after ``after`` (all of them when ``None``)."""

    after: str | None
    state: RunState | None  # its checkpoint entry, when it has no builder in memory


class Follower:
    """One pass at a time: ``poll()`` returns the spans it delivered; ``run()`` loops until stopped."""

    def __init__(
        self,
        world: Any,
        deliver: Deliver | None,
        checkpoint: Checkpoint,
        *,
        resource: Resource | None = None,
        include_payloads: bool = True,
        interval: float = 0.25,
        lookback: float = 1.0,
        progress: Progress | None = None,
        span_data: bool = False,
        deliver_many: DeliverMany | None = None,
        batch_spans: int = 512,
        batch_events: int = 5000,
        catch_up: ParallelCatchUp | None = None,
    ) -> None:
        """``deliver(run, events, new_spans)`` is called for every run with new events or spans:
        ``events`` are the events read since its last delivery, ``new_spans`` the spans not sent
        before (may be empty). The run counts as sent once it returns; an exception aborts the
        pass, and the next pass offers the same again. ``progress(done, total, events_read)`` is
        called after each run of a pass. ``span_data``: deliver the builder's ``SpanData`` (for
        ``otlp_encode``) instead of SDK ``ReadableSpan`` objects.

        ``deliver_many(deliveries)`` instead of ``deliver``: the runs of a pass go out in batches
        of about ``batch_spans`` spans (or ``batch_events`` events), each in one call, and the
        checkpoint takes each acknowledged batch in one transaction. A catch-up over many small
        runs then costs a request and a commit per batch, not per run.

        ``catch_up``: a pass that meets at least ``catch_up.min_runs`` runs the checkpoint has
        never seen (a first pass over a big history) hands the finished ones to it (worker
        processes that read, build, encode and send them as ``wft export`` does); the rest (and
        every later pass) goes the usual way."""
        if (deliver is None) == (deliver_many is None):
            raise TypeError("Follower: give exactly one of deliver and deliver_many")
        self.world = world
        self.deliver = deliver
        self.deliver_many = deliver_many
        self.checkpoint = checkpoint
        self.resource = resource
        self.include_payloads = include_payloads
        self.interval = interval
        self.lookback = lookback
        self.progress = progress
        self.span_data = span_data
        self.batch_spans = max(1, batch_spans)
        self.batch_events = max(1, batch_events)
        self.catch_up = catch_up
        #: runs whose log holds a record that stays unreadable: run id → the reason (with its path)
        self.problems: dict[str, str] = {}
        self.events_read = 0
        self.rebuilds = 0
        self.passes = 0
        self._live: dict[str, _Live] = {}
        self._token: str | None | object = _UNREAD
        self._saved = 0.0
        self._staged: list[_Staged] = []
        self._staged_spans = 0
        self._staged_events = 0

    # -- one pass ------------------------------------------------------------------------------
    async def poll(self) -> int:
        if self._token is _UNREAD:
            self._token = self.checkpoint.token
        token = self._token if isinstance(self._token, str) else None
        changes = await self.world.events.changes(token)
        retry = self.checkpoint.todo()
        runs = list(dict.fromkeys([*changes.runs, *retry]))
        since: dict[str, str] = getattr(changes, "since", None) or {}
        todo: list[str] = []
        sent = 0
        done = 0
        self._staged, self._staged_spans, self._staged_events = [], 0, 0
        rest = runs
        if self.catch_up is not None and len(runs) >= self.catch_up.min_runs:
            rest, sent = await self._catch_up(self.catch_up, runs)
            done = len(runs) - len(rest)
        try:
            async for chunk in self._chunks(rest):
                logs = await self._prefetch(chunk, since)
                for run_id, record in chunk:
                    done += 1
                    if run_id not in self.problems:
                        try:
                            sent += await self._follow(run_id, since.get(run_id), record, logs.get(run_id))
                        except (WorkflowRunNotFoundError, _NotYet):
                            todo.append(run_id)  # its run record is not there (or readable) yet: next pass
                        except UnreadableEventsError as error:
                            self._unreadable(run_id, error)
                    if self.progress is not None:
                        self.progress(done, len(runs), self.events_read)
        except Exception:
            # the world failed us mid-pass: the pass fails (and is retried), but what the runs before
            # that point staged still goes out, as it would have one run at a time
            if self._staged:
                with contextlib.suppress(Exception):  # the collector failing too: the first error is the news
                    await self._flush()
            raise
        sent += await self._flush()
        now = time.monotonic()
        if runs or (changes.token != token and now - self._saved > _TOKEN_SAVE_EVERY):
            # an idle pass writes nothing; an older token on disk only means a longer first scan
            self.checkpoint.advance(changes.token, todo=todo, done=[r for r in retry if r not in todo])
            self._saved = now
        self._token = changes.token
        self.passes += 1
        return sent

    def _unreadable(self, run_id: str, error: UnreadableEventsError | str) -> None:
        self.problems[run_id] = str(error)
        self._live.pop(run_id, None)
        log.warning("follow: %s; run %s is skipped from now on, every other run goes on", error, run_id)

    async def _run_record(self, run_id: str) -> WorkflowRun:
        try:
            run: WorkflowRun = await self.world.runs.get(run_id, resolve_data="none")
        except WorkflowWorldError as error:
            if error.code == "UNREADABLE_RUN":  # being written (the reader said so, once): retry
                raise _NotYet(run_id) from None
            raise
        return run

    async def _read(self, run_id: str, after: str | None) -> list[Event]:
        """The run's events after ``after`` (all when ``None``), oldest first."""
        events = await event_log(self.world, run_id, after=after)
        self.events_read += len(events)
        return events

    def _builder(self, run_id: str, run: WorkflowRun, events: list[Event]) -> RunTraceBuilder:
        builder = RunTraceBuilder(run_id, run, resource=self.resource, include_payloads=self.include_payloads)
        builder.feed(events)
        return builder

    async def _chunks(self, runs: list[str]) -> AsyncIterator[list[tuple[str, WorkflowRun | None]]]:
        """The runs of a pass in chunks, with their records when a listing is cheaper than one
        read each (many runs: their records a page at a time)."""
        if len(runs) < _LIST_RUNS_AT:
            for start in range(0, len(runs), _CHUNK):
                yield [(run_id, None) for run_id in runs[start : start + _CHUNK]]
            return
        wanted = set(runs)
        cursor = None
        while wanted:
            page = await self.world.runs.list(pagination=Pagination(limit=500, cursor=cursor), resolve_data="none")
            chunk = []
            for run in page.data:
                if run.run_id in wanted:
                    wanted.discard(run.run_id)
                    chunk.append((run.run_id, run if run.status in _STATUSES else None))
            for start in range(0, len(chunk), _CHUNK):
                yield chunk[start : start + _CHUNK]
            if not page.has_more or not page.cursor:
                break
            cursor = page.cursor
        rest = sorted(wanted)  # not listed (yet): read one by one
        for start in range(0, len(rest), _CHUNK):
            yield [(run_id, None) for run_id in rest[start : start + _CHUNK]]

    async def _catch_up(self, catch_up: ParallelCatchUp, runs: list[str]) -> tuple[list[str], int]:
        """Runs the checkpoint has never seen, with their records, to ``catch_up``; their states as
        each chunk is acknowledged. Returns (the runs left for the usual way, spans sent)."""
        left: list[str] = []

        async def fresh() -> AsyncIterator[list[WorkflowRun | str]]:
            """The runs never seen, as ids: the workers read their records (as ``wft export``'s do),
            since reading them all here, in order, is serial work the workers would wait on. All at
            once (they are in memory already), so chunks are sized by how many are left."""
            new: list[WorkflowRun | str] = []
            seen = self.checkpoint.known(runs)
            for run_id in runs:
                if run_id in self._live or run_id in self.problems or run_id in seen:
                    left.append(run_id)
                else:
                    new.append(run_id)
            yield new

        sent = done = 0
        async with contextlib.aclosing(
            catch_up.run(
                fresh(),
                self.resource,
                self.include_payloads,
                self.batch_spans,
                getattr(self.world.events, "known_ids", None),
            )
        ) as answers:
            async for answer in answers:
                self.checkpoint.record_many([(run_id, state, ()) for run_id, state in answer.done])
                left.extend(answer.left)
                self.events_read += answer.events
                sent += sum(spans for _, spans in answer.bodies)
                done += len(answer.done)
                if self.progress is not None:
                    self.progress(done, len(runs), self.events_read)
        return left, sent

    def _plan(self, run_id: str, since: str | None) -> _Plan:
        """Where this pass starts reading the run's log."""
        live = self._live.get(run_id)
        if live is None:
            state = self.checkpoint.get(run_id)
            if state is not None and state.complete:
                # a finished run named again: usually nothing new (a restart re-reports the recent past)
                if state.last_id is not None and not (since and since < state.last_id):
                    return _Plan(state.last_id, state)
                return _Plan(None, state)
            return _Plan(None, state)  # new, or unfinished when we (re)started: built once from the full log
        last = live.builder.last_event_id
        if last is None:
            return _Plan(None, None)
        return _Plan(min(last, since[:-1]) if since else _resume_before(last, self.lookback), None)

    async def _prefetch(
        self, chunk: list[tuple[str, WorkflowRun | None]], since: dict[str, str]
    ) -> dict[str, tuple[_Plan, list[Event]]]:
        """The chunk's logs in one go where the world reads many runs' logs at once (``events.logs``:
        world-postgres in one statement, world-vercel several at a time); otherwise nothing, and each
        run is read on its own. A read that fails ends the prefetch with what it has: the runs left
        are read on their own, where a run's failure is that run's (one gone missing waits for the
        next pass) and does not fail the pass. Once it holds ``PREFETCH_EVENTS`` events it stops
        too, and the runs left are read on their own, one at a time."""
        logs = getattr(self.world.events, "logs", None)
        wanted = [run_id for run_id, _ in chunk if run_id not in self.problems]
        if logs is None or len(wanted) < 2:
            return {}
        plans = {run_id: self._plan(run_id, since.get(run_id)) for run_id in wanted}
        out: dict[str, tuple[_Plan, list[Event]]] = {}
        held = 0
        reads = logs({r: p.after for r, p in plans.items()})
        try:
            async for run_id, events in reads:
                out[run_id] = (plans[run_id], events)
                self.events_read += len(events)
                held += len(events)
                if held >= PREFETCH_EVENTS:
                    break
        except WorkflowWorldError as error:  # the run that failed is read on its own, and reports it there
            log.debug("reading %d runs' logs at once stopped (%s): the rest are read one by one", len(plans), error)
        finally:
            await reads.aclose()
        return out

    async def _follow(
        self,
        run_id: str,
        since: str | None,
        record: WorkflowRun | None = None,
        read: tuple[_Plan, list[Event]] | None = None,
    ) -> int:
        run = record if record is not None else await self._run_record(run_id)
        if read is None:
            plan = self._plan(run_id, since)
            events = await self._read(run_id, plan.after)
        else:
            plan, events = read
        live = self._live.get(run_id)
        if live is None:
            if plan.state is not None and plan.state.complete:
                return await self._finished_again(run_id, run, plan, events)
            if not events:  # looked at again each pass it is named; a record that says it ran is a problem
                empty = await empty_log(self.world, run)
                if empty is not None:
                    self._unreadable(run_id, f"run {run_id}: {empty[1]} ({empty[0]})")
                return 0
            live = _Live(self._builder(run_id, run, events), self.checkpoint.sent(run_id), pending=events)
            self._live[run_id] = live
        else:
            builder = live.builder
            builder.run = run
            last = builder.last_event_id
            fresh = [e for e in events if not builder.has_seen(e.event_id)]
            if fresh and last is not None and min(e.event_id for e in fresh) < last:
                # committed out of id order: rebuild in id order, so the spans are the export's
                self.rebuilds += 1
                events = await self._read(run_id, None)
                live.builder = self._builder(run_id, run, events)
                live.rebuilt = True
            else:
                builder.feed(fresh)
            live.pending.extend(fresh)
        return await self._send(run_id, run, live)

    async def _send(self, run_id: str, run: WorkflowRun, live: _Live) -> int:
        """Stage the run's delivery; the batch goes out when full (with ``deliver``: at once)."""
        builder = live.builder
        if builder.complete or live.rebuilt:
            spans = builder.trace().data
        else:
            spans = builder.span_data(builder.closed[live.delivered :])
        fresh = [s for s in spans if _span_id(s) not in live.sent]
        if not fresh and not live.pending and not builder.complete:
            return 0
        out = fresh if self.span_data else [readable_span(s, builder.resource) for s in fresh]
        self._staged.append(
            _Staged(
                run_id,
                live,
                Delivery(run, list(live.pending), out),
                [_span_id(s) for s in fresh],
                len(builder.closed),
                RunState(builder.events, builder.last_event_id, builder.complete),
            )
        )
        self._staged_spans += len(fresh)
        self._staged_events += len(live.pending)
        if (
            self.deliver_many is None
            or self._staged_spans >= self.batch_spans
            or self._staged_events >= self.batch_events
        ):
            return await self._flush()
        return 0

    async def _flush(self) -> int:
        """Deliver what is staged; once acknowledged, the runs' states in one checkpoint transaction."""
        staged, self._staged, self._staged_spans, self._staged_events = self._staged, [], 0, 0
        if not staged:
            return 0
        if self.deliver_many is not None:
            await _settle(self.deliver_many([s.delivery for s in staged]))
        else:
            assert self.deliver is not None
            for s in staged:
                await _settle(self.deliver(s.delivery.run, s.delivery.events, s.delivery.spans))
        for s in staged:
            live = s.live
            live.sent.update(s.ids)
            live.delivered = s.delivered
            live.pending = []
            live.rebuilt = False
            if s.state.complete and self._live.get(s.run_id) is live:
                del self._live[s.run_id]  # a finished run keeps only its event count and last id
        self.checkpoint.record_many([(s.run_id, s.state, s.ids) for s in staged])
        return sum(len(s.ids) for s in staged)

    async def _finished_again(self, run_id: str, run: WorkflowRun, plan: _Plan, events: list[Event]) -> int:
        """A finished run named by the feed: usually nothing new (a restart re-reports the recent
        past). Events written after its end make it rebuild and send all its spans again (same ids)."""
        state = plan.state
        assert state is not None
        if plan.after is not None:
            if not events:
                return 0
            events = await self._read(run_id, None)
        if len(events) == state.events:  # nothing new (or a checkpoint migrated without last ids)
            if state.last_id is None and events:
                self.checkpoint.record(run_id, RunState(state.events, max(e.event_id for e in events), True))
            return 0
        builder = self._builder(run_id, run, events)
        live = _Live(builder, set(), pending=events)
        self._live[run_id] = live
        return await self._send(run_id, run, live)

    # -- looping -------------------------------------------------------------------------------
    async def pause(self, seconds: float, stopped: Callable[[], bool], *, wake: bool = True) -> bool:
        """Wait before the next pass: ``seconds``, less when the world signals that it is being
        written (``events.wait``: world-postgres's queue notifications; ``wake=False`` ignores
        them), and no longer than a tenth of a second once ``stopped()``. True when woken early."""
        wait = getattr(self.world.events, "wait", None) if wake else None
        end = time.monotonic() + seconds
        while not stopped() and (left := end - time.monotonic()) > 0:
            if wait is None:
                await asyncio.sleep(min(left, 0.1))
            elif await wait(min(left, 0.1)):
                return True
        return False

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        while not stop.is_set():
            await self.poll()
            await self.pause(self.interval, stop.is_set)

    @property
    def following(self) -> Sequence[str]:
        """Unfinished runs with a builder in memory."""
        return list(self._live)


#: ``post(request, spans)``: one serialized ``ExportTraceServiceRequest``, gzipped if the catch-up was
#: made with ``gzip_bodies``; returns once the collector acknowledged it, raises when it did not
Post = Callable[[bytes, int], Awaitable[None]]
#: world-local's ``known_ids``: run ids → (their event ids, all listed as regular files), or None
KnownIds = Callable[[Iterable[str]], "dict[str, tuple[list[str], bool]] | None"]


@dataclass
class _Answer:
    """A worker's answer for one chunk of runs."""

    bodies: list[tuple[bytes, int]] = field(default_factory=list)  # requests (gzipped if asked), spans in each
    done: list[tuple[str, RunState]] = field(default_factory=list)  # finished runs whose spans the bodies hold
    left: list[str] = field(default_factory=list)  # runs for the follower itself (unfinished, unreadable…)
    rest: list[WorkflowRun] = field(default_factory=list)  # runs not reached (answered early): to hand out again
    events: int = 0  # events read for the runs done
    fatal: str | None = None  # a world error that fails the pass


class ParallelCatchUp:
    """A first pass over a big history on every core, the way ``wft export --jobs N`` does it.

    Reading a log and turning it into OTLP holds the GIL, so one process catches up at a
    fraction of what an export does with a worker per core. Here ``jobs`` worker processes each
    open their own reader of the world from ``config`` and take chunks of runs the checkpoint has
    never seen: each finished run is read, built (the same ``RunTraceBuilder`` and the same
    spans as an export, and as the follower would send) and encoded into shared requests, which
    the worker hands back (gzipped when ``gzip_bodies``: what the sink takes, ``Sink.gzip_bodies``);
    this process posts them (``post``) and only then records
    the runs as finished in the checkpoint. A run that is not finished, reads empty or has an
    unreadable record goes back to the follower, which reads it itself (and keeps a builder for
    it). Chunks are sized as ``wft export`` sizes its tasks (``chunking.chunk_size``: big while
    many runs are left, small at the end); at most two per worker are in flight, and a worker
    answers early once a chunk's spans reach ``chunking.CHUNK_SPANS``, handing back the runs it
    did not reach, so memory stays bounded.

    ``settings``: attributes to set on each worker's reader (``grace``, ``retries``), as on the
    follower's own. Workers are forked on Linux (they start at once, with the code loaded); they
    never touch the follower's checkpoint and end with ``os._exit``, so its SQLite connection,
    inherited, is never closed or written from a child.
    """

    def __init__(
        self,
        config: BackendConfig,
        post: Post,
        *,
        jobs: int,
        min_runs: int = 500,
        settings: dict[str, Any] | None = None,
        gzip_bodies: bool = True,
    ) -> None:
        self.config = config
        self.post = post
        self.gzip_bodies = gzip_bodies
        self.jobs = max(1, jobs)
        self.min_runs = min_runs
        self.settings = dict(settings or {})

    async def run(
        self,
        chunks: AsyncIterator[list[WorkflowRun | str]],
        resource: Resource | None,
        include_payloads: bool,
        batch_spans: int,
        known_ids: KnownIds | None = None,
    ) -> AsyncGenerator[_Answer, None]:
        """Answers for the runs of ``chunks`` (records, or ids whose records the workers read), each
        once its requests were acknowledged.
        ``known_ids``: the follower's world-local index of event ids (``LocalEvents.known_ids``),
        sent with each chunk so a worker reads the run's files without listing the events folder
        itself (as ``wft export``'s workers do)."""
        resource = resource or Resource.get_empty()
        context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        pool = ProcessPoolExecutor(
            max_workers=self.jobs,
            mp_context=context,
            initializer=_start_catch_up_worker,
            initargs=(
                self.config,
                (dict(resource.attributes), resource.schema_url),
                include_payloads,
                batch_spans,
                self.settings,
                self.gzip_bodies,
            ),
        )
        in_flight: set[asyncio.Future[_Answer]] = set()

        def submit(runs: list[WorkflowRun | str]) -> None:
            known = known_ids(r if isinstance(r, str) else r.run_id for r in runs) if known_ids is not None else None
            future: Future[_Answer] = pool.submit(_catch_up_chunk, runs, known)
            in_flight.add(asyncio.wrap_future(future))

        async def next_answer() -> _Answer:
            """One finished chunk, once the collector acknowledged its requests."""
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            future = next(iter(finished))  # one at a time: each is recorded before the next is posted
            in_flight.discard(future)
            try:
                answer = future.result()
            except BrokenProcessPool as error:
                raise WorkflowWorldError(f"a catch-up worker process died ({error or 'killed'})") from None
            if answer.fatal is not None:
                raise WorkflowWorldError(answer.fatal)
            if answer.rest:  # answered early: the runs it did not reach go out again
                submit([*answer.rest])
            for body, spans in answer.bodies:
                await self.post(body, spans)
            return answer

        pending: deque[WorkflowRun | str] = deque()  # given, not handed out yet

        try:
            given = aiter(chunks)
            ahead = await anext(given, None)  # one ahead: whether the runs given are the last ones
            while ahead is not None:
                pending.extend(ahead)
                ahead = await anext(given, None)
                while (runs := chunking.next_task(pending, self.jobs, last=ahead is None)) is not None:
                    submit(runs)
                    while len(in_flight) > 2 * self.jobs:
                        yield await next_answer()
            while in_flight:
                yield await next_answer()
        finally:
            pool.shutdown(wait=not in_flight, cancel_futures=True)


class _CatchUpWorker:
    """One worker process's reader, encoder and event loop."""

    def __init__(
        self,
        config: BackendConfig,
        resource: tuple[dict[str, Any], str | None],
        include_payloads: bool,
        batch_spans: int,
        settings: dict[str, Any],
        gzip_bodies: bool,
    ) -> None:
        from .backends import open_backend
        from .export import packer

        self.world: Any = open_backend(config)
        for name, value in settings.items():
            if hasattr(self.world, name):
                setattr(self.world, name, value)
        self.resource = Resource(resource[0], resource[1])
        self.encoder = OtlpEncoder(self.resource)
        self.include_payloads = include_payloads
        self.batch_spans = batch_spans
        self.pack = packer(gzip_bodies)
        self.loop = asyncio.new_event_loop()

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.world.close())
        finally:
            self.loop.close()

    async def _records(self, entries: list[WorkflowRun | str], out: _Answer) -> list[WorkflowRun]:
        """The chunk's runs with their records (``run_records``). A run not there, unreadable or of
        no known status goes back to the follower, which reads it itself and reports what it must."""
        runs: list[WorkflowRun] = []
        for run_id, run in await run_records(self.world, entries):
            if run is None or isinstance(run, UnreadableRun) or run.status not in _STATUSES:
                out.left.append(run_id)
            else:
                runs.append(run)
        return runs

    async def _logs(
        self, runs: list[WorkflowRun], known: dict[str, tuple[list[str], bool]] | None
    ) -> AsyncGenerator[tuple[WorkflowRun, list[Event] | None], None]:
        """Each run with its log as it is read (None: to be read the usual way), one at a time: a
        chunk of long runs' logs held at once would be gigabytes. World-local (flat layout) reads
        the ids the follower's index has; a world that reads many logs at once, that way."""
        bulk = getattr(self.world.events, "logs", None)
        if known is None and bulk is not None:
            by_id = {run.run_id: run for run in runs}
            async with contextlib.aclosing(bulk(dict.fromkeys(by_id))) as reads:
                async for run_id, log in reads:
                    yield by_id.pop(run_id), log
            for run in by_id.values():  # not given (none should be): read the usual way
                yield run, None
            return
        for run in runs:
            events: list[Event] | None = None
            if known is not None:
                ids, listed = known.get(run.run_id, ([], False))
                with contextlib.suppress(UnreadableEventsError):  # read again the usual way, and left to the follower
                    events = self.world.events.read_log(run.run_id, ids, True, listed=listed)
            yield run, events

    async def chunk(self, entries: list[WorkflowRun | str], known: dict[str, tuple[list[str], bool]] | None) -> _Answer:
        out = _Answer()
        runs = await self._records(entries, out)
        batcher = RequestBatcher(self.encoder, self.batch_spans)
        spans = 0
        reached: set[str] = set()
        async with contextlib.aclosing(self._logs(runs, known)) as reads:
            async for run, read in reads:
                if spans >= chunking.CHUNK_SPANS:
                    out.rest = [r for r in runs if r.run_id not in reached]
                    break
                reached.add(run.run_id)
                spans += await self._one(run, read, batcher, out)
        last = batcher.flush()
        if last is not None:
            out.bodies.append((self.pack(last[0]), last[1]))
        return out

    async def _one(self, run: WorkflowRun, read: list[Event] | None, batcher: RequestBatcher, out: _Answer) -> int:
        """One run read, built and batched into ``out``; the spans it made."""
        try:
            events = read if read is not None else await event_log(self.world, run.run_id)
        except UnreadableEventsError:
            out.left.append(run.run_id)  # the follower reads it again and reports it, once
            return 0
        if not events or run.run_id in stalled_runs(self.world):
            out.left.append(run.run_id)
            return 0
        builder = RunTraceBuilder(run.run_id, run, resource=self.resource, include_payloads=self.include_payloads)
        builder.feed(events)
        if not builder.complete:
            out.left.append(run.run_id)
            return 0
        data = builder.trace().data
        out.bodies.extend((self.pack(body), spans) for body, spans in batcher.add(data))
        out.done.append((run.run_id, RunState(builder.events, builder.last_event_id, True)))
        out.events += len(events)
        return len(data)


_worker: _CatchUpWorker | None = None


def _start_catch_up_worker(*args: Any) -> None:
    global _worker
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the follower's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the follower's handlers (forked with them)
    signal.set_wakeup_fd(-1)  # nor its event loop's wake-up pipe
    _worker = _CatchUpWorker(*args)
    multiprocessing.util.Finalize(_worker, _worker.close, exitpriority=10)


def _catch_up_chunk(runs: list[WorkflowRun | str], known: dict[str, tuple[list[str], bool]] | None = None) -> _Answer:
    worker = _worker
    assert worker is not None, "the pool's initializer starts the worker"
    try:
        return worker.loop.run_until_complete(worker.chunk(runs, known))
    except WorkflowWorldError as error:  # its class may not survive pickling; its words do
        return _Answer(fatal=str(error))


async def _settle(result: Awaitable[None] | None) -> None:
    if result is not None and (asyncio.iscoroutine(result) or isinstance(result, Awaitable)):
        await result


class _NotYet(Exception):
    """A run's record is not readable yet; the run is retried on the next pass."""
