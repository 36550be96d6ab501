"""The node's Quart-trio application class, with flow control on request bodies.

Quart's request body is filled by a task that pulls every ASGI message as fast as the
network delivers it into an unbounded bytearray: a client that uploads faster than the
store writes would make the node buffer the whole upload in memory. Here the pulling task
waits whenever more than ``HIGH_WATER`` bytes are buffered and the handler has not yet
consumed them, so hypercorn's bounded queue and TCP's window push back on the client.

A handler may answer without reading the body (413 before reading, 201 "already have it",
202 "upload in progress"). Hypercorn then gives up on the connection, but without telling
the client, whose next request on it would hang. So such an answer carries
``Connection: close``, and the rest of the body is pulled and discarded for a short while
so that hypercorn's reader is never left blocked on a full queue.
"""

from __future__ import annotations

from typing import Optional

import trio
from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable
from quart.wrappers import Request
from quart_trio import QuartTrio
from quart_trio.asgi import TrioASGIHTTPConnection
from quart_trio.wrappers.request import EventWrapper, TrioBody, TrioRequest

#: Bytes a request body may hold in memory before the reader stops pulling from the socket.
HIGH_WATER = 2 << 20
#: How long the rest of an unread body is pulled and discarded after an early answer.
DRAIN_TIMEOUT = 2.0


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

    #: set once the answer starts: the handler will read no more, so the rest is discarded
    abandoned = False

    def abandon(self) -> None:
        self.abandoned = True
        self._data.clear()
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


def needs_close(request: Request) -> bool:
    """True when the answer goes out before the request body was fully received."""
    body = request.body
    if not isinstance(body, FlowControlledBody) or body._complete.is_set():
        return False
    if request.content_length is not None:
        return request.content_length > 0
    return request.headers.get("Transfer-Encoding", "").lower() == "chunked"


class FlowControlledConnection(TrioASGIHTTPConnection):
    """Also fixes quart-trio's handling of ``http.disconnect``: hypercorn sends it as soon
    as the last byte of the response is out, while the handler's final ``send`` is still
    returning through hypercorn, which restarts the connection's keep-alive timer there.
    Cancelling the handler at that moment (as quart-trio does) cancels that restart, and
    the connection is then never timed out. So a disconnect cancels the handler only
    while its response is still incomplete."""

    _response_complete = False

    async def __call__(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        request = self._create_request_from_scope(send)

        async def tracking_send(message: dict) -> None:  # type: ignore[type-arg]
            if message["type"] == "http.response.start" and isinstance(request.body, FlowControlledBody):
                # from here on the body is only pulled and dropped, never held back: the
                # answer's completion makes hypercorn queue a disconnect message for us,
                # which must not wait behind unread body messages
                if not request.body._complete.is_set():
                    request.body.abandon()
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                self._response_complete = True
            await send(message)  # type: ignore[arg-type]

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.handle_messages, nursery, request, receive)
            nursery.start_soon(self.handle_request, nursery, request, tracking_send)
        body = request.body
        if isinstance(body, FlowControlledBody) and not body._complete.is_set():
            await _drain(receive)

    async def handle_messages(  # type: ignore[override]
        self, nursery: trio.Nursery, request: Request, receive: ASGIReceiveCallable
    ) -> None:
        body = request.body
        while True:
            message = await receive()
            if message["type"] == "http.request":
                abandoned = isinstance(body, FlowControlledBody) and body.abandoned
                if not abandoned:
                    body.append(message.get("body", b""))
                if not message.get("more_body", False):
                    body.set_complete()
                elif isinstance(body, FlowControlledBody):
                    while body.buffered > HIGH_WATER and not body.abandoned:
                        await body.wait_drained()
            elif message["type"] == "http.disconnect":
                break
        if not self._response_complete:
            nursery.cancel_scope.cancel()


async def _drain(receive: ASGIReceiveCallable) -> None:
    with trio.move_on_after(DRAIN_TIMEOUT):
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                return


class NodeApp(QuartTrio):
    asgi_http_class = FlowControlledConnection  # type: ignore[assignment]
    request_class = FlowControlledRequest
