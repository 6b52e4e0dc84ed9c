"""Where world-local keeps its records, in either of its layouts, and live indexes of their names.

world-local has two layouts, and the SDK tells them apart by what ``events/`` and ``steps/`` hold:

* **flat** (``@workflow/world-local`` 4.x): ``events/<runId>-<eventId>.json``,
  ``steps/<runId>-<stepId>.json``, pending sleeps in ``waits/``, chunks as
  ``streams/chunks/<stream>-chnk_<ULID>.bin``;
* **per-run** (newer world-local releases, and the ``vercel-workflow`` Python package):
  ``events/<runId>/<runId>-<eventId>.json``, ``steps/<runId>/<runId>-<stepId>.json``, chunks as
  ``streams/chunks/<stream>/chnk_<ULID>.bin``, no ``waits/`` (a pending sleep is a
  ``wait_created`` without its ``wait_completed``).

``detect_layout`` applies the SDK's own rule (``_inspect_entity_dirs`` in vercel-workflow,
``initDataDir`` in world-local): a run folder in ``events/`` or ``steps/`` means per-run, a
``wrun_…-….json`` entry means flat, both is a mixed directory the SDK refuses (and so do we).
Neither is *undecided*: a fresh directory, or one holding only run records; the reader decides on
a later pass, once the first event appears, and never latches onto a guess.

This module knows names only (listing, indexing, change notifications); reading records is
``local``'s job. Every index is a keyset over the names: a run's event ids in order, kept current
by one ``stat`` per directory per pass, or by inotify once a change feed asked for it, so a pass
costs what changed rather than the history. Temp files (``<name>.tmp.<ULID>`` from world-local,
``tmpXXXXXXXX`` from vercel-workflow's ``mkstemp``) never match a final name.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
from bisect import bisect_left, insort
from collections.abc import Callable
from operator import itemgetter
from pathlib import Path
from typing import Any, Literal

from ulid import ULID

try:  # Linux: change notifications; elsewhere the mtime scan alone
    from inotify_simple import INotify
    from inotify_simple import flags as inotify_flags
except ImportError:  # pragma: no cover - not Linux, or not installed
    INotify = inotify_flags = None

from ..errors import WorkflowWorldError

__all__ = [
    "ChunkFiles",
    "EventIndex",
    "FlatLayout",
    "Layout",
    "LayoutName",
    "Listing",
    "FlatSnapshot",
    "Notifier",
    "PerRunLayout",
    "UndecidedLayout",
    "UnsupportedLayoutError",
    "detect_layout",
    "open_layout",
]

log = logging.getLogger("telemetry.backends.local")

LayoutName = Literal["flat", "per-run"]

#: A directory modified this recently may change again within its mtime's granularity, so its
#: listing is not trusted to be current ("racy" timestamps, as git calls them).
RACY_NS = 2_000_000_000
#: Journal entries the change feed keeps (one per run and change); a token older than these
#: resumes from its time watermark instead, like a token from another process.
JOURNAL_MAX = 1 << 17

#: An event or step file of the flat layout (the SDK's ``_FLAT_ENTITY_FILE``).
FLAT_ENTITY_FILE = re.compile(r"^wrun_[0-9A-Za-z]+-[^/\\]+\.json$")
#: A run folder of the per-run layout (run ids are ``wrun_<ULID>``).
RUN_FOLDER = re.compile(r"^wrun_[0-9A-Za-z]+$")
#: A chunk file inside a per-stream folder.
CHUNK_FILE = re.compile(r"^chnk_[0-9A-Za-z]+\.bin$")


_STAMP = itemgetter(slice(5, 15))  # an event id's ULID time prefix (after ``evnt_``)


class UnsupportedLayoutError(WorkflowWorldError):
    """The data directory is in no world-local layout this reader reads (or in two at once)."""


def safe_name(name: str) -> bool:
    """A run id or stream name that stays one path component (ids come from callers too)."""
    return bool(name) and "/" not in name and "\\" not in name and "\0" not in name and name not in (".", "..")


# -- detection ------------------------------------------------------------------------------------


def _evidence(folder: Path, thorough: bool) -> tuple[list[str], list[str]]:
    """(run folders, flat entity entries) at the root of ``folder``; the first one found only,
    unless ``thorough``. By name, plus "is a directory" for run folders, so a FIFO or a directory
    named like a record counts as a (broken) flat record, as the reader will report it."""
    per_run: list[str] = []
    flat: list[str] = []
    try:
        entries = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return per_run, flat
    except OSError as error:
        raise UnsupportedLayoutError(f"{folder}: cannot list ({os.strerror(error.errno or errno.EIO)})") from None
    with entries:
        for entry in entries:
            name = entry.name
            if RUN_FOLDER.match(name):
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if is_dir:
                    per_run.append(f"{folder.name}/{name}/")
            elif FLAT_ENTITY_FILE.match(name):
                flat.append(f"{folder.name}/{name}")
            else:
                continue
            if not thorough:
                break
    return per_run, flat


def detect_layout(root: Path, *, thorough: bool = False) -> LayoutName | None:
    """The layout of the data directory ``root`` by the SDK's rule; ``None`` while undecided.

    Quick (the default) stops at the first decisive entry: the indexes notice entries of the other
    layout when they list (``strays``) and ask again ``thorough``ly, which reads both directories
    in full and raises ``UnsupportedLayoutError`` for a mixed one, as the SDK refuses it.
    """
    per_run: list[str] = []
    flat: list[str] = []
    for sub in ("events", "steps"):
        found_per_run, found_flat = _evidence(root / sub, thorough)
        per_run += found_per_run
        flat += found_flat
        if not thorough and (per_run or flat):
            break
    if per_run and flat:
        shown = ", ".join(flat[:2] + per_run[:2])
        raise UnsupportedLayoutError(
            f"{root}: mixes the flat (4.x) and per-run world-local layouts ({len(flat)} flat record(s), "
            f"{len(per_run)} run folder(s): {shown}); the SDK refuses such a directory too"
        )
    if per_run:
        return "per-run"
    if flat:
        return "flat"
    return None


# -- change notifications --------------------------------------------------------------------------


class Watch:
    """One directory followed by a ``Notifier``: the names that appeared and went since the last
    ``drain``, or ``None`` when some were lost (queue overflow, the directory moved or went)."""

    __slots__ = ("notifier", "wd", "appeared", "went", "lost")

    def __init__(self, notifier: Notifier, wd: int) -> None:
        self.notifier = notifier
        self.wd = wd
        self.appeared: set[str] = set()
        self.went: set[str] = set()
        self.lost = False

    def drain(self) -> tuple[set[str], set[str]] | None:
        self.notifier.pump()
        self.notifier.dirty.discard(self)
        appeared, went, lost = self.appeared, self.went, self.lost
        self.appeared, self.went, self.lost = set(), set(), False
        return None if lost else (appeared, went)

    def close(self) -> None:
        self.notifier.remove(self)


class Notifier:
    """One inotify instance for many directories (instances are few: 128 per user by default;
    watches are many). Read without blocking; ``pump`` sorts what arrived by directory."""

    def __init__(self, notify: Any) -> None:
        self.notify = notify
        f = inotify_flags
        self.appear = f.CREATE | f.MOVED_TO
        self.go = f.DELETE | f.MOVED_FROM
        self.gone = f.IGNORED | f.DELETE_SELF | f.MOVE_SELF | f.UNMOUNT
        self.mask = self.appear | self.go | f.DELETE_SELF | f.MOVE_SELF | f.ONLYDIR
        self.overflow = f.Q_OVERFLOW
        self.watches: dict[int, Watch] = {}
        self.dirty: set[Watch] = set()
        self._full = False

    @classmethod
    def start(cls, what: str) -> Notifier | None:
        if INotify is None:
            return None
        try:
            return cls(INotify(nonblocking=True))
        except OSError as error:  # EMFILE: fs.inotify.max_user_instances reached
            log.info("world-local: no inotify for %s (%s); scanning by mtime", what, error)
            return None

    def add(self, path: str) -> Watch | None:
        """Follow ``path``; ``None`` where that is not possible (it is then scanned by mtime)."""
        try:
            wd = self.notify.add_watch(path, self.mask)
        except OSError as error:  # ENOENT (not created yet), ENOTDIR, ENOSPC (max_user_watches)
            if error.errno == errno.ENOSPC and not self._full:
                self._full = True
                log.info("world-local: inotify watch limit reached at %s; the rest is scanned by mtime", path)
            return None
        watch = self.watches.get(wd)
        if watch is None:  # the same directory added twice gets the same descriptor
            watch = self.watches[wd] = Watch(self, wd)
        return watch

    def remove(self, watch: Watch) -> None:
        if self.watches.pop(watch.wd, None) is not None:
            self.dirty.discard(watch)
            try:
                self.notify.rm_watch(watch.wd)
            except OSError:  # already gone with its directory
                pass

    def pump(self) -> None:
        """Sort the notifications that arrived since the last pump by directory (one read)."""
        try:
            events = self.notify.read(timeout=0)
        except OSError:
            events = None
        if events is None:
            for watch in self.watches.values():
                watch.lost = True
            self.dirty.update(self.watches.values())
            return
        for event in events:
            if event.mask & self.overflow:
                for watch in self.watches.values():
                    watch.lost = True
                self.dirty.update(self.watches.values())
                continue
            target = self.watches.get(event.wd)
            if target is None:
                continue
            self.dirty.add(target)
            if event.mask & self.gone:
                target.lost = True
            elif event.mask & self.appear:
                target.appeared.add(event.name)
                target.went.discard(event.name)
            elif event.mask & self.go:
                target.went.add(event.name)
                target.appeared.discard(event.name)

    def take_dirty(self) -> list[Watch]:
        dirty = list(self.dirty)
        self.dirty.clear()
        return dirty

    def close(self) -> None:
        self.watches.clear()
        self.dirty.clear()
        self.notify.close()


# -- one directory's names -------------------------------------------------------------------------


#: A test of one name: truthy when it qualifies. A compiled pattern's ``match`` is one: run over the
#: million names of a big flat ``events/`` with ``filter``/``map``, it costs no Python frame per name.
NameTest = Callable[[str], object]


def _plain_record(suffix: str) -> NameTest:
    """Names ending in ``suffix`` that are not hidden (``name.endswith(suffix) and not
    name.startswith(".")``), as a pattern."""
    return re.compile(rf"[^.].*{re.escape(suffix)}\Z", re.DOTALL).match


class Listing:
    """The final record names of one directory, re-read only when the directory changes.

    ``refresh`` is one ``stat`` when nothing changed; when the mtime moved it lists the
    directory once and hands the difference to ``on_change`` (an index). A listing taken while the
    directory's mtime is fresh is re-taken next time, since a second change within the mtime's
    granularity would not move it again. After ``watch()`` the kernel's notifications replace the
    scan: a refresh is one ioctl, plus the names that changed. ``stray`` flags names of the other
    layout showing up (``strays``), so the reader looks at the layout again; it never matches a
    ``final`` name (the two layouts' names are disjoint), so only the other names are tested.
    """

    def __init__(
        self,
        path: Path | str,
        suffix: str = ".json",
        *,
        final: NameTest | None = None,
        on_change: Callable[[set[str], set[str]], None] | None = None,
        stray: NameTest | None = None,
        lock: threading.RLock | None = None,
    ) -> None:
        self.path = str(path)
        #: after ``keep_types``: listed with ``scandir``, and ``unchecked`` holds the names no
        #: listing saw as a regular file (a FIFO, a symlink, a directory; or named by a
        #: notification); ``None`` while not known (no typed listing yet)
        self.typed = False
        self.unchecked: set[str] | None = None
        self.final = final or _plain_record(suffix)
        self.on_change = on_change
        self.stray = stray
        self.strays = False
        self.lock = lock or threading.RLock()
        self.version = 0
        self._stamp: tuple[int, int, int] | None = None
        self._raw: set[str] = set()  # every entry, temp files too: diffed as listed, filtered after
        self._names: set[str] = set()
        self._sorted: list[str] | None = []
        self._frozen: tuple[int, frozenset[str]] = (0, frozenset())
        self._notifier: Notifier | None = None
        self._own_notifier = False
        self._watch: Watch | None = None
        self._unwatchable = False

    def watch(self, notifier: Notifier | None = None) -> bool:
        """Follow the directory through kernel notifications from now on (Linux inotify), on
        ``notifier`` or an instance of its own, so a pass after a change costs the names that
        changed instead of a listing. False (and the listing stays the mtime scan) where that is
        not available (yet: a directory that does not exist is tried again next time)."""
        with self.lock:
            if self._watch is None and not self._unwatchable:
                if self._notifier is None:
                    self._own_notifier = notifier is None
                    self._notifier = notifier or Notifier.start(self.path)
                if self._notifier is None:
                    self._unwatchable = True
                    return False
                self._watch = self._notifier.add(self.path)
                if self._watch is None:
                    self._unwatchable = os.path.isdir(self.path)  # a missing dir may appear later
                else:
                    self._stamp = None  # one listing after the watch began: nothing falls in between
            return self._watch is not None

    def keep_types(self) -> None:
        """Keep the entries' types from the next listing on (``unchecked``): a reader may then open
        a name the listing saw as a regular file without a ``stat`` first. Off by default, since a
        ``scandir`` listing costs a little more than a list of names."""
        with self.lock:
            if not self.typed:
                self.typed = True
                self._stamp = None  # listed again, with the types, on the next refresh

    def close(self) -> None:
        with self.lock:
            if self._watch is not None:
                self._watch.close()
                self._watch = None
            if self._own_notifier and self._notifier is not None:
                self._notifier.close()
                self._notifier = None

    def refresh(self) -> None:
        with self.lock:
            if self._watch is not None and self._stamp is not None:
                delta = self._watch.drain()  # one ioctl when nothing changed
                if delta is not None:
                    self._raw -= delta[1]
                    self._raw |= delta[0]
                    self._note(*delta)
                    self._index(*delta)
                    return
                log.info("world-local: %s: change notifications lost; listing it again", self.path)
                notifier = self._notifier
                self._watch.close()
                self._watch = None
                self.watch(notifier)
            self._scan()

    def _scan(self) -> None:
        try:
            info = os.stat(self.path)
        except OSError:  # not created yet (or gone): nothing to read
            info = None
        stamp = (info.st_mtime_ns, info.st_ino, info.st_dev) if info else None
        if stamp is not None and stamp == self._stamp:
            return
        started = time.time_ns()
        try:
            if not info:
                raw = set()
            elif self.typed:  # the entries' types come with the names (no stat each)
                with os.scandir(self.path) as listing:
                    entries = list(listing)
                raw = {e.name for e in entries}
                self.unchecked = {e.name for e in entries if not e.is_file(follow_symlinks=False)}
            else:
                raw = set(os.listdir(self.path))
        except OSError as error:
            log.warning("world-local: cannot list %s: %s", self.path, error)
            raw = set()
        appeared, went = raw - self._raw, self._raw - raw
        self._raw = raw
        self._index(appeared, went)
        racy = info is None or info.st_mtime_ns >= started - RACY_NS
        self._stamp = None if racy else stamp
        if self._watch is not None and info is not None:
            # what changed while the directory was being listed: the notifications' net effect
            # per name is its state now, so applying them after the listing is exact
            delta = self._watch.drain()
            if delta is not None:
                self._raw -= delta[1]
                self._raw |= delta[0]
                self._note(*delta)
                self._index(*delta)
                self._stamp = stamp  # from now on the notifications alone say what changed

    def _note(self, appeared: set[str], went: set[str]) -> None:
        """Names a notification brought: their type is not known (``unchecked``)."""
        if self.unchecked is not None:
            self.unchecked -= went
            self.unchecked |= appeared

    def _index(self, appeared: set[str], went: set[str]) -> None:
        new = appeared - self._names if self._names else appeared
        added = set(filter(self.final, new))
        if self.stray is not None and not self.strays:  # a stray is never a final name: only the rest is tested
            self.strays = any(map(self.stray, new - added if added else new))
        removed = went & self._names
        if added or removed:
            self._names -= removed
            self._names |= added
            self._sorted = None
            self.version += 1
            if self.on_change is not None:
                self.on_change(added, removed)

    def names(self) -> list[str]:
        with self.lock:
            self.refresh()
            if self._sorted is None:
                self._sorted = sorted(self._names)
            return self._sorted

    def name_set(self) -> frozenset[str]:
        """A snapshot of the names (the live set changes under a concurrent refresh)."""
        with self.lock:
            self.refresh()
            if self._frozen[0] != self.version:
                self._frozen = (self.version, frozenset(self._names))
            return self._frozen[1]

    def with_prefix(self, prefix: str) -> list[str]:
        names = self.names()
        start = bisect_left(names, prefix)
        end = bisect_left(names, prefix + "\uffff", lo=start)
        return names[start:end]


# -- events: each run's ids in order, and a journal of the runs that grew ---------------------------


class EventIndex:
    """Each run's event ids in order (``groups``), plus a journal of runs in the order their new
    events appeared: what the change feed hands out positions in. A layout fills it.

    Each journal entry keeps the smallest id it added (``lows``): event ids are ULIDs the writers
    mint, so an event can be published behind ids already read (concurrent writers, clock skew
    between SDK processes), and a reader resuming after its last id would skip it for good. The
    change feed hands these out as ``Changes.since``, so the reader resumes just before them."""

    layout: LayoutName | None = None
    #: finding one run's event files means listing every run's (the flat layout's one folder)
    lists_every_run = False

    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)
        self.lock = threading.RLock()
        self.groups: dict[str, list[str]] = {}
        self.journal: list[str] = []
        self.lows: list[str] = []  # per journal entry, the smallest event id it added
        self.base = 0  # the position of journal[0]: older entries are dropped as it grows
        self.high = ""  # the greatest event-id time prefix seen
        self.epoch = str(ULID())
        #: epochs of the indexes this one replaced in this process (the directory changed layout):
        #: a token of theirs has seen nothing of this index
        self.replaced: frozenset[str] = frozenset()
        self.strays = False  # entries of the other layout appeared: the layout is to be looked at again

    # -- what a layout implements ---------------------------------------------------------------
    def refresh(self) -> None:
        """Bring every run's ids up to date (the change feed's pass)."""

    def ids(self, run_id: str) -> list[str]:
        """One run's ids, brought up to date (a reader's page): the cost of that run only."""
        return []

    def path(self, run_id: str, event_id: str) -> str:
        return f"{self.folder}{os.sep}{run_id}-{event_id}.json"

    def keep_types(self) -> None:
        """Note the files' types as they are listed, for ``listed_regular`` (where a listing has them)."""

    def listed_regular(self, run_id: str, event_ids: list[str]) -> bool:
        """Whether the last listing saw each of these files as a regular file (not a symlink),
        so a reader may open them without a ``stat`` first; False when not known."""
        return False

    def watch(self) -> None:
        """Follow changes through inotify from now on, where available."""

    def close(self) -> None:
        """Stop following changes (nothing else is held open)."""

    def why_empty(self, run_id: str) -> str:
        """Where this run's events were looked for, for a report of an empty log."""
        return f"{self.folder} holds no {run_id}-*.json"

    def clear_strays(self) -> None:
        """The layout was looked at again and is still this one (a stray that is no evidence)."""
        self.strays = False

    def succeed(self, previous: EventIndex) -> None:
        """This index replaces ``previous`` (the directory changed layout): tokens it handed out
        are told every run of this one, from its first event."""
        self.replaced = previous.replaced | {previous.epoch}

    # -- shared bookkeeping ---------------------------------------------------------------------
    def added(self, run_id: str, event_ids: list[str]) -> None:
        """``event_ids`` (sorted) appeared for ``run_id``: one journal entry for the change."""
        ids = self.groups.get(run_id)
        if ids is None:
            ids = self.groups[run_id] = []
        if ids and event_ids and event_ids[0] <= ids[-1]:  # published behind ids already indexed
            for event_id in event_ids:
                insort(ids, event_id)
        else:
            ids.extend(event_ids)
        if event_ids:  # a new entry even after one for the same run: a token may point past that one
            stamp = max(map(_STAMP, event_ids))
            if stamp > self.high:
                self.high = stamp
            self.journal.append(run_id)
            self.lows.append(min(event_ids))
        if len(self.journal) > JOURNAL_MAX:  # a token older than what is kept falls back to its watermark
            drop = len(self.journal) // 2
            del self.journal[:drop]
            del self.lows[:drop]
            self.base += drop

    def since(self, seq: int) -> dict[str, str]:
        """Runs that gained events after journal position ``seq`` (``base <= seq``), each with the
        smallest event id it gained: a cost of the entries since then, not of the history."""
        out: dict[str, str] = {}
        start = seq - self.base
        for run_id, low in zip(self.journal[start:], self.lows[start:], strict=True):
            known = out.get(run_id)
            if known is None or low < known:
                out[run_id] = low
        return out

    def removed(self, run_id: str, event_ids: set[str]) -> None:
        ids = self.groups.get(run_id, [])
        for event_id in event_ids:
            at = bisect_left(ids, event_id)
            if at < len(ids) and ids[at] == event_id:
                del ids[at]
        if not ids:
            self.groups.pop(run_id, None)


