"""``wft follow``: tail a world and export spans as steps finish, as a daemon or once (cron).

As a daemon it never dies of what it talks to: with the collector down, unreachable or answering
5xx (or the world unreachable) a pass fails as a whole, the checkpoint stays where the last
acknowledged delivery left it, and the pass is retried with capped exponential backoff and
jitter. It logs one line when that state changes (down, back up), not one per retry: the OTLP
exporter's own per-retry warnings are kept for the reason shown in that line. SIGTERM and
SIGINT stop it within a second or two, even in the middle of a send. ``--once`` does one pass
and exits 0, or 1 with a one-line reason.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import re
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from ..backends import backend_config, poll_interval
from ..errors import WorkflowWorldError
from ..export import ExportError, open_sink, run_resource
from ..follow import Checkpoint, Delivery, Follower, ParallelCatchUp
from .common import (
    CliError,
    Handler,
    add_otlp_protocol_option,
    add_world_options,
    otlp_endpoint,
    otlp_protocol_of,
    world_from,
)

log = logging.getLogger("telemetry.follow")

DEFAULT_CHECKPOINT = "wft-follow.checkpoint.sqlite3"
LEGACY_CHECKPOINT = "wft-follow.checkpoint.json"  # the previous default (JSON), migrated on first use
_EXPORTER_LOGGER = "opentelemetry.exporter.otlp.proto.http"
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\")]+)")
_TRANSIENT = re.compile(r"Transient error (.+?) encountered while exporting")
_FAILED = re.compile(r"Failed to export \w+ batch code: (\S+), reason: (.+)")


def configure(parser: argparse.ArgumentParser) -> Handler:
    add_world_options(parser)
    parser.add_argument(
        "--otlp", metavar="URL", help="OTLP base URL; /v1/traces is appended over OTLP/HTTP (see --otlp-protocol)"
    )
    add_otlp_protocol_option(parser)
    parser.add_argument(
        "--checkpoint",
        metavar="PATH",
        default=None,
        help=f"where progress is kept across restarts (default: {DEFAULT_CHECKPOINT}; a JSON checkpoint of an"
        " earlier version is migrated)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        help="seconds between polls (default 0.25; 2 on world-vercel, where each poll is calls to Vercel's API)",
    )
    parser.add_argument(
        "--timeout", type=float, default=10.0, help="seconds per OTLP request, retries included (default %(default)s)"
    )
    parser.add_argument(
        "--max-backoff",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="longest wait between retries while the collector or world is down (default %(default)s)",
    )
    parser.add_argument("--once", action="store_true", help="do one pass and exit (for cron)")
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        metavar="N",
        help="world-local/world-postgres: worker processes for a first pass over a big history, as `wft export"
        " --jobs`; 1 reads it in this process (default: the CPUs available)",
    )
    parser.add_argument(
        "--no-payloads", action="store_true", help="leave decoded inputs/outputs out of span attributes"
    )

    def handle(args: argparse.Namespace) -> int:
        otlp_endpoint(args.otlp)  # a typo in --otlp or the OTel variables fails now, not in every pass
        otlp_protocol_of(args)
        if args.jobs is not None and args.jobs < 1:
            raise CliError(f"--jobs: expected 1 or more, got {args.jobs}")
        if (args.interval is not None and args.interval <= 0) or args.max_backoff <= 0 or args.timeout <= 0:
            raise CliError("--interval, --max-backoff and --timeout must be positive")
        from ..backends.postgres import PostgresWorld  # here: psycopg loads only for this command

        # a daemon waits for a world that is not there yet (or down); --once says now what is wrong
        world = world_from(args, allow_missing=True, probe=args.once)
        if args.interval is None:
            config = backend_config(args.world, data_dir=args.dir, url=args.url)
            args.interval = poll_interval(config.kind if config is not None else "local")
        if isinstance(world, PostgresWorld):
            world.retries = 0  # whole passes are retried (the daemon with backoff, cron next time): no log per retry
        try:
            if args.checkpoint is None:
                checkpoint = Checkpoint(DEFAULT_CHECKPOINT, legacy=LEGACY_CHECKPOINT)
            else:
                checkpoint = Checkpoint(args.checkpoint)
        except ValueError as error:  # something else is there: the message says what and what to do
            raise CliError(str(error)) from None
        except (OSError, sqlite3.Error) as error:  # a path that cannot be written: choose another
            where = args.checkpoint or DEFAULT_CHECKPOINT
            why = getattr(error, "strerror", None) or str(error)
            raise CliError(f"--checkpoint {where}: cannot open it ({why})") from None
        daemon = _Daemon(args, world, checkpoint)
        return daemon.main()

    return handle


class _ExporterReason(logging.Handler):
    """Keeps the exporter's most telling complaint (the transport error or HTTP status), and keeps
    the exporter's per-retry lines out of our log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reason: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        errno = _ERRNO.search(message)
        transient = _TRANSIENT.search(message)
        failed = _FAILED.search(message)
        if errno:
            self.reason = errno.group(1).strip()
        elif transient:
            self.reason = transient.group(1).strip()
        elif failed:
            code, why = failed.groups()
            found = _ERRNO.search(why)
            self.reason = found.group(1).strip() if found else (f"HTTP {code}" if code != "None" else why.strip())


