"""A lean HTTP/1.1 GET for large buffer downloads from peers (h11 over trio streams).

httpx reads a response body in 64 KiB pieces through anyio, which caps a download at
about 500 MB/s here, and h11's own body decoding re-buffers every byte (about 700 MB/s of
one core). This client lets h11 write the request and parse the response head, then reads
a Content-Length body straight from the socket (received by worker threads into
page-aligned pieces, see web/bulk.py; from a TLS stream by the loop), never past the
announced length,
and reads ahead: the next piece is received while the
store hashes and writes the previous one in its worker thread. Other bodies (chunked, or
up to the end of the connection) are decoded by h11. One connection per download, closed
at the end: its cost is small next to a large buffer, and no half-read connection is ever
reused.

``open_download`` answers ``(status, headers, body)``; *body* yields the raw bytes (no
content decoding) and raises ``h11.RemoteProtocolError`` when the peer closes early or
breaks the protocol.
"""

from __future__ import annotations

import ssl
from contextlib import asynccontextmanager
from typing import AsyncIterator
from urllib.parse import urlsplit

import h11
import trio

from ..web import bulk

READ_SIZE = 1 << 20
#: pieces received ahead of the consumer
READ_AHEAD = 4


MAX_HEAD = 64 * 1024


async def _read_head(stream: trio.abc.Stream) -> tuple[bytes, bytes]:
    """The response head (through the blank line) and whatever body bytes came with it."""
    data = b""
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return data[: end + 4], data[end + 4 :]
        if len(data) > MAX_HEAD:
            raise h11.RemoteProtocolError("response head too large")
        more = await stream.receive_some(READ_SIZE)
        if not more:
            raise h11.RemoteProtocolError("connection closed before a response")
        data += more


def _content_length(headers: dict[str, str]) -> int | None:
    """The body length to read raw, or None when h11 must decode the body."""
    if "transfer-encoding" in headers:
        return None
    value = headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


async def _events(conn: h11.Connection, stream: trio.abc.Stream) -> AsyncIterator[object]:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(READ_SIZE)))
            continue
        yield event
        if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return


@asynccontextmanager
async def open_download(
    url: str,
    headers: dict[str, str],
    *,
    head_timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[tuple[int, dict[str, str], AsyncIterator[bytes]]]:
    """GET *url* (scheme://host:port/target); yield the status, headers and body stream.

    Connecting and receiving the response head must take less than *head_timeout* seconds
    (trio.TooSlowError otherwise); the body has no deadline here (the caller's own)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    stream: trio.abc.Stream
    with trio.fail_after(head_timeout):
        if parts.scheme == "https":
            stream = await trio.open_ssl_over_tcp_stream(
                parts.hostname,
                port,
                ssl_context=ssl_context or ssl.create_default_context(),
                https_compatible=True,  # servers commonly close without close_notify
            )
        else:
            stream = await trio.open_tcp_stream(parts.hostname, port)
    async with stream:
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET",
            target=target,
            headers=[("Host", parts.netloc), ("Connection", "close"), *headers.items()],
        )
        with trio.fail_after(head_timeout):
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            head, leftover = await _read_head(stream)
        conn.receive_data(head)
        response = conn.next_event()
        if not isinstance(response, h11.Response):
            raise h11.RemoteProtocolError(f"expected a response, got {type(response).__name__}")
        answer_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in response.headers}
        length = _content_length(answer_headers)

        async def chunks() -> AsyncIterator[bytes]:
            if length is None:  # chunked, or up to the end of the connection: h11 decodes
                conn.receive_data(leftover)
                async for event in _events(conn, stream):
                    if isinstance(event, h11.Data):
                        yield bytes(event.data)
                return
            # a plain Content-Length body: straight from the socket, no re-buffering
            remaining = length
            if leftover:
                piece = leftover[:remaining]
                remaining -= len(piece)
                yield piece
            sock = getattr(stream, "socket", None)  # plain TCP: worker threads receive
            while remaining > 0:
                sizes = bulk.piece_sizes(length - remaining, remaining)
                if sock is not None:
                    pieces = await bulk.receive_pieces(sock, sizes)
                else:  # TLS: the loop decrypts into the same pieces
                    pieces = await bulk.receive_pieces_from(stream, sizes)
                if not pieces:
                    raise h11.RemoteProtocolError(f"peer closed the connection {remaining} bytes short")
                for data in pieces:
                    remaining -= len(data)
                    yield data

        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            send, receive = trio.open_memory_channel[bytes | BaseException](READ_AHEAD)

            async def produce() -> None:
                async with send:
                    try:
                        async for piece in chunks():
                            await send.send(piece)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        return  # the consumer went away
                    except Exception as exc:  # hand the failure to the consumer
                        await send.send(exc)

            async def body() -> AsyncIterator[bytes]:
                async with receive:
                    async for item in receive:
                        if isinstance(item, BaseException):
                            raise item
                        yield item

            nursery.start_soon(produce)
            try:
                yield response.status_code, answer_headers, body()
            except Exception as exc:  # re-raised below, not wrapped in an exception group
                failure = exc
            finally:
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
