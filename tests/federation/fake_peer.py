"""A misbehaving peer: a small HTTP server with a valid node key that lies in chosen ways.

It answers just enough of the federation protocol to be believed (``/federation/keys``,
presence, buffer fetch, result lookup), never checks anyone's signature, records every
request it receives (so tests can replay them elsewhere), and misbehaves per buffer:

========== ==================================================================
mode       what GET /federation/buffers/<cs> sends
========== ==================================================================
honest     the right bytes
wrong      as many bytes as the buffer has, but other ones
truncated  Content-Length of the whole buffer, half of it, then closes
short      no Content-Length, half of the buffer, then a clean end
long       the buffer plus extra bytes (Content-Length says so)
endless    no Content-Length, bytes forever
drip       the right bytes, 1 KiB every 0.1 s
stall      half of the buffer, then silence until the client goes away
========== ==================================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import trio

from node.federation.claims import Claim, make_claim
from node.federation.identity import NodeIdentity


@dataclass
class Received:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakePeer:
    identity: NodeIdentity
    host: str = "127.0.0.4"
    buffers: dict[str, tuple[bytes, str]] = field(default_factory=dict)  # cs -> (data, mode)
    claims: dict[str, Any] = field(default_factory=dict)  # tf -> claim document to answer
    received: list[Received] = field(default_factory=list)
    url: str = ""
    open_connections: int = 0

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def claim(self, tf: str, result: str, now: int, signer: NodeIdentity | None = None) -> Claim:
        return make_claim(signer or self.identity, tf, result, now)

    async def serve(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        port = listeners[0].socket.getsockname()[1]
        self.url = f"http://{self.host}:{port}"
        task_status.started()
        await trio.serve_listeners(self._handle, listeners)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.open_connections += 1
        try:
            async with stream:
                request = await self._read_request(stream)
                if request is not None:
                    self.received.append(request)
                    await self._answer(stream, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.open_connections -= 1

    async def _read_request(self, stream: trio.SocketStream) -> Received | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            body += await stream.receive_some(65536)
        return Received(method, target, headers, body)

    async def _send(
        self, stream: trio.SocketStream, status: int, body: bytes, length: int | None = -1
    ) -> None:
        head = f"HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Type: application/octet-stream\r\n"
        if length == -1:
            length = len(body)
        if length is not None:
            head += f"Content-Length: {length}\r\n"
        await stream.send_all(head.encode() + b"\r\n" + body)

    async def _answer(self, stream: trio.SocketStream, rq: Received) -> None:
        path = rq.target.split("?")[0]
        if path == "/federation/keys":
            return await self._send(stream, 200, json.dumps(self.identity.keyset.to_document()).encode())
        if path == "/federation/ping":
            return await self._send(stream, 200, json.dumps({"node_id": self.node_id}).encode())
        if path == "/federation/buffers/has":
            asked = json.loads(rq.body)
            answer = [len(self.buffers[cs][0]) if cs in self.buffers else None for cs in asked]
            return await self._send(stream, 200, json.dumps(answer).encode())
        if path == "/federation/results/lookup":
            asked = json.loads(rq.body)
            return await self._send(stream, 200, json.dumps([self.claims.get(tf) for tf in asked]).encode())
        if path.startswith("/federation/buffers/"):
            cs = path.rsplit("/", 1)[1]
            if cs not in self.buffers:
                return await self._send(stream, 404, b"Not found")
            data, mode = self.buffers[cs]
            return await self._serve_buffer(stream, data, mode)
        await self._send(stream, 404, b"Not found")

    async def _serve_buffer(self, stream: trio.SocketStream, data: bytes, mode: str) -> None:
        half = data[: len(data) // 2]
        if mode == "honest":
            await self._send(stream, 200, data)
        elif mode == "wrong":
            await self._send(stream, 200, os.urandom(len(data)))
        elif mode == "truncated":
            await self._send(stream, 200, half, length=len(data))
        elif mode == "short":
            await self._send(stream, 200, half, length=None)
        elif mode == "long":
            await self._send(stream, 200, data + b"extra", length=len(data) + 5)
        elif mode == "endless":
            await self._send(stream, 200, b"", length=None)
            block = b"\0" * 65536
            while True:
                await stream.send_all(block)
        elif mode == "drip":
            await self._send(stream, 200, b"", length=len(data))
            for i in range(0, len(data), 1024):
                await stream.send_all(data[i : i + 1024])
                await trio.sleep(0.1)
        elif mode == "stall":
            await self._send(stream, 200, half, length=len(data))
            while await stream.receive_some(65536):  # silent until the client closes
                pass
        else:
            raise AssertionError(mode)
