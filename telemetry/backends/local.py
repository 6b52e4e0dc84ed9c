"""``LocalWorld``: a world-local data directory (``.workflow-data``), read in place, live.

Both of world-local's layouts are read, told apart as the SDK tells them apart
(``local_layout``): the flat 4.x one (``events/<runId>-<eventId>.json``) and the per-run one of
newer world-local releases and of the ``vercel-workflow`` Python package
(``events/<runId>/<runId>-<eventId>.json``, per-stream chunk folders, no ``waits/``). Runs,
hooks and stream registries sit where they always did. Stream writes follow the directory's own
chunk naming so ``StreamWriter`` works here; like world-local itself this world accepts writes to
a finished run, which is why it says ``accepts_post_completion_writes``.

How the SDKs write: every record goes to a temp file first (``<final name>.tmp.<ULID>`` from
world-local, ``tmpXXXXXXXX`` from vercel-workflow's ``mkstemp``, in the same directory) and is
then renamed (runs, steps, hooks, chunks) or hard-linked (events, create-only records) to its
final name, so a final name never shows a half-written file, but temp files sit next to it,
thousands of times per run. So this reader:

* lists only final names, never temp files, and keeps each directory's listing, re-read only
  when the directory's mtime changes (an idle pass is one ``stat`` per directory) or, once a
  change feed is asked for (``events.changes``), as inotify says, so a pass costs the names
  that changed, not a listing of the history;
* reads a run's log in event-id order from a cursor, touching only the files after it: cost
  linear in the events read, whichever layout;
* opens nothing blocking: ``stat`` first, only regular files, ``O_NONBLOCK``; FIFOs, sockets,
  devices, directories and unreadable permissions are reported with their path, once;
* stops a run's log at the first record it cannot parse yet (a copy in progress, a foreign
  writer) so no event is skipped past; once the record stays unreadable past ``grace`` seconds
  (by mtime) reading that run raises ``UnreadableEventsError`` naming the file, and every other
  run reads on;
* names, in its change feed, runs that have a record but no event (yet): a run whose record
  says it ran while its log reads empty is a problem the callers report, never a silent success.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import hashlib
import json
import logging
import os
import stat
import tempfile
import threading
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, TypeVar

from ulid import ULID

from ..errors import HookNotFoundError, UnreadableEventsError, WorkflowRunNotFoundError, WorkflowWorldError
from ..payloads import one_value_decoder
from ..world import (
    TERMINAL_RUN_EVENT_TYPES,
    Changes,
    Event,
    EventRequest,
    EventResult,
    Hook,
    Page,
    Pagination,
    ResolveData,
    RunStatus,
    Step,
    StreamChunks,
    StreamInfo,
    Wait,
    WorkflowRun,
)
from . import records
from .local_layout import (
    RACY_NS,
    ChunkFiles,
    EventIndex,
    FlatSnapshot,
    Layout,
    LayoutName,
    Listing,
    UnsupportedLayoutError,
    detect_layout,
    open_layout,
    safe_name,
)

__all__ = [
    "DEFAULT_GRACE",
    "LocalWorld",
    "UnreadableRecord",
    "UnsupportedLayoutError",
    "check_layout",
    "read_bytes",
    "read_listed",
    "read_record",
]

log = logging.getLogger("telemetry.backends.local")
T = TypeVar("T")

#: Seconds a record may stay unparseable (by its mtime) before it counts as broken for good.
DEFAULT_GRACE = 30.0
#: A change feed resumed from another process's token looks back this far (seconds) for new
#: events: SDK processes stamp event ids with their own clocks, and an id is minted a moment
#: before its file is published.
DEFAULT_REWIND = 300.0
#: No record of a world is this big; a file that is would only be a way to exhaust memory.
_MAX_RECORD = 256 * 1024 * 1024


RecordProblem = Literal["vanished", "not a regular file", "permission denied", "unparseable"]


class UnreadableRecord(Exception):
    """One record file could not be read; ``problem`` says whether waiting can help."""

    def __init__(self, path: str, problem: RecordProblem, reason: str, mtime: float | None = None) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.problem = problem
        self.reason = reason
        self.mtime = mtime

    @property
    def may_heal(self) -> bool:
        """A file being written (or copied) in place parses once it is complete."""
        return self.problem == "unparseable"


def _revive_bytes(obj: dict[str, Any]) -> Any:
    if obj.get("__type") == "Uint8Array" and isinstance(obj.get("data"), str) and len(obj) == 2:
        return base64.b64decode(obj["data"])
    return obj


_DECODER = json.JSONDecoder(object_hook=_revive_bytes)
_decode = one_value_decoder(_DECODER)
_decode_plain = one_value_decoder(json.JSONDecoder())  # no hook: for a record that holds no bytes


def decode_json(text: str) -> Any:
    """``_DECODER.decode(text)``, through the C scanner alone (``payloads.one_value_decoder``). A
    text that cannot spell ``Uint8Array`` (not in it, nor any ``\\u`` escape) has no object for the
    hook to revive: it is decoded without the hook (a Python call per object)."""
    return _decode(text) if "Uint8Array" in text or "\\u" in text else _decode_plain(text)


_KINDS = {
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFDIR: "a directory",
}


def read_bytes(path: str) -> tuple[bytes, float]:
    """A regular file's bytes and mtime, without ever blocking on what is not a regular file.

    ``stat`` first so a FIFO, socket or device is never opened (opening some devices has side
    effects); ``O_NONBLOCK`` for one swapped in between, whose read then fails or comes back
    short, never blocks, and is retried like a half-written record. Four calls per file (a hot
    path: one per event): the read asks for one byte more than ``stat`` saw, and only a file
    that gave more (it grew, or it is not the file ``stat`` saw) is looked at again (``fstat``)
    before it is read on.
    """
    try:
        _refuse_irregular(path, info := os.stat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UnreadableRecord(path, "vanished", "vanished while being read") from None
    except PermissionError:
        raise UnreadableRecord(path, "permission denied", "permission denied") from None
    except OSError as error:  # ELOOP, ENAMETOOLONG, EIO...
        raise UnreadableRecord(path, "not a regular file", os.strerror(error.errno or errno.EIO)) from None
    try:
        body = os.read(fd, info.st_size + 1)  # a short read of a regular file is its end
        if len(body) > info.st_size:  # grown since stat, or swapped: what is it now?
            info = _check_regular(path, fd)
            body = _read_to_end(fd, body)
        return body, info.st_mtime
    except OSError as error:
        raise UnreadableRecord(path, "unparseable", os.strerror(error.errno or errno.EIO), info.st_mtime) from None
    finally:
        os.close(fd)


def _read_to_end(fd: int, start: bytes) -> bytes:
    """``start`` and the rest of an open file (a record that grew while we read it)."""
    chunks = [start]
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


#: ``read_listed``'s first read: more than any event record holds, so one read is the whole file
_FIRST_READ = 1 << 16


def read_listed(path: str) -> tuple[bytes, float | None]:
    """``read_bytes`` of a file a listing saw a moment ago as a regular file, not a symlink (its
    entry's type, which the listing had for free): opened without a ``stat`` first, one path
    lookup instead of two, and read without an ``fstat`` either (a hot path: one per event of an
    export): one read asks for more than a record holds, and a short read of a regular file is
    its end. ``O_NOFOLLOW`` and ``O_NONBLOCK``, so whatever was swapped in since the listing
    cannot block; what it is, is looked at (``fstat``) when the read was not a record's: it came
    back empty or failed (a FIFO, a directory), or filled the buffer (a big file, a device), where
    the size bound applies. The mtime is then ``None`` for a whole read: ``read_record`` asks for
    it only when the bytes do not parse. A symlink swapped in is left to ``read_bytes``, which
    looks at what it leads to before opening it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NOCTTY)
    except FileNotFoundError:
        raise UnreadableRecord(path, "vanished", "vanished while being read") from None
    except PermissionError:
        raise UnreadableRecord(path, "permission denied", "permission denied") from None
    except OSError as error:
        if error.errno == errno.ELOOP:  # a symlink now: see where it leads first
            return read_bytes(path)
        raise UnreadableRecord(path, "not a regular file", os.strerror(error.errno or errno.EIO)) from None
    try:
        try:
            body = os.read(fd, _FIRST_READ)
        except OSError as error:
            _check_regular(path, fd)
            raise UnreadableRecord(path, "unparseable", os.strerror(error.errno or errno.EIO), _mtime(fd)) from None
        if body and len(body) < _FIRST_READ:
            return body, None
        info = _check_regular(path, fd)
        if body:  # as big as the first read: read on to the end
            body = _read_to_end(fd, body)
        return body, info.st_mtime
    except OSError as error:
        raise UnreadableRecord(path, "unparseable", os.strerror(error.errno or errno.EIO), _mtime(fd)) from None
    finally:
        os.close(fd)


