"""The node's HTTP front: one listener; hot routes served directly, the rest by hypercorn.

Measured on this machine, hypercorn + h11 answers about 2,500 small requests per second
on one core, while a plain trio socket loop answers over 30,000: the HTTP machinery, not
the node's work, bounded every per-request figure (buffer GET/PUT, ``/database``). The
front therefore accepts every connection itself and reads each request head:

* a clean HTTP/1.1 request (see ``http1.parse_head``) for a fast route (the same routes
  ``fastpath.FastPath`` serves inside hypercorn) is answered here, straight on the socket;
* anything else (every Quart route, websockets, chunked uploads, HTTP/1.0, malformed
  heads) hands the connection, with the bytes already read, to a hypercorn ``TCPServer``
  that serves it from then on exactly as if it had accepted it.

One process, one port, one app: hypercorn still runs the ASGI app (with its lifespan), and
the fast handlers are the same functions either way. The front keeps hypercorn's limits:
a request head must arrive within ``node.header_timeout`` of the connection or of the
previous answer (which also closes idle keep-alive connections), heads are at most 16 KiB,
bodies are read under each route's own ``BodyLimits``.

Shutdown (``Front.shut_down``): the listener closes at once, connections waiting for a
request head close at once (the front's, and hypercorn's through
``WorkerContext.terminated``), requests in flight get a grace period to finish (their
connections close after the answer), then whatever is left is cancelled.

With ``node.tls_cert_file`` set, the front speaks TLS on the same port (``tls=`` a server
context from node/tls.py): each accepted connection is wrapped in a trio ``SSLStream``
whose handshake must end within ``node.header_timeout`` (a client that stalls in it is
cut, and shutdown closes it at once like an idle connection); a client that sends plain
HTTP instead gets a plain-text 400 saying so. Everything after the handshake, the
hand-over to hypercorn included, goes through the ``SSLStream``.

This uses hypercorn's ``TCPServer``, ``WorkerContext`` and ``Lifespan`` directly (its
trio worker does the same); ``pyproject.toml`` pins hypercorn to the minor version this
was written against.
"""

from __future__ import annotations

import logging
import socket
import ssl
from dataclasses import replace
from typing import Any, AsyncIterable

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio.lifespan import Lifespan
from hypercorn.trio.tcp_server import TCPServer
from hypercorn.trio.worker_context import WorkerContext
from hypercorn.typing import ConnectionState
from hypercorn.utils import repr_socket_addr, wrap_app

from ..errors import NodeError
from ..metrics import Metrics
from ..tls import PLAIN_HTTP_ANSWER, looks_like_plain_http, looks_like_tls
from .access_log import LogRequests, RequestLog
from .connection import Connection, FrontRequest
from .fastpath import FastRoute, Response, error_response
from .guard import refusal_route, with_headers
from .http1 import MAX_HEAD_BYTES, head_end, parse_head, response_head

log = logging.getLogger("seamless_node")

TLSStream = trio.SSLStream[trio.SocketStream]

#: answers up to this size go out in one send together with their head
COALESCE_BYTES = 64 * 1024


