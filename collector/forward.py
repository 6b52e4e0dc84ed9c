"""Forwarding upstream through an on-disk spool (``--forward-otlp``, and the Sentry relay).

Each batch is written to the spool directory first (one file per batch: a JSON line with its
URL and headers, then the body as it will be sent), then a background task sends the files in
order, deleting each once upstream acknowledged it. A batch enqueued with the forwarder's own
headers (``--forward-headers``: an API key, say) spools only its content type, marked
``"defaults": true``: the others are added as it is sent, so a key rotated across a restart
applies to what was spooled before, and no key sits in the spool (a file written before that
mark existed, with a content type alone, is read the same way; an earlier version reading a
new file sends it with its content type).
An upstream that refuses the forwarder's credentials (401, 403) refuses every batch alike:
with ``hold_on_auth_failure`` they are held and retried (up to the spool's bound, with one
error a minute saying so) rather than dropped one by one until someone fixes the key. While
upstream is down, it retries with exponential backoff (capped) and the spool grows up to its
byte bound; past the bound the oldest batches are dropped, counted and logged, never silently.
A spool file that cannot be read back (cut short by a crash, say) is dropped the same way; it
never stops the batches behind it. The spool is private (0700, files 0600: they hold upstream
URLs and the Sentry clients' auth headers), and URLs reach the log only redacted.

The spool's files and their sizes are listed once, when the forwarder starts, then kept in
memory: a deep spool (a long outage) costs the same per batch as an empty one. With
``--forward-sample``, ``collector/sampling.py`` sits in front and spools only what it keeps.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Final

import aiohttp

from .metrics import Metrics
from .private import private_dir, redact, write_private

__all__ = ["Forwarder"]

log = logging.getLogger("collector.forward")

CONTENT_TYPE: Final = "Content-Type"


class Forwarder:
    def __init__(
        self,
        url: str | None,
        spool_dir: str | Path,
        metrics: Metrics,
        *,
        max_spool_bytes: int = 256 * 1024 * 1024,
        headers: dict[str, str] | None = None,
        max_backoff: float = 30.0,
        hold_on_auth_failure: bool = False,
    ) -> None:
        """``url``/``headers``: the defaults for batches enqueued without their own (their headers
        are looked up as each is sent); ``hold_on_auth_failure``: 401/403 is retried, not dropped
        (the batches share the forwarder's credentials; not for the relay's, which are the clients')."""
        self.url = url
        self.spool = private_dir(spool_dir)
        self.metrics = metrics
        self.max_spool_bytes = max_spool_bytes
        self.headers = headers or {}
        self.max_backoff = max_backoff
        self.hold_on_auth_failure = hold_on_auth_failure
        self.failing: str | None = None  # why upstream did not take the oldest batch, until it does (``/healthz``)
        self._auth_logged = 0.0  # when a refusal of our credentials was last logged
        self._seq = itertools.count()
        self._wake = asyncio.Event()
        #: the spooled batches, oldest first, with their sizes (from the folder once, then kept here)
        self._files: deque[tuple[Path, int]] = deque((p, _size(p)) for p in sorted(self.spool.glob("*.pb")))
        self._bytes = sum(size for _, size in self._files)
        self._trim()

    def spool_bytes(self) -> int:
        return self._bytes

    async def enqueue(
        self,
        payload: bytes,
        *,
        url: str | None = None,
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> None:
        """Spool one batch; ``url``/``headers`` override the defaults for this batch only;
        ``content_type``: the body's, in place of the default headers' (which still apply)."""
        name = f"{time.time_ns():020d}-{next(self._seq):08d}.pb"
        temp = self.spool / (name + ".tmp")
        target = url or self.url
        if target is None:
            raise ValueError("no URL for this batch and no default URL")
        if headers is None:  # the defaults, added as it is sent; only the body's type is the batch's
            kind = content_type or _content_type(self.headers)
            stored = {CONTENT_TYPE: kind} if kind else {}
            entry: dict[str, object] = {"url": target, "headers": stored, "defaults": True}
        else:
            entry = {"url": target, "headers": headers}
        meta = json.dumps(entry).encode()
        data = meta + b"\n" + payload
        write_private(temp, data)
        os.replace(temp, self.spool / name)
        self._files.append((self.spool / name, len(data)))
        self._bytes += len(data)
        self._trim()
        self._wake.set()

    def _trim(self) -> None:
        while self._files and self._bytes > self.max_spool_bytes:
            oldest = self._pop()
            oldest.unlink(missing_ok=True)
            self.metrics.forward_dropped_batches += 1
            log.warning("forward spool over %d bytes: dropped the oldest batch %s", self.max_spool_bytes, oldest.name)

    def _pop(self) -> Path:
        path, size = self._files.popleft()
        self._bytes -= size
        return path

    async def run(self, stop: asyncio.Event) -> None:
        backoff = 0.5
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            while not stop.is_set():
                if not self._files:
                    self._wake.clear()
                    await _wait_any(stop, self._wake, None)
                    continue
                first = self._files[0][0]
                batch = _read_batch(first)
                if batch is None:
                    self._pop()
                    if not first.exists():  # removed behind our back: nothing to count
                        continue
                    log.error("forward spool file %s cannot be read back; dropping it", first.name)
                    self.metrics.forward_dropped_batches += 1
                    first.unlink(missing_ok=True)
                    continue
                url, stored, defaults, body = batch
                headers = stored
                if defaults:  # the forwarder's: its upstream as now given (credentials in it as rotated)
                    url = self.url or url
                    headers = {k: v for k, v in self.headers.items() if k.lower() != "content-type"}
                    kind = _content_type(stored) or _content_type(self.headers)
                    if kind:
                        headers[CONTENT_TYPE] = kind
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = 200 <= response.status < 300
                        retryable = response.status in (408, 429, 502, 503, 504) or response.status >= 500
                        reason = f"HTTP {response.status}"
                        if response.status in (401, 403) and defaults and self.hold_on_auth_failure:
                            retryable = True
                            self._log_auth_refusal(url, response.status)
                except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as error:
                    ok, retryable = False, True
                    reason = (str(error) or type(error).__name__).replace(url, redact(url))
                if ok or not retryable:
                    self.failing = None
                    if not ok:
                        log.error("upstream %s refused a batch (%s); dropping it", redact(url), reason)
                        self.metrics.forward_dropped_batches += 1
                    else:
                        self.metrics.forwarded_batches += 1
                    if self._files and self._files[0][0] == first:  # not trimmed while it was being sent
                        self._pop()
                    first.unlink(missing_ok=True)
                    backoff = 0.5
                    continue
                self.failing = f"upstream {redact(url)}: {reason}; {len(self._files)} batches spooled"
                log.warning(
                    "upstream %s unavailable (%s); %d batches spooled, retrying in %.1fs",
                    redact(url),
                    reason,
                    len(self._files),
                    backoff,
                )
                await _wait_any(stop, None, backoff)
                backoff = min(backoff * 2, self.max_backoff)

    def _log_auth_refusal(self, url: str, status: int) -> None:
        now = time.monotonic()
        if now - self._auth_logged < 60:
            return
        self._auth_logged = now
        log.error(
            "upstream %s refuses the forwarder's credentials (HTTP %d): check --forward-headers;"
            " %d batches held in the spool meanwhile, the oldest dropped past --spool-max",
            redact(url),
            status,
            len(self._files),
        )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # sent or trimmed meanwhile
        return 0


def _content_type(headers: dict[str, str]) -> str:
    return next((v for k, v in headers.items() if k.lower() == "content-type"), "")


def _read_batch(path: Path) -> tuple[str, dict[str, str], bool, bytes] | None:
    """(url, headers, whether they are the forwarder's defaults, body) of a spool file; None when
    it is not one (empty, cut short, garbled). Defaults: marked so, or a content type alone (a file
    of a version before the mark, whose defaults were that)."""
    try:
        meta, newline, body = path.read_bytes().partition(b"\n")
        target = json.loads(meta)
    except (OSError, ValueError):
        return None
    if not newline or not isinstance(target, dict):
        return None
    url, headers = target.get("url"), target.get("headers")
    if not isinstance(url, str) or not isinstance(headers, dict):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        return None
    defaults = target.get("defaults") is True or {k.lower() for k in headers} == {"content-type"}
    return url, headers, defaults, body


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event | None, timeout: float | None) -> None:
    waiters = [asyncio.ensure_future(stop.wait())]
    if wake is not None:
        waiters.append(asyncio.ensure_future(wake.wait()))
    done, pending = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