def _check_regular(path: str, fd: int) -> os.stat_result:
    """What ``fd`` is, when a read showed it may be no record: not a regular file, or too big for
    one, is an ``UnreadableRecord`` (as ``read_bytes`` says it)."""
    info = os.fstat(fd)
    _refuse_irregular(path, info)
    return info


def _refuse_irregular(path: str, info: os.stat_result) -> None:
    """An ``UnreadableRecord`` for what is no record file: not a regular file, or too big for one."""
    if not stat.S_ISREG(info.st_mode):
        kind = _KINDS.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise UnreadableRecord(path, "not a regular file", f"{kind}, not a record file", info.st_mtime)
    if info.st_size > _MAX_RECORD:
        raise UnreadableRecord(path, "not a regular file", f"{info.st_size} bytes, too big for a record")


def _mtime(fd: int) -> float | None:
    try:
        return os.fstat(fd).st_mtime
    except OSError:
        return None


def _path_mtime(path: str) -> float | None:
    try:
        return os.stat(path, follow_symlinks=False).st_mtime
    except OSError:
        return None


def read_record(path: str, *, listed: bool = False) -> dict[str, Any]:
    """One JSON record file as the SDK wrote it (a hot path: one shared decoder, no pathlib);
    ``listed``: see ``read_listed``."""
    body, mtime = read_listed(path) if listed else read_bytes(path)
    try:
        value = decode_json(body.decode())
    except UnicodeDecodeError:
        raise UnreadableRecord(path, "unparseable", "not UTF-8 text", _known(mtime, path)) from None
    except json.JSONDecodeError as error:
        cut = error.pos >= len(body.rstrip()) or error.msg.startswith("Unterminated string")
        what = "truncated JSON" if cut else "not JSON"
        reason = f"{what} ({error.msg}: byte {error.pos} of {len(body)})"
        raise UnreadableRecord(path, "unparseable", reason, _known(mtime, path)) from None
    except RecursionError:
        raise UnreadableRecord(path, "unparseable", "JSON nested too deep", _known(mtime, path)) from None
    if not isinstance(value, dict):
        what = f"a JSON {type(value).__name__}, not an object"
        raise UnreadableRecord(path, "unparseable", what, _known(mtime, path))
    return value


def _known(mtime: float | None, path: str) -> float | None:
    """The mtime of a record that did not parse (``read_listed`` reads without asking for it)."""
    return mtime if mtime is not None else _path_mtime(path)


def _entity(path: str, build: Callable[[dict[str, Any]], T], *, listed: bool = False) -> T:
    """A record file made into an entity; a record missing the fields the SDK always writes is
    as unreadable as a cut one."""
    record = read_record(path, listed=listed)
    try:
        return build(record)
    except (KeyError, TypeError, ValueError) as error:
        mtime = None
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            pass
        raise UnreadableRecord(path, "unparseable", f"not a world-local record ({error!r})", mtime) from None


def _bare_event(record: dict[str, Any]) -> Event:
    """An event without its payloads decoded (``resolve_data="none"``)."""
    return records.event_from(record, False)


def _signature(path: str) -> tuple[int, int, int, int] | None:
    """What says a record file is unchanged since it was read: (mtime, ctime, size, inode), or
    ``None`` for a file that may change again unnoticed: modified within ``RACY_NS`` (a rewrite
    within the mtime's granularity, into a recycled inode, of the same size, would look the
    same), or not a regular file (the reader reports those)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_mtime_ns >= time.time_ns() - RACY_NS:
        return None
    return info.st_mtime_ns, info.st_ctime_ns, info.st_size, info.st_ino


def _ulid_prefix_ms(prefix: str) -> int | None:
    """Milliseconds of a ULID's 10-character time prefix."""
    try:
        return ULID.from_str(prefix[:10].ljust(26, "0")).milliseconds
    except (ValueError, TypeError):
        return None


