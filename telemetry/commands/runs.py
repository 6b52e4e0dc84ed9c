"""``wft runs``: list runs like the SDK's ``workflow inspect runs`` (same columns, same JSON:
``{"data": [...], "cursor": ..., "hasMore": ...}``, pages through ``--cursor``).

``--workflow`` takes the function name (``processOrder``), the file (``src/workflows/order``) or
the full id (``workflow//./src/workflows/order//processOrder``, the only form the SDK's takes).

A run whose records cannot be read (its run file, or a record of its event log) is still
listed, marked: ``!`` after its status in the table and a ``problems`` list in the JSON, which
healthy runs do not have, so the JSON stays the SDK's for them.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..backends.records import NamedError, UnreadableRun
from ..errors import UnreadableEventsError
from ..reading import empty_log, event_log, runs_page, stalled_runs
from ..world import WorkflowRun
from .common import CliError, Handler, add_world_options, run_async, world_from

COLUMNS = ("runId", "workflowName", "status", "startedAt", "completedAt")


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z") if value is not None else None


def _error_json(run: WorkflowRun) -> dict[str, Any] | None:
    error = run.error
    if error is None:
        return None
    fields = [("message", error.message), ("stack", error.stack), ("code", error.code)]
    if isinstance(error, NamedError):
        fields.insert(0, ("name", error.name))
    return {k: v for k, v in fields if v is not None}


def run_json(run: WorkflowRun, problems: list[str] | None = None) -> dict[str, Any]:
    """A run as ``workflow inspect runs --json`` prints it (plus ``problems``, if any)."""
    out: dict[str, Any] = {
        "runId": run.run_id,
        "status": run.status,
        "deploymentId": run.deployment_id,
        "workflowName": run.workflow_name,
        "specVersion": run.spec_version,
        "error": _error_json(run),
        "startedAt": _iso(run.started_at),
        "completedAt": _iso(run.completed_at),
        "createdAt": _iso(run.created_at),
        "updatedAt": _iso(run.updated_at),
    }
    version = (run.execution_context or {}).get("workflowCoreVersion")
    if version:
        out["workflowCoreVersion"] = version
    if problems:
        out["problems"] = problems
    if isinstance(run, UnreadableRun):  # only what is known: its id, the time in it, why
        return {k: v for k, v in out.items() if k in ("runId", "status", "createdAt", "problems")}
    return {k: v for k, v in out.items() if v is not None}


async def problems_of(world: Any, run: WorkflowRun) -> list[str]:
    """What keeps this run's records from being read: its run file, or its event log (read
    through once, payloads left encoded: a listing is a page of runs, so this is bounded)."""
    if isinstance(run, UnreadableRun):
        return [f"unreadable run record {run.path}: {run.reason}"]
    try:
        events = await event_log(world, run.run_id, resolve_data="none")
    except UnreadableEventsError as error:
        return [f"unreadable event record {error.path}: {error.reason}"]
    path = stalled_runs(world).get(run.run_id)
    if path:
        return [f"event record {path} is not readable yet (being written?)"]
    empty = None if events else await empty_log(world, run)
    return [f"{empty[1]} ({empty[0]})"] if empty else []


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected 1 or more, got {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> Handler:
    add_world_options(parser)
    parser.add_argument("--status", choices=["pending", "running", "completed", "failed", "cancelled"])
    parser.add_argument(
        "--workflow",
        metavar="NAME",
        help="the function (processOrder), the file (src/workflows/order) or the full id"
        " (workflow//./src/workflows/order//processOrder)",
    )
    parser.add_argument("--limit", type=_positive, default=20, help="runs per page (default %(default)s)")
    parser.add_argument("--cursor", metavar="CURSOR", help="start after this run: the cursor a page printed")
    parser.add_argument(
        "--json",
        action="store_true",
        help='print {"data": [...], "cursor": ..., "hasMore": ...} as workflow inspect runs --json does',
    )

    def handle(args: argparse.Namespace) -> int:
        if args.workflow is not None and not args.workflow.strip():
            raise CliError("--workflow: empty; give a function name, a file or a full workflow id")
        world = world_from(args)

        async def fetch() -> tuple[list[dict[str, Any]], str | None, bool]:
            try:
                page = await runs_page(
                    world,
                    limit=args.limit,
                    cursor=args.cursor,
                    status=args.status,
                    workflow=args.workflow,
                    resolve_data="none",
                )
                return [run_json(run, await problems_of(world, run)) for run in page.data], page.cursor, page.has_more
            finally:
                await world.close()

        runs, cursor, has_more = run_async(fetch)
        for run in runs:
            for problem in run.get("problems", []):
                print(f"wft runs: run {run['runId']}: {problem}", file=sys.stderr)
        if args.json:
            json.dump({"data": runs, "cursor": cursor, "hasMore": has_more}, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        rows = [
            [str(r.get(c) or "-") + ("!" if c == "status" and "problems" in r else "") for c in COLUMNS] for r in runs
        ]
        widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)]
        for row in [list(COLUMNS), *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if has_more and cursor:
            print(f"more: wft runs --cursor '{cursor}' (with the same options)", file=sys.stderr)
        return 0

    return handle
