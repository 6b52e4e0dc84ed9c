"""Reading whole logs out of any ``World`` (paging through it), for export and follow.

Both loops are keyset loops: each page starts after the last item of the one before (a run
cursor, an event id), so reading everything costs what there is to read, once.

``empty_log`` is the one place that decides when a log that reads empty is a problem: a reader
that misses a run's events (a layout it does not know, a folder it cannot list) must show up as
a reported problem, never as a run exported with no spans.

Which runs: ``workflow_matches`` is the one rule for ``--workflow`` (the CLI's and the collector's
``/api/runs?workflow=``): people type the short function name or the file, not the full id the
SDK stores (``workflow//./src/workflows/order//processOrder``). ``RunSelection`` is what
``wft export`` was asked for; ``selected(world, selection)`` is the world seen through it, so
every reading loop (one process or many) reads only those runs. ``runs_page`` pages like
``workflow inspect runs`` with a ``--workflow`` the world cannot filter on by itself.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from opentelemetry.sdk.resources import Resource

from .backends.records import UnreadableRun, unreadable_run
from .errors import UnreadableEventsError, WorkflowRunNotFoundError, WorkflowWorldError
from .runtrace import RunTrace, build_run_trace
from .world import Event, Page, Pagination, ResolveData, WorkflowRun
from .world.log import read_log

__all__ = [
    "RAN_STATUSES",
    "RunSelection",
    "all_runs",
    "count_runs",
    "empty_log",
    "event_log",
    "is_full_workflow_id",
    "run_trace",
    "run_logs",
    "run_records",
    "runs_page",
    "sdk_run_cursor",
    "selected",
    "stalled_runs",
    "workflow_matches",
    "workflow_needles",
]

#: Statuses a run record reaches only once its run started (and its log holds ``run_created``).
RAN_STATUSES = frozenset({"running", "completed", "failed"})


async def all_runs(
    world: Any,
    *,
    status: str | None = None,
    workflow_name: str | None = None,
    page_size: int = 200,
    resolve_data: ResolveData = "all",
) -> AsyncIterator[WorkflowRun]:
    cursor = None
    while True:
        page = await world.runs.list(
            status=status,
            workflow_name=workflow_name,
            pagination=Pagination(limit=page_size, cursor=cursor),
            resolve_data=resolve_data,
        )
        for run in page.data:
            yield run
        if not page.has_more or not page.cursor:
            return
        cursor = page.cursor


async def count_runs(world: Any) -> int | None:
    """How many runs the world holds, when it can say cheaply (for a progress total)."""
    count = getattr(world.runs, "count", None)
    if count is None:
        return None
    total: int = await count()
    return total


async def event_log(
    world: Any, run_id: str, *, after: str | None = None, page_size: int = 1000, resolve_data: ResolveData = "all"
) -> list[Event]:
    """A run's log, oldest first, from just after event ``after`` (the whole log if None).

    It ends early, without error, where a world-local record is still being written
    (``stalled_runs`` then names the run), and raises ``UnreadableEventsError`` for a record
    that stayed unreadable: either way no event after a gap is ever returned.
    """
    return await read_log(world.events, run_id, after=after, page_size=page_size, resolve_data=resolve_data)


async def run_records(world: Any, entries: Sequence[WorkflowRun | str]) -> list[tuple[str, WorkflowRun | None]]:
    """Each of ``entries`` by run id with its record: a record as given; a run id's read here,
    for a process that was handed ids (the lister reads no records): world-postgres reads a chunk's
    in one statement (``runs.entries``), world-local a file each (``runs.entry``, which gives an
    unreadable record as an ``UnreadableRun``). None for a run no longer there."""
    ids = [entry for entry in entries if isinstance(entry, str)]
    lookup = getattr(world.runs, "entries", None)
    found: dict[str, WorkflowRun] | None = await lookup(ids) if ids and lookup is not None else None
    out: list[tuple[str, WorkflowRun | None]] = []
    for entry in entries:
        if not isinstance(entry, str):
            out.append((entry.run_id, entry))
        else:
            out.append((entry, found.get(entry) if found is not None else world.runs.entry(entry)))
    return out


async def run_logs(
    world: Any, runs: Sequence[WorkflowRun], *, resolve_data: ResolveData = "all"
) -> AsyncGenerator[tuple[WorkflowRun, list[Event] | UnreadableEventsError], None]:
    """Each of ``runs`` with its whole log (as ``event_log`` reads it), or the
    ``UnreadableEventsError`` that reading it raised; in the order they were read, not ``runs``'.

    A world that reads many logs at once (``events.logs``: world-postgres in one statement per few
    thousand events, however many runs; world-vercel several runs' reads in flight) is asked that
    way: one round trip per run, waited out in turn, was most of the cost of reading small runs.
    world-local reads one log at a time."""
    logs = getattr(world.events, "logs", None)
    if logs is None:
        for run in runs:
            try:
                events = await event_log(world, run.run_id, resolve_data=resolve_data)
            except UnreadableEventsError as error:
                yield run, error
                continue
            yield run, events
        return
    by_id = {run.run_id: run for run in runs}
    async for run_id, events in logs(dict.fromkeys(by_id), resolve_data=resolve_data):
        yield by_id[run_id], events


def stalled_runs(world: Any) -> dict[str, str]:
    """Runs whose last read stopped at a record still being written: run id -> its path.
    Only world-local has such records (rows are atomic); other worlds report none."""
    stalled = getattr(world.events, "stalled", None)
    if stalled is None:
        return {}
    found: dict[str, str] = stalled()
    return found


async def empty_log(world: Any, run: WorkflowRun) -> tuple[str, str] | None:
    """(where the events were looked for, what is wrong) when ``run``'s log read empty although its
    record says it ran (running, completed, failed) or it has steps; ``None`` when an empty log is
    plausible: a run just created (its record lands a moment before its first event) or a log
    whose first record is still being written (``stalled_runs``)."""
    if run.run_id in stalled_runs(world):
        return None
    if run.status in RAN_STATUSES:
        said = f"its record says {run.status}"
    else:
        try:
            steps = await world.steps.list(run_id=run.run_id, pagination=Pagination(limit=1), resolve_data="none")
        except WorkflowWorldError:
            return None
        if not steps.data:
            return None
        said = f"its record says {run.status} and it has steps"
    why_empty = getattr(world.events, "why_empty", None)
    where = str(why_empty(run.run_id)) if why_empty is not None else f"run {run.run_id}"
    return where, f"{said} but its event log reads empty"


async def run_trace(
    world: Any, run: WorkflowRun, *, resource: Resource | None = None, include_payloads: bool = True
) -> RunTrace:
    return build_run_trace(
        run.run_id, await event_log(world, run.run_id), run, resource=resource, include_payloads=include_payloads
    )


# -- which runs ----------------------------------------------------------------------------------

#: Source file suffixes a ``--workflow FILE`` may carry; the SDK's ids name the file without one.
_SOURCE_SUFFIXES = (".ts", ".tsx", ".mts", ".cts", ".js", ".jsx", ".mjs", ".cjs", ".py")


def is_full_workflow_id(pattern: str) -> bool:
    """``workflow//<file>//<function>``: a name a world can filter on as it is."""
    return pattern.startswith("workflow//") and pattern.count("//") >= 2


def workflow_needles(pattern: str) -> tuple[str, str, str | None]:
    """(full id, suffix, infix) a workflow name matches ``pattern`` by: it is the full id, ends
    with the suffix (``//processOrder``: the function), or holds the infix (``/src/workflows/order//``:
    the file, from a path boundary, without ``./`` or a source suffix). The collector turns the same
    three into SQL, so the API and the CLI agree on what matches."""
    text = pattern.strip()
    path = text.removeprefix("./")
    for suffix in _SOURCE_SUFFIXES:
        if path.endswith(suffix) and len(path) > len(suffix):
            path = path[: -len(suffix)]
            break
    infix = f"/{path}//" if path and not path.endswith("/") else None
    return text, f"//{text}", infix


def workflow_matches(name: str | None, pattern: str) -> bool:
    """Does the workflow ``name`` (``workflow//./workflows/demo//sleepWorkflow``) match
    ``pattern``: the full id, the function (``sleepWorkflow``) or the file (``workflows/demo``,
    ``./workflows/demo.ts``, ``demo``)?"""
    if not name:
        return False
    full, suffix, infix = workflow_needles(pattern)
    return name == full or name.endswith(suffix) or (infix is not None and infix in name)


@dataclass(frozen=True)
class RunSelection:
    """The runs a command was asked for; every part given must hold (an empty selection is every run).

    ``status`` and a full workflow id are handed to the world's own listing (an index there);
    a short workflow name and the time bounds (on ``createdAt``, the listing's order) are
    checked here; ``run_ids`` are read one by one instead of listing at all."""

    run_ids: tuple[str, ...] = ()
    workflow: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def everything(self) -> bool:
        return self == RunSelection()

    @property
    def world_workflow(self) -> str | None:
        """The workflow filter the world can apply itself (a full id), else None."""
        return self.workflow if self.workflow and is_full_workflow_id(self.workflow) else None

    def matches(self, run: WorkflowRun) -> bool:
        if self.run_ids and run.run_id not in self.run_ids:
            return False
        if isinstance(run, UnreadableRun):  # nothing known of it but its id and the time in it
            return bool(self.run_ids) or (self.workflow is None and self.status is None and self._in_time(run))
        if self.status is not None and run.status != self.status:
            return False
        if self.workflow is not None and not workflow_matches(run.workflow_name, self.workflow):
            return False
        return self._in_time(run)

    def _in_time(self, run: WorkflowRun) -> bool:
        return (self.since is None or run.created_at >= self.since) and (
            self.until is None or run.created_at < self.until
        )


class _SelectedRuns:
    """``world.runs`` with ``list`` limited to a selection; everything else is the world's."""

    def __init__(self, world: Any, selection: RunSelection) -> None:
        self._runs = world.runs
        self._selection = selection

    def __getattr__(self, name: str) -> Any:
        if name == "count":  # a count of every run is no progress total for a few of them
            raise AttributeError(name)
        return getattr(self._runs, name)

    async def _named(self, run_id: str, resolve_data: ResolveData) -> WorkflowRun | None:
        """A run named by id; None when there is no such run, an ``UnreadableRun`` when its record
        cannot be read (to be skipped and counted as a listing would have it)."""
        try:
            run: WorkflowRun = await self._runs.get(run_id, resolve_data=resolve_data)
        except WorkflowRunNotFoundError:
            return None
        except WorkflowWorldError as error:
            if error.code != "UNREADABLE_RUN":
                raise
            return unreadable_run(run_id, 0, "its run record", error.message)
        return run

    async def list(
        self,
        *,
        workflow_name: str | None = None,
        status: str | None = None,
        pagination: Pagination | None = None,
        resolve_data: ResolveData = "all",
    ) -> Page[WorkflowRun]:
        chosen = self._selection
        if chosen.run_ids:  # named runs: read each once, in the order given, as one page
            if pagination is not None and pagination.cursor:
                return Page(data=[], cursor=None, has_more=False)
            runs = [run for run_id in chosen.run_ids if (run := await self._named(run_id, resolve_data)) is not None]
            return Page(data=[r for r in runs if chosen.matches(r)], cursor=None, has_more=False)
        page: Page[WorkflowRun] = await self._runs.list(
            workflow_name=workflow_name or chosen.world_workflow,
            status=status or chosen.status,
            pagination=pagination,
            resolve_data=resolve_data,
        )
        # a page may come back short, even empty: its cursor and has_more still say where the world goes on
        return Page(data=[r for r in page.data if chosen.matches(r)], cursor=page.cursor, has_more=page.has_more)


class _SelectedWorld:
    """A world whose run listing holds only the selected runs (see ``selected``)."""

    def __init__(self, world: Any, selection: RunSelection) -> None:
        self._world = world
        self.runs = _SelectedRuns(world, selection)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._world, name)

    def __repr__(self) -> str:
        return f"selected({self._world!r})"