def _time_prefix(ms: int) -> str:
    return str(ULID.from_timestamp(max(0, ms) / 1000))[:10]


class LocalWorld:
    """Reads (and appends stream chunks to) a world-local data directory, in either layout."""

    rpc_system = "local"
    peer_service = "world-local"
    accepts_post_completion_writes = True

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        allow_missing: bool = False,
        grace: float = DEFAULT_GRACE,
        rewind: float = DEFAULT_REWIND,
        offload: bool = False,
        notify: bool = True,
    ) -> None:
        """``allow_missing``: the SDK creates the directory on its first write; a tailer may
        start before that and simply sees no runs until then. ``grace``: seconds an unparseable
        event record may be in the middle of being written. ``offload``: do the file I/O of each
        call in a worker thread, for callers whose event loop must stay responsive (a service);
        off by default because a one-shot export is faster without the thread hops. ``notify``:
        let the change feed follow the event directories through inotify (where available);
        without it each pass ``stat``s them and lists the ones that changed."""
        self.root = Path(data_dir)
        layout: LayoutName | None = None
        if not (allow_missing and not self.root.exists()):
            layout = check_layout(self.root)
        self.grace = grace
        self.rewind = rewind
        self.offload = offload
        self.notify = notify
        self._layout_lock = threading.Lock()
        self._layout = open_layout(self.root, layout)
        self._listings: dict[str, Listing] = {sub: Listing(self.root / sub) for sub in ("hooks", "waits")}
        self._folders = {sub: os.path.join(self.root, sub) for sub in ("runs", "hooks", "waits")}
        self._warned: set[str] = set()
        self.chunks = ChunkFiles(self.root)
        self.runs = _Runs(self)
        self.steps = _Steps(self)
        self.events = _Events(self)
        self.hooks = _Hooks(self)
        self.waits = _Waits(self)
        self.streams = _Streams(self)
        self._listings["runs"] = Listing(self.root / "runs", on_change=self.events.runs_changed)

    def __repr__(self) -> str:
        return f"LocalWorld({str(self.root)!r})"

    @property
    def layout(self) -> Layout:
        """The directory's layout, looked at again while undecided (no event or step yet) and
        when entries of the other layout appeared (a mixed directory is refused, as by the SDK)."""
        current = self._layout
        if current.name is not None and not current.strays:
            return current
        with self._layout_lock:
            current = self._layout
            if current.name is not None and not current.strays:
                return current
            name = detect_layout(self.root, thorough=current.strays)
            if name == current.name:
                current.events.clear_strays()
                return current
            if current.name is not None:
                log.warning("world-local: %s changed from the %s to the %s layout", self.root, current.name, name)
            current.close()
            self._layout = open_layout(self.root, name)
            self._layout.events.succeed(current.events)
            return self._layout

    def listing(self, sub: str) -> Listing:
        return self._listings[sub]

    def path(self, sub: str, name: str) -> str:
        return f"{self._folders[sub]}{os.sep}{name}" if sub in self._folders else os.path.join(self.root, sub, name)

    async def io(self, fn: Callable[[], T]) -> T:
        """Run one call's file I/O, in a worker thread when ``offload`` is set."""
        return await asyncio.to_thread(fn) if self.offload else fn()

    def warn_once(self, problem: UnreadableRecord | str, *, level: int = logging.WARNING) -> None:
        """One log line per path (a tailer re-reads every pass; the user needs to hear it once)."""
        key = problem.path if isinstance(problem, UnreadableRecord) else problem
        if key in self._warned:
            return
        self._warned.add(key)
        text = f"{problem.path}: {problem.reason}" if isinstance(problem, UnreadableRecord) else problem
        log.log(level, "world-local: skipping %s", text)

    def load_all(self, sub: str, names: Iterable[str], build: Callable[[dict[str, Any]], T]) -> list[T]:
        """The readable records among ``names`` of ``sub``; see ``load_paths``."""
        return self.load_paths((self.path(sub, name) for name in names), build, routine=sub in ("hooks", "waits"))

    def load_paths(
        self, paths: Iterable[str], build: Callable[[dict[str, Any]], T], *, routine: bool = False
    ) -> list[T]:
        """The readable records among ``paths``; the others are skipped with one warning each
        (``routine``: records deleted as they complete, hooks and waits, may vanish silently)."""
        out = []
        for path in paths:
            try:
                out.append(_entity(path, build))
            except UnreadableRecord as problem:
                if not (routine and problem.problem == "vanished"):
                    self.warn_once(problem)
        return out

    async def close(self) -> None:
        """Stop the change notifications a change feed started (nothing else is held open)."""
        self._layout.close()
        self.chunks.close()
        for listing in self._listings.values():
            listing.close()


#: ``version.txt`` majors of the layouts read here (4.x flat; 5.x moved to per-run folders).
_VERSIONS = ("4", "5")


def world_version(root: Path) -> str | None:
    """What ``version.txt`` says (``@workflow/world-local@4.4.1``); world-local writes one,
    vercel-workflow does not."""
    version_file = root / "version.txt"
    if not version_file.exists():
        return None
    try:
        return read_bytes(str(version_file))[0].decode(errors="replace").strip()
    except UnreadableRecord as problem:
        raise UnsupportedLayoutError(f"{version_file}: {problem.reason}") from None


def version_major(root: Path) -> str | None:
    """The major version in ``version.txt``, if there is one."""
    version = world_version(root)
    return None if version is None else version.rsplit("@", 1)[-1].split(".", 1)[0] or "?"


def check_layout(root: Path) -> LayoutName | None:
    """The layout of ``root``, refusing in one line a directory this reader would misread: not
    there, a ``version.txt`` of a major not read here, or both layouts at once (``None``:
    undecided, no event or step yet)."""
    if not root.is_dir():
        raise UnsupportedLayoutError(f"world-local data directory not found: {root}")
    major = version_major(root)
    if major is not None and major not in _VERSIONS:
        raise UnsupportedLayoutError(
            f"{root}: world-local layout {world_version(root)} is not supported (this reader reads 4.x and 5.x)"
        )
    layout = detect_layout(root)
    if layout == "per-run":  # run folders are few (one per run): check them all for flat strays now
        layout = detect_layout(root, thorough=True)
    return layout


