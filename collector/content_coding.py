"""Request bodies' content codings: which ``Content-Encoding`` values we decode, and how far.

Clients compress as they please, and a coding we refuse is data lost: sentry-sdk sends ``br``
whenever the ``brotli`` module can be imported in the app (it is a common dependency of other
packages) and gzip otherwise; OTLP exporters send gzip, deflate or none, and the OpenTelemetry
Collector's ``otlphttp`` exporter ``zstd`` when so configured. Each is decoded as the body arrives
by ``telemetry.decompress``, whose output is capped: a body that would decode past the limit (a
bomb of any coding) is refused with ``TooLarge`` once the limit is passed, having cost at most the
limit and one step's output. A zstd frame may ask for a window of at most ``ZSTD_MAX_WINDOW``
(RFC 9659's limit for HTTP), and a body may hold several gzip members or zstd frames.

A body that does not decode raises ``BadData`` with the reason (answered 400); a coding not in
``ENCODINGS`` raises ``UnsupportedEncoding`` (answered 415, naming the ones we take).
"""

from __future__ import annotations

from typing import Final

from telemetry.decompress import BadData, Decompressor, TooLarge, decompressor

__all__ = ["ENCODINGS", "ZSTD_MAX_WINDOW", "BadData", "Decompressor", "TooLarge", "UnsupportedEncoding", "body_decoder"]

#: the codings a body may come in (``Content-Encoding``, case-insensitive) → the format decoded
ENCODINGS: Final = {
    "identity": "identity",
    "": "identity",
    "gzip": "gzip",
    "x-gzip": "gzip",  # HTTP/1.1: the same as gzip
    "deflate": "deflate",
    "br": "br",
    "zstd": "zstd",
}
#: the largest window a zstd frame may ask for (RFC 9659: HTTP decoders need not go past 8 MiB)
ZSTD_MAX_WINDOW: Final = 8 * 1024 * 1024


class UnsupportedEncoding(ValueError):
    """A ``Content-Encoding`` we do not decode."""


def body_decoder(encoding: str, limit: int) -> Decompressor:
    """A decoder for a body in ``encoding`` (a ``Content-Encoding`` value) that refuses
    (``TooLarge``) to decode to more than ``limit`` bytes."""
    fmt = ENCODINGS.get(encoding.strip().lower())
    if fmt is None:
        raise UnsupportedEncoding(f"unsupported Content-Encoding {encoding!r} (use gzip, deflate, br, zstd or none)")
    return decompressor(fmt, limit, max_window=ZSTD_MAX_WINDOW)
