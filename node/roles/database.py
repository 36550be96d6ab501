"""The database role: seamless-database 2.x at ``/database`` (protocols.md section 4).

Upstream's wire format, exactly: a JSON request body sent with GET (read) or PUT (write)
to any path under the prefix; answers are ``text/plain``: the bare hex string for
``transformation``, ``expression`` and ``compilation`` reads, JSON for dicts and lists,
``OK`` for writes, and ``ERROR: ...`` texts with upstream's status codes (404 ``ERROR:
Unknown key``, 400 ``ERROR: Malformed request...``, 405 read-only, 409 conflicts).

Unlike upstream, no request makes the node answer 500: malformed JSON, a body that is
not an object, wrong field types, bad checksums and unknown types get 400 with a message
naming the problem; an oversize body gets 413. Each route only translates HTTP to one
MappingService call and back.
"""

from __future__ import annotations

import json
import logging

import trio
from quart import Blueprint, Request, Response, request

from ..errors import NodeError
from ..store.mapping_requests import MalformedRequest, check_depth, parse_query, parse_update
from ..store.mapping_service import MappingService
from ..store.mappings import MappingStore
from ..web.body import BadRequest, BodyLimits, read_json
from .base import NodeContext, Role

log = logging.getLogger("seamless_node.database")

TEXT = "text/plain; charset=utf-8"


def text_response(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type=TEXT)


def error_text(exc: NodeError) -> Response:
    """An error as upstream words it: ``ERROR: <message>``."""
    message = str(exc)
    if isinstance(exc, BadRequest):  # the body is not JSON at all
        message = f"Malformed request: {message}"
    return text_response("ERROR: " + message, exc.http_status)


async def read_request(request: Request, limits: BodyLimits) -> object:
    """The JSON body of a database request, refused (400) when too deeply nested."""
    try:
        body = await read_json(request, limits)
    except RecursionError:
        raise MalformedRequest("Malformed request: JSON nested too deeply") from None
    check_depth(body)
    return body


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
        self.service = MappingService(store)
        context.mappings = self.service
        metrics = context.metrics
        metrics.describe("seamless_node_database_requests_total", "database requests, by operation and type")
        metrics.gauge(
            "seamless_node_database_transactions",
            lambda: self.service.transactions,
            "write transactions committed",
        )
        metrics.gauge(
            "seamless_node_database_updates_written",
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

    def blueprints(self) -> list[Blueprint]:
        bp = Blueprint("database", __name__, url_prefix=self.prefix)
        service = self.service
        metrics = self.context.metrics

        @bp.route("/healthcheck", methods=["GET"])
        async def healthcheck() -> Response:
            return text_response("OK")

        @bp.route("", methods=["GET"])
        @bp.route("/", methods=["GET"])
        @bp.route("/<path:_tail>", methods=["GET"])
        async def read(_tail: str = "") -> Response:
            try:
                query = parse_query(await read_request(request, self.limits))
                metrics.inc("seamless_node_database_requests_total", op="read", type=query.type)
                value = await service.read(query)
            except NodeError as exc:
                return error_text(exc)
            if value is None:
                return text_response("ERROR: Unknown key", 404)
            return text_response(value if isinstance(value, str) else json.dumps(value))

        @bp.route("", methods=["PUT"])
        @bp.route("/", methods=["PUT"])
        @bp.route("/<path:_tail>", methods=["PUT"])
        async def write(_tail: str = "") -> Response:
            if service.readonly:
                reason = service.store.readonly_reason
                return text_response(f"ERROR: Database server is read-only ({reason})", 405)
            try:
                update = parse_update(await read_request(request, self.limits))
                metrics.inc("seamless_node_database_requests_total", op="write", type=update.type)
                outcome = await service.write(update)
            except NodeError as exc:
                return error_text(exc)
            if outcome.ok:
                return text_response("OK")
            return text_response("ERROR: " + outcome.message, outcome.status)

        from .database_api import database_api_blueprint

        return [bp, database_api_blueprint(self)]
