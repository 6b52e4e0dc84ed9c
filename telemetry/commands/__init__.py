"""The ``wft`` subcommands, one module each, plus any registered by other packages.

A package adds a subcommand through the ``wft.commands`` entry point group: the entry point
names a module with ``NAME``, ``HELP`` and ``configure(parser) -> handler``. The collector
registers ``wft serve`` that way, so this library never imports the service.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from importlib.metadata import entry_points

from . import export, follow, reconcile, runs, sentry, trace_id
from .common import Handler

__all__ = ["Command", "COMMANDS", "Handler", "all_commands"]

#: (name, help, configure(parser) -> handler) for a subcommand.
Command = tuple[str, str, Callable[[argparse.ArgumentParser], Handler]]

COMMANDS: list[Command] = [
    ("runs", "list a world's runs (like `workflow inspect runs`)", runs.configure),
    ("export", "backfill every run of a world to an OTLP collector as traces", export.configure),
    ("sentry", "Sentry noise rules: dry-run them on your own events, or list them", sentry.configure),
    (
        "trace-id",
        "print the trace id of a run's event-log trace (when the app stored no traceparent)",
        trace_id.configure,
    ),
    ("follow", "tail a world and export spans as steps finish (resumes from a checkpoint)", follow.configure),
    (
        "reconcile",
        "list runs whose event log and the app's spans disagree (steps or attempts without spans); exit 1 if any",
        reconcile.configure,
    ),
]


def all_commands() -> list[Command]:
    """Commands registered by installed packages (``wft.commands``) first, then the built-in ones."""
    plugins: list[Command] = []
    for point in sorted(entry_points(group="wft.commands"), key=lambda p: p.name):
        module = point.load()
        plugins.append((module.NAME, module.HELP, module.configure))
    return plugins + COMMANDS