def _unreadable_run(run_id: str, problem: UnreadableRecord) -> records.UnreadableRun:
    ms = _ulid_prefix_ms(run_id.removeprefix("wrun_")) or 0
    return records.unreadable_run(run_id, ms, problem.path, problem.reason)


class _Runs:
    """Runs newest first by ``createdAt`` (as world-local and ``workflow inspect runs`` order them).

    A run's ``createdAt`` and ``workflowName`` never change, so each run file is read once per
    world to place it in the order; after that a page reads only the files it returns.
    """

    #: runs kept from placing them for the page that returns them (``resolve_data="none"``); past
    #: this many the oldest placed go (pages read newest first), so memory stays bounded
    KEEP = 8192

    def __init__(self, world: LocalWorld) -> None:
        self.w = world
        self._lock = threading.RLock()
        self._version = -1
        #: run id -> (the file's stat signature when placed, the run read then without payloads):
        #: the page that returns it uses it while the file is unchanged, so a first listing reads
        #: each run file once, not once to place it and again to return it
        self._kept: dict[str, tuple[tuple[int, int, int, int], WorkflowRun]] = {}
        self._kept_lock = threading.Lock()  # pages take from it outside ``_lock``
        self._known: set[str] = set()  # run ids placed in the order
        self._order: list[str] = []  # run_cursor keys, ascending
        self._by_key: dict[str, str] = {}  # key -> run id
        self._meta: dict[str, tuple[str, str | None]] = {}  # run id -> (key, workflow name or None if unread)
        self._provisional: set[str] = set()  # placed by the id's time: the file was unreadable

    def _file(self, run_id: str) -> str:
        return self.w.path("runs", f"{run_id}.json")

    def _place(self, run_id: str) -> None:
        path = self._file(run_id)
        try:
            signature = _signature(path)  # before the read: a change after it only costs a re-read
            run = _entity(path, lambda d: records.run_from(d, False))
            key, name = records.run_cursor(run), run.workflow_name
            self._provisional.discard(run_id)
            if signature is not None:
                with self._kept_lock:
                    self._kept[run_id] = (signature, run)
                    if len(self._kept) > self.KEEP:
                        del self._kept[next(iter(self._kept))]
        except UnreadableRecord as problem:
            if problem.problem == "vanished":
                return
            key, name = records.run_cursor(_unreadable_run(run_id, problem)), None
            self._provisional.add(run_id)
        self._meta[run_id] = (key, name)
        self._by_key[key] = run_id
        self._known.add(run_id)

    def _unplace(self, run_id: str) -> None:
        with self._kept_lock:
            self._kept.pop(run_id, None)
        key, _ = self._meta.pop(run_id, ("", None))
        self._by_key.pop(key, None)
        self._known.discard(run_id)
        self._provisional.discard(run_id)
        at = bisect_left(self._order, key)
        if at < len(self._order) and self._order[at] == key:
            del self._order[at]

    def _sync(self) -> None:
        listing = self.w.listing("runs")
        with self._lock:
            names = listing.name_set()
            retry = list(self._provisional)
            if listing.version == self._version and not retry:
                return
            ids = {n[:-5] for n in names}
            added = ids - self._known
            gone = self._known - ids
            for run_id in gone | (set(retry) & ids):
                self._unplace(run_id)
            fresh = sorted(added | (set(retry) & ids))
            bulk = len(fresh) > len(self._order)
            for run_id in fresh:
                self._place(run_id)
                if not bulk and run_id in self._meta:
                    insort(self._order, self._meta[run_id][0])
            if bulk:
                self._order = sorted(self._meta[r][0] for r in self._known)
            self._version = listing.version

    def _trouble(self, run_id: str, problem: UnreadableRecord) -> None:
        """A run file that may be mid-write (unparseable, within the grace period) stalls its
        run, so the change feed offers it again; any other is reported, once."""
        if problem.may_heal and problem.mtime is not None and time.time() - problem.mtime <= self.w.grace:
            self.w.events.stall(run_id, problem.path)
        else:
            self.w.events.unstall(run_id, problem.path)
            self.w.warn_once(problem)

    def _read(self, run_id: str, resolve: bool) -> WorkflowRun:
        try:
            return _entity(self._file(run_id), lambda d: records.run_from(d, resolve))
        except UnreadableRecord as problem:
            if problem.problem == "vanished":
                raise WorkflowRunNotFoundError(run_id) from None
            self._trouble(run_id, problem)
            raise WorkflowWorldError(
                f"run {run_id}: unreadable run record {problem.path}: {problem.reason}",
                code="UNREADABLE_RUN",
                run_id=run_id,
            ) from None

    async def get(self, run_id: str, *, resolve_data: ResolveData = "all") -> WorkflowRun:
        def read() -> WorkflowRun:
            run = self._read(run_id, resolve_data == "all")
            self.w.events.unstall(run_id, self._file(run_id))
            return run

        return await self.w.io(read)

    async def count(self) -> int:
        """How many runs there are (a listing: no file is read); for progress totals."""
        return await self.w.io(lambda: len(self.w.listing("runs").name_set()))

    def unordered_ids(self) -> list[str]:
        """Every run's id, newest id first, from the listing alone (no file is read): for a
        reader that takes every run in any order and reads each run file itself (``entry``), as
        ``wft export``'s workers do, sparing the listing process the read of every run file that
        ordering them by ``createdAt`` takes."""
        return sorted((name[:-5] for name in self.w.listing("runs").name_set()), reverse=True)

    def entry(self, run_id: str) -> WorkflowRun | None:
        """One run as ``list(resolve_data="none")`` lists it: ``None`` when its file vanished, a
        ``records.UnreadableRun`` when it cannot be read (one that may be mid-write stalls the
        run, as in a listing)."""
        if not safe_name(run_id):
            return None
        try:
            return _entity(self._file(run_id), lambda d: records.run_from(d, False))
        except UnreadableRecord as problem:
            if problem.problem == "vanished":
                return None
            self._trouble(run_id, problem)
            return _unreadable_run(run_id, problem)

    def page(
        self,
        workflow_name: str | None,
        status: RunStatus | None,
        pagination: Pagination | None,
        resolve: bool,
    ) -> Page[WorkflowRun]:
        p = pagination or Pagination()
        descending = (p.sort_order or "desc") == "desc"
        limit = p.limit or 20
        cursor = records.normal_run_cursor(p.cursor) if p.cursor else None
        with self._lock:
            self._sync()
            order = self._order
            if descending:
                at = (bisect_left(order, cursor) if cursor is not None else len(order)) - 1
                keys: Iterable[str] = (order[i] for i in range(at, -1, -1))
            else:
                at = bisect_right(order, cursor) if cursor is not None else 0
                keys = (order[i] for i in range(at, len(order)))
            candidates = []
            for key in keys:
                run_id = self._by_key[key]
                known_name = self._meta[run_id][1]
                if workflow_name is not None and known_name is not None and known_name != workflow_name:
                    continue
                candidates.append(run_id)
                if workflow_name is None and status is None and len(candidates) > limit:  # one more: has_more
                    break
        found: list[WorkflowRun] = []
        more = False
        unfiltered = workflow_name is None and status is None
        for run_id in candidates:
            if unfiltered and len(found) == limit:
                more = True
                break
            kept = None
            if not resolve:
                with self._kept_lock:
                    kept = self._kept.pop(run_id, None)
            try:
                if kept is not None and _signature(self._file(run_id)) == kept[0]:
                    run = kept[1]  # read when placed, and the file has not changed since
                else:
                    run = _entity(self._file(run_id), lambda d: records.run_from(d, resolve))
            except UnreadableRecord as problem:
                if problem.problem == "vanished":
                    continue
                self._trouble(run_id, problem)
                run = _unreadable_run(run_id, problem)
                if not unfiltered:
                    continue
            if (workflow_name is not None and run.workflow_name != workflow_name) or (
                status is not None and run.status != status
            ):
                continue
            if len(found) == limit:
                more = True
                break
            found.append(run)
        return Page(data=found, cursor=records.run_cursor(found[-1]) if more and found else None, has_more=more)

    async def list(
        self,
        *,
        workflow_name: str | None = None,
        status: RunStatus | None = None,
        pagination: Pagination | None = None,
        resolve_data: ResolveData = "all",
    ) -> Page[WorkflowRun]:
        """Newest first by ``createdAt``, then run id; the cursor is the last run's
        ``"<createdAt>|<runId>"``. A run whose file cannot be read is listed as a
        ``records.UnreadableRun`` (placed by the time in its id) rather than dropped or fatal."""
        return await self.w.io(lambda: self.page(workflow_name, status, pagination, resolve_data == "all"))


