"""Compressed bytes decoded as they come, never to more than a limit.

Two kinds of compressed input reach us from outside: payloads inside world records (``zstd`` or
``gzip`` values the SDKs write, ``telemetry.payloads``) and request bodies in a ``Content-Encoding``
(``collector.content_coding``). Either may be a bomb: a few bytes that stand for gigabytes. So
every format is decoded in steps whose output is bounded, and refused (``TooLarge``) as soon as it
passes the limit, having cost at most the limit and one step's output:

- gzip and deflate by ``zlib``, whose output is capped per call (``STEP_OUTPUT``, the rest taken in
  further calls). A gzip input may hold several members, NUL padding between them (what ``cat a.gz
  b.gz`` makes, and what ``gzip.decompress`` reads whole).
- ``br`` by Google's ``brotli`` (≥ 1.2: ``process`` takes an output limit, ``STEP_OUTPUT``, and is
  called again for the rest).
- ``zstd`` by ``zstandard``, whose streaming decompressor has no output limit: input is given to it
  in slices of ``ZSTD_SLICE`` bytes (a zstd block of 128 KiB takes at least 4 bytes, so a slice
  yields at most ``(ZSTD_SLICE / 4 + 1) × 128 KiB``), and the window a frame may ask for is held to
  ``max_window``, so no frame makes us allocate more. Several frames in a row are read whole, as
  the ``zstd`` tool writes them, unless ``one_frame``.

Input that does not decode (corrupt, cut short, data after the end) raises ``BadData`` saying why.
"""

from __future__ import annotations

import zlib
from typing import Final, Protocol

import brotli
import zstandard

__all__ = [
    "FORMATS",
    "STEP_OUTPUT",
    "ZSTD_SLICE",
    "BadData",
    "Decompressor",
    "TooLarge",
    "decompressor",
]

#: what ``decompressor`` decodes ("identity": bytes as they are, held to the limit all the same)
FORMATS: Final = ("identity", "gzip", "deflate", "br", "zstd")
#: zstd input is decompressed this many bytes at a time, bounding each step's output (see above)
ZSTD_SLICE: Final = 256
#: the most one step of gzip, deflate or brotli decoding yields (the rest comes in the next steps)
STEP_OUTPUT: Final = 1024 * 1024


class TooLarge(Exception):
    """The input decodes to more than the limit."""


class BadData(ValueError):
    """The input does not decode in its format (the message says why)."""


class Decompressor(Protocol):
    """Decodes input fed in pieces; ``out`` is what it decoded so far (never more than the limit)."""

    out: bytearray

    def feed(self, data: bytes) -> None: ...

    def finish(self) -> bytes: ...


def decompressor(fmt: str, limit: int, *, max_window: int, one_frame: bool = False) -> Decompressor:
    """A decoder of ``fmt`` (one of ``FORMATS``) refusing to decode to more than ``limit`` bytes.
    ``max_window``: the largest window a zstd frame may ask for; ``one_frame``: a zstd input is one
    frame, and bytes after it are refused."""
    if fmt in ("gzip", "deflate"):
        return _Zlib(fmt, limit)
    if fmt == "br":
        return _Brotli(limit)
    if fmt == "zstd":
        return _Zstd(limit, max_window, one_frame)
    if fmt == "identity":
        return _Identity(limit)
    raise ValueError(f"unknown format {fmt!r}")


class _Identity:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.out = bytearray()

    def feed(self, data: bytes) -> None:
        self._append(data)

    def finish(self) -> bytes:
        return bytes(self.out)

    def _append(self, chunk: bytes) -> None:
        if len(self.out) + len(chunk) > self.limit:
            raise TooLarge(f"decodes to more than {self.limit} bytes")
        self.out += chunk

    @property
    def _room(self) -> int:
        """How much the next step may decode: one byte more than the limit leaves (which tells "at
        the limit" from "over"), and at most ``STEP_OUTPUT`` (each step's output is copied onto
        what came before, so a step as large as the limit would briefly hold the whole twice)."""
        return min(self.limit - len(self.out) + 1, STEP_OUTPUT)


class _Zlib(_Identity):
    def __init__(self, fmt: str, limit: int) -> None:
        super().__init__(limit)
        self._fmt = fmt
        self._wbits = 16 + zlib.MAX_WBITS if fmt == "gzip" else zlib.MAX_WBITS
        self._z = zlib.decompressobj(self._wbits)

    def feed(self, data: bytes) -> None:
        try:
            while data:
                if self._z.eof:  # the member ended and more follows
                    if self._fmt != "gzip":
                        raise BadData("data after the end of the deflate stream")
                    data = data.lstrip(b"\0")  # padding between members, as gzip.decompress takes it
                    if not data:
                        return
                    self._z = zlib.decompressobj(self._wbits)
                self._append(self._z.decompress(data, self._room))
                data = self._z.unconsumed_tail or (self._z.unused_data if self._z.eof else b"")
        except zlib.error as error:
            raise BadData(f"invalid {self._fmt} data: {error}") from None

    def finish(self) -> bytes:
        try:
            self._append(self._z.flush(self._room))
        except zlib.error as error:
            raise BadData(f"invalid {self._fmt} data: {error}") from None
        if not self._z.eof:
            raise BadData(f"truncated {self._fmt} stream")
        return bytes(self.out)


class _Brotli(_Identity):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self._d = brotli.Decompressor()

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._d.is_finished():
            raise BadData("data after the end of the brotli stream")
        try:
            self._append(self._d.process(data, output_buffer_limit=self._room))
            while not self._d.can_accept_more_data():  # output held back at the step's limit: take it
                self._append(self._d.process(b"", output_buffer_limit=self._room))
        except brotli.error as error:
            raise BadData(f"invalid brotli data: {error}") from None

    def finish(self) -> bytes:
        if not self._d.is_finished():
            raise BadData("truncated brotli stream")
        return bytes(self.out)


class _Zstd(_Identity):
    def __init__(self, limit: int, max_window: int, one_frame: bool) -> None:
        super().__init__(limit)
        self._zstd = zstandard.ZstdDecompressor(max_window_size=max_window)
        self._frame = self._zstd.decompressobj()
        self._one_frame = one_frame
        self._fresh = True  # nothing of the current frame fed yet: its header may say its size

    def feed(self, data: bytes) -> None:
        try:
            for at in range(0, len(data), ZSTD_SLICE):
                piece = data[at : at + ZSTD_SLICE]
                while piece:
                    if self._frame.eof:  # the frame ended and more follows
                        if self._one_frame:
                            raise BadData("trailing bytes after the zstd frame")
                        self._frame, self._fresh = self._zstd.decompressobj(), True
                    if self._fresh:
                        self._check_declared(piece)
                        self._fresh = False
                    self._append(self._frame.decompress(piece))
                    piece = self._frame.unused_data if self._frame.eof else b""
        except zstandard.ZstdError as error:
            raise BadData(f"invalid zstd data: {error}") from None

    def _check_declared(self, start: bytes) -> None:
        """A frame whose header declares more than the limit leaves is refused before a byte of it
        is decoded (the header is in the first slice; a shorter first piece is just decoded)."""
        try:
            declared = zstandard.frame_content_size(start)
        except zstandard.ZstdError:  # a header cut short, or none: decoding says what it is
            return
        if declared > self.limit - len(self.out):
            raise TooLarge(f"declares {declared} bytes, more than the {self.limit} it may decode to")

    def finish(self) -> bytes:
        if not self._frame.eof:
            raise BadData("truncated zstd frame")
        return bytes(self.out)