class FlatSnapshot:
    """The flat layout's ``events/`` listed once, sorted, for a one-shot reader of every run
    (``wft export``'s parent): each run's names are then a slice of one sorted list (two
    bisections), instead of an index grouped name by name in Python. A run id holds no ``-``,
    so its names (``<runId>-…``) sort together, between ``<runId>-`` and ``<runId>.``.

    ``take`` hands a run's slice over as it was listed (temp files included: ``event_ids`` of the
    reader sorts the final names out), with whether every name of it was a regular file.
    ``None`` from ``take_snapshot`` when the folder holds a run folder (the other layout's
    entry): a mixed directory is for the index to refuse, with its own words."""

    def __init__(self, names: list[str], odd: frozenset[str]) -> None:
        self.names = names
        self.odd = odd  # names the listing did not see as regular files

    @classmethod
    def take_snapshot(cls, folder: str) -> FlatSnapshot | None:
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except FileNotFoundError:
            return cls([], frozenset())
        odd = frozenset(e.name for e in entries if not e.is_file(follow_symlinks=False))
        if any(map(RUN_FOLDER.match, odd)):
            return None
        names = [e.name for e in entries]
        names.sort()
        return cls(names, odd)

    def take(self, run_id: str) -> tuple[list[str], bool]:
        """(the names listed for ``run_id``, whether each was a regular file). A run id with a ``-``
        gets none: the index files its names under the part before that ``-``."""
        if "-" in run_id:
            return [], True
        names = self.names
        start = bisect_left(names, f"{run_id}-")
        block = names[start : bisect_left(names, f"{run_id}.", lo=start)]
        return block, not self.odd or self.odd.isdisjoint(block)


