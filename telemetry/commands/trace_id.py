"""``wft trace-id RUN_ID``: the trace id of a run's event-log trace.

That is the trace of the run's stored W3C ``traceparent`` when the app stored one (it runs
OpenTelemetry), else the run id's ULID as 128 bits (``trace_identity.trace_id_for``). Only the
world knows which, so the run is read from the world the options (or the SDK's variables) name;
with no world configured, or ``--no-world``, the id alone gives the ULID's trace.
"""

from __future__ import annotations

import argparse
import sys

from ..backends import backend_config
from ..errors import WorkflowRunNotFoundError, WorkflowWorldError
from ..trace_identity import parse_traceparent, trace_id_for
from ..world import WorkflowRun
from .common import RUNTIME, CliError, Handler, add_world_options, run_async, world_from


def configure(parser: argparse.ArgumentParser) -> Handler:
    parser.add_argument("run_id", help="wrun_<ULID>")
    add_world_options(parser)
    parser.add_argument(
        "--no-world",
        action="store_true",
        help="do not read the run: print the trace id its ULID gives (right only when the app stored no traceparent)",
    )

    def handle(args: argparse.Namespace) -> int:
        run_id = args.run_id.strip()
        if not run_id.startswith("wrun_") or len(run_id) < 31:
            raise CliError(f"not a run id: {args.run_id!r} (expected wrun_ and 26 characters)")
        try:
            config = (
                None if args.no_world else backend_config(args.world, data_dir=args.dir, url=args.url, implicit=False)
            )
        except WorkflowWorldError as error:
            raise CliError(str(error)) from None
        if config is None:
            if not args.no_world:
                print(
                    "wft trace-id: no world configured: this is the trace id of a run without a stored traceparent"
                    " (pass --dir/--url, or set WORKFLOW_*, to read the run's own)",
                    file=sys.stderr,
                )
            print(f"{trace_id_for(run_id):032x}")
            return 0
        world = world_from(args)

        async def read() -> WorkflowRun:
            try:
                run: WorkflowRun = await world.runs.get(run_id, resolve_data="none")
                return run
            finally:
                await world.close()

        try:
            run = run_async(read)
        except WorkflowRunNotFoundError:
            raise CliError(
                f"no run {run_id} in this world: pass the world it ran in (--dir/--url), or --no-world",
                status=RUNTIME,
            ) from None
        carrier = (run.execution_context or {}).get("traceCarrier")
        if isinstance(carrier, dict) and carrier.get("traceparent") and parse_traceparent(run) is None:
            print(f"wft trace-id: run {run_id}: its stored traceparent is malformed; using its ULID", file=sys.stderr)
        print(f"{trace_id_for(run_id, run):032x}")
        return 0

    return handle