class _Steps:
    def __init__(self, world: LocalWorld) -> None:
        self.w = world

    async def get(self, run_id: str | None, step_id: str, *, resolve_data: ResolveData = "all") -> Step:
        def read() -> Step:
            layout = self.w.layout
            paths = [layout.step_path(run_id, step_id)] if run_id and safe_name(run_id) else layout.find_step(step_id)
            for step in self.w.load_paths(paths, lambda d: records.step_from(d, resolve_data == "all")):
                return step
            raise WorkflowWorldError(f'Step "{step_id}" not found', status=404)

        return await self.w.io(read)

    async def list(
        self, *, run_id: str, pagination: Pagination | None = None, resolve_data: ResolveData = "all"
    ) -> Page[Step]:
        def read() -> Page[Step]:
            paths = self.w.layout.step_paths(run_id)
            steps = self.w.load_paths(paths, lambda d: records.step_from(d, resolve_data == "all"))
            return records.paginate(steps, lambda s: s.step_id, pagination, "desc")

        return await self.w.io(read)


class _Events:
    """Each run's log in event-id order (the order world-local appends), read from the layout's
    index of event ids."""

    def __init__(self, world: LocalWorld) -> None:
        self.w = world
        self._lock = threading.RLock()
        self._stalled: dict[str, str] = {}  # run id -> the record its last read stopped at
        #: runs with a record and no event yet, once a change feed asked (None before)
        self._eventless: set[str] | None = None
        self._fresh: set[str] = set()  # run records that appeared since the last pass

    @property
    def index(self) -> EventIndex:
        return self.w.layout.events

    # -- the run a read stopped in ------------------------------------------------------------

    def stall(self, run_id: str, path: str) -> None:
        with self._lock:
            self._stalled[run_id] = path

    def unstall(self, run_id: str, path: str) -> None:
        with self._lock:
            if self._stalled.get(run_id) == path:
                del self._stalled[run_id]

    def stalled(self) -> dict[str, str]:
        """Runs whose last read stopped at a record still being written: run id -> its path.
        The change feed keeps reporting them, so the next pass retries."""
        with self._lock:
            return dict(self._stalled)

    def why_empty(self, run_id: str) -> str:
        """Where this run's events were looked for: what a report of its empty log says."""
        layout = self.w.layout
        if layout.name is None:
            return f"{self.w.root / 'events'} holds no event record of any run (neither layout)"
        return layout.events.why_empty(run_id)

    def runs_changed(self, added: set[str], removed: set[str]) -> None:
        """The run records that appeared and went (the runs listing calls this)."""
        with self._lock:
            if self._eventless is None:
                return
            gone = {n[:-5] for n in removed}
            self._fresh = (self._fresh | {n[:-5] for n in added}) - gone
            self._eventless -= gone

    # -- reading ------------------------------------------------------------------------------

    def ids(self, run_id: str) -> list[str]:
        return self.index.ids(run_id)

    def read(
        self, run_id: str, event_ids: Sequence[str], resolve: bool, *, listed: bool = False
    ) -> tuple[list[Event], bool]:
        """Events for ``event_ids`` of one run, in that order; (events, whether the read stopped
        early at a record not readable yet). ``listed``: see ``read_listed``."""
        out = []
        index = self.index
        stalled_at = self._stalled.get(run_id)
        event_from = records.event_from if resolve else _bare_event  # one per event: no closure each
        for event_id in event_ids:
            path = index.path(run_id, event_id)
            try:
                out.append(_entity(path, event_from, listed=listed))
            except UnreadableRecord as problem:
                if problem.problem == "vanished":  # the SDK never deletes an event; nothing to wait for
                    self.w.warn_once(problem)
                    continue
                age = time.time() - problem.mtime if problem.mtime is not None else self.w.grace + 1
                if problem.may_heal and age <= self.w.grace:
                    self.stall(run_id, path)
                    return out, True
                self.w.warn_once(problem)
                self.unstall(run_id, path)
                raise UnreadableEventsError(run_id, path, problem.reason) from None
            if path == stalled_at:
                self.unstall(run_id, path)
        return out, False

    def known_ids(self, run_ids: Iterable[str]) -> dict[str, tuple[list[str], bool]] | None:
        """These runs' event ids as the index has them now, for another process to read the logs
        by (``read_log``: ``wft export``'s workers), where finding one run's files means listing
        every run's (the flat layout): each worker would otherwise list the whole events folder
        itself. Each run's ids come with whether the listing saw every one of its files as a
        regular file (``read_log(listed=True)`` then opens them without a ``stat`` each). ``None``
        where each run has a folder of its own (per-run layout, or none yet): a reader lists just
        that folder as it reads. Followed through inotify (``notify``) so a folder being written is
        not listed again for every call."""
        if not self.index.lists_every_run:
            return None
        self.index.keep_types()
        index = self._refreshed()  # a stray of the other layout looks again: a mixed directory raises
        if not index.lists_every_run:
            return None
        with index.lock:
            out = {}
            for run_id in run_ids:
                ids = list(index.groups.get(run_id, ()))
                out[run_id] = (ids, index.listed_regular(run_id, ids))
            return out

    def snapshot(self) -> FlatSnapshot | None:
        """The flat layout's events folder listed once, sorted (``FlatSnapshot``), for a one-shot
        reader of every run that hands runs to other processes (``wft export``): no index, journal
        or change notifications to build, which ``known_ids`` would, one Python step per name,
        while the workers wait for their first runs. ``None`` where each run has a folder of its
        own, or where the folder holds one (a mixed directory: ``known_ids`` refuses it)."""
        index = self.index
        if not index.lists_every_run:
            return None
        return FlatSnapshot.take_snapshot(index.folder)

    def read_log(self, run_id: str, event_ids: Sequence[str], resolve: bool, *, listed: bool = False) -> list[Event]:
        """A run's log from ``event_ids`` (``known_ids`` of another process), as ``event_log``
        reads it: it ends early at a record still being written (``stalled`` then names the run)
        and raises ``UnreadableEventsError`` for one that stayed unreadable. ``listed``: a listing
        saw these files as regular files (``read_listed``). A run given no id is looked up here:
        its first event may have appeared since."""
        if not event_ids:
            return self.read(run_id, list(self.ids(run_id)), resolve)[0]
        return self.read(run_id, event_ids, resolve, listed=listed)[0]

    def page(self, run_id: str, pagination: Pagination | None, resolve: bool) -> Page[Event]:
        p = pagination or Pagination()
        limit = max(1, p.limit or 1000)
        cursor = p.cursor.rsplit("|", 1)[-1] if p.cursor else None  # also world-local's "<time>|<id>"
        index = self.index
        with index.lock:
            ids = index.ids(run_id)
            if (p.sort_order or "asc") == "asc":
                start = bisect_right(ids, cursor) if cursor else 0
                chosen = ids[start : start + limit]
                more = start + limit < len(ids)
            else:
                end = bisect_left(ids, cursor) if cursor else len(ids)
                chosen = ids[max(0, end - limit) : end][::-1]
                more = end - limit > 0
        events, stopped = self.read(run_id, chosen, resolve)
        more = more and not stopped
        return Page(data=events, cursor=chosen[-1] if more and chosen else None, has_more=more)

    async def list(
        self, *, run_id: str, pagination: Pagination | None = None, resolve_data: ResolveData = "all"
    ) -> Page[Event]:
        """A page of a run's log. Keyset: ``cursor`` is an event id and the page holds only the
        events after it (before it, descending), so reading a log page by page reads each file
        once. A page ends early, without ``has_more``, at a record still being written; one that
        stays unreadable past the grace period raises ``UnreadableEventsError``."""
        return await self.w.io(lambda: self.page(run_id, pagination, resolve_data == "all"))

    def _without_events(self, index: EventIndex) -> set[str]:
        """Runs with a record and no event in ``index`` (a cost of what changed: the set is
        seeded from one listing of the run records, then fed by the records that appear)."""
        runs = self.w.listing("runs")
        with self._lock:
            seed = self._eventless is None
            if seed:
                self._eventless = set()
        if seed:
            names: Iterable[str] = runs.name_set()
        else:
            runs.refresh()  # a stat when idle; records that appeared reach ``runs_changed``
            names = ()
        with self._lock:
            eventless = self._eventless if self._eventless is not None else set()
            eventless |= {n[:-5] for n in names}
            eventless |= self._fresh
            self._fresh = set()
            groups = index.groups
            self._eventless = {r for r in eventless if r not in groups}
            return set(self._eventless)

    def _refreshed(self) -> EventIndex:
        index = self.index
        with index.lock:
            if self.w.notify:
                index.watch()
            index.refresh()
        if index.strays:  # the other layout's entries showed up: look again (a mixed dir raises)
            index = self.index
            with index.lock:
                if self.w.notify:
                    index.watch()
                index.refresh()
        return index

    def changes_since(self, token: str | None) -> Changes:
        index = self._refreshed()
        with index.lock:
            parts = token.split(":") if token else []
            carried: list[str] = []
            since: dict[str, str] = {}
            if len(parts) == 6 and parts[0] == "local" and parts[1] == "1":
                _, _, epoch, seq_text, high, stalled_text = parts
                carried = [r for r in stalled_text.split(",") if r]
                seq = int(seq_text) if seq_text.isdigit() else -1
                if epoch == index.epoch and index.base <= seq <= index.base + len(index.journal):
                    since = index.since(seq)
                    runs = set(since)
                elif epoch in index.replaced:  # the directory changed layout since: all of it is new
                    since = {r: ids[0] for r, ids in index.groups.items() if ids}
                    runs = set(since)
                else:  # another process's token: every run with an event newer than its watermark, less a margin
                    ms = _ulid_prefix_ms(high) if high else None
                    if ms is None:
                        runs = set(index.groups)
                    else:
                        floor = _time_prefix(ms - int(self.w.rewind * 1000))
                        runs = {r for r, ids in index.groups.items() if ids and ids[-1][5:15] >= floor}
            else:
                runs = set(index.groups)
            runs.update(carried)
            runs.update(self._without_events(index))
            with self._lock:
                runs.update(self._stalled)
                stalled = ",".join(sorted(self._stalled))
            fresh = f"local:1:{index.epoch}:{index.base + len(index.journal)}:{index.high}:{stalled}"
            return Changes(runs=sorted(runs), token=fresh, since=since)

    async def changes(self, token: str | None) -> Changes:
        """Runs whose log may have grown since ``token`` (``None``: every run with events), and
        every run that has a record but no event (so a caller sees a log that reads empty).

        An idle pass is one ``stat`` of the events directory (per run folder in the per-run
        layout, where inotify is not available); a pass after a change lists what changed.
        Within a process the token is a position in the index's journal, so a caller that
        retries with an older token gets every run since then again, and ``since`` names each
        run's smallest new event id (one published behind ids already read is not skipped); after
        the directory changed layout (vercel-workflow replaces a flat dir on start) every run is
        new to an older token. A token from another process (a restarted follower) falls back to
        the time in the newest event id it had seen, less ``rewind``. Runs whose last read stopped
        at a record still being written are reported on every pass until they read through."""
        return await self.w.io(lambda: self.changes_since(token))

    async def get(self, run_id: str, event_id: str, *, resolve_data: ResolveData = "all") -> Event:
        def read() -> Event:
            if not (safe_name(run_id) and safe_name(event_id)):  # ids from callers: never a path elsewhere
                raise WorkflowWorldError(f'Event "{event_id}" not found', status=404)
            path = self.index.path(run_id, event_id)
            try:
                return _entity(path, lambda d: records.event_from(d, resolve_data == "all"))
            except UnreadableRecord as problem:
                if problem.problem == "vanished":
                    raise WorkflowWorldError(f'Event "{event_id}" not found', status=404) from None
                raise UnreadableEventsError(run_id, path, problem.reason) from None

        return await self.w.io(read)

    async def list_by_correlation_id(
        self,
        *,
        correlation_id: str,
        run_id: str | None = None,
        pagination: Pagination | None = None,
        resolve_data: ResolveData = "all",
    ) -> Page[Event]:
        def read() -> Page[Event]:
            resolve = resolve_data == "all"
            if run_id:
                events, _ = self.read(run_id, list(self.ids(run_id)), resolve)
            else:  # no run: every event of the world (the SDK's world-local does the same)
                index = self.index
                with index.lock:
                    index.refresh()
                    paths = [index.path(r, e) for r, ids in index.groups.items() for e in ids]
                events = self.w.load_paths(paths, lambda d: records.event_from(d, resolve))
            matching = [e for e in events if e.correlation_id == correlation_id]
            return records.paginate(matching, lambda e: e.event_id, pagination, "asc", 1000)

        return await self.w.io(read)

    async def create(self, run_id: str | None, event: EventRequest) -> EventResult:
        raise WorkflowWorldError("LocalWorld reads the event log; creating events is the SDK's job", code="UNSUPPORTED")


