"""What the subcommands share: the handler type, the one-line error, world options, and the checks
of what a user typed (URLs, directories, times) before anything starts.

Every check names where the bad value came from (``--dir``, ``WORKFLOW_LOCAL_DATA_DIR``, the
default) and how to fix it, in one line: a value passed as a flag is never described as coming
from the environment, nor the reverse.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from ..backends import DEFAULT_LOCAL_DIR, BackendConfig, backend_config, open_backend
from ..errors import WorkflowWorldError

if TYPE_CHECKING:
    from ..backends.local import LocalWorld
    from ..backends.postgres import PostgresWorld
    from ..backends.vercel import VercelWorld

__all__ = [
    "CliError",
    "Handler",
    "USAGE",
    "RUNTIME",
    "WorldSource",
    "add_world_options",
    "check_http_url",
    "check_world",
    "add_otlp_protocol_option",
    "otlp_endpoint",
    "otlp_protocol_of",
    "parse_moment",
    "run_async",
    "world_from",
    "world_source",
]

T = TypeVar("T")

#: What a subcommand's ``configure(parser)`` returns: runs the parsed command, gives the exit status.
Handler = Callable[[argparse.Namespace], int]

#: Exit statuses: the command line or configuration is wrong / it is right but something failed.
USAGE, RUNTIME = 2, 1


class CliError(Exception):
    """A user-facing failure: printed as one line. ``status`` is 2 (``USAGE``) when what the user
    gave is wrong (a flag, a variable, a folder that is not a world, a file path that cannot be
    written), 1 (``RUNTIME``) when it is right but something failed on the way (a database down or
    refusing the credentials, a port taken, a run that is not there, a send that failed)."""

    def __init__(self, message: str, *, status: int = USAGE) -> None:
        super().__init__(message)
        self.status = status


def add_world_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "world (a flag wins; unset, WORKFLOW_TARGET_WORLD, WORKFLOW_LOCAL_DATA_DIR and WORKFLOW_POSTGRES_URL apply)"
    )
    group.add_argument("--world", choices=["local", "postgres", "vercel"], help="which world to read (default: local)")
    group.add_argument(
        "--dir", metavar="PATH", help=f"world-local data directory (default: {DEFAULT_LOCAL_DIR}, as the SDK's)"
    )
    group.add_argument(
        "--url",
        metavar="URL",
        help="world-postgres URL postgres://USER:PASSWORD@HOST:PORT/DB (--world vercel: the workflow server URL)",
    )


@dataclass(frozen=True)
class WorldSource:
    """Where the world's location came from, for messages: ``--dir /x``, ``WORKFLOW_LOCAL_DATA_DIR=/x``…"""

    what: str  # "--dir", "WORKFLOW_LOCAL_DATA_DIR", "the default"…
    value: str  # shown redacted for URLs

    def __str__(self) -> str:
        if self.what.startswith("--"):
            return f"{self.what} {self.value}"
        if self.what.isupper():
            return f"{self.what}={self.value}"
        return f"{self.what} {self.value}"


def world_source(config: BackendConfig, args: argparse.Namespace) -> WorldSource:
    """Which flag, variable or default gave ``config`` its directory or URL (mirrors ``backend_config``)."""
    if config.kind == "local":
        if getattr(args, "dir", None):
            return WorldSource("--dir", str(args.dir))
        if os.environ.get("WORKFLOW_LOCAL_DATA_DIR"):
            return WorldSource("WORKFLOW_LOCAL_DATA_DIR", os.environ["WORKFLOW_LOCAL_DATA_DIR"])
        return WorldSource("the default directory", DEFAULT_LOCAL_DIR)
    if config.kind == "postgres":
        from ..backends.postgres import DEFAULT_URL, redact_url

        if getattr(args, "url", None):
            return WorldSource("--url", redact_url(str(args.url)))
        if os.environ.get("WORKFLOW_POSTGRES_URL"):
            return WorldSource("WORKFLOW_POSTGRES_URL", redact_url(os.environ["WORKFLOW_POSTGRES_URL"]))
        return WorldSource("the default URL", redact_url(DEFAULT_URL) + " (set --url or WORKFLOW_POSTGRES_URL)")
    if getattr(args, "url", None):
        return WorldSource("--url", str(args.url))
    return WorldSource("the workflow server", "from WORKFLOW_VERCEL_* variables")