FINAL_RECORD = _plain_record(".json")


def event_ids(run_id: str, names: list[str]) -> list[str]:
    """The sorted event ids among a run's flat names (``FlatSnapshot.take``): final names only,
    split as the index splits them (at the first ``-``)."""
    cut = len(run_id) + 1
    ids = [name[cut:-5] for name in filter(FINAL_RECORD, names) if name.startswith(run_id) and name[cut - 1] == "-"]
    ids.sort()
    return ids


class _FlatEvents(EventIndex):
    """``events/<runId>-<eventId>.json``: one listing of one directory, grouped by run."""

    layout: LayoutName | None = "flat"
    lists_every_run = True

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.listing = Listing(folder, on_change=self._apply, stray=RUN_FOLDER.match, lock=self.lock)

    def _apply(self, added: set[str], removed: set[str]) -> None:
        batch: dict[str, list[str]] = {}
        for name in added:
            run_id, dash, event_id = name[:-5].partition("-")
            if dash:
                batch.setdefault(run_id, []).append(event_id)
        for run_id, ids in batch.items():
            ids.sort()  # per run, not all names at once: a listing of a big world stays linear
            self.added(run_id, ids)
        gone: dict[str, set[str]] = {}
        for name in removed:
            run_id, _, event_id = name[:-5].partition("-")
            gone.setdefault(run_id, set()).add(event_id)
        for run_id, event_ids in gone.items():
            self.removed(run_id, event_ids)

    def refresh(self) -> None:
        with self.lock:
            self.listing.refresh()
            self.strays = self.strays or self.listing.strays

    def ids(self, run_id: str) -> list[str]:
        with self.lock:
            self.refresh()
            return self.groups.get(run_id, [])

    def keep_types(self) -> None:
        self.listing.keep_types()

    def listed_regular(self, run_id: str, event_ids: list[str]) -> bool:
        unchecked = self.listing.unchecked
        if unchecked is None:
            return False
        return not unchecked or not any(f"{run_id}-{e}.json" in unchecked for e in event_ids)

    def watch(self) -> None:
        self.listing.watch()

    def clear_strays(self) -> None:
        self.strays = self.listing.strays = False

    def close(self) -> None:
        self.listing.close()