class _Hooks:
    """Live hooks: ``hooks/<hookId>.json`` in both layouts (deleted once disposed)."""

    def __init__(self, world: LocalWorld) -> None:
        self.w = world

    def _one(self, path: str, missing: str) -> Hook:
        try:
            return _entity(path, records.hook_from)
        except UnreadableRecord as problem:
            if problem.problem != "vanished":
                self.w.warn_once(problem)
            raise HookNotFoundError(missing) from None

    async def get(self, hook_id: str) -> Hook:
        def read() -> Hook:
            if not safe_name(hook_id):
                raise HookNotFoundError(hook_id)
            return self._one(self.w.path("hooks", f"{hook_id}.json"), hook_id)

        return await self.w.io(read)

    def _claimed_hook_id(self, digest: str) -> str | None:
        """The hook a token is claimed by: ``hooks/tokens/<sha256>.json`` (4.x, vercel-workflow),
        else the newest entry of ``hooks/token-index/<sha256>/`` (world-local 5.x)."""
        hooks = os.path.join(self.w.root, "hooks")
        try:
            claim = read_record(os.path.join(hooks, "tokens", f"{digest}.json"))
        except UnreadableRecord:
            claim = None
        if claim is None:
            index = os.path.join(hooks, "token-index", digest)
            try:
                entries = sorted((n for n in os.listdir(index) if n.endswith(".json")), reverse=True)
            except OSError:
                entries = []
            for name in entries:
                try:
                    claim = read_record(os.path.join(index, name))
                    break
                except UnreadableRecord:
                    continue
        hook_id = claim.get("hookId") if claim else None
        return hook_id if isinstance(hook_id, str) and safe_name(hook_id) else None

    async def get_by_token(self, token: str) -> Hook:
        def read() -> Hook:
            hook_id = self._claimed_hook_id(hashlib.sha256(token.encode()).hexdigest())
            if hook_id is not None:
                return self._one(self.w.path("hooks", f"{hook_id}.json"), token)
            for hook in self.w.load_all("hooks", self.w.listing("hooks").names(), records.hook_from):
                if hook.token == token:  # no claim file (an index format not known here): the live hooks
                    return hook
            raise HookNotFoundError(token)

        return await self.w.io(read)

    async def list(self, *, run_id: str | None = None, pagination: Pagination | None = None) -> Page[Hook]:
        def read() -> Page[Hook]:
            hooks = self.w.load_all("hooks", self.w.listing("hooks").names(), records.hook_from)
            mine = [h for h in hooks if run_id in (None, h.run_id)]
            return records.paginate(mine, lambda h: h.hook_id, pagination, "asc", 1000)

        return await self.w.io(read)


