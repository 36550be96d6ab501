"""One line per answered request, and the request metrics, for both HTTP paths.

Theory of operation
-------------------

A request is answered either by the front (``front.py``, straight on the socket) or by
hypercorn (the ASGI app: fast routes, then Quart). Both report to one ``RequestLog``:

* the front calls ``RequestLog.front`` around each request it serves and
  ``RequestLog.answering`` when it sends the answer's head;
* hypercorn's app is wrapped in ``LogRequests``, an ASGI middleware that watches the
  ``send`` messages (status, body bytes) of every request and websocket handshake.

When a request ends (answered, cut, or failed), ``RequestLog.finished`` counts it in
``seamless_node_http_requests_total{area,status}``, adds its duration to
``seamless_node_http_request_duration_seconds{area}`` and, unless ``node.access_log`` is
off, logs one line at info on the ``seamless_node.requests`` logger::

    127.0.0.1:50312 "GET /buffers/9f86...08 HTTP/1.1" 200 5 0.0004s

The method, path and query are what the client sent, escaped by ``printable``: a
``%0a`` stays ``%0a``, raw control characters, quotes, backslashes and bytes outside
ASCII become ``\\xNN``, so no request can forge a log line or break a quoted field. A
``/t/<token>/`` path prefix is logged as ``/t/<redacted>/``. The same values go to the
JSON log format (``node.log_format: json``) as separate fields.

``route_area`` is the one metrics label function: it maps any path to one of a fixed set
of route areas, so no client can create a metrics series.
"""

from __future__ import annotations

import logging
import re
import time
import weakref
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator

from ..metrics import REQUEST_BUCKETS, Metrics

log = logging.getLogger("seamless_node.requests")

REQUESTS = "seamless_node_http_requests_total"
DURATION = "seamless_node_http_request_duration_seconds"

#: the route areas: the label values of the request metrics
AREAS = frozenset(
    {"buffers", "database", "jobserver", "api", "federation", "healthcheck", "metrics", "root", "other"}
)
#: hashserver routes a client may call at the host root (they are the buffer protocol)
_BUFFER_ROOT = frozenset({"has", "has-now", "buffer-length", "promise", "buffer"})
_CHECKSUM = re.compile(r"[0-9a-f]{64}")
_TOKEN_PREFIX = re.compile(rb"^/t/[^/]*")
#: longest path (with query) logged; the rest is replaced by "..."
MAX_LOGGED_PATH = 2048


def route_area(path: str) -> str:
    """The route area of *path* (percent-decoded or raw): always one of ``AREAS``."""
    if path.startswith("/t/"):  # a token prefix: the area is that of the rest
        rest = path.find("/", 3)
        path = path[rest:] if rest >= 0 else "/"
    first = path.split("/", 2)[1] if path.startswith("/") else ""
    if first in AREAS and first not in ("root", "other"):
        return first
    if not first:
        return "root"
    if first in _BUFFER_ROOT or _CHECKSUM.fullmatch(first):
        return "buffers"
    return "other"


def printable(raw: bytes | str, limit: int = MAX_LOGGED_PATH) -> str:
    """*raw* as one log-safe token: printable ASCII kept, except ``"`` and ``\\``; every
    other byte (controls, spaces, non-ASCII) as ``\\xNN``; cut at *limit* bytes."""
    data = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else bytes(raw)
    cut = len(data) > limit
    text = data[:limit].decode("latin-1")
    if not _UNSAFE.search(text):
        return text + ("..." if cut else "")
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group(0)):02x}", text) + ("..." if cut else "")


_UNSAFE = re.compile(r'[^\x21-\x7e]|["\\]')


def logged_target(raw_path: bytes, query: bytes) -> str:
    """The request target as logged: the token prefix redacted, escaped."""
    if raw_path.startswith(b"/t/"):
        raw_path = _TOKEN_PREFIX.sub(b"/t/<redacted>", raw_path, count=1)
    target = raw_path + (b"?" + query if query else b"")
    return printable(target)


