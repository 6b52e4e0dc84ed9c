"""``wft runs``: list runs like the SDK's ``workflow inspect runs`` (same columns, same JSON)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..world import Pagination, WorkflowRun
from .common import add_world_options, run_async, world_from

COLUMNS = ("runId", "workflowName", "status", "startedAt", "completedAt")


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z") if value is not None else None


def run_json(run: WorkflowRun) -> dict[str, Any]:
    """A run as ``workflow inspect runs --json`` prints it."""
    out: dict[str, Any] = {
        "runId": run.run_id,
        "status": run.status,
        "deploymentId": run.deployment_id,
        "workflowName": run.workflow_name,
        "specVersion": run.spec_version,
        "error": {
            k: v
            for k, v in (("message", run.error.message), ("stack", run.error.stack), ("code", run.error.code))
            if v is not None
        }
        if run.error
        else None,
        "startedAt": _iso(run.started_at),
        "completedAt": _iso(run.completed_at),
        "createdAt": _iso(run.created_at),
        "updatedAt": _iso(run.updated_at),
    }
    version = (run.execution_context or {}).get("workflowCoreVersion")
    if version:
        out["workflowCoreVersion"] = version
    return {k: v for k, v in out.items() if v is not None}


def configure(parser: argparse.ArgumentParser):
    add_world_options(parser)
    parser.add_argument("--status", choices=["pending", "running", "completed", "failed", "cancelled"])
    parser.add_argument("--workflow", metavar="NAME", help="full workflow name (workflow//./path//fn)")
    parser.add_argument("--limit", type=int, default=20, help="at most this many runs (default 20)")
    parser.add_argument(
        "--json", action="store_true", help='print {"data": [...]} as workflow inspect runs --json does'
    )

    def handle(args: argparse.Namespace) -> int:
        world = world_from(args)

        async def fetch():
            try:
                page = await world.runs.list(
                    status=args.status,
                    workflow_name=args.workflow,
                    pagination=Pagination(limit=max(1, args.limit)),
                    resolve_data="none",
                )
                return page.data
            finally:
                await world.close()

        runs = [run_json(r) for r in run_async(fetch)]
        if args.json:
            json.dump({"data": runs}, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0
        rows = [[str(r.get(c) or "-") for c in COLUMNS] for r in runs]
        widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(COLUMNS)]
        for row in [list(COLUMNS), *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        return 0

    return handle
