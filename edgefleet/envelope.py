"""The upstream envelope: how a message body travels to IoT Hub compressed, and how every reader opens it.

The inference module's prediction batches (`edgefleet.batch/1`, see `edgefleet.messages`) go
upstream gzip-compressed (RFC 1952, level 6), declared in the message's system property
`contentEncoding` (`gzip`) with `contentType` `application/json`; the application property
`schema=edgefleet.batch/1` names what the body holds once opened. Other messages (dead letters,
alerts, the sensor's telemetry) stay plain UTF-8 JSON (`contentEncoding` `utf-8`).

IoT Hub (and edgeHub) evaluate `$body` route conditions only for UTF-8/16/32 JSON: a compressed
body cannot be queried, so whatever a route needs must be an application property.

Readers (the lake sink, the dashboard, the benchmark) call `open_body` with the message's system
properties: a gzip body is decompressed (bounded: a body that opens to more than
`MAX_OPENED_BYTES` is refused, so a small message cannot explode in memory), a body without a
compressing encoding (`utf-8`, or none: the lake may hold messages from before compression) is
returned as it is, and a corrupt or unknown encoding raises `MessageError` with reason
`bad_encoding`, which readers dead-letter or count, never crash on. Stdlib only.

Chosen by measurement on real prediction batches (`benchmarks/edge_throughput.py` and the figures
in docs/architecture.md): gzip level 6 shrinks a 100-prediction batch 8.1x (436 → 54 bytes per
prediction) for a few µs of CPU per prediction; level 1 only 6.8x, level 9 8.4x at 2-3x the CPU;
zlib (deflate) is the same algorithm 18 bytes smaller per message; zstd (not stdlib) was 10% smaller
on small batches and equal on large ones, and IoT Hub's consumers (Stream Analytics, Functions)
read gzip.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Mapping
from typing import Final

from edgefleet.messages import CONTENT_ENCODING, CONTENT_TYPE, MessageError

__all__ = [
    "BAD_ENCODING",
    "COMPRESSION_LEVEL",
    "CONTENT_TYPE",
    "ENVELOPE_VERSION",
    "GZIP",
    "MAX_OPENED_BYTES",
    "PLAIN",
    "compress_body",
    "content_encoding",
    "open_body",
]

ENVELOPE_VERSION: Final = 1  # gzip of an `edgefleet.batch/1` body; a new version gets a new encoding name
GZIP: Final = "gzip"
PLAIN: Final = CONTENT_ENCODING  # "utf-8": the body is the JSON text itself
# The encodings that mean "the body is the text itself" ($body-queryable by IoT Hub); anything else must open.
_PLAIN_ENCODINGS: Final = frozenset({"", "utf-8", "utf8"})
COMPRESSION_LEVEL: Final = 6
# What a compressed body may open to: 16x IoT Hub's 256 KB message limit, far above any batch we write.
MAX_OPENED_BYTES: Final = 16 * 256 * 1024
BAD_ENCODING: Final = "bad_encoding"  # a dead-letter reason: corrupt compressed body or unknown encoding
_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS


def compress_body(body: bytes) -> tuple[bytes, str]:
    """Return (body to send, its `contentEncoding`): gzip, or the plain body when gzip would not be smaller."""
    packed = gzip.compress(body, COMPRESSION_LEVEL, mtime=0)
    if len(packed) >= len(body):
        return body, PLAIN
    return packed, GZIP


def content_encoding(system_properties: Mapping[str, str]) -> str:
    """Return a message's `contentEncoding` system property, lower-cased (empty when absent; any name case)."""
    for name, value in system_properties.items():
        if name.lower() == "contentencoding":
            return str(value).strip().lower()
    return ""


def open_body(body: bytes, system_properties: Mapping[str, str], max_bytes: int = MAX_OPENED_BYTES) -> bytes:
    """Return the message body as its JSON bytes: decompressed when its `contentEncoding` says gzip.

    Raise MessageError(`bad_encoding`) for a corrupt or truncated gzip body, trailing bytes after
    it, an unknown encoding, or a body that opens to more than `max_bytes`.
    """
    encoding = content_encoding(system_properties)
    if encoding in _PLAIN_ENCODINGS:
        return body
    if encoding != GZIP:
        raise MessageError(BAD_ENCODING, f"unknown contentEncoding {encoding[:40]!r}; readers know {GZIP!r} and utf-8")
    opener = zlib.decompressobj(_GZIP_WBITS)
    try:
        opened = opener.decompress(body, max_bytes)
    except zlib.error as err:
        raise MessageError(BAD_ENCODING, f"gzip body of {len(body)} bytes is corrupt: {err}") from None
    if opener.unconsumed_tail:
        raise MessageError(BAD_ENCODING, f"gzip body opens to more than {max_bytes} bytes")
    if not opener.eof:
        raise MessageError(BAD_ENCODING, f"gzip body of {len(body)} bytes is truncated")
    if opener.unused_data:
        raise MessageError(BAD_ENCODING, f"{len(opener.unused_data)} bytes follow the gzip body")
    return opened
