"""Concrete worlds, and ``open_world`` to pick one the way the SDK does (env or arguments)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import WorkflowWorldError

__all__ = ["open_world", "world_kind"]

_KINDS = {
    "local": "local",
    "@workflow/world-local": "local",
    "postgres": "postgres",
    "@workflow/world-postgres": "postgres",
    "vercel": "vercel",
    "@workflow/world-vercel": "vercel",
}


def world_kind(target: str | None = None) -> str:
    """``local`` or ``postgres`` from an explicit name or ``WORKFLOW_TARGET_WORLD`` (default local)."""
    raw = target or os.environ.get("WORKFLOW_TARGET_WORLD") or "local"
    kind = _KINDS.get(raw.strip())
    if kind is None:
        raise WorkflowWorldError(f"unknown world {raw!r}: use local or postgres (or @workflow/world-local, @workflow/world-postgres)")
    if kind == "vercel":
        raise WorkflowWorldError("world-vercel is not readable by this tool yet: use local or postgres")
    return kind


def open_world(target: str | None = None, *, data_dir: str | None = None, url: str | None = None, allow_missing: bool = False) -> Any:
    """A world from explicit arguments, else the SDK's own env vars:
    ``WORKFLOW_TARGET_WORLD``, ``WORKFLOW_LOCAL_DATA_DIR`` (default ``.workflow-data``), ``WORKFLOW_POSTGRES_URL``."""
    if target is None and url and not data_dir:
        target = "postgres"
    kind = world_kind(target)
    if kind == "postgres":
        from .postgres import PostgresWorld

        return PostgresWorld(url or os.environ.get("WORKFLOW_POSTGRES_URL"))
    from .local import LocalWorld

    return LocalWorld(data_dir or os.environ.get("WORKFLOW_LOCAL_DATA_DIR") or ".workflow-data", allow_missing=allow_missing)