class _Entry:
    __slots__ = ("method", "raw_path", "query", "client", "started", "status", "length")

    def __init__(self, method: str, raw_path: bytes, query: bytes, client: Any) -> None:
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.client = client
        self.started = time.perf_counter()
        self.status = 0
        self.length: int | None = 0


class RequestLog:
    def __init__(self, metrics: Metrics, *, enabled: bool = True) -> None:
        self.metrics = metrics
        #: node.access_log: log a line per request (metrics are kept either way)
        self.enabled = enabled
        metrics.describe(REQUESTS, "HTTP requests answered, by route area and status")
        metrics.histogram(DURATION, "time to answer a request, by route area (seconds)", REQUEST_BUCKETS)
        self._front: weakref.WeakKeyDictionary[Any, _Entry] = weakref.WeakKeyDictionary()

    # ----------------------------------------------------------------- the front

    @contextmanager
    def front(self, request: Any) -> Iterator[None]:
        """Around one request the front serves (a ``FrontRequest``)."""
        head = request.head
        entry = _Entry(head.method, head.raw_path, head.query, request.connection.peer())
        self._front[request] = entry
        try:
            yield
        finally:
            self._front.pop(request, None)
            self.finished(entry, "HTTP/1.1")

    def answering(self, request: Any, response: Any) -> None:
        """The front is sending *response* (a ``fastpath.Response``) to *request*."""
        entry = self._front.get(request)
        if entry is None:
            return
        entry.status = response.status
        body = response.body
        if isinstance(body, (bytes, bytearray)):
            entry.length = len(body)
        else:
            declared = (response.headers or {}).get("Content-Length") or (response.headers or {}).get(
                "content-length"
            )
            entry.length = int(declared) if declared and declared.isdigit() else None

    # ------------------------------------------------------------------ shared

    def finished(self, entry: _Entry, version: str) -> None:
        seconds = time.perf_counter() - entry.started
        path = entry.raw_path.decode("latin-1")
        area = route_area(path)
        status = entry.status or 499  # no answer was sent: the client went away first
        self.metrics.inc(REQUESTS, area=area, status=str(status))
        self.metrics.observe(DURATION, seconds, area=area)
        if not self.enabled or not log.isEnabledFor(logging.INFO):
            return
        client = _client(entry.client)
        method = printable(entry.method, 32)
        target = logged_target(entry.raw_path, entry.query)
        length = "-" if entry.length is None else str(entry.length)
        # one record per request: made directly (no caller lookup, message formatted once)
        record = log.makeRecord(
            log.name, logging.INFO, __file__, 0,
            f'{client} "{method} {target} {version}" {status} {length} {seconds:.4f}s', (), None,
        )
        record.fields = {
            "event": "request", "client": client, "method": method, "path": target,
            "status": status, "bytes": entry.length, "duration": round(seconds, 6),
        }
        log.handle(record)


def _client(address: Any) -> str:
    if not address:
        return "-"
    try:
        host, port = address[0], address[1]
    except (TypeError, IndexError):
        return printable(str(address), 128)
    return f"{printable(str(host), 128)}:{port}"


Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class LogRequests:
    """ASGI middleware: reports every request hypercorn answers to a ``RequestLog``."""

    def __init__(self, app: Any, requests: RequestLog) -> None:
        self.app = app
        self.requests = requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope.get("path", "").encode("utf-8", "surrogateescape")
        method = scope.get("method", "GET") if scope["type"] == "http" else "WEBSOCKET"
        entry = _Entry(method, raw_path, scope.get("query_string") or b"", scope.get("client"))

        async def watching(message: dict[str, Any]) -> None:
            kind = message["type"]
            if kind in ("http.response.start", "websocket.http.response.start"):
                entry.status = int(message.get("status", 0))
            elif kind in ("http.response.body", "websocket.http.response.body") and entry.length is not None:
                entry.length += len(message.get("body") or b"")
            elif kind == "websocket.accept":
                entry.status = 101
            await send(message)

        try:
            await self.app(scope, receive, watching)
        finally:
            self.requests.finished(entry, f"HTTP/{scope.get('http_version', '1.1')}")
