"""The buffers role: Seamless's hashserver 1.1 protocol at ``/buffers``.

Every route translates HTTP into one call on the BufferService and back; the logic lives
in the store. GET and PUT of one buffer, nearly all of a buffer server's traffic, are
fast routes served below Quart (node.web.fastpath); the rest are Quart routes. Answers follow hashserver (see docs/api.md), minus its bugs: a compressed
body is sent only to a client whose Accept-Encoding lists the encoding, ``/buffer-length``
never answers ``true``, and promise waits end with the node.
"""

from __future__ import annotations

import json
import logging

from quart import Blueprint, Response, request

from ..checksum import parse_checksum, parse_checksum_list
from ..store.compression import accepted_encodings, parse_content_encoding
from ..store.service import PutOutcome, SmallBuffer
from ..web.body import BodyLimits, read_json
from ..web.fastpath import FastRoute, route
from ..web.fastpath import Request as FastRequest
from ..web.fastpath import Response as FastResponse
from .base import Role

log = logging.getLogger("seamless_node.buffers")

_OUTCOME_STATUS = {PutOutcome.CREATED: 200, PutOutcome.EXISTED: 201}


def json_response(value: object, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, content_type="application/json")


class BuffersRole(Role):
    name = "buffers"
    prefix = "/buffers"

    @property
    def upload_limits(self) -> BodyLimits:
        cfg = self.context.config.buffers
        return BodyLimits(
            max_bytes=None,  # compressed bodies may be larger or smaller: the store checks
            idle_timeout=cfg.upload_idle_timeout,
            min_rate=float(cfg.upload_min_rate),
            grace=cfg.upload_grace,
        )

    @property
    def query_limits(self) -> BodyLimits:
        cfg = self.context.config.buffers
        # 64 hex characters, quotes and a separator per checksum, with headroom
        return BodyLimits(max_bytes=cfg.max_batch_count * 72 + 1024, idle_timeout=cfg.upload_idle_timeout)

    async def checksum_list(self) -> list[str]:
        value = await read_json(request, self.query_limits)
        return parse_checksum_list(value, max_items=self.context.config.buffers.max_batch_count)

    def fast_routes(self) -> list[FastRoute]:
        return [
            route("GET", r"/buffers/(?!(?:has|has-now|buffer-length|healthcheck)$)([^/]*)", self.get_buffer),
            route("PUT", r"/buffers/([^/]*)", self.put_buffer),
            # seamless-core's close-time buffer writer drops the base URL's path (below)
            route("PUT", r"/([0-9a-f]{64})", self.put_buffer),
        ]

    async def get_buffer(self, request: FastRequest) -> FastResponse:
        checksum = parse_checksum(request.match.group(1))
        service = self.context.buffers
        accept = accepted_encodings(request.headers.get("accept-encoding"))
        found = await service.get(checksum, accept)
        if found is None and await self.context.fetch_missing(checksum):
            found = await service.get(checksum, accept)  # fetched from a peer, verified
        if found is None:
            return FastResponse(404, b"Not found")
        headers = {"Content-Encoding": found.encoding} if found.encoding else {}
        if isinstance(found, SmallBuffer):
            self.context.metrics.inc("seamless_node_buffer_bytes_sent_total", len(found.data))
            return FastResponse(200, found.data, headers, "application/octet-stream")
        if found.content_length is not None:
            headers["Content-Length"] = str(found.content_length)
            self.context.metrics.inc("seamless_node_buffer_bytes_sent_total", found.content_length)
        return FastResponse(200, found, headers, "application/octet-stream")

    async def put_buffer(self, request: FastRequest) -> FastResponse:
        checksum = parse_checksum(request.match.group(1))
        service = self.context.buffers
        cfg = self.context.config.buffers
        if service.readonly:
            return FastResponse(405, b"this node's buffer store is read-only")
        encoding = parse_content_encoding(request.headers.get("content-encoding"))
        length = request.content_length
        if encoding is None and length is not None and length > cfg.max_buffer_size:
            message = (
                f"buffer of {length} bytes is over this node's maximum buffer size "
                f"({cfg.max_buffer_size} bytes)"
            )
            return FastResponse(413, message.encode())
        outcome = await service.put_stream(
            checksum, request.body(self.upload_limits), encoding=encoding, expected_size=length
        )
        if outcome is PutOutcome.CREATED:
            self.context.metrics.inc("seamless_node_buffers_stored_total")
            if length:
                self.context.metrics.inc("seamless_node_buffer_bytes_received_total", length)
        return FastResponse(_OUTCOME_STATUS[outcome], b"OK")

    def blueprints(self) -> list[Blueprint]:
        bp = Blueprint("buffers", __name__, url_prefix=self.prefix)
        service = self.context.buffers

        @bp.route("/healthcheck", methods=["GET"])
        async def healthcheck() -> Response:
            return Response("OK", content_type="text/plain")

        @bp.route("/has", methods=["GET", "POST"])
        async def has() -> Response:
            return json_response(await service.has(await self.checksum_list()))

        @bp.route("/has-now", methods=["GET", "POST"])
        async def has_now() -> Response:
            checksums = await self.checksum_list()
            return json_response(await service.has(checksums, include_pending=False))

        @bp.route("/buffer-length", methods=["GET", "POST"])
        async def buffer_length() -> Response:
            return json_response(await service.lengths(await self.checksum_list()))

        @bp.route("/promise/<checksum>", methods=["PUT"])
        async def promise(checksum: str) -> Response:
            parse_checksum(checksum)
            if service.readonly:
                return Response("this node's buffer store is read-only", status=405)
            ttl = service.pending.promise(checksum)
            return json_response({"checksum": checksum, "expires_in": ttl}, status=202)

        # seamless-transformer's `seamless-upload` checks for existing buffers at
        # <scheme>://<host>:<port>/has, dropping the base URL's path, and seamless-core's
        # close-time buffer writer calls /has-now and PUT /<checksum> there: answering at
        # the root too (with the same scopes) keeps their buffers from being lost.
        compat = Blueprint("buffers_root_compat", __name__)
        compat.add_url_rule("/has", "has", has, methods=["GET", "POST"])
        compat.add_url_rule("/has-now", "has_now", has_now, methods=["GET", "POST"])

        from .buffers_api import buffers_api_blueprint

        return [bp, compat, buffers_api_blueprint(self)]