class _RunFolder:
    """One run's folder of the per-run layout: small, since there is one per run."""

    __slots__ = ("run_id", "path", "prefix", "stamp", "watch", "trouble")

    def __init__(self, run_id: str, path: str) -> None:
        self.run_id = run_id
        self.path = path
        self.prefix = f"{run_id}-"
        self.stamp: tuple[int, int, int] | None = None
        self.watch: Watch | None = None
        self.trouble: str | None = None

    def event_id(self, name: str) -> str | None:
        if name.startswith(self.prefix) and name.endswith(".json"):
            return name[len(self.prefix) : -5]
        return None


class _PerRunEvents(EventIndex):
    """``events/<runId>/<runId>-<eventId>.json``: a listing of the run folders, and per folder a
    ``stat`` per pass (or its inotify watch, all on one instance) and a listing when it changed."""

    layout: LayoutName | None = "per-run"

    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.root = Listing(
            folder, final=RUN_FOLDER.match, on_change=self._folders, stray=FLAT_ENTITY_FILE.match, lock=self.lock
        )
        self.folders: dict[str, _RunFolder] = {}
        self.by_watch: dict[int, _RunFolder] = {}
        self.notifier: Notifier | None = None
        self.polled: set[str] = set()  # folders stat-ed every pass: no watch, or not settled yet
        self._tried_watch = False

    # -- folders come and go ---------------------------------------------------------------------
    def _folder(self, run_id: str) -> _RunFolder:
        folder = self.folders.get(run_id)
        if folder is None:
            folder = self.folders[run_id] = _RunFolder(run_id, f"{self.folder}{os.sep}{run_id}")
            self._arm(folder)
        return folder

    def _arm(self, folder: _RunFolder) -> None:
        if self.notifier is not None and folder.watch is None:
            folder.watch = self.notifier.add(folder.path)
            if folder.watch is not None:
                self.by_watch[folder.watch.wd] = folder
        folder.stamp = None  # listed (again) after the watch began
        self.polled.add(folder.run_id)

    def _folders(self, added: set[str], removed: set[str]) -> None:
        for run_id in added:
            self._folder(run_id)
        for run_id in removed:
            folder = self.folders.pop(run_id, None)
            if folder is not None and folder.watch is not None:
                self.by_watch.pop(folder.watch.wd, None)
                folder.watch.close()
            self.polled.discard(run_id)
            self.removed(run_id, set(self.groups.get(run_id, ())))

    # -- one folder ------------------------------------------------------------------------------
    def _names(self, folder: _RunFolder, appeared: set[str], went: set[str]) -> None:
        known = self.groups.get(folder.run_id, ())
        new = sorted(i for n in appeared if (i := folder.event_id(n)) is not None)
        gone = {i for n in went if (i := folder.event_id(n)) is not None}
        if known:
            present = set(known)
            new = [i for i in new if i not in present]
            gone &= present
        else:
            gone = set()
        if new:
            self.added(folder.run_id, new)
        if gone:
            self.removed(folder.run_id, gone)

    def _refresh_folder(self, folder: _RunFolder) -> None:
        if folder.watch is not None and folder.stamp is not None:
            delta = folder.watch.drain()
            if delta is not None:
                self._names(folder, *delta)
                return
            self.by_watch.pop(folder.watch.wd, None)
            folder.watch.close()
            folder.watch = None
            self._arm(folder)
        self._scan(folder)

    def _scan(self, folder: _RunFolder) -> None:
        try:
            info = os.stat(folder.path)
        except OSError:
            info = None
        stamp = (info.st_mtime_ns, info.st_ino, info.st_dev) if info else None
        if stamp is not None and stamp == folder.stamp:
            return
        started = time.time_ns()
        names: set[str] = set()
        before, folder.trouble = folder.trouble, None
        if info is not None:
            try:
                names = set(os.listdir(folder.path))
            except OSError as error:
                folder.trouble = f"{folder.path} cannot be listed: {os.strerror(error.errno or errno.EIO)}"
                if folder.trouble != before:  # said once, not once per pass
                    log.warning("world-local: %s", folder.trouble)
        ids = {i for n in names if (i := folder.event_id(n)) is not None}
        known = set(self.groups.get(folder.run_id, ()))
        if ids - known:
            self.added(folder.run_id, sorted(ids - known))
        if known - ids:
            self.removed(folder.run_id, known - ids)
        racy = info is None or info.st_mtime_ns >= started - RACY_NS
        folder.stamp = None if racy else stamp
        if folder.watch is not None and info is not None:
            delta = folder.watch.drain()  # what changed while it was being listed
            if delta is not None:
                self._names(folder, *delta)
                folder.stamp = stamp
        if folder.watch is None or folder.stamp is None:
            self.polled.add(folder.run_id)
        else:
            self.polled.discard(folder.run_id)

    # -- the index -------------------------------------------------------------------------------
    def _changed_folders(self) -> set[str]:
        """Folders to look at this pass: those inotify named, and those it does not follow."""
        todo = set(self.polled)
        if self.notifier is not None:
            self.notifier.pump()
            for watch in self.notifier.take_dirty():
                folder = self.by_watch.get(watch.wd)
                if folder is not None:
                    todo.add(folder.run_id)
        return todo

    def refresh(self) -> None:
        with self.lock:
            self.root.refresh()
            self.strays = self.strays or self.root.strays
            if self.notifier is None:
                todo: set[str] | dict[str, _RunFolder] = self.folders
            else:
                todo = self._changed_folders()
            for run_id in list(todo):
                folder = self.folders.get(run_id)
                if folder is not None:
                    self._refresh_folder(folder)

    def ids(self, run_id: str) -> list[str]:
        if not safe_name(run_id):
            return []
        with self.lock:
            folder = self._folder(run_id)
            self._refresh_folder(folder)  # the others' notifications wait in their buffers for the next pass
            return self.groups.get(run_id, [])

    def path(self, run_id: str, event_id: str) -> str:
        return f"{self.folder}{os.sep}{run_id}{os.sep}{run_id}-{event_id}.json"

    def clear_strays(self) -> None:
        self.strays = self.root.strays = False

    def watch(self) -> None:
        with self.lock:
            if self._tried_watch:
                return
            self._tried_watch = True
            self.notifier = Notifier.start(self.folder)
            if self.notifier is None:
                return
            self.root.watch(self.notifier)
            for folder in self.folders.values():
                self._arm(folder)

    def close(self) -> None:
        with self.lock:
            self.root.close()
            for folder in self.folders.values():
                folder.watch = None
                folder.stamp = None
            self.by_watch.clear()
            if self.notifier is not None:
                self.notifier.close()
                self.notifier = None
            self._tried_watch = False
            self.polled = set(self.folders)

    def why_empty(self, run_id: str) -> str:
        folder = self.folders.get(run_id)
        if folder is not None and folder.trouble:
            return folder.trouble
        path = f"{self.folder}{os.sep}{run_id}"
        if not os.path.isdir(path):
            return f"{path} does not exist"
        return f"{path} holds no {run_id}-*.json"


