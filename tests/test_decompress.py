"""telemetry/decompress.py: every format decoded whole however its input is cut into pieces,
refused past the limit (a bomb costs at most the limit and one step's output), and input that does
not decode refused with its reason. Inputs are made by the formats' own libraries."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zlib
from collections.abc import Callable

import brotli
import pytest
import zstandard

from telemetry.decompress import FORMATS, BadData, TooLarge, decompressor

COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "identity": lambda b: b,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.compress,
}
#: something like a request body: some of it compresses, some of it does not
DATA = b"".join(os.urandom(64) + b"workflow.run.id=wrun_01K" * 40 for _ in range(50))
WINDOW = 8 * 1024 * 1024


def _streamed_zstd(data: bytes) -> bytes:
    """A frame written as a stream is (its size unknown when its header was written)."""
    compressor = zstandard.ZstdCompressor().compressobj()
    return compressor.compress(data) + compressor.flush()


def _decode(fmt: str, data: bytes, limit: int, piece: int | None = None, **options) -> bytes:
    decoder = decompressor(fmt, limit, **{"max_window": WINDOW, **options})
    piece = piece or max(len(data), 1)
    for at in range(0, len(data), piece):
        decoder.feed(data[at : at + piece])
    return decoder.finish()


def test_every_format_is_tested():
    assert set(COMPRESS) == set(FORMATS)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("piece", [1, 7, 300, 65536, None])
def test_round_trip_in_any_pieces(fmt, piece):
    assert _decode(fmt, COMPRESS[fmt](DATA), len(DATA), piece) == DATA


@pytest.mark.parametrize("fmt", ["gzip", "zstd"])
def test_members_and_frames_in_a_row_are_read_whole(fmt):
    halves = DATA[:1000], DATA[1000:]
    assert _decode(fmt, b"".join(COMPRESS[fmt](h) for h in halves), len(DATA), 333) == DATA


@pytest.mark.parametrize("piece", [1, 5, None])
def test_gzip_padding_between_and_after_members_is_skipped_as_gzip_decompress_does(piece):
    data = gzip.compress(DATA[:1000]) + b"\0" * 7 + gzip.compress(DATA[1000:]) + b"\0" * 3
    assert gzip.decompress(data) == DATA
    assert _decode("gzip", data, len(DATA), piece) == DATA


def test_one_frame_refuses_a_second():
    data = zstandard.compress(DATA[:1000]) + zstandard.compress(DATA[1000:])
    with pytest.raises(BadData, match="trailing bytes after the zstd frame"):
        _decode("zstd", data, len(DATA), one_frame=True)
    assert _decode("zstd", zstandard.compress(DATA), len(DATA), one_frame=True) == DATA


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_limit_holds_after_decoding(fmt):
    data = COMPRESS[fmt](DATA)
    assert _decode(fmt, data, len(DATA)) == DATA  # exactly at the limit
    with pytest.raises(TooLarge):
        _decode(fmt, data, len(DATA) - 1)


@pytest.mark.parametrize(
    "fmt, compress",
    [
        ("gzip", lambda b: gzip.compress(b, compresslevel=9)),
        ("deflate", lambda b: zlib.compress(b, 9)),
        ("br", lambda b: brotli.compress(b, quality=5)),
        ("zstd", lambda b: _streamed_zstd(b)),  # no size in its header: held to the limit as it decodes
    ],
)
def test_a_bomb_costs_the_limit_not_what_it_inflates_to(fmt, compress):
    bomb = compress(bytes(256 * 1024 * 1024))
    assert len(bomb) < 1024 * 1024
    limit = 1024 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(TooLarge):
            _decode(fmt, bomb, limit)  # one piece: the decoder alone bounds each step
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < limit + 12 * 1024 * 1024, f"{peak / 2**20:.1f} MiB held decoding a 256 MiB bomb"


@pytest.mark.parametrize(
    "fmt, data, reason",
    [
        ("gzip", b"not gzip", "invalid gzip data: .*incorrect header check"),
        ("gzip", gzip.compress(DATA)[:-5], "truncated gzip stream"),
        ("deflate", zlib.compress(DATA) + b"more", "data after the end of the deflate stream"),
        ("deflate", b"", "truncated deflate stream"),
        ("br", b"not brotli at all", "invalid brotli data"),
        ("br", brotli.compress(DATA)[:-5], "truncated brotli stream"),
        # in the same piece as the stream's end, brotli itself refuses it; in a later one, we do
        ("br", brotli.compress(DATA) + b"more", "invalid brotli data|data after the end of the brotli stream"),
        ("br", b"", "truncated brotli stream"),
        ("zstd", b"not zstd at all", "invalid zstd data"),
        ("zstd", zstandard.compress(DATA)[:-5], "truncated zstd frame"),
        ("zstd", zstandard.compress(DATA) + b"more", "invalid zstd data"),
        ("zstd", b"", "truncated zstd frame"),
    ],
)
def test_input_that_does_not_decode_says_why(fmt, data, reason):
    with pytest.raises(BadData, match=reason):
        _decode(fmt, data, 1 << 20, 100)


def test_data_after_a_brotli_stream_in_a_later_piece():
    decoder = decompressor("br", 1 << 20, max_window=WINDOW)
    decoder.feed(brotli.compress(DATA))
    with pytest.raises(BadData, match="data after the end of the brotli stream"):
        decoder.feed(b"more")


def test_a_zstd_frame_asking_for_a_larger_window_is_refused():
    """A streamed frame (no size in its header) declares its window: past ``max_window`` it is
    refused before anything is allocated for it, whatever it holds."""
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=27)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = compressor.compress(DATA) + compressor.flush()
    assert zstandard.get_frame_parameters(data).window_size > WINDOW
    with pytest.raises(BadData, match="invalid zstd data"):
        _decode("zstd", data, 1 << 20)
    assert _decode("zstd", data, 1 << 20, max_window=1 << 27) == DATA


def test_a_zstd_frame_declaring_more_than_the_limit_is_refused_before_decoding():
    """Its header says how big it is: nothing of it is decoded (a frame that does not declare its
    size, as Node's encoder writes them, is held to the limit as it decodes)."""
    data = zstandard.compress(bytes(64 * 1024 * 1024))
    assert zstandard.frame_content_size(data) == 64 * 1024 * 1024
    decoder = decompressor("zstd", 1024 * 1024, max_window=WINDOW)
    with pytest.raises(TooLarge, match="declares 67108864 bytes"):
        decoder.feed(data)
    assert len(decoder.out) == 0