def selected(world: Any, selection: RunSelection) -> Any:
    """``world`` seen through ``selection``: ``runs.list`` yields only the selected runs (pages may
    come back short), the rest is the world itself. The world unchanged for an empty selection."""
    return world if selection.everything else _SelectedWorld(world, selection)


def sdk_run_cursor(world: Any, run: WorkflowRun) -> str | None:
    """The cursor ``workflow inspect runs --json`` prints for a page ending at ``run`` (world-local:
    ``<createdAt>|<runId>``, world-postgres: the run id), which this world's listing also takes;
    None for a world whose cursors are the server's own (world-vercel)."""
    kind = getattr(world, "rpc_system", None)  # the world's kind, as its spans name it
    if kind == "local":
        created = run.created_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return f"{created}|{run.run_id}"
    if kind == "postgresql":
        return run.run_id
    return None


async def runs_page(
    world: Any,
    *,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
    workflow: str | None = None,
    resolve_data: ResolveData = "all",
) -> Page[WorkflowRun]:
    """One page of runs, newest first, as ``workflow inspect runs`` pages them: at most ``limit``,
    ``has_more`` when a further run matches, and a ``cursor`` to go on from (the last run's, on the
    last page too, as the SDK does; None for an empty page).

    A full workflow id (or none) is the world's own filter; a short name or a file is matched here,
    reading the world's pages until ``limit`` runs matched and one more did (or the world ended)."""
    derived = sdk_run_cursor(world, _ANY_RUN) is not None
    if workflow is None or is_full_workflow_id(workflow):
        page: Page[WorkflowRun] = await world.runs.list(
            status=status,
            workflow_name=workflow,
            pagination=Pagination(limit=limit, cursor=cursor),
            resolve_data=resolve_data,
        )
        last = sdk_run_cursor(world, page.data[-1]) if derived and page.data else page.cursor
        return Page(data=page.data, cursor=last, has_more=page.has_more)
    found: list[WorkflowRun] = []
    more = False
    at = cursor
    last_at: tuple[str | None, int, Page[WorkflowRun]] | None = None  # where the last run found was read
    while not more:
        page = await world.runs.list(
            status=status, pagination=Pagination(limit=max(limit, 100), cursor=at), resolve_data=resolve_data
        )
        for index, run in enumerate(page.data):
            if isinstance(run, UnreadableRun) or not workflow_matches(run.workflow_name, workflow):
                continue
            if len(found) == limit:
                more = True
                break
            found.append(run)
            last_at = (at, index, page)
        if not page.has_more or not page.cursor:
            break
        at = page.cursor
    if not found or last_at is None:
        return Page(data=[], cursor=None, has_more=False)
    if derived:
        return Page(data=found, cursor=sdk_run_cursor(world, found[-1]), has_more=more)
    start, index, holder = last_at  # opaque cursors: ask the world where "after that run" is
    if index < len(holder.data) - 1:
        holder = await world.runs.list(
            status=status, pagination=Pagination(limit=index + 1, cursor=start), resolve_data=resolve_data
        )
    return Page(data=found, cursor=holder.cursor, has_more=more)


#: any run: to ask ``sdk_run_cursor`` whether a world's cursors can be made from its runs at all
_ANY_RUN = WorkflowRun(
    run_id="wrun_", status="pending", workflow_name="", deployment_id="", created_at=datetime.fromtimestamp(0, UTC)
)
