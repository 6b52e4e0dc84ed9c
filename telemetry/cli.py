"""``wft``: the command line. Each subcommand lives in its own module and registers here."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .commands import all_commands
from .commands.common import CliError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wft",
        description="workflow-telemetry: traces, conflict filtering and run dashboards for Workflow SDK deployments.",
    )
    parser.add_argument("--version", action="version", version=f"wft {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, help_text, configure in all_commands():
        child = sub.add_parser(name, help=help_text, description=help_text)
        child.set_defaults(handler=configure(child))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except CliError as error:
        print(f"wft {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
