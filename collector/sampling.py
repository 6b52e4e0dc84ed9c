"""Outcome-aware sampling of what the collector forwards upstream (``--forward-sample``).

Tail samplers decide after a fixed wait, long before a workflow run that lasts hours has an outcome.
Here the decision for a run is taken when its event log says it ended: the event-log run span (built
from ``run_completed`` / ``run_failed`` / ``run_cancelled``) carries ``workflow.run.status``, and the
run is kept when ``run_fraction(run_id)`` (the first 64 bits of a BLAKE2b hash of the run id, as a
fraction of 2^64) is below that outcome's rate. The decision is a function of the run id and outcome
only, so every collector, and the same collector after a restart, decides the same.

The whole run is kept or dropped together: its event-log spans and the app's spans stitched to it,
i.e. those carrying its ``workflow.run.id`` and those without a run id in a trace where a span named
the run (the first run named in a trace owns the trace's anonymous spans). Until the decision the
run's spans wait in a buffer, one SQLite file in the spool folder (``sampling.sqlite3``, private),
bounded in bytes. The rules for what leaves the buffer before the run ends:

- an ERROR span (status code 2) keeps its run at once: what was buffered goes, and so does the rest of
  the run as it comes (reason ``error``). Benign conflicts were downgraded to Unset before this point.
- a run undecided ``max_wait`` after its first buffered span is kept (reason ``max_wait``): what was
  buffered goes, the rest follows as it comes, whatever the outcome.
- spans without a run id whose trace no span has tied to a run wait ``min(max_wait, 30 s)`` for one,
  then go (reason ``no_run``), as does the rest of that trace: they are not a run's to sample.
- when the buffer is over its bound, the undecided runs that started buffering first are kept at
  once until it fits again (reason ``buffer_full``): sampling gives way, data is never dropped for room.

A decision is remembered while its run keeps sending spans and for ``remember`` (24 h) after the last
one, so late app spans follow it; later than that they start a new wait. A run kept before its end
(``error``, ``max_wait``, ``buffer_full``: its first spans are already upstream) is remembered until
its end arrives, for up to ``remember_live`` (30 days) of silence: a durable workflow that sleeps for
a week must not have its head forwarded and its tail dropped by an outcome decided afresh. A restart loses nothing: the
buffer and the decisions are on disk, and spans a crash left between a decision and the spool are sent
again when the sampler starts (at least once). The local store keeps everything; only what goes
upstream is sampled.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans

from telemetry.semconv import WORKFLOW_RUN_ID, WORKFLOW_SPAN_KIND, SpanKinds

from .private import private_dir, private_file

__all__ = [
    "OUTCOMES",
    "REASONS",
    "Sampler",
    "SamplerStats",
    "keep_run",
    "parse_sample_rates",
    "run_fraction",
]

log = logging.getLogger("collector.sampling")

#: the ends of a run the event log knows, as ``workflow.run.status`` says them
OUTCOMES = ("completed", "failed", "cancelled")
#: why a run (or a span) was kept or dropped: an outcome's rate, or one of the rules above
REASONS = (*OUTCOMES, "error", "max_wait", "buffer_full", "no_run", "sampling_off")
KEPT, DROPPED = "kept", "dropped"

_RUN_STATUS = "workflow.run.status"
_STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.STATUS_CODE_ERROR
_TRACE_KEY = "trace:"  # buffer key of spans whose trace is not tied to a run yet
_LINK_WAIT_CAP = 30.0
_LINK_MEMORY = 3600.0  # a trace's tie to its run is forgotten this long after its last span
_WARN_EVERY = 60.0
_SCALE = 2**64

#: a run kept before its end that has not ended: its decision is remembered ``remember_live``, the
#: others' ``remember``. Each kind has its own index on ``seen_ns``, so forgetting one kind never
#: walks the other (30 days of kept live runs under a 24-hour memory would be walked every tick).
_LIVE_KEPT = "(NOT ended AND coalesce(reason, '') IN ('error', 'max_wait', 'buffer_full'))"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
  key TEXT PRIMARY KEY, first_ns INTEGER NOT NULL, seen_ns INTEGER NOT NULL, bytes INTEGER NOT NULL DEFAULT 0,
  decision TEXT, reason TEXT, ended INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_waiting ON runs (first_ns) WHERE decision IS NULL;
CREATE TABLE IF NOT EXISTS pending (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, spans INTEGER NOT NULL, body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_by_key ON pending (key, seq);
CREATE TABLE IF NOT EXISTS traces (trace_id BLOB PRIMARY KEY, run_id TEXT NOT NULL, seen_ns INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS traces_seen ON traces (seen_ns);
"""
#: made once ``ended`` exists (a buffer from before it gains the column first); ``runs_seen``, the one
#: index of both kinds, was a buffer's from before
_SEEN_INDEXES = f"""
DROP INDEX IF EXISTS runs_seen;
CREATE INDEX IF NOT EXISTS runs_seen_short ON runs (seen_ns) WHERE decision IS NOT NULL AND NOT {_LIVE_KEPT};
CREATE INDEX IF NOT EXISTS runs_seen_live ON runs (seen_ns) WHERE decision IS NOT NULL AND {_LIVE_KEPT};
"""
#: forgetting decisions, the two kinds (``remember``, ``remember_live``): each served by its own index
FORGET_STATEMENTS = (
    f"DELETE FROM runs WHERE decision IS NOT NULL AND NOT {_LIVE_KEPT} AND seen_ns < ?",
    f"DELETE FROM runs WHERE decision IS NOT NULL AND {_LIVE_KEPT} AND seen_ns < ?",
)