class Front:
    def __init__(
        self,
        asgi: Any,
        routes: list[FastRoute],
        metrics: Metrics,
        config: HypercornConfig,
        tls: ssl.SSLContext | None = None,
        requests: RequestLog | None = None,
    ) -> None:
        self.routes = routes
        #: the request log and metrics (web/access_log.py), for both paths
        self.requests = requests or RequestLog(metrics)
        #: serve HTTPS with this server context (None: plain HTTP)
        self.tls = tls
        self.metrics = metrics
        self.config = config
        self.header_timeout = float(config.keep_alive_timeout)
        counted = CountRequests(LogRequests(asgi, self.requests), self)
        self.app = wrap_app(counted, config.wsgi_max_body_size, None)  # type: ignore[arg-type]
        self.context = WorkerContext(None)
        self.lifespan_state: dict[str, Any] = {}
        #: requests being answered, by the front or by hypercorn
        self.in_flight = 0
        #: set by ``shut_down``: no new connection, no new request
        self.stopping = False
        self._accepting = trio.CancelScope()
        self._waiting_for_head: set[trio.CancelScope] = set()
        self._connections: trio.Nursery | None = None
        self._drained = trio.Event()
        #: the access decision (web/guard.py), taken on every head before routing
        self.guard = getattr(asgi, "guard", None)
        self.by_method: dict[str, list[FastRoute]] = {}
        for route in routes:
            self.by_method.setdefault(route.method, []).append(route)

    async def serve(self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind, run the app's lifespan, serve until cancelled; report the bound URLs."""
        sockets = self.config.create_sockets()
        listeners = []
        urls = []
        for sock in sockets.insecure_sockets:
            sock.listen(self.config.backlog)
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(sock)))
            scheme = "https" if self.tls else "http"
            urls.append(f"{scheme}://{repr_socket_addr(sock.family, sock.getsockname())}")
        lifespan = Lifespan(self.app, self.config, self.lifespan_state)
        async with trio.open_nursery() as lifespan_nursery:
            await lifespan_nursery.start(lifespan.handle_lifespan)
            await lifespan.wait_for_startup()
            try:
                async with trio.open_nursery() as connections:
                    self._connections = connections
                    await connections.start(self._accept, listeners)
                    task_status.started(urls)
            finally:
                self._drained.set()
                with trio.CancelScope(shield=True):
                    await self.context.terminated.set()
            lifespan_nursery.cancel_scope.cancel()

    async def _accept(
        self, listeners: list[trio.SocketListener], *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Accept connections until ``shut_down`` (which closes the listeners)."""
        assert self._connections is not None
        with self._accepting:
            await trio.serve_listeners(
                self.handle, listeners, handler_nursery=self._connections, task_status=task_status
            )

    async def shut_down(self, grace: float) -> None:
        """Stop accepting and close idle connections at once; give the requests in flight
        up to *grace* seconds, then cancel them. Returns when every connection is closed."""
        self.stopping = True
        self._accepting.cancel()
        for scope in self._waiting_for_head:
            scope.cancel()
        await self.context.terminated.set()  # hypercorn closes its idle connections
        log.info("shutting down: %d requests in flight", self.in_flight)
        started = trio.current_time()
        with trio.move_on_after(grace):
            await self._drained.wait()
        if self._drained.is_set():
            log.info("connections closed after %.1f s", trio.current_time() - started)
        else:
            log.warning("shutdown grace of %g s over: cutting %d requests", grace, self.in_flight)
            assert self._connections is not None
            self._connections.cancel_scope.cancel()
            await self._drained.wait()

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one connection until it closes or is handed to hypercorn."""
        if self.tls is not None:
            secured = await self._secure(stream)
            if secured is None:
                return
            connection = Connection(secured)
        else:
            connection = Connection(stream)
        ends = (connection.peer(), connection.local()) if self.guard is not None else (None, None)
        try:
            while not self.stopping:
                end = await self._read_head(connection)
                if end is None:
                    return
                head = parse_head(bytes(connection.buffer[:end])) if end > 0 else None
                if head is not None and self.guard is not None:
                    head, found = self._admit(head, *ends)
                else:
                    found = self._route(head) if head is not None else None
                if found is None:
                    await self._hand_over(connection)
                    return
                del connection.buffer[:end]
                route, match = found
                request = FrontRequest(connection, head, match)
                if not await self._serve(route, request):
                    return
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        finally:
            await connection.aclose()

    async def _secure(self, stream: trio.SocketStream) -> TLSStream | None:
        """The connection's TLS stream once its handshake is done, within header_timeout;
        None (the socket closed) for a client that sends plain HTTP, fails the handshake
        or stalls in it; each counts in ``seamless_node_tls_refused_total{reason}``."""
        secured: TLSStream | None = None
        outcome = "closed"
        with trio.move_on_after(self.header_timeout) as waiting:
            self._waiting_for_head.add(waiting)  # shutdown closes it like an idle connection
            try:
                secured, outcome = await self._handshake(stream)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                outcome = "handshake-failed"
            except Exception:  # one connection's trouble never reaches the listener
                log.exception("TLS handshake failed unexpectedly")
                outcome = "handshake-failed"
            finally:
                self._waiting_for_head.discard(waiting)
        if secured is not None:
            return secured
        if waiting.cancelled_caught and not self.stopping:
            outcome = "handshake-timeout"
        if outcome != "closed":
            self.metrics.inc("seamless_node_tls_refused_total", reason=outcome)
        with trio.CancelScope(shield=True):
            await stream.aclose()
        return None

    async def _handshake(self, stream: trio.SocketStream) -> tuple[TLSStream | None, str]:
        """(the TLS stream, "ok"), or (None, why not)."""
        assert self.tls is not None
        first = await stream.socket.recv(1, socket.MSG_PEEK)
        if not first:
            return None, "closed"  # a port probe
        if not looks_like_tls(first):
            if not looks_like_plain_http(first):
                return None, "not-tls"
            await stream.socket.recv(MAX_HEAD_BYTES)  # a short request, read so that the close is clean
            await stream.send_all(PLAIN_HTTP_ANSWER)
            return None, "plain-http"
        secured = trio.SSLStream(stream, self.tls, server_side=True, https_compatible=True)
        try:
            await secured.do_handshake()
        except trio.BrokenResourceError as exc:
            log.debug("TLS handshake failed: %s", exc.__cause__ or exc)
            return None, "handshake-failed"
        return secured, "ok"

    async def _read_head(self, connection: Connection) -> int | None:
        """Index just past the next request head in the buffer; 0 when the head is too
        large to be the front's; None when the client closed or took too long."""
        searched = 0
        with trio.move_on_after(self.header_timeout) as waiting:
            # an idle connection: ``shut_down`` closes it by cancelling this scope
            self._waiting_for_head.add(waiting)
            try:
                while True:
                    end = head_end(connection.buffer, searched)
                    if end > 0:
                        return end
                    if len(connection.buffer) > MAX_HEAD_BYTES:
                        return 0
                    searched = len(connection.buffer)
                    if not await connection.receive_more():
                        return None
            finally:
                self._waiting_for_head.discard(waiting)
        return None

    def _admit(
        self, head: Any, peer: tuple[str, int] | None, local: tuple[str, int] | None
    ) -> tuple[Any, tuple[FastRoute, Any] | None]:
        """The head to serve (a token prefix removed from its path) and its route: the
        refusal's when the guard refuses it, None when it is hypercorn's to serve (the
        original bytes are handed over, and decided again there)."""
        assert self.guard is not None
        verdict = self.guard.check_head(head, peer, local)
        if verdict.path != head.path:
            head = replace(head, path=verdict.path, raw_path=verdict.raw_path)
        if not verdict.allowed:
            route = refusal_route(head.method, verdict)
            return head, (route, route.pattern.match(""))
        found = self._route(head)
        if found is not None and verdict.headers:
            found = (with_headers(found[0], verdict.headers), found[1])
        return head, found

    def _route(self, head: Any) -> tuple[FastRoute, Any] | None:
        for route in self.by_method.get(head.method, ()):
            match = route.pattern.fullmatch(head.path)
            if match:
                return route, match
        return None

    async def _hand_over(self, connection: Connection) -> None:
        prefix = bytes(connection.buffer)
        if isinstance(connection.stream, trio.SSLStream):
            stream: ReplayStream = ReplayTLSStream(connection.stream, prefix, connection.socket)
        else:
            stream = ReplayStream(connection.stream, prefix, connection.socket)
        connection.buffer.clear()
        state = ConnectionState(self.lifespan_state.copy())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_close_when_cancelled, stream)
            await TCPServer(self.app, self.config, self.context, state, stream)
            nursery.cancel_scope.cancel()

    async def _serve(self, route: FastRoute, request: FrontRequest) -> bool:
        """Answer one request; True if the connection may carry another."""
        self.in_flight += 1
        try:
            with self.requests.front(request):
                return await self._answer(route, request)
        finally:
            self.in_flight -= 1

    async def _answer(self, route: FastRoute, request: FrontRequest) -> bool:
        try:
            response = await route.handler(request)
        except NodeError as exc:
            if request.response_started:
                return False
            response = error_response(request, exc)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = Response(500, b"Internal Server Error")
            request.head = replace(request.head, keep_alive=False)
        if request.body_complete:
            return await self._send(request, response)
        # Answering before the body is in: read and drop the rest of it while the answer
        # goes out, then close (a client blocked sending would not read the answer).
        async with trio.open_nursery() as nursery:
            nursery.start_soon(request.drain)
            await self._send(request, response)
        return False

    async def _send(self, request: FrontRequest, response: Response) -> bool:
        self.requests.answering(request, response)
        keep_alive = request.head.keep_alive and request.body_complete and not self.stopping
        headers = [(b"content-type", response.content_type.encode())]
        length: bytes | None = None
        for name, value in (response.headers or {}).items():
            key = name.lower().encode()
            if key == b"content-length":
                length = value.encode()
            else:
                headers.append((key, value.encode()))
        if not keep_alive:
            headers.append((b"connection", b"close"))
        connection = request.connection
        body = response.body
        if isinstance(body, (bytes, bytearray)):
            headers.append((b"content-length", str(len(body)).encode()))
            head = response_head(response.status, headers)
            if len(body) <= COALESCE_BYTES:
                await connection.send(head + body)
            else:
                await connection.send(head)
                await connection.send(body)
            return keep_alive
        chunked = length is None
        headers.append((b"transfer-encoding", b"chunked") if chunked else (b"content-length", length))
        request.response_started = True
        whole_file = getattr(body, "file_for_sendfile", None)
        if whole_file is not None and not chunked and request.body_complete:
            # a stored file that needs no hashing on the way: zero-copy
            file = whole_file()
            if file is not None:
                try:
                    await connection.send(response_head(response.status, headers))
                    await connection.sendfile(*file)
                finally:
                    body.close()  # type: ignore[attr-defined]
                return keep_alive
        await connection.send(response_head(response.status, headers))
        return await self._stream(request, body, chunked) and keep_alive

    async def _stream(self, request: FrontRequest, body: AsyncIterable[bytes], chunked: bool) -> bool:
        connection = request.connection
        try:
            async for chunk in body:
                if not chunk:
                    continue
                if chunked:
                    await connection.send(b"%x\r\n" % len(chunk) + bytes(chunk) + b"\r\n")
                else:
                    await connection.send(chunk)
        except NodeError as exc:
            # cut short: closing without the rest tells the client the answer is incomplete
            error_response(request, exc)
            return False
        if chunked:
            await connection.send(b"0\r\n\r\n")
        return True