class _Waits:
    """Pending sleeps: ``waits/`` records in the flat layout (world-local deletes a wait once it
    completes); in the per-run layout, which keeps none, each run's ``wait_created`` events
    without their ``wait_completed`` (none once the run ended, as world-local drops them then)."""

    def __init__(self, world: LocalWorld) -> None:
        self.w = world

    def pending(self, run_id: str) -> list[Wait]:
        try:
            events, _ = self.w.events.read(run_id, list(self.w.events.ids(run_id)), False)
        except UnreadableEventsError:  # reported by the reader, once
            return []
        waiting: dict[str, Wait] = {}
        for event in events:
            kind, wait_id = event.event_type, event.correlation_id
            if kind in TERMINAL_RUN_EVENT_TYPES:
                return []
            if kind == "wait_created" and wait_id:
                resume_at = (event.event_data or {}).get("resumeAt")
                waiting[wait_id] = Wait(  # the record world-local 4.x would have kept
                    wait_id=f"{run_id}-{wait_id}",
                    run_id=run_id,
                    status="waiting",
                    created_at=event.created_at,
                    resume_at=resume_at if isinstance(resume_at, datetime) else None,
                    updated_at=event.created_at,
                )
            elif kind == "wait_completed" and wait_id:
                waiting.pop(wait_id, None)
        return list(waiting.values())

    async def list(self, *, run_id: str | None = None) -> list[Wait]:
        def read() -> list[Wait]:
            layout = self.w.layout
            if layout.has_wait_records:
                listing = self.w.listing("waits")
                names = listing.with_prefix(f"{run_id}-") if run_id else listing.names()
                return self.w.load_all("waits", names, records.wait_from)
            if run_id is not None:
                return self.pending(run_id)
            index = layout.events
            with index.lock:
                index.refresh()
                runs = sorted(index.groups)
            return [wait for r in runs for wait in self.pending(r)]

        return await self.w.io(read)


