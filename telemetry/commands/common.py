"""Options shared by the commands that read a world."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..backends import backend_config, open_backend
from ..errors import WorkflowWorldError

T = TypeVar("T")


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 2."""


def add_world_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "world (defaults from WORKFLOW_TARGET_WORLD, WORKFLOW_LOCAL_DATA_DIR, WORKFLOW_POSTGRES_URL)"
    )
    group.add_argument("--world", choices=["local", "postgres"], help="which world to read (default: local)")
    group.add_argument("--dir", metavar="PATH", help="world-local data directory (default: .workflow-data)")
    group.add_argument("--url", metavar="URL", help="world-postgres URL")


def world_from(args: argparse.Namespace, *, allow_missing: bool = False) -> Any:
    try:
        config = backend_config(args.world, data_dir=args.dir, url=args.url)
        assert config is not None  # implicit: a command always reads some world
        return open_backend(config, allow_missing=allow_missing)
    except WorkflowWorldError as error:
        raise CliError(str(error)) from None


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine, turning world failures into one-line CLI errors."""
    try:
        return asyncio.run(factory())
    except WorkflowWorldError as error:
        raise CliError(str(error)) from None
