"""Writing a run's stream the SDK can read, without leaking post-completion conflicts.

**The format.** An SDK app reads a run's stream (``run.getReadable()`` in TypeScript,
``read_stream`` in vercel-workflow) by deserializing every chunk, so raw bytes written by a
sidecar are unreadable to it. ``StreamWriter.write(value)`` therefore writes each value as the
SDK's own ``getWritable()`` writes it: serialized (devalue, ``b"devl"``), encrypted when the
world holds the run's key (``b"encr"``, world-vercel with a deployment key), framed (u32
length) — :func:`telemetry.stream_format.encode_chunk` — and the world stores that frame and the
close its own way (a ``\\x00`` file and a ``\\x01`` file, a row and an ``eof`` row, a PUT and an
``X-Stream-Done`` PUT). Byte streams read with the world's raw reader are written with
``raw=True``, chunk for chunk.

The two SDKs write ``Date``, ``Uint8Array``, ``BigInt``, ``Set``, ``Map`` and ``RegExp`` in
different devalue forms, and neither reads all of the other's: vercel-workflow fails on the
TypeScript SDK's ``["Date", <ref>]`` and ``["Uint8Array", <ref>]``, the TypeScript SDK on
vercel-workflow's inline ``["Set", a, b]``. So a world says whose app reads it
(``world.streams.sdk``: world-local's directories written by vercel-workflow say ``"python"``);
everything else gets the TypeScript SDK's bytes, byte for byte, and ``sdk=`` overrides.

**Conflicts.** A stream write can lose the race with the run's end (seed issue #1949: a step's
write lands after the workflow returned). world-vercel answers such a write with 409 "Run … is
already completed"; the SDK let that escape as an unhandled rejection. world-local and
world-postgres are worse in a quieter way: they **store the chunk after the run ended, or after
the stream's EOF, where no reader will ever see it — the data is lost silently**.

``StreamWriter`` treats both the same: the write is dropped, recorded through
``record_benign`` (DEBUG log line, counter, span attribute ``workflow.conflict="benign"``)
and never raised. On worlds that accept such writes it checks the run's status first, so
the loss becomes visible instead of silent. Any other failure is raised through
``throw_with_trace``; a value the SDK could not serialize either raises
:class:`~telemetry.stream_format.StreamFormatError` before anything is written.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Literal

from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN, Span

from ._otel import tracer_for
from .errors import EntityConflictError
from .stream_format import DEVALUE_PREFIX, devalue_stringify, encode_chunk, frame
from .tracing import is_benign_conflict, record_benign, throw_with_trace
from .world import TERMINAL_STATUSES, World

__all__ = ["SDK", "StreamWriter", "python_devalue", "stream_name"]

#: Whose serialization a stream's chunks take: the TypeScript SDK's (``workflow`` on npm) or
#: vercel-workflow's (the Python SDK).
SDK = Literal["typescript", "python"]

_OPERATIONS = {
    "write": "streams.writeToStream",
    "write_multi": "streams.writeToStreamMulti",
    "close": "streams.closeStream",
}


def stream_name(run_id: str, namespace: str | None = None) -> str:
    """The SDK's stream id for a run: ``strm_<ULID>_user[_<base64url(namespace)>]``."""
    name = f"strm_{run_id.removeprefix('wrun_')}_user"
    if namespace:
        name += "_" + base64.urlsafe_b64encode(namespace.encode()).rstrip(b"=").decode()
    return name


def python_devalue(value: Any) -> str:
    """``devalue.stringify`` text that vercel-workflow's reader revives to ``value``.

    The TypeScript SDK's text (:func:`~telemetry.stream_format.devalue_stringify`) with the
    entries vercel-workflow cannot read rewritten to devalue's built-in forms, the ones
    vercel-workflow itself writes: ``["Date", "<iso>"]``, ``["BigInt", "<digits>"]``, bytes as
    ``["Uint8Array", <ref>]`` over ``["ArrayBuffer", "<base64>"]``, ``["Set", <m>…]``,
    ``["Map", <k>, <v>…]``, ``["RegExp", "<source>", "<flags>"]``. The TypeScript SDK reads
    the first three of those too. Entries left unreferenced by a rewrite stay in the table:
    devalue revives from the root, so they cost bytes, never meaning.
    """
    text = devalue_stringify(value)
    table = json.loads(text)
    if not isinstance(table, list):  # a bare sentinel: undefined, NaN, ±Infinity, -0
        return text
    for index, entry in enumerate(list(table)):
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            continue  # plain arrays hold only indexes; a string head marks a reduced value
        tag, ref = entry
        if tag in ("Date", "BigInt"):
            table[index] = [tag, table[ref]]
        elif tag == "Uint8Array":
            encoded = table[ref]
            table.append(["ArrayBuffer", "" if encoded == "." else encoded])
            table[index] = [tag, len(table) - 1]
        elif tag == "Set":
            table[index] = [tag, *table[ref]]
        elif tag == "Map":
            table[index] = [tag, *(item for pair in table[ref] for item in table[pair])]
        elif tag == "RegExp":
            fields = table[ref]
            table[index] = [tag, table[fields["source"]], table[fields["flags"]]]
    return json.dumps(table, ensure_ascii=False, separators=(",", ":"))


