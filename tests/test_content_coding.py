"""collector/content_coding.py: which ``Content-Encoding`` values a body may come in, and the
decoder each gets (``telemetry.decompress``: its formats are tested in test_decompress.py)."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest
import zstandard

from collector.content_coding import ENCODINGS, ZSTD_MAX_WINDOW, BadData, UnsupportedEncoding, body_decoder

BODY = b"resourceSpans" * 500
COMPRESS = {
    "identity": lambda b: b,
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.compress,
}


@pytest.mark.parametrize(
    "encoding, fmt",
    [
        ("gzip", "gzip"),
        ("GZIP", "gzip"),
        ("x-gzip", "gzip"),
        ("deflate", "deflate"),
        (" br ", "br"),
        ("zstd", "zstd"),
        ("Zstd", "zstd"),
        ("identity", "identity"),
        ("", "identity"),
    ],
)
def test_each_coding_decodes_its_bodies(encoding, fmt):
    assert ENCODINGS[encoding.strip().lower()] == fmt
    decoder = body_decoder(encoding, len(BODY))
    decoder.feed(COMPRESS[fmt](BODY))
    assert decoder.finish() == BODY


def test_zstd_bodies_are_held_to_rfc_9659s_window():
    params = zstandard.ZstdCompressionParameters.from_level(19, window_log=24)  # 16 MiB
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = compressor.compress(BODY) + compressor.flush()
    assert zstandard.get_frame_parameters(data).window_size == 2 * ZSTD_MAX_WINDOW
    decoder = body_decoder("zstd", len(BODY))
    with pytest.raises(BadData, match="invalid zstd data"):
        decoder.feed(data)


@pytest.mark.parametrize("encoding", ["compress", "snappy", "lz4", "gzip, br"])
def test_other_codings_are_unsupported_and_the_message_lists_ours(encoding):
    with pytest.raises(
        UnsupportedEncoding, match=r"unsupported Content-Encoding .* \(use gzip, deflate, br, zstd or none\)"
    ):
        body_decoder(encoding, 100)
