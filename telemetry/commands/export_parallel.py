"""``wft export`` on every core: runs shared out among worker processes, each reading, building
and encoding its share, while this process lists the runs and sends.

This process does as little per event as it can, since it shares the cores with the workers, and
what it does before the first chunk goes out is time the workers sit idle. A whole world is
handed out as run ids, the workers reading the records (the order is not kept anyway):
world-local from the listing of ``runs/``, world-postgres from pages of the runs' primary key
(``runs.id_page``; each worker reads its chunk's runs in one statement, ``runs.entries``). The flat
layout's events folder, which every worker would otherwise list in full to find any one run's
files, is listed here once, sorted (``FlatSnapshot``: no index, journal or notifications to build),
and each chunk carries its runs' slices of it: a run's events are those listed when the export
began (as its runs are), and what a live world writes after that is the next export's or
``wft follow``'s (span ids are the same, so nothing is sent twice). A selection is listed as runs.

Reading a log (files or rows, JSON, payload decoding) and turning it into OTLP is Python work
that holds the GIL, and runs are independent of each other, so N processes go about N times as
fast. Each worker opens its own reader of the world from the same ``BackendConfig`` (on
world-postgres, its own connection, reading a chunk's logs in one statement: ``run_logs``) and
answers a chunk of runs with gzipped OTLP request bodies
(``otlp_encode.RunBatcher``; small runs share a request), each tagged with the runs whose spans
it holds. The parent posts them (``Delivery``, as the one-process path does), so a failed POST
counts against exactly those runs, and every span is sent once (as in the one-process path, the
order of runs is not kept). Runs whose log ends at a record
still being written come back to the caller, to be read again later.

Runs go out in tasks of ``chunking.chunk_size`` runs: big ones while many are left, small ones at
the end. Memory stays bounded: at most two chunks per worker are in flight, and a worker answers
early, handing back the runs it did not reach, once a chunk holds ``chunking.CHUNK_SPANS`` spans.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import multiprocessing
import multiprocessing.util
import os
import pickle
import signal
import sys
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.sdk.resources import Resource

from .. import chunking
from ..backends import BackendConfig, open_backend
from ..backends.local import LocalWorld
from ..backends.local_layout import FlatSnapshot, event_ids
from ..backends.records import UnreadableRun
from ..errors import UnreadableEventsError, WorkflowWorldError
from ..export import ExportError, Sink, packer
from ..otlp_encode import OtlpEncoder, RunBatcher, split_by_run
from ..reading import all_runs, empty_log, event_log, run_logs, run_records, stalled_runs
from ..runtrace import RunTraceBuilder
from ..world import Event, WorkflowRun
from .common import RUNTIME, CliError

__all__ = [
    "GIVE_UP_AFTER",
    "Delivery",
    "Tally",
    "default_jobs",
    "export_in_processes",
]

#: run ids per page of a world-postgres listing (ids only: the workers read the runs)
ID_PAGE = 2000
#: failed requests, with no run exported yet, after which an export gives up
GIVE_UP_AFTER = 3
#: worlds whose readers can be opened again in another process from their ``BackendConfig``
PARALLEL_KINDS = frozenset({"local", "postgres"})

#: world-local runs' files as the parent listed them: (whether these are flat file names, as
#: ``FlatSnapshot.take`` gives them, rather than event ids), run id → (names or ids, all regular files)
Known = tuple[bool, dict[str, tuple[list[str], bool]]]


def default_jobs() -> int:
    """The CPUs this process may run on (its affinity mask, where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Tally(Protocol):
    """Where the counts go (the export command's totals)."""

    runs: int
    spans: int
    events: int
    errors: int

    def skip(self, run_id: str, path: str, reason: str) -> None: ...


#: HTTP statuses that refuse a request's data (malformed, too large, unprocessable), not the client:
#: a request of several runs refused so is sent again a run at a time
DATA_REFUSALS = frozenset({400, 413, 422})

#: runs a failed request's line names (a request holds up to hundreds: the line stays readable)
NAMED_RUNS = 5


def _named(runs: list[str]) -> str:
    if len(runs) == 1:
        return f"run {runs[0]}"
    more = f" and {len(runs) - NAMED_RUNS} more" if len(runs) > NAMED_RUNS else ""
    return f"{len(runs)} runs ({', '.join(runs[:NAMED_RUNS])}{more})"


class Delivery:
    """Requests that hold several runs' spans, posted, and the runs in them tallied; both paths of
    ``wft export`` (worker processes, or one process) send through one.

    A run counts as exported once every request holding its spans was acknowledged, and as an
    error when one was not: each run of a refused request is named with the request's error
    (``RunBatcher`` says whose spans a request holds). Once ``GIVE_UP_AFTER`` requests failed and
    the endpoint took none, it is taking nothing (down, or refusing everything), and the export
    stops rather than wait out every request left.
    """

    def __init__(self, sink: Sink, tally: Tally, *, gzipped: bool = False) -> None:
        self.sink = sink
        self.tally = tally
        self.gzipped = gzipped  # bodies already compressed (``gzip_body``), as workers send them
        self.failures = 0  # requests refused or never answered
        self.acknowledged = 0  # requests the endpoint took (whole, or a run's part of a refused one)
        self._failed: set[str] = set()  # runs with spans in a failed request, not yet tallied

    async def post(self, body: bytes, spans: int, runs: list[str]) -> None:
        """One request of ``spans`` spans of ``runs``; raises ``CliError`` when it is time to give up.
        A request of several runs refused for its data (``DATA_REFUSALS``) is sent again a run at a
        time (``_one_by_one``): one run's span the receiver will not take fails that run alone."""
        try:
            await self._send(body, spans, gzipped=self.gzipped)
        except ExportError as error:
            if error.status not in DATA_REFUSALS or len(runs) < 2:
                self._refused(runs, error)
                return
            print(f"wft export: {_named(runs)}: {error}; sending them again a run at a time", file=sys.stderr)
            await self._one_by_one(split_by_run(gzip.decompress(body) if self.gzipped else body), runs)

    async def _one_by_one(self, parts: dict[str | None, tuple[bytes, int]], runs: list[str]) -> None:
        """A refused request's parts (``split_by_run``), a run's each, in the request's order; spans of
        no run, or of a run it did not name (none are made so), last, failing all its runs if refused.

        Bounded whatever the receiver does: once ``GIVE_UP_AFTER`` parts were refused and none taken,
        it is refusing everything, and the rest go once together; a part that fails for anything but
        its data (the receiver down, overloaded, timing out) fails the rest with it, unsent."""
        named = {run_id for run_id in runs if run_id in parts}
        order: list[str | None] = [
            *(run_id for run_id in runs if run_id in named),
            *(k for k in parts if k not in named),
        ]

        def owners(keys: list[str | None]) -> list[str]:
            return list(dict.fromkeys(owner for key in keys for owner in ([key] if key in named else runs)))

        taken = 0
        for at, key in enumerate(order):
            try:
                await self._send(*parts[key])
                taken += 1
                continue
            except ExportError as error:
                if error.status not in DATA_REFUSALS:
                    self._refused(owners(order[at:]), error)
                    return
                self._refused(owners([key]), error)
            rest = order[at + 1 :]
            if rest and not taken and at + 1 >= GIVE_UP_AFTER:
                try:  # one request: concatenated protobuf messages are one message (repeated fields merge)
                    await self._send(b"".join(parts[k][0] for k in rest), sum(parts[k][1] for k in rest))
                except ExportError as error:
                    self._refused(owners(rest), error)
                return

    async def _send(self, body: bytes, spans: int, *, gzipped: bool = False) -> None:
        await asyncio.to_thread(self.sink.post, body, spans, gzipped=gzipped)
        self.acknowledged += 1

    def _refused(self, runs: list[str], error: ExportError) -> None:
        """A request of ``runs`` failed: they count as errors; ``CliError`` when it is time to give
        up (``GIVE_UP_AFTER`` requests failed and the endpoint took none)."""
        self.failures += 1
        self._failed.update(runs)
        print(f"wft export: {_named(runs)}: {error}", file=sys.stderr)
        if self.acknowledged == 0 and self.failures >= GIVE_UP_AFTER:
            raise CliError(f"giving up: {error}", status=RUNTIME) from None

    def settle(self, run_id: str, spans: int, events: int) -> None:
        """Every request holding ``run_id``'s spans has been posted: count the run, once."""
        if run_id in self._failed:
            self._failed.discard(run_id)
            self.tally.errors += 1
            return
        self.tally.runs += 1
        self.tally.spans += spans
        self.tally.events += events


# -- in a worker process ---------------------------------------------------------------------------
async def known_logs(
    world: Any, runs: list[WorkflowRun], known: Known
) -> AsyncGenerator[tuple[WorkflowRun, list[Event] | UnreadableEventsError], None]:
    """``run_logs``, read from the names the parent listed (world-local ``FlatSnapshot``, or the
    event ids of ``known_ids``), so the worker lists no folder of its own."""
    names, by_run = known
    for run in runs:
        ids, listed = by_run.get(run.run_id, ([], False))
        if names:
            ids = event_ids(run.run_id, ids)
        try:
            events: list[Event] = world.events.read_log(run.run_id, ids, True, listed=listed)
        except UnreadableEventsError as error:
            yield run, error
            continue
        yield run, events


@dataclass
class _Answer:
    """A worker's answer for one chunk of runs."""

    #: requests (gzipped if the sink takes them so), spans, run ids
    bodies: list[tuple[bytes, int, list[str]]] = field(default_factory=list)
    done: list[tuple[str, int, int]] = field(default_factory=list)  # run id, spans, events
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # run id, path, reason
    notes: list[str] = field(default_factory=list)  # lines for stderr
    waiting: list[WorkflowRun] = field(default_factory=list)  # a record still being written
    rest: list[WorkflowRun] = field(default_factory=list)  # not reached: the chunk was full
    fatal: WorkflowWorldError | None = None  # a world error that ends the export (as it would in one process)


class _Worker:
    def __init__(
        self,
        config: BackendConfig,
        resource: tuple[dict[str, Any], str | None],
        include_payloads: bool,
        grace: float | None,
        batch_size: int,
        gzip_bodies: bool,
    ) -> None:
        self.world: Any = open_backend(config)
        if grace is not None and hasattr(self.world, "grace"):
            self.world.grace = grace
        self.resource = Resource(resource[0], resource[1])
        self.encoder = OtlpEncoder(self.resource)
        self.include_payloads = include_payloads
        self.batch_size = batch_size
        self.pack = packer(gzip_bodies)  # as the parent's sink takes them (``Sink.gzip_bodies``)
        self.loop = asyncio.new_event_loop()

    def warm_up(self) -> None:
        """Open the reader now, while the parent lists the first runs (world-postgres connects): a
        log nobody has is the cheapest read that does it. Not world-local, which has nothing to
        open: its flat layout's event files come with the runs (``FlatSnapshot``), and a per-run layout
        lists each run's folder as it is read."""
        if not hasattr(self.world.events, "read_log"):
            self.loop.run_until_complete(event_log(self.world, "wrun_warm-up"))

    def close(self) -> None:
        """On the worker's way out: its reader closed (world-postgres: the connection ended cleanly)."""
        try:
            self.loop.run_until_complete(self.world.close())
        finally:
            self.loop.close()

    async def chunk(self, entries: list[WorkflowRun | str], known: Known | None = None) -> _Answer:
        out = _Answer()
        world = self.world
        runs: list[WorkflowRun] = []
        for _, run in await run_records(world, entries):  # ids' records are read here, not in the parent
            if run is None:  # vanished since the parent listed it: not listed, as in one process
                continue
            if isinstance(run, UnreadableRun):
                if run.run_id in stalled_runs(world):  # its run file is being written: later
                    out.waiting.append(run)
                else:
                    out.skipped.append((run.run_id, run.path, run.reason))
                continue
            runs.append(run)
        batcher = RunBatcher(self.encoder, self.batch_size)
        spans = 0
        reached: set[str] = set()
        reading = run_logs(world, runs) if known is None else known_logs(world, runs, known)
        async for run, events in reading:
            if spans >= chunking.CHUNK_SPANS:
                out.rest = [r for r in runs if r.run_id not in reached]
                await reading.aclose()
                break
            reached.add(run.run_id)
            if isinstance(events, UnreadableEventsError):
                out.skipped.append((run.run_id, events.path, events.reason))
                continue
            if run.run_id in stalled_runs(world):
                out.waiting.append(run)
                continue
            empty = None if events else await empty_log(world, run)
            if empty is not None:
                where, reason = empty
                out.skipped.append((run.run_id, where, reason))
                out.notes.append(f"run {run.run_id}: {reason} ({where})")
                continue
            builder = RunTraceBuilder(run.run_id, run, resource=self.resource, include_payloads=self.include_payloads)
            builder.feed(events)
            data = builder.trace().data
            out.bodies.extend((self.pack(body), count, runs) for body, count, runs in batcher.add(run.run_id, data))
            out.done.append((run.run_id, len(data), len(events)))
            spans += len(data)
        last = batcher.flush()
        if last is not None:
            body, count, holders = last
            out.bodies.append((self.pack(body), count, holders))
        return out


_worker: _Worker | None = None
_setup: tuple[Any, ...] = ()


def _start_worker(*args: Any) -> None:
    """The pool's initializer. Whatever fails here fails again in the first chunk, which reports it
    the way the one-process export would (an initializer that raises would break the pool)."""
    global _setup
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it stops handing out work
    _setup = args
    try:
        _the_worker().warm_up()
    except Exception:  # the first chunk meets it again and reports it
        pass


def _the_worker() -> _Worker:
    global _worker
    if _worker is None:
        _worker = _Worker(*_setup)
        multiprocessing.util.Finalize(_worker, _worker.close, exitpriority=10)
    return _worker


def _ready() -> None:
    """A task that only makes the pool start its workers."""


def _export_chunk(runs: list[WorkflowRun | str], known: Known | None = None) -> _Answer:
    try:
        worker = _the_worker()
        return worker.loop.run_until_complete(worker.chunk(runs, known))
    except WorkflowWorldError as error:
        return _Answer(fatal=_portable(error))


def _portable(error: WorkflowWorldError) -> WorkflowWorldError:
    """``error`` as it can cross to the parent: itself when it survives pickling (its class decides
    the exit status), else its words in a plain ``WorkflowWorldError``."""
    try:
        copy = pickle.loads(pickle.dumps(error))
    except Exception:  # a constructor pickle cannot call back: keep the message
        return WorkflowWorldError(str(error))
    return error if type(copy) is type(error) and str(copy) == str(error) else WorkflowWorldError(str(error))


# -- in the parent ---------------------------------------------------------------------------------
def _run_id(entry: WorkflowRun | str) -> str:
    return entry if isinstance(entry, str) else entry.run_id


def _context() -> Any:
    """``fork`` where it is safe (Linux): workers start at once, with the code already loaded."""
    return multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")


async def export_in_processes(
    world: Any,
    config: BackendConfig,
    sink: Sink,
    resource: Resource,
    tally: Tally,
    *,
    jobs: int,
    include_payloads: bool = True,
    on_progress: Callable[[], None] | None = None,
) -> list[WorkflowRun]:
    """Export every run of ``world`` with ``jobs`` worker processes; the runs whose log ends at a
    record still being written are returned, for the caller to read again later.

    ``world`` (already open in this process) only lists the runs; ``config`` opens the workers'
    own readers. Counts go to ``tally`` as in the one-process export: a run is counted once every
    request holding its spans was acknowledged, an error when one was not.
    """
    grace = getattr(world, "grace", None)
    pool = ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=_context(),
        initializer=_start_worker,
        initargs=(
            config,
            (dict(resource.attributes), resource.schema_url),
            include_payloads,
            grace,
            sink.batch_size,
            sink.gzip_bodies,
        ),
    )
    in_flight: dict[asyncio.Future[_Answer], list[WorkflowRun | str]] = {}
    waiting: list[WorkflowRun] = []
    delivery = Delivery(sink, tally, gzipped=sink.gzip_bodies)
    listed: dict[str, int] = {}  # run id → its place in the listing
    skipped: list[tuple[int, str, str, str]] = []  # tallied at the end, in listing order (as one process would)

    pool.submit(_ready)  # start the workers (and their readers) before the listing, not after its first page

    def died(error: BrokenProcessPool) -> CliError:
        return CliError(
            f"an export worker process died ({error or 'killed'}); {tally.runs} runs were exported, "
            "run the export again to send the rest (span ids are the same, so nothing is duplicated)",
            status=RUNTIME,
        )

    local_events = world.events if hasattr(world.events, "snapshot") else None  # world-local (selected or not)
    flat: list[FlatSnapshot | None] = []  # the flat events folder, listed at the first chunk

    def known_files(runs: list[WorkflowRun | str]) -> Known | None:
        """World-local: the chunk's runs' event files, as listed here (see ``Known``)."""
        if local_events is None:
            return None
        if not flat:
            flat.append(local_events.snapshot())
        snapshot = flat[0]
        if snapshot is not None:
            return True, {run_id: snapshot.take(run_id) for run_id in map(_run_id, runs)}
        ids = local_events.known_ids(_run_id(r) for r in runs)  # per-run layout (None), or a mixed folder (raises)
        return None if ids is None else (False, ids)

    def submit(runs: list[WorkflowRun | str]) -> None:
        known = known_files(runs)
        try:  # a pool whose worker died refuses new work at once: the same one-line error
            future: Future[_Answer] = pool.submit(_export_chunk, runs, known)
        except BrokenProcessPool as error:
            raise died(error) from None
        in_flight[asyncio.wrap_future(future)] = runs

    async def settle(limit: int) -> None:
        while len(in_flight) > limit:
            finished, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for future in finished:
                in_flight.pop(future)
                try:
                    answer = future.result()
                except BrokenProcessPool as error:
                    raise died(error) from None
                if answer.fatal is not None:
                    raise answer.fatal
                if answer.rest:
                    submit([*answer.rest])
                for body, spans, holders in answer.bodies:
                    await delivery.post(body, spans, holders)
                for run_id, spans, events in answer.done:
                    delivery.settle(run_id, spans, events)
                skipped.extend((listed.get(run_id, 0), run_id, path, reason) for run_id, path, reason in answer.skipped)
                for note in answer.notes:
                    print(f"wft export: {note}", file=sys.stderr)
                waiting.extend(answer.waiting)
                if on_progress is not None:
                    on_progress()

    async def pages() -> AsyncIterator[tuple[list[WorkflowRun | str], bool]]:
        """Every run of a whole world as its id, the workers reading the records (they are many,
        and the order is not kept), a page at a time with whether it is the last: world-local the
        listing of ``runs/`` (one page), world-postgres pages of the primary key. A selection is
        the listing's to apply: its runs, as listed, one a page (a listing error keeps those before)."""
        if isinstance(world, LocalWorld):
            yield list(await world.io(world.runs.unordered_ids)), True
            return
        if config.kind == "postgres":
            from ..backends.postgres import PostgresWorld

            if isinstance(world, PostgresWorld):
                before = None
                while True:
                    page = await world.runs.id_page(before, ID_PAGE)
                    yield list(page), len(page) < ID_PAGE
                    if len(page) < ID_PAGE:
                        return
                    before = page[-1]
        async for run in all_runs(world, page_size=500, resolve_data="none"):
            yield [run], False
        yield [], True

    pending: deque[WorkflowRun | str] = deque()  # listed, not handed out yet

    try:
        try:
            async for page, last in pages():
                for run in page:
                    listed[_run_id(run)] = len(listed)
                    if isinstance(run, UnreadableRun):
                        if run.run_id in stalled_runs(world):  # its run file is being written: later
                            waiting.append(run)
                        else:
                            skipped.append((listed[run.run_id], run.run_id, run.path, run.reason))
                        continue
                    pending.append(run)
                while (runs := chunking.next_task(pending, jobs, last=last)) is not None:
                    submit(runs)
                    await settle(2 * jobs)
        except WorkflowWorldError:  # the listing failed: the runs it listed still go out (the error is told)
            while (runs := chunking.next_task(pending, jobs, last=True)) is not None:
                submit(runs)
            with contextlib.suppress(WorkflowWorldError, CliError):
                await settle(0)
            raise
        await settle(0)
    finally:
        pool.shutdown(wait=not in_flight, cancel_futures=True)
        for _, run_id, path, reason in sorted(skipped):
            tally.skip(run_id, path, reason)
    return waiting
