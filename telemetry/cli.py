"""``wft``: the command line. Each subcommand lives in its own module and registers here.

Whatever goes wrong ends in one line on stderr, ``wft <command>: <what is wrong and how to fix
it>``, and exit status 2 when what the user gave is wrong (a flag, a variable, a path) or 1 when
it failed at run time (a server down, a port taken; see ``CliError``): never a traceback, unless
``--debug`` asks for one. argparse's own complaints are one line too (its usage block is
``--help``'s job).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .commands import all_commands
from .commands.common import RUNTIME, USAGE, CliError, Handler
from .log_format import FORMATS, formatter

_DEBUG_HELP = "on any error, print the traceback too (and log at DEBUG level)"
_LOG_FORMAT_HELP = "log lines as text (the default), or one JSON object a line for log pipelines (or WFT_LOG_FORMAT)"


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the fix (``--help``), exit status 2.
    Subcommand parsers are of this class too (argparse makes them with the parent's class)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"{self.prog}: {_one_line(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wft",
        description="workflow-telemetry: traces, conflict filtering and run dashboards for Workflow SDK deployments.",
    )
    parser.add_argument("--version", action="version", version=f"wft {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    parser.add_argument(
        "--log-format",
        choices=FORMATS,
        default=os.environ.get("WFT_LOG_FORMAT") or "text",
        help=_LOG_FORMAT_HELP,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, help_text, configure in all_commands():
        child = sub.add_parser(name, help=help_text, description=help_text)
        # also after the command (``wft runs --debug``); SUPPRESS: absent, the global flag's value stays
        child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
        child.add_argument("--log-format", choices=FORMATS, default=argparse.SUPPRESS, help=_LOG_FORMAT_HELP)
        child.set_defaults(handler=configure(child))
    return parser


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    if args.log_format not in FORMATS:  # from WFT_LOG_FORMAT, which argparse does not check
        parser.error(f"WFT_LOG_FORMAT={args.log_format!r}: one of {', '.join(FORMATS)}")
    output = logging.StreamHandler(sys.stderr)
    output.setFormatter(formatter(args.log_format))
    logging.basicConfig(level=logging.DEBUG if args.verbose or debug else logging.INFO, handlers=[output])
    logging.captureWarnings(args.log_format == "json")  # a library's warning is a record too, not a bare line
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    prog = f"wft {args.command}"
    try:
        return handler(args)
    except CliError as error:
        if debug:
            traceback.print_exc()
        _say(args.log_format, f"{prog}: {_one_line(error)}")
        return error.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # ``wft runs | head``: the reader left; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return RUNTIME
    except Exception as error:
        if debug:
            raise
        _say(
            args.log_format,
            f"{prog}: unexpected {type(error).__name__}: {_one_line(error)} (run again with --debug for the traceback)",
        )
        return RUNTIME


def _say(log_format: str, line: str) -> None:
    """The one line an error ends in: as it is, or as a JSON record when logs are JSON (a log
    pipeline that parses every line would otherwise drop the one that says why the service ended)."""
    if log_format == "json":
        logging.getLogger("wft").error(line)
    else:
        print(line, file=sys.stderr)
