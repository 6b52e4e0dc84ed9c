"""``LocalWorld``: a world-local 4.x data directory (``.workflow-data``), read in place.

The layout is world-local 4.4's: one JSON file per run, step and event, hooks and waits while
pending, stream chunks as ``<stream>-chnk_<ULID>.bin`` files whose first byte is the EOF flag.
Stream writes follow that format so ``StreamWriter`` works here; like world-local itself this
world accepts writes to a finished run, which is why it says ``accepts_post_completion_writes``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
from bisect import bisect_left
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ulid import ULID

from ..errors import HookNotFoundError, WorkflowRunNotFoundError, WorkflowWorldError
from ..world import (
    Event,
    EventRequest,
    EventResult,
    Hook,
    Page,
    Pagination,
    Step,
    StreamChunks,
    StreamInfo,
    Wait,
    WorkflowRun,
)
from . import records

__all__ = ["LocalWorld", "UnsupportedLayoutError"]


class UnsupportedLayoutError(WorkflowWorldError):
    """The data directory is not a world-local 4.x layout."""


def _revive_bytes(obj: dict[str, Any]) -> Any:
    if obj.get("__type") == "Uint8Array" and isinstance(obj.get("data"), str) and len(obj) == 2:
        return base64.b64decode(obj["data"])
    return obj


_DECODER = json.JSONDecoder(object_hook=_revive_bytes)


def _load(path: str | Path) -> dict[str, Any]:
    """One record file (a hot path: plain ``open`` and one shared decoder, no pathlib per file)."""
    with open(path, "rb") as fh:
        return _DECODER.decode(fh.read().decode())


class _Listing:
    """Sorted file names of one directory, re-read only when the directory changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: int | None = None
        self._names: list[str] = []
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        try:
            stamp = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return []
        with self._lock:
            if stamp != self._stamp:
                self._names = sorted(n for n in os.listdir(self.path) if not n.startswith("."))
                self._stamp = stamp
            return self._names

    def with_prefix(self, prefix: str) -> list[str]:
        names = self.names()
        start = bisect_left(names, prefix)
        end = bisect_left(names, prefix + "\uffff", lo=start)
        return names[start:end]


def check_layout(root: Path) -> None:
    """Refuse, in one line, a directory this reader would misread."""
    if not root.is_dir():
        raise UnsupportedLayoutError(f"world-local data directory not found: {root}")
    version_file = root / "version.txt"
    if version_file.exists():
        version = version_file.read_text().strip()
        major = version.rsplit("@", 1)[-1].split(".", 1)[0]
        if major != "4":
            raise UnsupportedLayoutError(
                f"{root}: world-local layout {version} is not supported (this reader reads @workflow/world-local 4.x)"
            )
    elif (root / "hooks" / "token-index").exists() or (root / ".locks" / "runs").exists():
        raise UnsupportedLayoutError(f"{root}: looks like a world-local 5.x layout, which is not supported (4.x only)")


