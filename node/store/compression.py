"""Streaming decompression with bounded memory.

Uploads may arrive compressed (``Content-Encoding: zstd`` or ``gzip``) and stored files may
be compressed. The checksum is always that of the *decompressed* bytes, so every such
stream is decompressed while it passes. A small compressed chunk can expand enormously (a
"compression bomb"), so decompressed output is produced in bounded pieces and handed to a
sink; nothing ever holds the whole decompressed buffer.
"""

from __future__ import annotations

import zlib
from typing import Callable

import zstandard

from ..errors import InvalidBody
from .zstd_frames import ZstdFrameError, ZstdFrameTracker

#: Largest piece of decompressed output produced at once.
OUTPUT_PIECE = 1 << 20

SUPPORTED_ENCODINGS = ("zstd", "gzip")

Sink = Callable[[bytes], None]


def parse_content_encoding(value: str | None) -> str | None:
    """Map a Content-Encoding header to a supported encoding; None for identity.

    Raises InvalidBody for an encoding the node cannot decode, so that such a body is
    refused rather than hashed as if it were plain.
    """
    if value is None:
        return None
    token = value.strip().lower()
    if token in ("", "identity"):
        return None
    if token in ("zstd", "x-zstd"):
        return "zstd"
    if token in ("gzip", "x-gzip"):
        return "gzip"
    raise InvalidBody(f"unsupported Content-Encoding {value!r}; use zstd, gzip or none")


def accepted_encodings(accept_encoding: str | None) -> set[str]:
    """The supported encodings a client lists in Accept-Encoding with a non-zero q."""
    accepted: set[str] = set()
    if not accept_encoding:
        return accepted
    for item in accept_encoding.split(","):
        parts = [p.strip() for p in item.split(";")]
        token = parts[0].lower()
        q = 1.0
        for param in parts[1:]:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if token in ("zstd", "x-zstd"):
            accepted.add("zstd")
        elif token in ("gzip", "x-gzip"):
            accepted.add("gzip")
    return accepted


class _SinkWriter:
    """File-like adapter so zstandard's stream_writer can push pieces into a sink."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink(bytes(data))
        return len(data)

    def flush(self) -> None:  # pragma: no cover - called by zstandard
        pass


class Decompressor:
    """Feed compressed chunks; decompressed pieces go to *sink* as they are produced."""

    def __init__(self, encoding: str, sink: Sink) -> None:
        self.encoding = encoding
        self._sink = sink
        if encoding == "zstd":
            dctx = zstandard.ZstdDecompressor()
            self._zstd = dctx.stream_writer(
                _SinkWriter(sink), write_size=OUTPUT_PIECE, closefd=False
            )
            self._frames: ZstdFrameTracker | None = ZstdFrameTracker()
            self._zlib = None
        elif encoding == "gzip":
            self._zstd = None
            self._frames = None
            self._zlib = zlib.decompressobj(wbits=31)
        else:  # pragma: no cover - guarded by parse_content_encoding
            raise InvalidBody(f"unsupported encoding {encoding!r}")

    def feed(self, chunk: bytes) -> None:
        try:
            if self._zstd is not None:
                assert self._frames is not None
                self._frames.feed(chunk)
                self._zstd.write(chunk)
                return
            assert self._zlib is not None
            data = chunk
            while data:
                if self._zlib.eof:
                    raise InvalidBody("data after the end of the gzip stream")
                piece = self._zlib.decompress(data, OUTPUT_PIECE)
                if piece:
                    self._sink(piece)
                data = self._zlib.unconsumed_tail
            if self._zlib.unused_data:
                raise InvalidBody("data after the end of the gzip stream")
        except ZstdFrameError as exc:
            raise InvalidBody(f"invalid zstd data: {exc}") from None
        except (zlib.error, zstandard.ZstdError) as exc:
            raise InvalidBody(f"invalid {self.encoding} data: {exc}") from None

    def finish(self) -> None:
        """Flush what remains; raise InvalidBody if the stream was cut short."""
        try:
            if self._zstd is not None:
                self._zstd.flush()
                assert self._frames is not None
                if not self._frames.complete:
                    raise InvalidBody("truncated zstd stream (its last frame is unfinished)")
                return
            assert self._zlib is not None
            while True:
                piece = self._zlib.decompress(self._zlib.unconsumed_tail, OUTPUT_PIECE)
                if piece:
                    self._sink(piece)
                if not self._zlib.unconsumed_tail:
                    break
            tail = self._zlib.flush()
            if tail:
                self._sink(tail)
            if not self._zlib.eof:
                raise InvalidBody("truncated gzip stream")
            if self._zlib.unused_data:
                raise InvalidBody("data after the end of the gzip stream")
        except (zlib.error, zstandard.ZstdError) as exc:
            raise InvalidBody(f"invalid {self.encoding} data: {exc}") from None


def compress(data: bytes, encoding: str) -> bytes:
    """Compress a whole buffer (used by clients and tests, never on a hot path)."""
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if encoding == "gzip":
        import gzip

        return gzip.compress(data)
    raise ValueError(encoding)
