"""``wft trace-id RUN_ID``: the trace id of a run's event-log trace (its ULID's 128 bits)."""

from __future__ import annotations

import argparse

from ..runtrace import trace_id_for
from .common import CliError


def configure(parser: argparse.ArgumentParser):
    parser.add_argument("run_id", help="wrun_<ULID>")

    def handle(args: argparse.Namespace) -> int:
        if not args.run_id.startswith("wrun_") or len(args.run_id) != 31:
            raise CliError(f"not a run id: {args.run_id!r} (expected wrun_ and 26 characters)")
        print(f"{trace_id_for(args.run_id):032x}")
        return 0

    return handle