class LocalWorld:
    """Reads (and appends stream chunks to) a world-local 4.x data directory."""

    rpc_system = "local"
    peer_service = "world-local"
    accepts_post_completion_writes = True

    def __init__(self, data_dir: str | os.PathLike[str], *, allow_missing: bool = False) -> None:
        """``allow_missing``: the SDK creates the directory on its first write; a tailer may
        start before that and simply sees no runs until then."""
        self.root = Path(data_dir)
        if not (allow_missing and not self.root.exists()):
            check_layout(self.root)
        self._listings = {
            sub: _Listing(self.root / sub) for sub in ("runs", "steps", "events", "hooks", "waits", "streams/chunks")
        }
        self.runs = _Runs(self)
        self.steps = _Steps(self)
        self.events = _Events(self)
        self.hooks = _Hooks(self)
        self.waits = _Waits(self)
        self.streams = _Streams(self)

    def __repr__(self) -> str:
        return f"LocalWorld({str(self.root)!r})"

    def listing(self, sub: str) -> _Listing:
        return self._listings[sub]

    def load_all(self, sub: str, names: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        folder = os.path.join(self.root, sub)
        for name in names:
            try:
                out.append(_load(os.path.join(folder, name)))
            except FileNotFoundError:  # deleted between listing and reading (hooks, waits)
                continue
        return out

    async def close(self) -> None:
        return None


class _Runs:
    def __init__(self, world: LocalWorld) -> None:
        self.w = world

    async def get(self, run_id: str, *, resolve_data: str = "all") -> WorkflowRun:
        try:
            return records.run_from(_load(self.w.root / "runs" / f"{run_id}.json"), resolve_data == "all")
        except FileNotFoundError:
            raise WorkflowRunNotFoundError(run_id) from None

    async def list(
        self, *, workflow_name=None, status=None, pagination: Pagination | None = None, resolve_data="all"
    ) -> Page[WorkflowRun]:
        """Newest first by ``createdAt`` (as world-local and ``workflow inspect runs`` order them)."""
        names = [n for n in self.w.listing("runs").names() if n.endswith(".json")]
        runs = [
            records.run_from(d, resolve_data == "all")
            for d in self.w.load_all("runs", names)
            if (workflow_name is None or d.get("workflowName") == workflow_name)
            and (status is None or d.get("status") == status)
        ]
        return records.paginate(runs, records.run_cursor, pagination, "desc")


class _Steps:
    def __init__(self, world: LocalWorld) -> None:
        self.w = world

    async def get(self, run_id: str | None, step_id: str, *, resolve_data: str = "all") -> Step:
        names = (
            [f"{run_id}-{step_id}.json"]
            if run_id
            else [n for n in self.w.listing("steps").names() if n.endswith(f"-{step_id}.json")]
        )
        for d in self.w.load_all("steps", names):
            return records.step_from(d, resolve_data == "all")
        raise WorkflowWorldError(f'Step "{step_id}" not found', status=404)

    async def list(self, *, run_id: str, pagination: Pagination | None = None, resolve_data: str = "all") -> Page[Step]:
        steps = [
            records.step_from(d, resolve_data == "all")
            for d in self.w.load_all("steps", self.w.listing("steps").with_prefix(f"{run_id}-"))
        ]
        return records.paginate(steps, lambda s: s.step_id, pagination, "desc")


class _Events:
    def __init__(self, world: LocalWorld) -> None:
        self.w = world

    async def counts_by_run(self) -> dict[str, int]:
        """Events stored per run, from the directory listing alone: what a tailer polls."""
        counts: dict[str, int] = {}
        for name in self.w.listing("events").names():
            run_id = name.split("-", 1)[0]
            counts[run_id] = counts.get(run_id, 0) + 1
        return counts

    def all_for_run(self, run_id: str, resolve: bool = True) -> list[Event]:
        """The run's whole event log in event-id order (the order world-local appends)."""
        names = self.w.listing("events").with_prefix(f"{run_id}-")
        return [records.event_from(d, resolve) for d in self.w.load_all("events", names)]

    async def get(self, run_id: str, event_id: str, *, resolve_data: str = "all") -> Event:
        try:
            return records.event_from(
                _load(self.w.root / "events" / f"{run_id}-{event_id}.json"), resolve_data == "all"
            )
        except FileNotFoundError:
            raise WorkflowWorldError(f'Event "{event_id}" not found', status=404) from None

    async def list(
        self, *, run_id: str, pagination: Pagination | None = None, resolve_data: str = "all"
    ) -> Page[Event]:
        return records.paginate(
            self.all_for_run(run_id, resolve_data == "all"), lambda e: e.event_id, pagination, "asc", 1000
        )

    async def list_by_correlation_id(
        self, *, correlation_id: str, run_id: str | None = None, pagination=None, resolve_data="all"
    ) -> Page[Event]:
        names = self.w.listing("events").with_prefix(f"{run_id}-") if run_id else self.w.listing("events").names()
        events = [
            records.event_from(d, resolve_data == "all")
            for d in self.w.load_all("events", names)
            if d.get("correlationId") == correlation_id
        ]
        return records.paginate(events, lambda e: e.event_id, pagination, "asc", 1000)

    async def create(self, run_id: str | None, event: EventRequest) -> EventResult:
        raise WorkflowWorldError("LocalWorld reads the event log; creating events is the SDK's job", code="UNSUPPORTED")


class _Hooks:
    def __init__(self, world: LocalWorld) -> None:
        self.w = world

    async def get(self, hook_id: str) -> Hook:
        try:
            return records.hook_from(_load(self.w.root / "hooks" / f"{hook_id}.json"))
        except FileNotFoundError:
            raise HookNotFoundError(hook_id) from None

    async def get_by_token(self, token: str) -> Hook:
        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            claim = _load(self.w.root / "hooks" / "tokens" / f"{digest}.json")
            return await self.get(claim["hookId"])
        except (FileNotFoundError, HookNotFoundError):
            raise HookNotFoundError(token) from None

    async def list(self, *, run_id: str | None = None, pagination: Pagination | None = None) -> Page[Hook]:
        names = [n for n in self.w.listing("hooks").names() if n.endswith(".json")]
        hooks = [records.hook_from(d) for d in self.w.load_all("hooks", names) if run_id in (None, d.get("runId"))]
        return records.paginate(hooks, lambda h: h.hook_id, pagination, "asc", 1000)


class _Waits:
    """Pending sleeps (world-local deletes a wait once it completes)."""

    def __init__(self, world: LocalWorld) -> None:
        self.w = world

    async def list(self, *, run_id: str | None = None) -> list[Wait]:
        listing = self.w.listing("waits")
        names = listing.with_prefix(f"{run_id}-") if run_id else listing.names()
        return [records.wait_from(d) for d in self.w.load_all("waits", names)]


class _Streams:
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

    def _append(self, name: str, run_id: str, body: bytes) -> None:
        self._register(name, run_id)
        self._chunks_dir.mkdir(parents=True, exist_ok=True)
        final = self._chunks_dir / f"{name}-{self._chunk_id()}.bin"
        temp = final.with_name(final.name + f".tmp.{ULID()}")
        temp.write_bytes(body)
        os.replace(temp, final)

    def _register(self, name: str, run_id: str) -> None:
        path = self.w.root / "streams" / "runs" / f"{run_id}.json"
        try:
            names = json.loads(path.read_text())["streams"]
        except FileNotFoundError:
            names = []
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

    async def list(self, run_id: str) -> list[str]:
        try:
            return list(json.loads((self.w.root / "streams" / "runs" / f"{run_id}.json").read_text())["streams"])
        except FileNotFoundError:
            return []

    def _files(self, name: str) -> list[str]:
        return [n for n in self.w.listing("streams/chunks").with_prefix(f"{name}-chnk_") if n.endswith(".bin")]

    def read_all(self, name: str) -> tuple[list[bytes], bool, int]:
        """(chunks before the first EOF, whether EOF was seen, chunks stored after EOF)."""
        chunks: list[bytes] = []
        for position, file_name in enumerate(self._files(name)):
            body = (self._chunks_dir / file_name).read_bytes()
            if body[:1] == b"\x01":
                return chunks, True, len(self._files(name)) - position - 1
            chunks.append(body[1:])
        return chunks, False, 0

    async def get_chunks(self, name: str, run_id: str, *, limit: int = 100, cursor: str | None = None) -> StreamChunks:
        chunks, done, _ = self.read_all(name)
        return records.page_chunks(chunks, done, limit, cursor)

    async def get_info(self, name: str, run_id: str) -> StreamInfo:
        chunks, done, _ = self.read_all(name)
        return StreamInfo(tail_index=len(chunks) - 1, done=done)
