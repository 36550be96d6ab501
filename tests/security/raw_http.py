"""Exact requests on a raw socket (a browser's or an attacker's bytes, not a client's
idea of them), on the front's fast path or on the hypercorn path."""

from __future__ import annotations

from urllib.parse import urlsplit

import trio


async def connect(url: str, source: str | None = None) -> trio.SocketStream:
    parts = urlsplit(url)
    if source is None:
        return await trio.open_tcp_stream(parts.hostname, parts.port)
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    await sock.bind((source, 0))
    await sock.connect((parts.hostname, parts.port))
    return trio.SocketStream(sock)


def netloc(url: str) -> str:
    return urlsplit(url).netloc


def request(
    method: str, target: str, headers: dict[str, str], body: bytes = b"", version: str = "HTTP/1.1"
) -> bytes:
    lines = [f"{method} {target} {version}"]
    fields = dict(headers)
    if body or method in ("POST", "PUT"):
        fields.setdefault("Content-Length", str(len(body)))
    lines += [f"{name}: {value}" for name, value in fields.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Reader:
    """Reads Content-Length framed answers off one connection, in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _fill(self) -> bool:
        with trio.fail_after(20):
            chunk = await self.stream.receive_some(1 << 20)
        self.buffer += chunk
        return bool(chunk)

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            assert await self._fill(), "the node closed the connection"
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if status == 100:
            return await self.response()
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            assert await self._fill(), "the node closed the connection"
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body


async def exchange(url: str, raw: bytes, source: str | None = None) -> tuple[int, dict[str, str], bytes]:
    """Send *raw* on a new connection and read one answer."""
    stream = await connect(url, source)
    try:
        await stream.send_all(raw)
        return await Reader(stream).response()
    finally:
        await stream.aclose()
