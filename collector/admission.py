"""Admission: one byte budget for request bodies in flight and the work decoded from them.

Memory under load is bounded in bytes, not spans: every request body is charged against one
budget (``--max-pending-bytes``) from the moment it is admitted until the writer has committed
(or refused) the batch decoded from it. What is charged is a fixed factor of the body's size
after decompression, ``DECODED_FACTOR`` × bytes, not the body alone: a body is held while it is
read, then parsed into an OTLP message, then turned into span records that wait in the writer's
queue, and that chain peaks at about 8× the body (measured on real workflow spans, protobuf:
body 1×, upb message 2.8×, span records 4.5×). Charging the peak up front is what lets the
collector refuse *before* reading: from ``Content-Length`` (``admit``), and for bodies without
one (chunked) as the bytes arrive (``Ticket.grow``).

Three limits decide, all checked without reading a byte of the body:

- the hard budget: what is charged never exceeds ``max_bytes`` (a body that alone would exceed
  it is refused for good: 413);
- the wait: admitted work must drain within ``max_wait_s`` (1 s: the writer commits in groups, so a
  request may wait for the group before its own; 1 s of queue keeps that well under 5 s and the
  writer still never idles). The drain rate is measured (charged bytes released per second while
  anything is charged), so the budget in force is ``min(max_bytes, rate × max_wait_s)`` and never
  under ``max_bytes / 8`` (or nothing would be admitted while the rate is still unknown or low).
  When nothing is charged, any body that fits the hard budget is admitted, so the collector always
  makes progress;
- fairness: each client may hold at most an equal share of that budget, counting every client
  seen in the last ``window_s`` seconds (admitted or refused), except that a client holding
  nothing may always start one request that fits. So a client that hammers (many connections,
  retrying at once) cannot hold what a polite one needs. The client key is the peer address plus
  the ``User-Agent`` (``client_key``): behind a proxy every client has the proxy's address and
  only the User-Agent tells them apart; ``X-Forwarded-For`` is not trusted.

A refused request gets 503 with ``Retry-After`` (integer seconds, as the header allows): a random
1..N where N is the time the charged work plus the demand refused in the last second would take
to drain at the measured rate (capped at ``max_retry_after``), so clients that all retry on the
value they were given come back spread out rather than at once.

Everything here runs on the event loop's thread (no locks): admission, growth and release are
plain calls from request handlers.
"""

from __future__ import annotations

import math
import random
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable

__all__ = ["DECODED_FACTOR", "DEFAULT_MAX_PENDING_BYTES", "Admission", "Refused", "Ticket", "client_key"]

#: the default of ``wft serve --max-pending-bytes``
DEFAULT_MAX_PENDING_BYTES = 256 * 1024 * 1024

#: bytes held per body byte (after decompression), from reading to the writer's commit; see above
DECODED_FACTOR = 8
#: charged bytes per second assumed until a rate has been measured (about 9k real spans/s)
ASSUMED_RATE = 48 * 1024 * 1024
_RATE_SAMPLE_S = 0.5  # busy seconds per rate sample
_REFUSED_WINDOW_S = 1.0
_SLOWEST = 64 * 1024  # the lowest drain rate assumed (bytes/s), so waits stay finite