class _Streams:
    """Run streams. Chunks are read in either naming; written in the directory's own: a per-run
    directory gets ``streams/chunks/<name>/chnk_<ULID>.bin`` (a flat name there would make it
    look mixed, and vercel-workflow refuses to start on a mixed directory), a flat one
    ``streams/chunks/<name>-chnk_<ULID>.bin``."""

    def __init__(self, world: LocalWorld) -> None:
        self.w = world
        self._chunks_dir = world.root / "streams" / "chunks"
        self._last = ULID()
        self._lock = threading.Lock()

    def _chunk_id(self) -> str:
        """A monotonic ULID, as world-local mints them: chunk order is file-name order."""
        with self._lock:
            candidate = ULID()
            if candidate.milliseconds <= self._last.milliseconds:
                candidate = ULID.from_int(int(self._last) + 1)
            self._last = candidate
            return f"chnk_{candidate}"

    def per_stream(self) -> bool:
        """Whether chunks go to per-stream folders here: the per-run layout, chunks already
        there, a world-local 5.x ``version.txt``; or, in a directory with neither events nor
        chunks yet, no ``version.txt`` (world-local 4.x writes one; vercel-workflow does not)."""
        layout = self.w.layout.name
        if layout == "per-run":
            return True
        existing = self.w.chunks.per_stream()
        if existing is not None:
            return existing
        major = version_major(self.w.root)
        if layout == "flat":
            return major is not None and major != "4"
        return major != "4"

    @property
    def sdk(self) -> str:
        """Whose app reads this directory's streams, so ``StreamWriter`` serializes values for it
        (the two SDKs' devalue forms differ): per-stream folders without a ``version.txt`` are
        vercel-workflow's (world-local writes one), anything else the TypeScript SDK's."""
        return "python" if version_major(self.w.root) is None and self.per_stream() else "typescript"

    def _append(self, name: str, run_id: str, body: bytes) -> None:
        if not safe_name(name) or not safe_name(run_id):
            raise WorkflowWorldError(f"stream {name!r} of run {run_id!r}: not a stream name", status=400)
        self._register(name, run_id)
        if self.per_stream():
            folder = self._chunks_dir / name
            folder.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(dir=folder)  # vercel-workflow's own temp naming: never a chunk name
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(body)
                os.replace(temp, folder / f"{self._chunk_id()}.bin")
            except BaseException:
                Path(temp).unlink(missing_ok=True)
                raise
            return
        self._chunks_dir.mkdir(parents=True, exist_ok=True)
        final = self._chunks_dir / f"{name}-{self._chunk_id()}.bin"
        temp_path = final.with_name(final.name + f".tmp.{ULID()}")
        temp_path.write_bytes(body)
        os.replace(temp_path, final)

    def _names(self, run_id: str) -> list[str]:
        if not safe_name(run_id):
            return []
        path = os.path.join(self.w.root, "streams", "runs", f"{run_id}.json")
        try:
            names = read_record(path)["streams"]
        except UnreadableRecord as problem:
            if problem.problem != "vanished":
                self.w.warn_once(problem)
            return []
        except KeyError:
            return []
        return [str(n) for n in names] if isinstance(names, list) else []

    def _register(self, name: str, run_id: str) -> None:
        path = self.w.root / "streams" / "runs" / f"{run_id}.json"
        names = self._names(run_id)
        if name not in names:
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = path.with_name(path.name + f".tmp.{ULID()}")
            temp.write_text(json.dumps({"streams": [*names, name]}, indent=2))
            os.replace(temp, path)

    async def write(self, name: str, run_id: str, chunk: bytes | str) -> None:
        self._append(name, run_id, b"\x00" + (chunk.encode() if isinstance(chunk, str) else bytes(chunk)))

    async def write_multi(self, name: str, run_id: str, chunks: Sequence[bytes | str]) -> None:
        for chunk in chunks:
            await self.write(name, run_id, chunk)

    async def close(self, name: str, run_id: str) -> None:
        self._append(name, run_id, b"\x01")

    def read_all(self, name: str) -> tuple[list[bytes], bool, int]:
        """(chunks before the first EOF, whether EOF was seen, chunks stored after EOF)."""
        chunks: list[bytes] = []
        files = self.w.chunks.paths(name)
        for position, path in enumerate(files):
            try:
                body = read_bytes(path)[0]
            except UnreadableRecord as problem:
                self.w.warn_once(problem)
                continue
            if body[:1] == b"\x01":
                return chunks, True, len(files) - position - 1
            chunks.append(body[1:])
        return chunks, False, 0

    async def get_chunks(self, name: str, run_id: str, *, limit: int = 100, cursor: str | None = None) -> StreamChunks:
        chunks, done, _ = await self.w.io(lambda: self.read_all(name))
        return records.page_chunks(chunks, done, limit, cursor)

    async def get_info(self, name: str, run_id: str) -> StreamInfo:
        chunks, done, _ = await self.w.io(lambda: self.read_all(name))
        return StreamInfo(tail_index=len(chunks) - 1, done=done)

    async def list(self, run_id: str) -> list[str]:
        return await self.w.io(lambda: self._names(run_id))
