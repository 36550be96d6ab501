"""One client connection as the front sees it, and the request view its handlers get.

``Connection`` owns the socket and a receive buffer: bytes read past one request's end
(the next, pipelined request) stay in the buffer. ``FrontRequest`` offers handlers the same
surface as ``fastpath.Request`` (method, path, match, headers, scope, body under limits,
``read_json``, ``drain``, ``wait_disconnect``), so a fast route runs unchanged whichever of
the two serves it.

Under TLS the connection's stream is a trio ``SSLStream`` over the socket: every byte then
goes through it, so the zero-copy paths of bulk.py (worker threads on the raw socket)
give way to their stream forms (``bulk.receive_pieces_from`` and ``bulk.send_file_to``).
"""

from __future__ import annotations

import re
from typing import Any, AsyncIterator

import trio

from . import bulk
from .app_class import DRAIN_TIMEOUT
from .body import BodyLimits, decode_json, refuse_oversize
from .fastpath import BodyReader, ClientGone
from .http1 import CONTINUE, MAX_HEAD_BYTES, RequestHead

#: largest single receive of a request body
RECEIVE_BYTES = 256 * 1024
#: a body at least this large is received by worker threads (bulk.py)
BULK_BODY = 4 << 20
#: a client that accepts no byte of an answer for this long is dropped
SEND_STALL_TIMEOUT = 120.0


class Connection:
    def __init__(self, stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]) -> None:
        self.stream = stream
        #: the bytes go through TLS: never touch the socket's data directly
        self.tls = isinstance(stream, trio.SSLStream)
        self.socket = stream.transport_stream.socket if isinstance(stream, trio.SSLStream) else stream.socket
        self.buffer = bytearray()
        self.eof = False

    async def receive_more(self, max_bytes: int = 65536) -> bool:
        """Append what the client sends next to the buffer; False when it has closed."""
        data = await self._recv(max_bytes)
        self.buffer += data
        return bool(data)

    async def receive(self, max_bytes: int) -> bytes:
        """Up to *max_bytes*: from the buffer if it holds any, else from the socket;
        b"" once the client has closed."""
        if self.buffer:
            data = bytes(self.buffer[:max_bytes])
            del self.buffer[:max_bytes]
            return data
        return await self._recv(max_bytes)

    async def receive_pieces(self, sizes: list[int]) -> list[memoryview]:
        """Pieces of up to *sizes* bytes received by a worker thread (see bulk.py);
        [] at the end."""
        if self.eof:
            return []
        if self.tls:
            pieces = await bulk.receive_pieces_from(self.stream, sizes)
        else:
            pieces = await bulk.receive_pieces(self.socket, sizes)
        if not pieces:
            self.eof = True
        return pieces

    async def _recv(self, max_bytes: int) -> bytes:
        if self.eof:
            return b""
        try:
            if self.tls:
                data = bytes(await self.stream.receive_some(max_bytes))
            else:
                data = await self.socket.recv(max_bytes)
        except (ConnectionResetError, BrokenPipeError, trio.BrokenResourceError):
            data = b""
        if not data:
            self.eof = True
        return data

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        with trio.fail_after(SEND_STALL_TIMEOUT):
            if self.tls:
                await self.stream.send_all(data)
                return
            # most answers fit the socket's buffer: one send
            sent = await self.socket.send(data)
            if sent < len(data):
                await self.stream.send_all(memoryview(data)[sent:])

    async def sendfile(self, fd: int, count: int) -> None:
        """Send the first *count* bytes of the file *fd*, zero-copy (see bulk.py); under
        TLS read by worker threads and sent through the TLS stream."""
        if self.tls:
            await bulk.send_file_to(self.stream, fd, count, stall_timeout=SEND_STALL_TIMEOUT)
            return
        await bulk.sendfile(self.socket, fd, count, stall_timeout=SEND_STALL_TIMEOUT)

    def peer(self) -> tuple[str, int] | None:
        return _address(self.socket.getpeername)

    def local(self) -> tuple[str, int] | None:
        return _address(self.socket.getsockname)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await self.stream.aclose()