def _python_payload(value: Any) -> bytes:
    text = python_devalue(value)
    try:
        return DEVALUE_PREFIX + text.encode()
    except UnicodeEncodeError:  # a lone surrogate: as a JSON escape, which both readers accept
        return DEVALUE_PREFIX + json.dumps(json.loads(text), separators=(",", ":")).encode()


class StreamWriter:
    """Writes values to one stream of one run, and closes it, as the SDK's ``getWritable()`` does.

    ``raw=True`` writes ``bytes``/``str`` chunks unchanged instead (a byte stream for the world's
    raw reader; an SDK ``getReadable()`` cannot read it). ``sdk`` picks the serialization when
    the world's own hint (``world.streams.sdk``) is wrong or missing. ``written`` counts
    chunks stored, ``dropped`` the benign post-completion losses."""

    def __init__(
        self,
        world: World,
        run_id: str,
        *,
        namespace: str | None = None,
        name: str | None = None,
        raw: bool = False,
        sdk: SDK | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.world = world
        self.run_id = run_id
        self.name = name or stream_name(run_id, namespace)
        self.raw = raw
        self.sdk: SDK = sdk or ("python" if getattr(world.streams, "sdk", None) == "python" else "typescript")
        self.written = 0
        self.dropped = 0
        self._provider = tracer_provider
        self._logger = logger
        self._check_run = bool(getattr(world, "accepts_post_completion_writes", False))
        self._terminal: str | None = None
        self._key_looked_up = False
        self._encryptor: Callable[[bytes], bytes] | None = None

    def encode(self, value: Any) -> bytes:
        """The chunk ``value`` becomes on this stream (what :meth:`write` hands the world)."""
        if self.raw:
            if isinstance(value, str):
                return value.encode()
            if isinstance(value, (bytes, bytearray, memoryview)):
                return bytes(value)
            raise TypeError(f"a raw stream takes bytes or str chunks, not {type(value).__name__}")
        encrypt = self._encrypt()
        if self.sdk == "typescript":
            return encode_chunk(value, encrypt=encrypt)
        body = _python_payload(value)
        return frame(encrypt(body) if encrypt is not None else body)

    def _encrypt(self) -> Callable[[bytes], bytes] | None:
        """The run key's ``encrypt`` when the world has one for this run (world-vercel with the
        deployment key): the SDK encrypts every chunk of an encrypted deployment's streams."""
        if not self._key_looked_up:
            run_key = getattr(self.world, "run_key", None)
            key = run_key(self.run_id) if callable(run_key) else None
            encrypt = getattr(key, "encrypt", None)
            self._encryptor = encrypt if callable(encrypt) else None
            self._key_looked_up = True
        return self._encryptor

    async def write(self, value: Any) -> bool:
        """Append one value (one chunk). False when it was dropped as a benign post-completion write."""
        chunk = self.encode(value)
        return await self._mutate("write", 1, lambda: self.world.streams.write(self.name, self.run_id, chunk))

    async def write_many(self, values: Iterable[Any]) -> bool:
        """Append values as one batch (one chunk each); all are encoded before any is written."""
        batch = [self.encode(value) for value in values]
        return await self._mutate(
            "write_multi", len(batch), lambda: self.world.streams.write_multi(self.name, self.run_id, batch)
        )

    async def close(self) -> bool:
        """End the stream the world's way, so SDK readers see it end."""
        return await self._mutate("close", 0, lambda: self.world.streams.close(self.name, self.run_id))

    async def __aenter__(self) -> StreamWriter:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _mutate(self, operation: str, count: int, call: Callable[[], Awaitable[None]]) -> bool:
        """``call`` (the world's write/close) under a ``workflow.stream.<operation>`` span; ``count`` chunks."""
        tracer = tracer_for(self._provider)
        if tracer is None:
            return await self._attempt(operation, count, call, INVALID_SPAN)
        attributes = {
            "workflow.run.id": self.run_id,
            "workflow.stream.name": self.name,
            "workflow.stream.operation": operation,
        }
        with tracer.start_as_current_span(
            f"workflow.stream.{operation}",
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            return await self._attempt(operation, count, call, span)

    async def _attempt(self, operation: str, count: int, call: Callable[[], Awaitable[None]], span: Span) -> bool:
        try:
            if self._check_run:
                await self._refuse_if_terminal()
            await call()
        except Exception as error:
            if is_benign_conflict(error, operation=_OPERATIONS[operation]):
                record_benign(span, error, logger=self._logger)
                self.dropped += count
                return False
            throw_with_trace(span, error)
        self.written += count
        return True

    async def _refuse_if_terminal(self) -> None:
        """Raise the conflict world-vercel would, for worlds that would store the write silently."""
        if self._terminal is None:
            run = await self.world.runs.get(self.run_id, resolve_data="none")
            if run.status in TERMINAL_STATUSES:
                self._terminal = run.status
        if self._terminal is not None:
            raise EntityConflictError(f'Run "{self.run_id}" is already {self._terminal}', run_id=self.run_id)
