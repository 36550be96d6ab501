"""The node's own database API under ``/api/v1/database``: POST, JSON in and out.

Requests have the same shape as upstream's (``{"type": ..., "checksum": ..., ...}``);
answers are JSON and use ordinary status codes:

``POST /read``        one read request -> 200 ``{"value": ...}``, 404 ``{"error": "Unknown key"}``
                      (a transformation unknown here is answered, as at ``/database``, by
                      a signed claim of a peer trusted for results, never another's)
``POST /write``       one write request -> 200 ``{"status": 200}``; a refusal keeps upstream's
                      status and text: 409 ``{"status": 409, "error": "..."}``
``POST /read-many``   ``{"requests": [read, ...]}`` -> 200 ``{"values": [value or null, ...]}``
``POST /write-many``  ``{"requests": [write, ...]}`` -> 200 ``{"results": [{"status": 200}, ...]}``;
                      all in one transaction, committed before the answer
``GET  /info``        protocol, read-only state, number of extra files, rows per table

A batch is validated whole before anything is read or written: one malformed request
gets 400 naming its index, and nothing happens. Over ``database.max_batch_count``
requests, or ``database.max_request_bytes`` of body: 413.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from quart import Blueprint, Request, Response, request

from ..errors import NodeError
from ..store.mapping_requests import PROTOCOL, MalformedRequest, check_depth, parse_query, parse_update
from ..web.body import BodyLimits, read_json

if TYPE_CHECKING:
    from .database import DatabaseRole

T = TypeVar("T")


class BatchTooLarge(NodeError):
    http_status = 413


async def read_request(request: Request, limits: BodyLimits) -> object:
    """The JSON body of a database request, refused (400) when too deeply nested."""
    try:
        body = await read_json(request, limits)
    except RecursionError:
        raise MalformedRequest("Malformed request: JSON nested too deeply") from None
    check_depth(body)
    return body


def json_response(value: object, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, content_type="application/json")


def json_error(exc: NodeError) -> Response:
    return json_response({"status": exc.http_status, "error": str(exc)}, exc.http_status)


def database_api_blueprint(role: "DatabaseRole") -> Blueprint:
    bp = Blueprint("database_api", __name__, url_prefix="/api/v1/database")
    service = role.service
    cfg = role.context.config.database

    async def batch(parse: Callable[[object], T]) -> list[T]:
        body = await read_request(request, role.limits)
        if not isinstance(body, dict) or not isinstance(body.get("requests"), list):
            raise MalformedRequest('Malformed batch: expected {"requests": [...]}')
        items = body["requests"]
        if len(items) > cfg.max_batch_count:
            raise BatchTooLarge(f"too many requests in one batch: {len(items)} > {cfg.max_batch_count}")
        parsed = []
        for index, item in enumerate(items):
            try:
                parsed.append(parse(item))
            except MalformedRequest as exc:
                raise MalformedRequest(f"request {index}: {exc}") from None
        return parsed

    @bp.route("/read", methods=["POST"])
    async def read() -> Response:
        try:
            value = await role.read_query(parse_query(await read_request(request, role.limits)))
        except NodeError as exc:
            return json_error(exc)
        if value is None:
            return json_response({"status": 404, "error": "Unknown key"}, 404)
        return json_response({"value": value})

    @bp.route("/write", methods=["POST"])
    async def write() -> Response:
        try:
            outcome = await service.write(parse_update(await read_request(request, role.limits)))
        except NodeError as exc:
            return json_error(exc)
        if outcome.ok:
            return json_response({"status": 200})
        return json_response({"status": outcome.status, "error": outcome.message}, outcome.status)

    @bp.route("/read-many", methods=["POST"])
    async def read_many() -> Response:
        try:
            values = await role.read_queries(await batch(parse_query))
        except NodeError as exc:
            return json_error(exc)
        return json_response({"values": values})

    @bp.route("/write-many", methods=["POST"])
    async def write_many() -> Response:
        try:
            outcomes = await service.write_many(await batch(parse_update))
        except NodeError as exc:
            return json_error(exc)
        results: list[dict[str, Any]] = [
            {"status": 200} if o.ok else {"status": o.status, "error": o.message} for o in outcomes
        ]
        return json_response({"results": results})

    @bp.route("/info", methods=["GET"])
    async def info() -> Response:
        store = service.store
        try:
            counts = await service.counts()
        except NodeError as exc:
            return json_error(exc)
        return json_response(
            {
                "protocol": PROTOCOL,
                "readonly": store.readonly,
                "readonly_reason": store.readonly_reason,
                "extra_files": len(store.extra_files),
                "counts": counts,
            }
        )

    return bp