async def _close_when_cancelled(stream: ReplayStream) -> None:
    """Close the socket of a connection handed to hypercorn when it is cancelled.

    hypercorn shields its sends from cancellation: a client that stopped reading would
    otherwise hold the connection, and shutdown, for as long as it likes."""
    try:
        await trio.sleep_forever()
    finally:
        stream.socket.close()


class CountRequests:
    """ASGI middleware: counts the requests hypercorn is answering in ``front.in_flight``."""

    def __init__(self, app: Any, front: Front) -> None:
        self.app = app
        self.front = front

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        self.front.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.front.in_flight -= 1


class ReplayStream(trio.abc.HalfCloseableStream):
    """A socket stream that first gives back bytes already read from it (for hypercorn)."""

    def __init__(self, stream: Any, prefix: bytes, sock: trio.socket.SocketType) -> None:
        self._stream = stream
        self._prefix = prefix
        #: the connection's socket (``_close_when_cancelled`` closes it)
        self.socket = sock

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._prefix:
            data, self._prefix = self._prefix, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self._stream.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stream.send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


class ReplayTLSStream(ReplayStream):
    """``ReplayStream`` over a TLS stream whose handshake is done: hypercorn's
    ``TCPServer`` tells a TLS connection by these methods (it then serves ``https`` and
    ``wss`` scopes), and finds no ``send_eof`` on it (TLS has no half-close here)."""

    def __init__(self, stream: TLSStream, prefix: bytes, sock: trio.socket.SocketType) -> None:
        super().__init__(stream, prefix, sock)
        self.transport_stream = stream.transport_stream

    async def do_handshake(self) -> None:
        await self._stream.do_handshake()  # done already: returns at once

    def selected_alpn_protocol(self) -> str | None:
        return self._stream.selected_alpn_protocol()  # type: ignore[no-any-return]

    async def send_eof(self) -> None:
        raise AttributeError("send_eof")  # what hypercorn expects of a TLS stream