# -- the layouts -------------------------------------------------------------------------------------


class Layout:
    """Where one layout keeps events and steps, and how the rest of its directory differs."""

    name: LayoutName | None = None
    #: pending sleeps are files in ``waits/`` (flat) rather than events without their end (per-run)
    has_wait_records = False

    def __init__(self, root: Path, events: EventIndex) -> None:
        self.root = root
        self.events = events
        self.steps_dir = str(root / "steps")

    @property
    def strays(self) -> bool:
        return self.events.strays

    def step_paths(self, run_id: str) -> list[str]:
        """A run's step record files, by step id."""
        return []

    def step_path(self, run_id: str, step_id: str) -> str:
        return f"{self.steps_dir}{os.sep}{run_id}-{step_id}.json"

    def find_step(self, step_id: str) -> list[str]:
        """Step record files of ``step_id`` in any run (a lookup without the run id)."""
        return []

    def close(self) -> None:
        self.events.close()


class UndecidedLayout(Layout):
    """No event or step written yet: nothing to index; the reader looks again next time."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, EventIndex(root / "events"))


class FlatLayout(Layout):
    name: LayoutName | None = "flat"
    has_wait_records = True

    def __init__(self, root: Path) -> None:
        super().__init__(root, _FlatEvents(root / "events"))
        self.steps = Listing(root / "steps")

    def step_paths(self, run_id: str) -> list[str]:
        return [f"{self.steps_dir}{os.sep}{n}" for n in self.steps.with_prefix(f"{run_id}-")]

    def find_step(self, step_id: str) -> list[str]:
        return [f"{self.steps_dir}{os.sep}{n}" for n in self.steps.names() if n.endswith(f"-{step_id}.json")]

    def close(self) -> None:
        super().close()
        self.steps.close()


class PerRunLayout(Layout):
    name: LayoutName | None = "per-run"

    def __init__(self, root: Path) -> None:
        super().__init__(root, _PerRunEvents(root / "events"))

    def step_paths(self, run_id: str) -> list[str]:
        """Listed on each call: steps are read on demand (a run page), not followed."""
        if not safe_name(run_id):
            return []
        folder = f"{self.steps_dir}{os.sep}{run_id}"
        prefix = f"{run_id}-"
        try:
            names = os.listdir(folder)
        except OSError:
            return []
        return [f"{folder}{os.sep}{n}" for n in sorted(names) if n.startswith(prefix) and n.endswith(".json")]

    def step_path(self, run_id: str, step_id: str) -> str:
        return f"{self.steps_dir}{os.sep}{run_id}{os.sep}{run_id}-{step_id}.json"

    def find_step(self, step_id: str) -> list[str]:
        try:
            runs = [n for n in os.listdir(self.steps_dir) if RUN_FOLDER.match(n)]
        except OSError:
            return []
        found = (self.step_path(r, step_id) for r in sorted(runs))
        return [p for p in found if os.path.lexists(p)]


def open_layout(root: Path, name: LayoutName | None) -> Layout:
    if name == "per-run":
        return PerRunLayout(root)
    if name == "flat":
        return FlatLayout(root)
    return UndecidedLayout(root)


# -- stream chunks -----------------------------------------------------------------------------------


class ChunkFiles:
    """A stream's chunk files in chunk order, whichever layout wrote them.

    Both naming schemes are read (``<stream>-chnk_<ULID>.bin`` in ``streams/chunks/``, and
    ``streams/chunks/<stream>/chnk_<ULID>.bin``): world-local 5.0 betas moved chunks into
    per-stream folders before events moved into per-run ones, so the chunk layout is not the
    entity layout. Per-stream folders are listed when their mtime moved.
    """

    def __init__(self, root: Path) -> None:
        self.dir = root / "streams" / "chunks"
        self.flat = Listing(self.dir, ".bin")
        self._folders: dict[str, Listing] = {}
        self._lock = threading.Lock()

    def folder(self, name: str) -> Listing:
        with self._lock:
            listing = self._folders.get(name)
            if listing is None:
                listing = self._folders[name] = Listing(self.dir / name, final=CHUNK_FILE.match)
            return listing

    def paths(self, name: str) -> list[str]:
        """Chunk files of stream ``name``, ordered by chunk id (ULIDs: write order)."""
        if not safe_name(name):
            return []
        flat = self.flat.with_prefix(f"{name}-chnk_")
        folder = self.folder(name).names() if os.path.isdir(self.dir / name) else []
        base = str(self.dir)
        keyed = [(n[len(name) + 1 :], f"{base}{os.sep}{n}") for n in flat]
        keyed += [(n, f"{base}{os.sep}{name}{os.sep}{n}") for n in folder]
        if flat and folder:
            keyed.sort()
        return [path for _, path in keyed]

    def per_stream(self) -> bool | None:
        """Whether this directory keeps chunks in per-stream folders (None: no chunk yet)."""
        try:
            with os.scandir(self.dir) as entries:
                for entry in entries:
                    if entry.name.startswith("."):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        return True
                    if "-chnk_" in entry.name and entry.name.endswith(".bin"):
                        return False
        except OSError:
            return None
        return None

    def close(self) -> None:
        self.flat.close()
        with self._lock:
            for listing in self._folders.values():
                listing.close()