async def _in_daemon_thread(fn: Callable[[], None]) -> None:
    """Run a blocking call in a daemon thread: a stop does not wait for a request in flight."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    def work() -> None:
        outcome: BaseException | None = None
        try:
            fn()
        except BaseException as error:  # handed to the awaiting task
            outcome = error
        try:
            loop.call_soon_threadsafe(settle, outcome)
        except RuntimeError:  # the loop is gone: we are stopping
            pass

    threading.Thread(target=work, name="wft-follow-send", daemon=True).start()
    await future


class _Daemon:
    def __init__(self, args: argparse.Namespace, world: Any, checkpoint: Checkpoint) -> None:
        self.args = args
        self.world = world
        self.checkpoint = checkpoint
        self.sink = open_sink(args.otlp, protocol=otlp_protocol_of(args), timeout=args.timeout)
        self.reason = _ExporterReason()
        self.resource = run_resource(args.world or "local")
        self.follower = Follower(
            world,
            None,
            checkpoint,
            resource=self.resource,
            include_payloads=not args.no_payloads,
            interval=args.interval,
            progress=self._progress,
            span_data=True,  # encoded straight to OTLP (otlp_encode), no SDK span objects
            deliver_many=self._deliver,  # many runs per request and per checkpoint commit
            batch_spans=self.sink.batch_size,
            catch_up=self._catch_up(args, world),
        )
        self.state = "ok"
        self.tty = sys.stderr.isatty()
        self._pass_started = 0.0
        self._pass_events = 0
        self._last_draw = 0.0
        self._drawn = False

    async def _deliver(self, batch: list[Delivery]) -> None:
        spans = [span for delivery in batch for span in delivery.spans]
        if spans:
            self.reason.reason = None
            await _in_daemon_thread(lambda: self.sink.send_data(spans, self.resource))

    async def _post(self, body: bytes, spans: int) -> None:
        self.reason.reason = None
        await _in_daemon_thread(lambda: self.sink.post(body, spans, gzipped=self.sink.gzip_bodies))

    def _catch_up(self, args: argparse.Namespace, world: Any) -> ParallelCatchUp | None:
        """A first pass over a big history on every core, as `wft export` reads one."""
        from .export_parallel import PARALLEL_KINDS, default_jobs

        jobs = default_jobs() if args.jobs is None else args.jobs
        config = backend_config(args.world, data_dir=args.dir, url=args.url)
        if jobs <= 1 or config is None or config.kind not in PARALLEL_KINDS:
            return None
        settings = {name: getattr(world, name) for name in ("grace", "retries") if hasattr(world, name)}
        return ParallelCatchUp(config, self._post, jobs=jobs, settings=settings, gzip_bodies=self.sink.gzip_bodies)

    # -- progress of the first pass ------------------------------------------------------------
    def _progress(self, done: int, total: int, events: int) -> None:
        if self.follower.passes or not self.tty:
            return
        now = time.monotonic()
        if now - self._last_draw < 0.2 and done < total:
            return
        self._last_draw = now
        elapsed = max(now - self._pass_started, 1e-6)
        rate = (events - self._pass_events) / elapsed
        eta = (total - done) * elapsed / done if done else 0.0
        sys.stderr.write(f"\rfollow: {done}/{total} runs, {rate:,.0f} events/s, ETA {eta:,.0f} s   ")
        sys.stderr.flush()
        self._drawn = True

    def _summary(self, sent: int) -> None:
        if self._drawn:
            sys.stderr.write("\n")
            self._drawn = False
        elapsed = max(time.monotonic() - self._pass_started, 1e-6)
        events = self.follower.events_read - self._pass_events
        log.info(
            "follow: first pass done: %d events read, %d spans sent in %.1f s (%s events/s)%s",
            events,
            sent,
            elapsed,
            f"{events / elapsed:,.0f}",
            f"; {len(self.follower.problems)} runs with unreadable events" if self.follower.problems else "",
        )

    # -- states --------------------------------------------------------------------------------
    def _describe(self, error: BaseException) -> tuple[str, str]:
        """(state, one line) of a failed pass."""
        if isinstance(error, ExportError):
            why = self.reason.reason or f"not acknowledged within {self.args.timeout:g} s"
            return "collector", f"collector at {self.sink.endpoint} unavailable ({why})"
        if isinstance(error, WorkflowWorldError):
            return "world", f"world unavailable ({error})"
        return "error", f"pass failed ({type(error).__name__}: {error})"

    def _set_state(self, state: str, line: str) -> None:
        if state == self.state:
            return
        if state == "ok":
            log.info("follow: %s; resumed", line)
        else:
            log.warning(
                "follow: %s; retrying with backoff (at most %.0f s apart), checkpoint kept",
                line,
                self.args.max_backoff,
            )
        self.state = state

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter: 0.5 s, 1 s, 2 s… up to ``--max-backoff``."""
        ceiling = min(self.args.max_backoff, 0.5 * 2 ** min(failures, 30))
        return float(random.uniform(ceiling / 2, ceiling))

    async def _passes(self, stop: asyncio.Event) -> int:
        failures = 0
        recovered = ""
        while not stop.is_set():
            first = self.follower.passes == 0
            self._pass_started = time.monotonic()
            self._pass_events = self.follower.events_read
            try:
                sent = await self.follower.poll()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                state, line = self._describe(error)
                log.debug("follow: pass failed", exc_info=True)
                if self.args.once:
                    print(f"wft follow: {line}", file=sys.stderr)
                    return 1
                self._set_state(state, line)
                recovered = line.split(" (", 1)[0].replace("unavailable", "reachable again")
                delay = self._backoff(failures)
                failures += 1
            else:
                failures = 0
                self._set_state("ok", recovered)
                if first:
                    self._summary(sent)
                if self.args.once:
                    return 1 if self.follower.problems else 0
                delay = self.args.interval
            # the next pass: after the delay, or as soon as the world says it is being written (world-postgres)
            await self.follower.pause(delay, stop.is_set, wake=self.state == "ok")
        return 0

    async def _main(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        work = asyncio.create_task(self._passes(stop))
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():  # a signal: cancel the pass in flight (its run is not checkpointed)
                work.cancel()
                await asyncio.wait({work}, timeout=1.0)
                log.info("follow: stopped")
            return work.result() if work.done() and not work.cancelled() else 0
        finally:
            stopped.cancel()
            try:
                await asyncio.wait_for(self.world.close(), timeout=0.5)
            except Exception:  # closing is best effort on the way out
                pass

    def main(self) -> int:
        exporter_log = logging.getLogger(_EXPORTER_LOGGER)
        exporter_log.addHandler(self.reason)
        exporter_log.propagate = False
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(self._main())
        finally:
            # no waiting for a send in flight (daemon thread) or the default executor: exit now
            threading.Thread(target=self.sink.close, daemon=True).start()
            self.checkpoint.close()
            loop.close()
            exporter_log.removeHandler(self.reason)
            exporter_log.propagate = True