#: Entries a world-local data directory holds (4.x and 5.x); vercel-workflow writes no version.txt.
_WORLD_ENTRIES = ("runs", "events", "steps", "hooks", "waits", "streams", "version.txt")


def _check_local_dir(path: Path, source: WorldSource, *, allow_missing: bool) -> str | None:
    """Refuse a directory that is not a world-local data directory; a warning (or None) where
    the world may simply not have been written yet (``allow_missing``: a daemon that waits)."""
    fix = "point --dir (or WORKFLOW_LOCAL_DATA_DIR) at the directory the app writes (its WORKFLOW_LOCAL_DATA_DIR)"
    if not path.exists():
        if allow_missing:
            return f"{source}: world-local data directory not found (yet); waiting for the app to create it"
        raise CliError(f"{source}: world-local data directory not found; {fix}")
    if not path.is_dir():
        raise CliError(f"{source}: not a directory; {fix}")
    try:
        names = {entry.name for entry in os.scandir(path)}
    except OSError as error:
        raise CliError(f"{source}: cannot list it ({error.strerror or error})", status=RUNTIME) from None
    if names & set(_WORLD_ENTRIES):
        return None
    if not names:
        if allow_missing:
            return f"{source}: the directory is empty; waiting for the app's first run"
        raise CliError(f"{source}: the directory is empty, not a world-local data directory; {fix}")
    raise CliError(
        f"{source}: not a world-local data directory (no runs/, events/, steps/ or version.txt in it); {fix}"
    )


def check_http_url(value: str, what: str) -> str:
    """``value`` if it is an http(s) URL with a host (and a valid port), else a one-line ``CliError``."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError as error:
        raise CliError(f"{what}: not a URL: {value!r} ({error})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CliError(f"{what}: not an http:// or https:// URL: {value!r} (example: http://localhost:4318)")
    if port == 0:
        raise CliError(f"{what}: port 0 in {value!r}")
    return value.strip()


def _check_postgres_url(url: str, source: WorldSource) -> None:
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme not in ("postgres", "postgresql"):
            raise CliError(f"{source}: not a PostgreSQL URL (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE)")
        try:
            port = urlsplit(url).port
        except ValueError:
            port = 0
        if port == 0:
            raise CliError(f"{source}: the port is not a number between 1 and 65535")
        return
    from psycopg.conninfo import conninfo_to_dict

    try:
        conninfo_to_dict(url)
    except Exception:  # psycopg's message quotes the string, which may hold the password
        raise CliError(
            f"{source}: not a PostgreSQL URL (expected postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            " or key=value pairs such as 'host=… dbname=…')"
        ) from None


def check_world(
    config: BackendConfig, args: argparse.Namespace, *, allow_missing: bool = False
) -> tuple[WorldSource, str | None]:
    """Check a world's configuration before opening it: (where it came from, a warning or None).
    A bad URL or a folder that is not a world is a ``CliError`` (usage)."""
    source = world_source(config, args)
    if config.kind == "local":
        warning = _check_local_dir(Path(config.data_dir or DEFAULT_LOCAL_DIR), source, allow_missing=allow_missing)
        return source, warning
    if config.kind == "postgres":
        from ..backends.postgres import DEFAULT_URL

        _check_postgres_url(config.url or DEFAULT_URL, source)
    elif config.url:
        check_http_url(config.url, str(source.what))
    return source, None


def world_from(
    args: argparse.Namespace, *, allow_missing: bool = False, probe: bool = True
) -> LocalWorld | PostgresWorld | VercelWorld:
    """The world the options (or the SDK's variables) name, checked: a bad URL or directory is a
    usage error; with ``probe``, a world-postgres that cannot be read (unreachable, credentials, no
    ``workflow`` schema) is a runtime error now, in one line, rather than after retries."""
    try:
        config = backend_config(args.world, data_dir=args.dir, url=args.url)
        if config is None:  # not expected: with implicit=True the local default applies
            raise CliError("no world to read: pass --world, --dir or --url")
        _, warning = check_world(config, args, allow_missing=allow_missing)
        if warning:
            import logging

            logging.getLogger("telemetry.commands").warning("%s", warning)
        world = open_backend(config, allow_missing=allow_missing)
    except WorkflowWorldError as error:
        raise CliError(str(error)) from None
    if probe and config.kind == "postgres":
        _probe_postgres(world)
    return world


def _probe_postgres(world: Any) -> None:
    """One query, no retries: the first thing a command reads fails fast and says why."""

    async def probe() -> None:
        retries, world.retries = world.retries, 0
        try:
            await world.query("SELECT 1 FROM workflow.workflow_runs LIMIT 1")
        finally:
            world.retries = retries
            await world.close()

    run_async(lambda: probe())


def run_async(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine, turning world failures into one-line errors: runtime ones, but for a
    directory found on reading to be in no layout this reader reads (what was given is wrong)."""
    try:
        return asyncio.run(factory())
    except WorkflowWorldError as error:
        from ..backends.local_layout import UnsupportedLayoutError

        status = USAGE if isinstance(error, UnsupportedLayoutError) else RUNTIME
        raise CliError(str(error), status=status) from None


def add_otlp_protocol_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--otlp-protocol",
        metavar="PROTOCOL",
        default=None,
        help="http/protobuf, http/json (sent as protobuf) or grpc (default: OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL,"
        " else http/protobuf); over grpc, --otlp or the endpoint variable is http(s)://host:port",
    )


