"""A run's log read a page at a time: the one loop every reader of whole logs shares.

Readers of one run's log (``reading.event_log``: export, ``wft runs``; a follower's pass) and a
world that reads many logs at once out of page reads (world-vercel's ``events.logs``) all page
through ``events.list`` the same way; a world without cursors on its pages is resumed after its
last event, and a page that says there is more but gives no way to it ends the log.
"""

from __future__ import annotations

from .model import Event, Pagination, ResolveData
from .protocol import Around, Events

__all__ = ["read_log"]


async def read_log(
    events: Events,
    run_id: str,
    *,
    after: str | None = None,
    page_size: int = 1000,
    resolve_data: ResolveData = "all",
    around: Around | None = None,
) -> list[Event]:
    """``run_id``'s events after event ``after`` (all when None), oldest first. Each page read goes
    through ``around`` when given (``traced``: a span each)."""
    log: list[Event] = []
    cursor = after
    while True:
        pending = events.list(
            run_id=run_id,
            pagination=Pagination(limit=page_size, cursor=cursor, sort_order="asc"),
            resolve_data=resolve_data,
        )
        page = await (pending if around is None else around(pending, run_id))
        log.extend(page.data)
        cursor = page.cursor or (page.data[-1].event_id if page.data else None)
        if not page.has_more or cursor is None:
            return log