def parse_sample_rates(text: str) -> dict[str, float]:
    """``completed=0.1,failed=1,cancelled=1`` as rates by outcome; outcomes not named keep rate 1.
    ``ValueError`` (one line, naming what is wrong) for an unknown outcome, a rate that is not a number
    in [0, 1], an outcome named twice, or an empty spec."""
    rates: dict[str, float] = {}
    example = "(example: completed=0.1,failed=1,cancelled=1)"
    for part in text.split(","):
        name, equals, value = (p.strip() for p in part.partition("="))
        if not equals or not name:
            raise ValueError(f"--forward-sample: {part.strip()!r} is not outcome=rate {example}")
        if name not in OUTCOMES:
            raise ValueError(f"--forward-sample: unknown outcome {name!r}: use {', '.join(OUTCOMES)} {example}")
        if name in rates:
            raise ValueError(f"--forward-sample: {name} given twice {example}")
        try:
            rate = float(value)
        except ValueError:
            rate = float("nan")
        if not 0.0 <= rate <= 1.0:  # NaN fails too
            raise ValueError(f"--forward-sample: rate {value!r} for {name} is not a number from 0 to 1 {example}")
        rates[name] = rate
    return {outcome: rates.get(outcome, 1.0) for outcome in OUTCOMES}


def run_fraction(run_id: str) -> float:
    """Where ``run_id`` falls in [0, 1): the first 64 bits of its BLAKE2b hash (stable everywhere,
    unlike ``hash()``); a run is kept when this is below its outcome's rate."""
    return _hash64(run_id) / _SCALE


def keep_run(run_id: str, rate: float) -> bool:
    """The decision for a run that ended with an outcome sampled at ``rate``."""
    if rate >= 1.0:
        return True
    return _hash64(run_id) < int(rate * _SCALE)


