"""A fast path for the hottest routes, below Quart.

Measured here: hypercorn alone answers small requests about 1.5x faster than hypercorn +
Quart-trio, and Quart copies every request body chunk through an unbounded buffer. The
routes that carry nearly all traffic of a buffer server (GET and PUT of one buffer) are
therefore served as plain ASGI handlers in front of the Quart app; everything else falls
through to Quart. Handlers get a small Request view, read the body straight from ASGI
``receive`` (so hypercorn's bounded queue is the flow control), and answer through
``respond``/``respond_stream``. NodeError subclasses become plain-text answers with their
status, as in the Quart app.

A handler that answers before the request body has been read sends ``Connection: close``
and the rest of the body is pulled and discarded for a short while, for the same reasons
as in ``app_class``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, AsyncIterable, AsyncIterator, Awaitable, Callable

import trio

from ..errors import NodeError
from ..metrics import Metrics
from .app_class import DRAIN_TIMEOUT
from .body import BadRequest, BodyLimits, decode_json, limited, refuse_oversize

if TYPE_CHECKING:
    from .guard import Guard

log = logging.getLogger("seamless_node")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class ClientGone(NodeError):
    """The client disconnected before sending its whole body."""

    http_status = 400


class BodyReader:
    """Body reading shared by both request views: ``_raw_chunks`` and ``content_length``
    come from the subclass."""

    content_length: int | None

    def _raw_chunks(self) -> AsyncIterator[bytes]:
        raise NotImplementedError

    def body(self, limits: BodyLimits) -> AsyncIterator[bytes]:
        """The body in the chunks received, under *limits*."""
        return limited(self._raw_chunks(), limits)

    async def read_json(self, limits: BodyLimits) -> Any:
        """The whole body decoded as JSON (400 with a clear message if it is not)."""
        refuse_oversize(self.content_length, limits.max_bytes)
        parts = [chunk async for chunk in self.body(limits)]
        return decode_json(b"".join(parts))


class Request(BodyReader):
    """What a fast handler needs of an HTTP request (inside hypercorn)."""

    def __init__(self, scope: Scope, receive: Receive, match: re.Match[str]) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.match = match
        self._receive = receive
        self.headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            self.headers[name.decode("latin1").lower()] = value.decode("latin1")
        self.response_started = False
        try:
            self.body_complete = not self.has_body
        except BadRequest:
            self.body_complete = False

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        if value is None:
            return None
        if not value.isdigit():
            raise BadRequest(f"invalid Content-Length header {value!r}")
        return int(value)

    @property
    def has_body(self) -> bool:
        if self.content_length is not None:
            return self.content_length > 0
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    async def _raw_chunks(self) -> AsyncIterator[bytes]:
        while not self.body_complete:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone("the client disconnected during the upload")
            if not message.get("more_body", False):
                self.body_complete = True
            chunk = message.get("body", b"")
            if chunk:
                yield chunk

    async def wait_disconnect(self) -> None:
        """Return when the client goes away (the body must have been read)."""
        while (await self._receive())["type"] != "http.disconnect":
            pass

    async def drain(self) -> None:
        """Pull and discard the rest of the body until it ends, the client goes, or
        DRAIN_TIMEOUT passes."""
        with trio.move_on_after(DRAIN_TIMEOUT):
            while True:
                message = await self._receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return


@dataclass
class Response:
    status: int
    body: bytes | AsyncIterable[bytes] = b""
    headers: dict[str, str] | None = None
    content_type: str = "text/plain"


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class FastRoute:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


class FastPath:
    """ASGI app: fast routes first, then the wrapped (Quart) app."""

    def __init__(
        self, app: Any, routes: list[FastRoute], metrics: Metrics, guard: "Guard | None" = None
    ) -> None:
        self.app = app
        self.routes = routes
        self.metrics = metrics
        #: the access decision (web/guard.py), taken before any route sees a request
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.guard is not None and scope["type"] in ("http", "websocket"):
            admitted = await self.guard.admit(self, scope, receive, send)
            if admitted is None:
                return
            scope, send = admitted
        if scope["type"] == "http":
            for route in self.routes:
                if scope["method"] == route.method:
                    match = route.pattern.fullmatch(scope["path"])
                    if match:
                        await self._serve(route, Request(scope, receive, match), send)
                        return
        await self.app(scope, receive, send)

    async def _serve(self, route: FastRoute, request: Request, send: Send) -> None:
        try:
            await self._respond(request, await route.handler(request), send)
        except NodeError as exc:
            response = error_response(request, exc)
            if request.response_started:
                # A stream cut short: ending without the final body message makes hypercorn
                # close the connection, so the client sees an incomplete response.
                return
            await self._respond(request, response, send)

    async def _respond(self, request: Request, response: Response, send: Send) -> None:
        if request.body_complete:
            await self._send(request, response, send)
            return
        # Answering before the body is in: keep pulling it while the answer goes out.
        # Hypercorn closes the connection once the answer is sent, and to do so it queues
        # a disconnect message for us; with its small queue full of unread body, that
        # would block the send forever.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request.drain)
            await self._send(request, response, send)

    async def _send(self, request: Request, response: Response, send: Send) -> None:
        headers = [(b"content-type", response.content_type.encode())]
        for name, value in (response.headers or {}).items():
            headers.append((name.lower().encode(), value.encode()))
        if not request.body_complete:
            headers.append((b"connection", b"close"))
        if isinstance(response.body, bytes):
            headers.append((b"content-length", str(len(response.body)).encode()))
            await send({"type": "http.response.start", "status": response.status, "headers": headers})
            await send({"type": "http.response.body", "body": response.body})
            return
        request.response_started = True
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        async for chunk in response.body:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def error_response(request: Any, exc: NodeError) -> Response:
    """Log a refused or failed fast request; the plain-text answer for it."""
    status = exc.http_status
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.path, exc)
    else:
        log.info("%s %s refused (%d): %s", request.method, request.path, status, exc)
    return Response(status, str(exc).encode())


def route(method: str, pattern: str, handler: Handler) -> FastRoute:
    return FastRoute(method, re.compile(pattern), handler)
