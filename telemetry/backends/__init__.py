"""World backends (the readers of each world's storage), and the one place that picks one.

Every command and the collector call ``backend_config`` then ``open_backend``: the choice
follows flags first, then the SDK's own variables (``WORKFLOW_TARGET_WORLD``,
``WORKFLOW_LOCAL_DATA_DIR``, ``WORKFLOW_POSTGRES_URL``), so the sidecar reads the world the app
writes without being told twice.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ..errors import WorkflowWorldError

if TYPE_CHECKING:
    from .local import LocalWorld
    from .postgres import PostgresWorld
    from .vercel import VercelWorld

__all__ = [
    "BackendConfig",
    "backend_config",
    "open_backend",
    "poll_interval",
    "world_kind",
    "DEFAULT_LOCAL_DIR",
    "POLL_INTERVALS",
]

#: world-local's default data directory (the SDK's, when ``WORKFLOW_LOCAL_DATA_DIR`` is unset).
DEFAULT_LOCAL_DIR = ".workflow-data"

_KINDS = {
    "local": "local",
    "@workflow/world-local": "local",
    "postgres": "postgres",
    "@workflow/world-postgres": "postgres",
    "vercel": "vercel",
    "@workflow/world-vercel": "vercel",
}


def world_kind(target: str) -> str:
    """``local``, ``postgres`` or ``vercel`` from a short or package name; anything else is a one-line error."""
    kind = _KINDS.get(target.strip())
    if kind is None:
        raise WorkflowWorldError(
            f"unknown world {target!r}: use local, postgres or vercel "
            "(or @workflow/world-local, @workflow/world-postgres, @workflow/world-vercel)"
        )
    return kind


@dataclass(frozen=True)
class BackendConfig:
    """Which world to read and where: the resolved answer of flags and environment."""

    kind: str  # "local" | "postgres" | "vercel" (url: the workflow server override; credentials from env)
    data_dir: str | None = None
    url: str | None = None


def backend_config(
    world: str | None = None,
    *,
    data_dir: str | None = None,
    url: str | None = None,
    implicit: bool = True,
) -> BackendConfig | None:
    """Resolve the world to read from flags, then the SDK's variables.

    ``implicit=True`` (the commands): with nothing configured, world-local in ``.workflow-data``.
    ``implicit=False`` (the collector): with nothing configured, ``None`` unless
    ``./.workflow-data`` exists, so a collector started alone does not invent a world.
    """
    env = os.environ
    if world is None and (data_dir or url):
        world = "postgres" if url and not data_dir else "local"
    if world is None:
        target = env.get("WORKFLOW_TARGET_WORLD")
        if target:
            world = target
        elif env.get("WORKFLOW_POSTGRES_URL") and not env.get("WORKFLOW_LOCAL_DATA_DIR"):
            world = "postgres"
        elif implicit or env.get("WORKFLOW_LOCAL_DATA_DIR") or Path(DEFAULT_LOCAL_DIR).is_dir():
            world = "local"
        else:
            return None
    kind = world_kind(world)
    if kind == "postgres":
        return BackendConfig("postgres", url=url or env.get("WORKFLOW_POSTGRES_URL"))
    if kind == "vercel":
        return BackendConfig("vercel", url=url)
    return BackendConfig("local", data_dir=data_dir or env.get("WORKFLOW_LOCAL_DATA_DIR") or DEFAULT_LOCAL_DIR)


#: seconds between a follower's polls, by world kind: a pass over world-local or world-postgres is a
#: folder listing or an index probe on this machine or the next, so a quarter second keeps spans
#: fresh for little; a world-vercel pass is at least three calls to Vercel's API, which at 4 Hz would
#: be ~700 requests a minute from every sidecar, all day
POLL_INTERVALS: Final = {"local": 0.25, "postgres": 0.25, "vercel": 2.0}


def poll_interval(kind: str) -> float:
    """The default seconds between polls of a world of ``kind`` (``POLL_INTERVALS``)."""
    return POLL_INTERVALS.get(kind, 0.25)


def open_backend(config: BackendConfig, *, allow_missing: bool = False) -> LocalWorld | PostgresWorld | VercelWorld:
    """Open the reader ``config`` names. ``allow_missing``: a local data dir may not exist yet."""
    if config.kind == "vercel":
        from .vercel import VercelWorld

        return VercelWorld.from_env(server_url=config.url)
    if config.kind == "postgres":
        from .postgres import PostgresWorld

        return PostgresWorld(config.url)
    from .local import LocalWorld

    return LocalWorld(config.data_dir or DEFAULT_LOCAL_DIR, allow_missing=allow_missing)