class Refused(Exception):
    """The request is not admitted. ``status``: 503 (try later, ``retry_after`` seconds) or 413
    (the body can never be admitted: over the largest body or the whole budget)."""

    def __init__(self, status: int, reason: str, *, retry_after: int | None = None, why: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.why = why  # a metric label: too_large, budget, wait, share


def client_key(peer: str | None, user_agent: str | None) -> str:
    """Who a request counts as for fairness: peer address and User-Agent (bounded, so a client
    cannot make its key large)."""
    return f"{peer or '?'} {(user_agent or '')[:120]}"


class Ticket:
    """What one request holds of the budget; ``release`` it when its batch is committed or refused."""

    __slots__ = ("key", "route", "charged", "admitted_at", "_admission", "_released")

    def __init__(self, admission: Admission, key: str, route: str, charged: int, admitted_at: float) -> None:
        self._admission = admission
        self.key = key
        self.route = route
        self.charged = charged
        self.admitted_at = admitted_at
        self._released = False

    def read(self, wire_bytes: int) -> None:
        """Count ``wire_bytes`` of body read off the connection (``Admission.bytes_read``)."""
        self._admission.bytes_read[self.route] += wire_bytes

    def grow(self, body_bytes: int) -> None:
        """The body has reached ``body_bytes`` (after decompression): charge for it, or ``Refused``
        (413 past the whole budget, 503 when the budget is taken by others now)."""
        if not self._released:
            self._admission._grow(self, DECODED_FACTOR * body_bytes)

    def release(self) -> None:
        """Give the charge back (idempotent)."""
        if not self._released:
            self._released = True
            self._admission._release(self)


class Admission:
    """The budget and what it decides (see the module's docstring). ``max_bytes``: the budget
    (``--max-pending-bytes``); ``max_body``: the largest body (``--max-body``); ``max_wait_s``: how
    long admitted work may take to drain; ``window_s``: how long a client counts as active after its
    last request; ``clock`` and ``rng`` are there for tests."""

    def __init__(
        self,
        max_bytes: int,
        *,
        max_body: int,
        max_wait_s: float = 1.0,
        window_s: float = 5.0,
        max_retry_after: int = 30,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("the pending budget must be positive")
        self.max_bytes = max_bytes
        self.max_body = max_body
        self.max_wait_s = max_wait_s
        self.window_s = window_s
        self.max_retry_after = max_retry_after
        self._clock = clock
        self._rng = rng or random.Random()
        self.charged = 0
        self._held: Counter[str] = Counter()
        self._seen: OrderedDict[str, float] = OrderedDict()  # key → last request, oldest first
        self._refused: deque[tuple[float, int]] = deque()  # (when, charge asked) in the last second
        self.refusals: Counter[str] = Counter()  # by ``Refused.why``
        self.admitted = 0
        self.bytes_read: Counter[str] = Counter()  # body bytes read off connections, by route
        # drain rate: charged bytes released per second while something was charged
        self._rate: float | None = None
        self._busy_s = 0.0
        self._released_bytes = 0
        self._last = clock()

    # ---- the decisions -------------------------------------------------------------------------

    def admit(self, key: str, declared: int | None, *, route: str = "otlp") -> Ticket:
        """A ticket for a request of ``key`` whose body is ``declared`` bytes (its Content-Length;
        None when chunked: charged as it arrives), or ``Refused``. ``route``: what its reads count as."""
        now = self._tick()
        self._touch(key, now)
        if declared is not None and declared > self.max_body:
            raise self._refuse("too_large", 413, f"request body over {self.max_body} bytes", 0, now)
        charge = DECODED_FACTOR * (declared or 0)
        if charge > self.max_bytes:
            raise self._too_large_for_budget(charge, now)
        if self.charged > 0:  # with nothing charged anything that fits is admitted: progress
            self._check(key, charge, self._held[key], now)
        self.admitted += 1
        self._take(key, charge)
        return Ticket(self, key, route, charge, now)

    def _grow(self, ticket: Ticket, charge: int) -> None:
        extra = charge - ticket.charged
        if extra <= 0:
            return
        now = self._tick()
        if charge > self.max_bytes:
            raise self._too_large_for_budget(charge, now)
        if self.charged + extra > self.max_bytes:
            raise self._refuse("budget", 503, "the collector's pending-bytes budget is taken", extra, now)
        others = self._held[ticket.key] - ticket.charged
        if others > 0 and self._held[ticket.key] + extra > self.share(now):
            raise self._refuse("share", 503, "this client holds its share of the pending budget", extra, now)
        ticket.charged = charge
        self._take(ticket.key, extra)

    def _check(self, key: str, charge: int, held: int, now: float) -> None:
        if self.charged + charge > self.max_bytes:
            raise self._refuse("budget", 503, "the collector's pending-bytes budget is taken", charge, now)
        if self.charged + charge > self.in_force():
            raise self._refuse(
                "wait", 503, "the write queue is as long as the collector lets requests wait", charge, now
            )
        if held > 0 and held + charge > self.share(now):
            raise self._refuse("share", 503, "this client holds its share of the pending budget", charge, now)

    def _too_large_for_budget(self, charge: int, now: float) -> Refused:
        largest = self.max_bytes // DECODED_FACTOR
        text = f"request body over {largest} bytes, the most the collector's --max-pending-bytes can hold"
        return self._refuse("too_large", 413, text, 0, now)

    def _refuse(self, why: str, status: int, reason: str, charge: int, now: float) -> Refused:
        self.refusals[why] += 1
        if status != 503:
            return Refused(status, reason, why=why)
        self._refused.append((now, charge))
        return Refused(status, reason, retry_after=self.retry_after(now), why=why)

    # ---- what the decisions read ---------------------------------------------------------------

    @property
    def rate(self) -> float:
        """Charged bytes drained per second (measured; ``ASSUMED_RATE`` until then)."""
        return self._rate if self._rate is not None else ASSUMED_RATE

    def in_force(self) -> int:
        """The budget admission uses now: what drains within ``max_wait_s``, within the hard budget."""
        by_wait = int(self.rate * self.max_wait_s)
        return min(self.max_bytes, max(by_wait, self.max_bytes // 8))

    def share(self, now: float | None = None) -> int:
        """What one client may hold: the budget in force over the clients active now."""
        self._prune(self._clock() if now is None else now)
        return self.in_force() // max(1, len(self._seen))

    def retry_after(self, now: float | None = None) -> int:
        """Seconds a refused client should wait: random in 1..N, N the time to drain what is charged
        and what was refused in the last second (the demand that will come back)."""
        now = self._clock() if now is None else now
        while self._refused and self._refused[0][0] < now - _REFUSED_WINDOW_S:
            self._refused.popleft()
        backlog = self.charged + sum(charge for _, charge in self._refused)
        spread = max(1, min(self.max_retry_after, math.ceil(backlog / self.rate)))
        return self._rng.randint(1, spread)

    def clients(self) -> int:
        """Clients seen in the last ``window_s`` seconds or holding a charge."""
        self._prune(self._clock())
        return len(self._seen)

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _take(self, key: str, charge: int) -> None:
        self.charged += charge
        self._held[key] += charge

    def _release(self, ticket: Ticket) -> None:
        self._tick(released=ticket.charged)
        self.charged -= ticket.charged
        left = self._held[ticket.key] - ticket.charged
        if left > 0:
            self._held[ticket.key] = left
        else:
            del self._held[ticket.key]

    def _tick(self, released: int = 0) -> float:
        """Advance the busy clock (time with something charged), count ``released`` bytes as
        drained in it, and sample the drain rate every ``_RATE_SAMPLE_S`` busy seconds."""
        now = self._clock()
        if self.charged > 0:
            self._busy_s += max(0.0, now - self._last)
        self._last = now
        self._released_bytes += released
        if self._busy_s >= _RATE_SAMPLE_S:  # nothing released in a busy sample: the rate falls (a stalled store)
            sample = max(_SLOWEST, self._released_bytes / self._busy_s)
            self._rate = sample if self._rate is None else 0.5 * self._rate + 0.5 * sample
            self._busy_s = 0.0
            self._released_bytes = 0
        return now

    def _touch(self, key: str, now: float) -> None:
        self._seen[key] = now
        self._seen.move_to_end(key)
        self._prune(now)

    def _prune(self, now: float) -> None:
        """Forget clients not seen for ``window_s``, except those still holding a charge (they stay,
        as if seen now). Amortized O(1): the clients seen so far are never all walked."""
        while self._seen:
            key, when = next(iter(self._seen.items()))
            if when >= now - self.window_s:
                break
            if self._held.get(key, 0) > 0:
                self._seen[key] = now
                self._seen.move_to_end(key)
            else:
                del self._seen[key]
