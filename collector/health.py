"""``GET /healthz``: whether the collector can do its job, part by part.

A probe (a load balancer, Kubernetes) needs one answer: 503 while the collector cannot store what
it is sent — its writer stopped, or the store cannot be written (a full disk, a read-only file),
which is when ingest answers 503 too — and 200 otherwise. A part that is failing without stopping
ingest (the world tailer cannot read the world, the forward upstream is down and batches wait in
the spool) makes the answer ``degraded``, still 200: restarting would not mend it, and what arrives
is still stored.

The route is open (a probe has no token), so it says which part fails but not why: the reasons
(paths, host names, errors) are given only to a request that carries the token, or to anyone when
there is none (the collector then listens on loopback only).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web

__all__ = ["PATH", "Check", "Probe", "health_route"]

#: where probes look (and the one route the token does not guard, with the login form)
PATH: Final = "/healthz"


@dataclass(frozen=True)
class Check:
    """One part's state: ``ok``, and otherwise why (``reason``); ``vital``: while it fails nothing
    can be stored, and the collector is unavailable."""

    name: str
    ok: bool
    reason: str | None = None
    vital: bool = False


#: reads one part's state when asked (cheap: attributes the part keeps as it works); None: a part
#: not there (TLS not served)
Probe = Callable[[], Check | None]


def health_route(probes: Sequence[Probe], authorized: Callable[[web.Request], bool]) -> web.RouteDef:
    """The route; ``authorized``: whether a request may read the reasons."""

    async def health(request: web.Request) -> web.Response:
        checks = [check for probe in probes if (check := probe()) is not None]
        unavailable = any(not c.ok and c.vital for c in checks)
        status = "unavailable" if unavailable else "ok" if all(c.ok for c in checks) else "degraded"
        detailed = authorized(request)
        body = {
            "ok": status == "ok",
            "status": status,
            "checks": {c.name: {"ok": c.ok, **({"reason": c.reason} if detailed and c.reason else {})} for c in checks},
        }
        return web.Response(
            status=503 if unavailable else 200,
            text=json.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    return web.get(PATH, health)
