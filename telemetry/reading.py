"""Reading whole logs out of any ``World`` (paging through it), for export and follow."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from opentelemetry.sdk.resources import Resource

from .runtrace import RunTrace, build_run_trace
from .world import Event, Pagination, WorkflowRun


async def all_runs(
    world: Any, *, status: str | None = None, workflow_name: str | None = None, page_size: int = 200
) -> AsyncIterator[WorkflowRun]:
    cursor = None
    while True:
        page = await world.runs.list(
            status=status, workflow_name=workflow_name, pagination=Pagination(limit=page_size, cursor=cursor)
        )
        for run in page.data:
            yield run
        if not page.has_more or not page.cursor:
            return
        cursor = page.cursor


async def event_log(world: Any, run_id: str) -> list[Event]:
    """A run's whole event log, oldest first."""
    events: list[Event] = []
    cursor = None
    while True:
        page = await world.events.list(
            run_id=run_id, pagination=Pagination(limit=1000, cursor=cursor, sort_order="asc")
        )
        events.extend(page.data)
        if not page.has_more or not page.cursor:
            return events
        cursor = page.cursor


async def run_trace(
    world: Any, run: WorkflowRun, *, resource: Resource | None = None, include_payloads: bool = True
) -> RunTrace:
    return build_run_trace(
        run.run_id, await event_log(world, run.run_id), run, resource=resource, include_payloads=include_payloads
    )