def otlp_protocol_of(args: argparse.Namespace) -> str:
    """``--otlp-protocol`` or the OTel variables', checked: a value OTLP does not know fails now."""
    from ..export import otlp_protocol

    try:
        return otlp_protocol(args.otlp_protocol)
    except ValueError as error:
        if args.otlp_protocol:
            where = "--otlp-protocol"
        elif os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
            where = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        else:
            where = "OTEL_EXPORTER_OTLP_PROTOCOL"
        raise CliError(f"{where}: {error}") from None


def otlp_endpoint(flag: str | None) -> str | None:
    """The OTLP base URL to send to (``--otlp``, else the OTel variables, checked; None: the
    exporter's default), so a typo fails now instead of in every request."""
    if flag:
        return check_http_url(flag, "--otlp")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        value = os.environ.get(name)
        if value:
            check_http_url(value, name)
            return None  # the sink reads the variable itself (a traces endpoint is taken as it is)
    return None


_AGO = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd])\s*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_moment(text: str, flag: str, *, now: datetime | None = None) -> datetime:
    """``--since``/``--until``: an ISO-8601 time or date (UTC unless it says otherwise), epoch
    milliseconds, or a duration ago (``90s``, ``15m``, ``2h``, ``7d``)."""
    value = text.strip()
    ago = _AGO.fullmatch(value)
    if ago:
        seconds = float(ago.group(1)) * _UNIT_SECONDS[ago.group(2)]
        try:
            return (now or datetime.now(UTC)) - timedelta(seconds=seconds)
        except OverflowError:
            raise CliError(f"{flag}: {text!r} is further back than any date") from None
    if value.isdigit():
        try:
            return datetime.fromtimestamp(int(value) / 1000, UTC)
        except (OverflowError, ValueError, OSError):
            raise CliError(f"{flag}: {text!r} is out of range as epoch milliseconds") from None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(
            f"{flag}: not a time: {text!r} (examples: 2026-11-30T14:00:00Z, 2026-11-30, 1764511200000, 2h, 7d)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
