"""The database role: seamless-database 2.x at ``/database`` (docs/database.md).

Upstream's wire format, exactly: a JSON request body sent with GET (read) or PUT (write)
to any path under the prefix; answers are ``text/plain``: the bare hex string for
``transformation``, ``expression`` and ``compilation`` reads, JSON for dicts and lists,
``OK`` for writes, and ``ERROR: ...`` texts with upstream's status codes (404 ``ERROR:
Unknown key``, 400 ``ERROR: Malformed request...``, 405 read-only, 409 conflicts).

Unlike upstream, no request makes the node answer 500: malformed JSON, a body that is
not an object, wrong field types, bad checksums and unknown types get 400 with a message
naming the problem; an oversize body gets 413. Each route only translates HTTP to one
MappingService call and back. The protocol's routes are fast routes, served below Quart
(node.web.fastpath): one small request per lookup is how Seamless clients use a database.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import trio
from quart import Blueprint, Response

from ..errors import NodeError
from ..store.mapping_requests import MalformedRequest, Query, check_depth, parse_query, parse_update
from ..store.mapping_service import MappingService
from ..store.mappings import MappingStore
from ..web.body import BadRequest, BodyLimits
from ..web.fastpath import FastRoute, route
from ..web.fastpath import Request as FastRequest
from ..web.fastpath import Response as FastResponse
from .base import NodeContext, Role

log = logging.getLogger("seamless_node.database")

TEXT = "text/plain; charset=utf-8"


def text_response(body: str, status: int = 200) -> FastResponse:
    return FastResponse(status, body.encode(), content_type=TEXT)


def error_text(exc: NodeError) -> FastResponse:
    """An error as upstream words it: ``ERROR: <message>``."""
    message = str(exc)
    if isinstance(exc, BadRequest):  # the body is not JSON at all
        message = f"Malformed request: {message}"
    return text_response("ERROR: " + message, exc.http_status)


class DatabaseRole(Role):
    name = "database"
    prefix = "/database"

    def __init__(self, context: NodeContext) -> None:
        super().__init__(context)
        cfg = context.config.database
        store = MappingStore(
            context.config.database_path,
            readonly=cfg.readonly,
            extra_files=cfg.extra_files,
            synchronous=cfg.synchronous,
            readers=cfg.threads,
        )
        self.service = MappingService(store, loop_reads=cfg.loop_reads)
        context.mappings = self.service
        metrics = context.metrics
        metrics.describe("seamless_node_database_requests_total", "database requests, by operation and type")
        metrics.counter(
            "seamless_node_database_transactions_total",
            lambda: self.service.transactions,
            "write transactions committed",
        )
        metrics.counter(
            "seamless_node_database_updates_written_total",
            lambda: self.service.updates_written,
            "database writes committed",
        )

    @property
    def limits(self) -> BodyLimits:
        return BodyLimits(max_bytes=self.context.config.database.max_request_bytes, idle_timeout=30.0)

    async def start(self, nursery: trio.Nursery) -> None:
        await self.service.open()
        await nursery.start(self.service.run)
        store = self.service.store
        state = f"read-only: {store.readonly_reason}" if store.readonly else "writable"
        extra = f", {len(store.extra_files)} extra file(s)" if store.extra_files else ""
        log.info("database %s (%s%s)", store.path, state, extra)

    async def aclose(self) -> None:
        await self.service.aclose()

    def fast_routes(self) -> list[FastRoute]:
        # every path under the prefix is a request, as upstream (except the healthcheck)
        return [
            route("GET", r"/database(?!/healthcheck$)(?:/.*)?", self.read),
            route("PUT", r"/database(?:/.*)?", self.write),
        ]

    async def read_query(self, query: Query) -> Any:
        """One read; a transformation unknown here may be answered by a signed claim of a
        peer this node trusts for results (``NodeContext.lookup_result``), never by
        another peer's claim."""
        value = await self.service.read(query)
        if value is None and query.type == "transformation" and query.checksum:
            answer = await self.context.lookup_result(query.checksum)
            value = answer.result if answer is not None else None
        return value

    async def read_queries(self, queries: list[Query]) -> list[Any]:
        """Reads in one database call, then the transformations unknown here looked up
        as claims (see ``read_query``) in one batch: each peer is asked once."""
        values = list(await self.service.read_many(queries))
        unknown = [
            i
            for i, (query, value) in enumerate(zip(queries, values, strict=True))
            if value is None and query.type == "transformation" and query.checksum
        ]
        if unknown:
            answers = await self.context.lookup_results([str(queries[i].checksum) for i in unknown])
            for i, answer in zip(unknown, answers, strict=True):
                if answer is not None:
                    values[i] = answer.result
        return values

    async def _request_body(self, request: FastRequest) -> object:
        try:
            body = await request.read_json(self.limits)
        except RecursionError:
            raise MalformedRequest("Malformed request: JSON nested too deeply") from None
        check_depth(body)
        return body

    async def read(self, request: FastRequest) -> FastResponse:
        try:
            query = parse_query(await self._request_body(request))
            self.context.metrics.inc("seamless_node_database_requests_total", op="read", type=query.type)
            value = await self.read_query(query)
        except NodeError as exc:
            return error_text(exc)
        if value is None:
            return text_response("ERROR: Unknown key", 404)
        return text_response(value if isinstance(value, str) else json.dumps(value))

    async def write(self, request: FastRequest) -> FastResponse:
        service = self.service
        if service.readonly:
            reason = service.store.readonly_reason
            return text_response(f"ERROR: Database server is read-only ({reason})", 405)
        try:
            update = parse_update(await self._request_body(request))
            self.context.metrics.inc("seamless_node_database_requests_total", op="write", type=update.type)
            outcome = await service.write(update)
        except NodeError as exc:
            return error_text(exc)
        if outcome.ok:
            return text_response("OK")
        return text_response("ERROR: " + outcome.message, outcome.status)

    def blueprints(self) -> list[Blueprint]:
        bp = Blueprint("database", __name__, url_prefix=self.prefix)

        @bp.route("/healthcheck", methods=["GET"])
        async def healthcheck() -> Response:
            return Response("OK", content_type=TEXT)

        from .database_api import database_api_blueprint

        return [bp, database_api_blueprint(self)]