def _hash64(run_id: str) -> int:
    digest = hashlib.blake2b(run_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class SamplerStats:
    """Counts since the process started, for ``/metrics``: ``runs`` and ``spans`` by (decision, reason),
    decision ``kept``/``dropped`` and reason one of ``REASONS`` (``no_run`` only for spans); what waits
    in the buffer now: its bytes, and its runs (traces not tied to a run yet count as one each)."""

    runs: Mapping[tuple[str, str], int]
    spans: Mapping[tuple[str, str], int]
    buffered_bytes: int
    buffered_runs: int


@dataclass
class _Group:
    """The spans of one batch that belong to one buffer key, as an OTLP request of their own."""

    spans: int
    body: bytes
    error: bool


class Sampler:
    """Sits between what the collector stored and the forwarder's spool: ``offer`` takes the OTLP
    requests the forwarder would have spooled, ``release`` (the forwarder's ``enqueue``) gets what is
    kept. ``run`` applies the timed rules. All calls happen on one event loop."""

    def __init__(
        self,
        path: str | Path,
        rates: Mapping[str, float],
        release: Callable[[bytes], Awaitable[None]],
        *,
        max_wait: float = 3600.0,
        max_bytes: int = 64 * 1024 * 1024,
        remember: float = 24 * 3600.0,
        remember_live: float = 30 * 24 * 3600.0,
        max_batch_bytes: int = 4 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        unknown = set(rates) - set(OUTCOMES)
        if unknown or not all(0.0 <= rates[o] <= 1.0 for o in rates):
            raise ValueError(f"sampling rates must be outcomes ({', '.join(OUTCOMES)}) with rates in [0, 1]")
        self.rates = {outcome: float(rates.get(outcome, 1.0)) for outcome in OUTCOMES}
        self.release = release
        self.max_wait = max_wait
        self.link_wait = min(max_wait, _LINK_WAIT_CAP)
        self.max_bytes = max_bytes
        self.remember = max(remember, 2 * max_wait)
        self.remember_live = max(remember_live, self.remember)
        self.max_batch_bytes = max_batch_bytes
        self.clock = clock
        self.path = Path(path)
        private_dir(self.path.parent)
        private_file(self.path)  # SQLite gives its -wal and -shm files the database file's mode
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # as durable as the spool's files: a process crash loses nothing, a power cut may
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        if "ended" not in {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}:  # a buffer from before
            self._db.execute("ALTER TABLE runs ADD COLUMN ended INTEGER NOT NULL DEFAULT 0")
        self._db.executescript(_SEEN_INDEXES)
        row = self._db.execute("SELECT coalesce(sum(bytes), 0), count(*) FROM runs WHERE decision IS NULL").fetchone()
        self._bytes, self._waiting = int(row[0]), int(row[1])
        self._runs: Counter[tuple[str, str]] = Counter()
        self._spans: Counter[tuple[str, str]] = Counter()
        self._lock = asyncio.Lock()
        self._recovered = False
        self._warned = -_WARN_EVERY
        self._sent_early = 0
        #: every rate 1 (sampling turned off since the buffer was filled): drain it, then pass everything
        self.passthrough = all(rate >= 1.0 for rate in self.rates.values())

    # -- reading ---------------------------------------------------------------------------------
    def stats(self) -> SamplerStats:
        return SamplerStats(dict(self._runs), dict(self._spans), self._bytes, self._waiting)

    def decision(self, run_id: str) -> tuple[str, str] | None:
        """(``kept``/``dropped``, reason) of a run decided and remembered, else None."""
        row = self._db.execute("SELECT decision, reason FROM runs WHERE key = ?", (run_id,)).fetchone()
        return (row[0], row[1]) if row is not None and row[0] is not None else None

    # -- taking spans ----------------------------------------------------------------------------
    async def offer(self, payload: bytes) -> None:
        """Route one OTLP request: kept runs' spans to ``release``, dropped runs' nowhere, the rest into
        the buffer. A failure (the spool's disk full, say) leaves the buffer as it was and raises."""
        if self.passthrough:
            async with self._lock:
                await self._recover()
            await self.release(payload)
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(payload)
        async with self._lock:
            await self._recover()
            await self._transaction(lambda out, counts: self._route(request, out, counts))

    async def run(self, stop: asyncio.Event) -> None:
        """Apply the timed rules (max wait, link wait) and forget old decisions until ``stop``."""
        tick = max(0.05, min(5.0, self.link_wait / 4))
        while not stop.is_set():
            try:
                await self.expire()
            except OSError as error:  # the spool's or the buffer's disk: try again later
                log.error("forward sampling: cannot release expired runs now (%s)", error)
            try:
                await asyncio.wait_for(stop.wait(), tick)
            except TimeoutError:
                pass

    async def expire(self) -> None:
        """One round of the timed rules: what waited past its wait goes; old decisions are forgotten."""
        async with self._lock:
            await self._recover()
            if not self.passthrough:
                await self._transaction(self._expire)

    def close(self) -> None:
        self._db.close()

    # -- the rules -------------------------------------------------------------------------------
    async def _transaction(self, work: Callable[[list[bytes], _Counts], None]) -> None:
        """``work`` inside one transaction; what it released is spooled before the commit, so a crash
        in between sends it again rather than never."""
        out: list[bytes] = []
        counts = _Counts()
        try:
            self._db.execute("BEGIN IMMEDIATE")
            work(out, counts)
            for body in _batches(out, self.max_batch_bytes):
                await self.release(body)
            self._db.execute("COMMIT")
        except sqlite3.Error as error:
            self._rollback()
            raise _as_os_error(error) from error
        except BaseException:
            self._rollback()
            raise
        self._bytes += counts.bytes
        self._waiting += counts.waiting
        self._runs.update(counts.runs)
        self._spans.update(counts.spans)

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    async def _recover(self) -> None:
        """Once, on start: buffered spans of runs decided before a crash cut the release short; with
        sampling off, everything buffered (and then the file goes: nothing will wait in it again)."""
        if self._recovered:
            return

        def work(out: list[bytes], counts: _Counts) -> None:
            decided = self._db.execute(
                "SELECT DISTINCT p.key, r.decision FROM pending p JOIN runs r ON r.key = p.key"
                " WHERE r.decision IS NOT NULL"
            ).fetchall()
            for key, decision in decided:
                if decision == KEPT:
                    out.extend(body for _, body in self._take(key))
                else:
                    self._db.execute("DELETE FROM pending WHERE key = ?", (key,))
            if self.passthrough:
                now = _ns(self.clock())
                for (key,) in self._db.execute("SELECT key FROM runs WHERE decision IS NULL").fetchall():
                    self._decide(key, KEPT, "sampling_off", now, out, counts, known=True)

        await self._transaction(work)
        self._recovered = True
        if self.passthrough:
            self._db.close()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def _route(self, request: ExportTraceServiceRequest, out: list[bytes], counts: _Counts) -> None:
        now = _ns(self.clock())
        groups, outcomes = self._split(request, now, out, counts)
        for key, group in groups.items():
            row = self._db.execute("SELECT decision, reason FROM runs WHERE key = ?", (key,)).fetchone()
            if row is not None and row[0] is not None:  # decided: the rest of the run follows
                decision, reason = str(row[0]), str(row[1])
                ended = int(key in outcomes)  # its end: from now on remembered as long as any decision
                self._db.execute("UPDATE runs SET seen_ns = ?, ended = max(ended, ?) WHERE key = ?", (now, ended, key))
            else:
                outcome = outcomes.get(key)
                if group.error:
                    decision, reason = KEPT, "error"
                elif outcome is not None:
                    decision, reason = (KEPT if keep_run(key, self.rates[outcome]) else DROPPED), outcome
                else:
                    self._buffer(key, group, now, counts)
                    continue
                self._decide(key, decision, reason, now, out, counts, known=row is not None)
                if outcome is not None:
                    self._db.execute("UPDATE runs SET ended = 1 WHERE key = ?", (key,))
            counts.spans[(decision, reason)] += group.spans
            if decision == KEPT:
                out.append(group.body)
        self._fit(now, out, counts)

    def _split(
        self, request: ExportTraceServiceRequest, now: int, out: list[bytes], counts: _Counts
    ) -> tuple[dict[str, _Group], dict[str, str]]:
        """The request's spans by buffer key (run id, or ``trace:<id>``), and the outcomes it reports.
        Ties traces to runs first, so a batch's anonymous spans join the run a sibling names."""
        named: dict[bytes, str] = {}
        outcomes: dict[str, str] = {}
        for resource_spans in request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    run_id, kind, status = _facts(span.attributes)
                    if run_id is None:
                        continue
                    named.setdefault(span.trace_id, run_id)
                    if kind == SpanKinds.RUN and status in OUTCOMES:
                        outcomes[run_id] = status
        owners = self._link(named, now, out, counts)
        buckets: dict[str, list[tuple[int, int, Any]]] = {}
        errors: set[str] = set()
        for r, resource_spans in enumerate(request.resource_spans):
            for s, scope_spans in enumerate(resource_spans.scope_spans):
                for span in scope_spans.spans:
                    run_id = _facts(span.attributes)[0]
                    key = run_id or owners.get(span.trace_id) or _TRACE_KEY + span.trace_id.hex()
                    buckets.setdefault(key, []).append((r, s, span))
                    if span.status.code == _STATUS_ERROR:
                        errors.add(key)
        groups = {key: _Group(len(spans), _encode(request, spans), key in errors) for key, spans in buckets.items()}
        return groups, outcomes

    def _link(self, named: dict[bytes, str], now: int, out: list[bytes], counts: _Counts) -> dict[bytes, str]:
        """Tie each trace to the first run named in it (here or before); spans waiting as the trace's
        become that run's. Returns the owners of the traces named here."""
        owners: dict[bytes, str] = {}
        for trace_id, run_id in named.items():
            row = self._db.execute("SELECT run_id FROM traces WHERE trace_id = ?", (trace_id,)).fetchone()
            if row is not None:
                owners[trace_id] = row[0]
                self._db.execute("UPDATE traces SET seen_ns = ? WHERE trace_id = ?", (now, trace_id))
                continue
            self._db.execute("INSERT INTO traces VALUES (?, ?, ?)", (trace_id, run_id, now))
            owners[trace_id] = run_id
            self._adopt(_TRACE_KEY + trace_id.hex(), run_id, now, out, counts)
        return owners

    def _adopt(self, orphan: str, run_id: str, now: int, out: list[bytes], counts: _Counts) -> None:
        """The spans waiting under ``orphan`` (a trace's key) become ``run_id``'s: they wait with the
        run, or follow its decision when it has one."""
        row = self._db.execute("SELECT decision, first_ns, bytes FROM runs WHERE key = ?", (orphan,)).fetchone()
        if row is None:
            return
        self._db.execute("DELETE FROM runs WHERE key = ?", (orphan,))
        if row[0] is not None:  # already sent as no one's: nothing waits
            return
        counts.waiting -= 1
        owner = self._db.execute("SELECT decision, reason FROM runs WHERE key = ?", (run_id,)).fetchone()
        if owner is not None and owner[0] is not None:
            counts.bytes -= int(row[2])
            taken = self._take(orphan)
            counts.spans[(owner[0], owner[1])] += sum(spans for spans, _ in taken)
            if owner[0] == KEPT:
                out.extend(body for _, body in taken)
            return
        counts.waiting += owner is None
        self._db.execute(
            "INSERT INTO runs (key, first_ns, seen_ns, bytes) VALUES (?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET"
            " first_ns = min(first_ns, excluded.first_ns), bytes = bytes + excluded.bytes",
            (run_id, row[1], now, row[2]),
        )
        self._db.execute("UPDATE pending SET key = ? WHERE key = ?", (run_id, orphan))

    def _buffer(self, key: str, group: _Group, now: int, counts: _Counts) -> None:
        size = len(group.body)
        new = self._db.execute(
            "INSERT INTO runs (key, first_ns, seen_ns, bytes) VALUES (?, ?, ?, ?) ON CONFLICT(key) DO NOTHING",
            (key, now, now, size),
        ).rowcount
        if not new:
            self._db.execute("UPDATE runs SET seen_ns = ?, bytes = bytes + ? WHERE key = ?", (now, size, key))
        self._db.execute("INSERT INTO pending (key, spans, body) VALUES (?, ?, ?)", (key, group.spans, group.body))
        counts.bytes += size
        counts.waiting += new

    def _decide(
        self,
        key: str,
        decision: str,
        reason: str,
        now: int,
        out: list[bytes],
        counts: _Counts,
        *,
        known: bool,
    ) -> None:
        """Record the decision for ``key`` and apply it to what it has waiting."""
        size = 0
        if known:
            size = int(self._db.execute("SELECT bytes FROM runs WHERE key = ?", (key,)).fetchone()[0])
            self._db.execute(
                "UPDATE runs SET decision = ?, reason = ?, seen_ns = ?, bytes = 0 WHERE key = ?",
                (decision, reason, now, key),
            )
            counts.waiting -= 1
            counts.bytes -= size
        else:
            self._db.execute(
                "INSERT INTO runs (key, first_ns, seen_ns, decision, reason) VALUES (?, ?, ?, ?, ?)",
                (key, now, now, decision, reason),
            )
        if not key.startswith(_TRACE_KEY):
            counts.runs[(decision, reason)] += 1
        taken = self._take(key) if size else []
        counts.spans[(decision, reason)] += sum(spans for spans, _ in taken)
        if decision == KEPT:
            out.extend(body for _, body in taken)

    def _take(self, key: str) -> list[tuple[int, bytes]]:
        """(spans, body) waiting under ``key``, oldest first, removed from the buffer."""
        rows = self._db.execute("SELECT spans, body FROM pending WHERE key = ? ORDER BY seq", (key,)).fetchall()
        self._db.execute("DELETE FROM pending WHERE key = ?", (key,))
        return [(int(spans), bytes(body)) for spans, body in rows]

    def _fit(self, now: int, out: list[bytes], counts: _Counts) -> None:
        """Over the bound: keep the runs that have waited longest until the rest fits."""
        over = self._bytes + counts.bytes - self.max_bytes
        while over > 0:
            rows = self._db.execute(
                "SELECT key, bytes FROM runs WHERE decision IS NULL ORDER BY first_ns, key LIMIT 16"
            ).fetchall()
            if not rows:
                break
            for key, size in rows:
                reason = "no_run" if key.startswith(_TRACE_KEY) else "buffer_full"
                self._decide(key, KEPT, reason, now, out, counts, known=True)
                over -= size
                self._sent_early += 1
                if over <= 0:
                    break
        if self._sent_early and time.monotonic() - self._warned >= _WARN_EVERY:  # once a minute at most
            log.warning(
                "forward sampling buffer over %d bytes (--sample-buffer): %d undecided runs sent early, unsampled",
                self.max_bytes,
                self._sent_early,
            )
            self._warned, self._sent_early = time.monotonic(), 0

    def _expire(self, out: list[bytes], counts: _Counts) -> None:
        """Keep the runs undecided past ``max_wait`` and the traces no run claimed past the link wait;
        forget decisions and trace ties not used for ``remember`` (``remember_live`` for a run kept
        before its end that has not ended)."""
        now = _ns(self.clock())
        waited = self._db.execute(
            "SELECT key, first_ns FROM runs WHERE decision IS NULL AND first_ns <= ? ORDER BY first_ns",
            (now - _ns(self.link_wait),),  # the shorter wait: runs past it are filtered below
        ).fetchall()
        for key, first_ns in waited:
            orphan = key.startswith(_TRACE_KEY)
            if orphan or first_ns <= now - _ns(self.max_wait):
                self._decide(key, KEPT, "no_run" if orphan else "max_wait", now, out, counts, known=True)
        forget, forget_live = now - _ns(self.remember), now - _ns(self.remember_live)
        for statement, before in zip(FORGET_STATEMENTS, (forget, forget_live), strict=True):
            self._db.execute(statement, (before,))
        self._db.execute("DELETE FROM traces WHERE seen_ns < ?", (now - _ns(min(self.remember, _LINK_MEMORY)),))


class _Counts:
    """What a transaction changed, applied to the sampler's numbers only once it committed."""

    def __init__(self) -> None:
        self.bytes = 0
        self.waiting = 0
        self.runs: Counter[tuple[str, str]] = Counter()
        self.spans: Counter[tuple[str, str]] = Counter()


def _facts(attributes: Iterable[Any]) -> tuple[str | None, str | None, str | None]:
    """(run id, ``workflow.span.kind``, ``workflow.run.status``) of a span's attributes."""
    run_id = kind = status = None
    for kv in attributes:
        key = kv.key
        if key == WORKFLOW_RUN_ID:
            run_id = kv.value.string_value or None
        elif key == WORKFLOW_SPAN_KIND:
            kind = kv.value.string_value
        elif key == _RUN_STATUS:
            status = kv.value.string_value
    return run_id, kind, status


def _encode(request: ExportTraceServiceRequest, spans: list[tuple[int, int, Any]]) -> bytes:
    """The spans (by index of resource and scope in ``request``) as one OTLP request of their own."""
    out = ExportTraceServiceRequest()
    resources: dict[int, ResourceSpans] = {}
    scopes: dict[tuple[int, int], ScopeSpans] = {}
    for r, s, span in spans:
        scope_out = scopes.get((r, s))
        if scope_out is None:
            resource_out = resources.get(r)
            if resource_out is None:
                source = request.resource_spans[r]
                resource_out = resources[r] = out.resource_spans.add()
                resource_out.resource.CopyFrom(source.resource)
                resource_out.schema_url = source.schema_url
            scope_source = request.resource_spans[r].scope_spans[s]
            scope_out = scopes[(r, s)] = resource_out.scope_spans.add()
            scope_out.scope.CopyFrom(scope_source.scope)
            scope_out.schema_url = scope_source.schema_url
        scope_out.spans.add().CopyFrom(span)
    body: bytes = out.SerializeToString()
    return body


def _batches(bodies: list[bytes], limit: int) -> list[bytes]:
    """Requests joined into fewer: serialized OTLP requests concatenate into one (protobuf appends
    repeated fields), up to ``limit`` bytes each (a single larger one goes alone)."""
    out: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for body in bodies:
        if current and size + len(body) > limit:
            out.append(b"".join(current))
            current, size = [], 0
        current.append(body)
        size += len(body)
    if current:
        out.append(b"".join(current))
    return out


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _as_os_error(error: sqlite3.Error) -> OSError:
    """A fault of the buffer's storage as the ``OSError`` callers already handle for the spool (the
    request is answered 503 and retried)."""
    code = getattr(error, "sqlite_errorcode", None)
    full = isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL
    return OSError(errno.ENOSPC if full else errno.EIO, f"forward sampling buffer: {error}")
