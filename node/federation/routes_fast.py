"""``GET /federation/buffers/<cs>`` as a fast route (see web/fastpath.py and web/front.py).

A peer fetching a large buffer is the federation's bulk transfer. Served as a fast route,
it passes the same Gate as the Quart route it shadows (``routes.py``), and a stored file
the node verified recently and that is unchanged since goes out by ``sendfile`` from the
front (``store/verified.py``); every other file is hashed as it streams, as before.
"""

from __future__ import annotations

import json
from typing import Any, AsyncIterator

from ..checksum import parse_checksum
from ..store.service import SmallBuffer, StreamedBuffer
from ..web.fastpath import FastRoute, Request, Response, route
from .gate import Admission, Refusal
from .peers import REFUSAL_HEADER

OCTETS = "application/octet-stream"


class _Headers(dict[str, str]):
    """Lower-cased request headers that also answer mixed-case lookups."""

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)


def _target(request: Request) -> str:
    scope = request.scope
    raw = scope.get("raw_path") or request.path.encode()
    query = scope.get("query_string") or b""
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


def refusal_response(exc: Refusal) -> Response:
    body = json.dumps({"error": exc.reason, "detail": exc.detail}).encode()
    return Response(exc.http_status, body, {REFUSAL_HEADER: exc.reason}, "application/json")


class ServedBuffer:
    """A large buffer on its way to a peer: counted, and the peer's concurrency slot
    released when it has gone out (whichever way it goes out)."""

    def __init__(self, found: StreamedBuffer, admission: Admission, metrics: Any) -> None:
        self._found = found
        self._admission = admission
        self._metrics = metrics
        self.content_length = found.content_length

    def _count(self, nbytes: int) -> None:
        self._metrics.inc("seamless_node_federation_bytes_served_total", nbytes, peer=self._admission.label)

    def file_for_sendfile(self) -> tuple[int, int] | None:
        file = self._found.file_for_sendfile()
        if file is not None:
            self._count(file[1])
        return file

    def close(self) -> None:
        self._found.close()
        self._admission.release()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._found:
                self._count(len(chunk))
                yield chunk
        finally:
            self._admission.release()


def federation_fast_routes(service: Any) -> list[FastRoute]:
    gate = service.gate
    buffers = service.context.buffers
    metrics = service.context.metrics

    async def get_buffer(request: Request) -> Response:
        try:
            admission = await gate.admit(
                method="GET",
                target=_target(request),
                headers=_Headers(request.headers),
                body_sha256=None,
                capability="buffers:read",
            )
        except Refusal as exc:
            return refusal_response(exc)
        try:
            checksum = parse_checksum(request.match.group(1))
            found = await buffers.get(checksum, set(), wait_pending=False)
        except BaseException:
            admission.release()
            raise
        if found is None:
            admission.release()
            return Response(404, b"Not found")
        if isinstance(found, SmallBuffer):
            admission.release()
            metrics.inc("seamless_node_federation_bytes_served_total", len(found.data), peer=admission.label)
            return Response(200, found.data, None, OCTETS)
        headers = {}
        if found.content_length is not None:
            headers["Content-Length"] = str(found.content_length)
        return Response(200, ServedBuffer(found, admission, metrics), headers, OCTETS)

    return [route("GET", r"/federation/buffers/(?!has$)([^/]*)", get_buffer)]
