"""The node's Quart-trio application class, with flow control on request bodies.

Quart's request body is filled by a task that pulls every ASGI message as fast as the
network delivers it into an unbounded bytearray: a client that uploads faster than the
store writes would make the node buffer the whole upload in memory. Here the pulling task
waits whenever more than ``HIGH_WATER`` bytes are buffered and the handler has not yet
consumed them, so hypercorn's bounded queue and TCP's window push back on the client.
"""

from __future__ import annotations

from typing import Optional

import trio
from hypercorn.typing import ASGIReceiveCallable
from quart.wrappers import Request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import EventWrapper, TrioBody, TrioRequest

#: Bytes a request body may hold in memory before the reader stops pulling from the socket.
HIGH_WATER = 2 << 20


class FlowControlledBody(TrioBody):
    def __init__(self, expected_content_length: Optional[int], max_content_length: Optional[int]) -> None:
        super().__init__(expected_content_length, max_content_length)
        self._drained = EventWrapper()

    async def __anext__(self) -> bytes:
        data = await super().__anext__()
        self._drained.set()
        return data

    def set_complete(self) -> None:
        super().set_complete()
        self._drained.set()

    @property
    def buffered(self) -> int:
        return len(self._data)

    async def wait_drained(self) -> None:
        self._drained.clear()
        if len(self._data) > HIGH_WATER and not self._complete.is_set():
            await self._drained.wait()


class FlowControlledRequest(TrioRequest):
    body_class = FlowControlledBody


class FlowControlledConnection(TrioASGIHTTPConnection):
    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, receive: ASGIReceiveCallable
    ) -> None:
        body = request.body
        while True:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
                elif isinstance(body, FlowControlledBody):
                    while body.buffered > HIGH_WATER:
                        await body.wait_drained()
            elif message["type"] == "http.disconnect":
                break
        nursery.cancel_scope.cancel()


class NodeApp(QuartTrio):
    asgi_http_class = FlowControlledConnection  # type: ignore[assignment]
    request_class = FlowControlledRequest
