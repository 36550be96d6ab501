"""The node's own buffer API under ``/api/v1/buffers``: POST queries and batched downloads.

``POST /api/v1/buffers/get`` answers many small buffers in one response, so a client that
needs thousands of small inputs does not pay one HTTP round trip each. The response body
is a sequence of frames, one per requested checksum, in request order::

    32 bytes   the checksum, as raw bytes
     8 bytes   big-endian signed length: >= 0 the buffer follows;
               -1 absent; -2 larger than the batch entry limit (fetch it alone)
     n bytes   the buffer (when length >= 0)

Every buffer is verified before its frame is sent. ``node.client.decode_batch`` reads it.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, AsyncIterator

from quart import Blueprint, Response

from ..errors import CorruptBuffer
from ..store.service import SMALL_READ
from .buffers import json_response

if TYPE_CHECKING:
    from .buffers import BuffersRole

FRAME_HEADER = struct.Struct(">32sq")
ABSENT = -1
TOO_LARGE = -2
#: Read this many bytes' worth of buffers per thread hop.
_GROUP_BYTES = SMALL_READ


def encode_frame(checksum: str, data: bytes | None, too_large: bool = False) -> bytes:
    length = TOO_LARGE if too_large else (ABSENT if data is None else len(data))
    return FRAME_HEADER.pack(bytes.fromhex(checksum), length) + (data or b"")


def buffers_api_blueprint(role: "BuffersRole") -> Blueprint:
    bp = Blueprint("buffers_api", __name__, url_prefix="/api/v1/buffers")
    service = role.context.buffers
    store = service.store

    @bp.route("/has", methods=["POST"])
    async def has() -> Response:
        return json_response(await service.has(await role.checksum_list(), include_pending=False))

    @bp.route("/lengths", methods=["POST"])
    async def lengths() -> Response:
        return json_response(await service.lengths(await role.checksum_list()))

    def read_group(checksums: list[str], lengths: list[int]) -> list[bytes]:
        frames = []
        for cs, length in zip(checksums, lengths):
            if length > SMALL_READ:
                frames.append(encode_frame(cs, None, too_large=True))
                continue
            try:
                data = store.read(cs)
            except CorruptBuffer:
                data = None
            frames.append(encode_frame(cs, data))
        return frames

    @bp.route("/get", methods=["POST"])
    async def get_many() -> Response:
        checksums = await role.checksum_list()
        lengths = await service.lengths(checksums)
        total = sum(n for n in lengths if n <= SMALL_READ)
        limit = role.context.config.buffers.max_batch_bytes
        if total > limit:
            return Response(
                f"batch of {total} bytes is over the limit of {limit} bytes; split the request",
                status=413,
            )

        async def frames() -> AsyncIterator[bytes]:
            start = 0
            while start < len(checksums):
                end, size = start, 0
                while end < len(checksums) and (end == start or size + lengths[end] <= _GROUP_BYTES):
                    size += min(lengths[end], SMALL_READ)
                    end += 1
                group = await service.run_sync(read_group, checksums[start:end], lengths[start:end])
                yield b"".join(group)
                start = end

        response = Response(frames(), content_type="application/x-seamless-buffer-frames")
        response.timeout = None
        return response

    return bp