class FrontRequest(BodyReader):
    """A request served by the front, with the interface of ``fastpath.Request``."""

    def __init__(self, connection: Connection, head: RequestHead, match: re.Match[str]) -> None:
        self.connection = connection
        self.head = head
        self.method = head.method
        self.path = head.path
        self.match = match
        self.headers: dict[str, str] = {
            name.decode("latin1"): value.decode("latin1") for name, value in head.headers
        }
        self.remaining = head.content_length
        self.body_complete = self.remaining == 0
        self.response_started = False
        self._continue_due = head.expect_continue
        self._scope: dict[str, Any] | None = None

    @property
    def scope(self) -> dict[str, Any]:
        """An ASGI-like scope (built on first use)."""
        if self._scope is None:
            head = self.head
            self._scope = {
                "type": "http",
                "http_version": "1.1",
                "scheme": "https" if self.connection.tls else "http",
                "method": head.method,
                "path": head.path,
                "raw_path": head.raw_path,
                "query_string": head.query,
                "headers": head.headers,
                "client": self.connection.peer(),
                "server": self.connection.local(),
            }
        return self._scope

    @property
    def content_length(self) -> int | None:
        return self.head.content_length if self.head.header(b"content-length") is not None else None

    @property
    def has_body(self) -> bool:
        return self.head.content_length > 0

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        if self._continue_due and not self.connection.buffer:
            self._continue_due = False
            await self.connection.send(CONTINUE)
        in_bulk = self.remaining >= BULK_BODY
        while self.remaining > 0:
            if in_bulk and not self.connection.buffer:
                received = self.head.content_length - self.remaining
                chunks = await self.connection.receive_pieces(bulk.piece_sizes(received, self.remaining))
            else:
                chunk = await self.connection.receive(min(self.remaining, RECEIVE_BYTES))
                chunks = [chunk] if chunk else []
            if not chunks:
                raise ClientGone("the client disconnected during the upload")
            for chunk in chunks:
                self.remaining -= len(chunk)
                if self.remaining == 0:
                    self.body_complete = True
                yield chunk

    async def read_json(self, limits: BodyLimits) -> Any:
        buffer = self.connection.buffer
        if 0 < self.remaining <= len(buffer):
            # the whole (small) body came with the head: no reading machinery needed
            refuse_oversize(self.content_length, limits.max_bytes)
            raw = bytes(buffer[: self.remaining])
            del buffer[: self.remaining]
            self.remaining = 0
            self.body_complete = True
            self._continue_due = False
            return decode_json(raw)
        return await super().read_json(limits)

    async def drain(self) -> None:
        """Discard the rest of the body until it ends, the client goes, or DRAIN_TIMEOUT
        passes (the connection is closed after an answer given before the body)."""
        if self._continue_due:
            return  # the client waits for our go-ahead: it sends no body
        with trio.move_on_after(DRAIN_TIMEOUT):
            while self.remaining > 0:
                chunk = await self.connection.receive(min(self.remaining, RECEIVE_BYTES))
                if not chunk:
                    return
                self.remaining -= len(chunk)
            self.body_complete = True

    async def wait_disconnect(self) -> None:
        """Return when the client closes the connection (bytes it sends meanwhile, a next
        request, are kept for later; past MAX_HEAD_BYTES of them it is no longer read)."""
        connection = self.connection
        while len(connection.buffer) <= MAX_HEAD_BYTES:
            if not await connection.receive_more():
                return
        await trio.sleep_forever()


def _address(get: Any) -> tuple[str, int] | None:
    """(host, port) of one end of the connection; None once it is gone."""
    try:
        host, port = get()[:2]
    except OSError:
        return None
    return host, port
