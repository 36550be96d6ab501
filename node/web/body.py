"""Reading request bodies under the node's own limits.

Quart's MAX_CONTENT_LENGTH and BODY_TIMEOUT do not cover a body consumed chunk by chunk
(``async for chunk in request.body``), so the node enforces its own:

* a size cap, checked against Content-Length before reading (413) and while reading;
* an idle timeout: no bytes for that many seconds ends the upload (408);
* a minimum average rate after a grace period, so a client cannot hold an upload slot open
  by trickling a byte every few seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, AsyncIterator

import trio
from quart import Request

from ..errors import BufferTooLarge, NodeError, UploadTimeout


class BadRequest(NodeError):
    http_status = 400


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int | None
    idle_timeout: float = 30.0
    min_rate: float = 0.0  # bytes per second, averaged since the start
    grace: float = 10.0  # seconds before the minimum rate applies


def declared_length(request: Request) -> int | None:
    value = request.headers.get("Content-Length")
    if value is None:
        return None
    try:
        length = int(value)
    except ValueError:
        raise BadRequest(f"invalid Content-Length header {value!r}") from None
    if length < 0:
        raise BadRequest(f"invalid Content-Length header {value!r}")
    return length


def check_declared_length(request: Request, max_bytes: int | None) -> int | None:
    """413 before any byte is read when Content-Length is over the cap."""
    return refuse_oversize(declared_length(request), max_bytes)


def refuse_oversize(length: int | None, max_bytes: int | None) -> int | None:
    """Raise BufferTooLarge (413) when a declared *length* is over *max_bytes*."""
    if max_bytes is not None and length is not None and length > max_bytes:
        raise BufferTooLarge(
            f"request body of {length} bytes is over this node's limit of {max_bytes} bytes"
        )
    return length


async def body_chunks(request: Request, limits: BodyLimits) -> AsyncIterator[bytes]:
    """Yield the raw body of a Quart request in the chunks received, enforcing *limits*."""
    check_declared_length(request, limits.max_bytes)
    async for chunk in limited(request.body.__aiter__(), limits):
        yield chunk


async def limited(iterator: AsyncIterator[bytes], limits: BodyLimits) -> AsyncIterator[bytes]:
    """Pass chunks through, enforcing the size cap, idle timeout and minimum rate."""
    started = trio.current_time()
    total = 0
    while True:
        with trio.move_on_after(limits.idle_timeout) as scope:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
        if scope.cancelled_caught:
            raise UploadTimeout(
                f"upload stalled: no data for {limits.idle_timeout:g} s after {total} bytes"
            )
        total += len(chunk)
        if limits.max_bytes is not None and total > limits.max_bytes:
            raise BufferTooLarge(f"request body is over this node's limit of {limits.max_bytes} bytes")
        elapsed = trio.current_time() - started
        if limits.min_rate and elapsed > limits.grace and total < limits.min_rate * elapsed:
            raise UploadTimeout(
                f"upload too slow: {total} bytes in {elapsed:.0f} s, "
                f"below the minimum of {limits.min_rate:.0f} bytes/s"
            )
        yield chunk


async def read_body(request: Request, limits: BodyLimits) -> bytes:
    parts = []
    async for chunk in body_chunks(request, limits):
        parts.append(chunk)
    return b"".join(parts)


async def read_json(request: Request, limits: BodyLimits) -> Any:
    """The body decoded as JSON; BadRequest (400) with a clear message otherwise."""
    return decode_json(await read_body(request, limits))


def decode_json(raw: bytes) -> Any:
    """A request body decoded as JSON; BadRequest (400) with a clear message otherwise."""
    if not raw.strip():
        raise BadRequest("expected a JSON body, got an empty one")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from None
    except RecursionError:
        raise BadRequest("malformed JSON body: nested too deeply") from None
