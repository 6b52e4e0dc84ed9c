"""The ``wft`` subcommands, one module each."""

from __future__ import annotations

COMMANDS: list = []
