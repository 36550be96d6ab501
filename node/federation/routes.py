"""HTTP routes: ``/federation/...`` (node to node, signed) and ``/api/v1/peers``.

Every ``/federation`` route except ``GET /federation/keys`` passes the Gate first (see
gate.py: 401 unauthenticated, 403 not granted, 429 over a limit) and only then reads a
body or touches the store. The routes translate HTTP to one call each:

==========================================  ===============  ==========================
route                                       capability       answer
==========================================  ===============  ==========================
GET  /federation/keys                       (none, public)   this node's key set
GET  /federation/ping                       (any peer)       {"node_id", "time"}
GET  /federation/revocations                (any peer)       this node's signed revocation list
POST /federation/buffers/has                buffers:read     [length or null, ...]
GET  /federation/buffers/<cs>               buffers:read     the bytes (404 if absent; a fast
                                                             route: routes_fast.py)
PUT  /federation/buffers/<cs>               buffers:write    200 stored / 201 present
POST /federation/results/lookup             results:read     [signed claim or null, ...]
POST /federation/results/claims             results:write    [status per claim]
POST /federation/jobs                       jobs:submit (+   run a job (executing.py):
                                            forward)         {"state": ...} when it ends
POST /federation/jobs/<cs>/cancel           (any peer)       {"cancelled": bool}
GET  /api/v1/peers                          (local API)      every peer's status
==========================================  ===============  ==========================

A buffer is served from the local store only, and a result from the local database only:
nothing is fetched or relayed on a peer's behalf (trust is not transitive).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import trio
from quart import Blueprint, Response, request

from ..checksum import EMPTY_CHECKSUM, parse_checksum, parse_checksum_list
from ..store.service import PutOutcome
from ..web.body import BodyLimits, body_chunks, read_body
from .gate import Admission, Refusal
from .peers import REFUSAL_HEADER
from .signing import Reason

_STORED = {PutOutcome.CREATED: 200, PutOutcome.EXISTED: 201}


def _json(value: Any, status: int = 200) -> Response:
    return Response(json.dumps(value), status=status, content_type="application/json")


def _target() -> str:
    raw = request.scope.get("raw_path") or request.path.encode()
    query = request.scope.get("query_string") or b""
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


def federation_blueprints(service: Any) -> list[Blueprint]:
    bp = Blueprint("federation", __name__, url_prefix="/federation")
    gate = service.gate
    buffers = service.context.buffers
    config = service.context.config
    query_limits = BodyLimits(max_bytes=config.buffers.max_batch_count * 72 + 1024, idle_timeout=30.0)

    async def admit(capability: str | None) -> Admission:
        return await gate.admit(
            method=request.method,
            target=_target(),
            headers=request.headers,
            body_sha256=None,
            capability=capability,
        )

    async def json_body(admission: Admission) -> Any:
        raw = await read_body(request, query_limits)
        if hashlib.sha256(raw).hexdigest() != request.headers.get("X-Seamless-Content-SHA256"):
            raise gate.refuse(
                401, Reason.BODY_MISMATCH.value, "the body does not match its signed hash", admission.origin
            )
        try:
            return json.loads(raw)
        except (ValueError, RecursionError):
            raise Refusal(400, "malformed-body", "expected a JSON body") from None

    @bp.errorhandler(Refusal)
    async def refused(exc: Refusal) -> Response:
        response = _json({"error": exc.reason, "detail": exc.detail}, exc.http_status)
        response.headers[REFUSAL_HEADER] = exc.reason
        return response

    @bp.route("/keys", methods=["GET"])
    async def keys() -> Response:
        return _json(service.watcher.identity.keyset.to_document())

    @bp.route("/ping", methods=["GET"])
    async def ping() -> Response:
        admission = await admit(None)
        service.seen(admission.origin)
        return _json(service.ping_answer())

    @bp.route("/revocations", methods=["GET"])
    async def revocations() -> Response:
        # any configured peer, linked or no longer: a peer whose every grant we revoked
        # must still be able to learn that
        await admit(None)
        signed = await trio.to_thread.run_sync(service.publisher.current)
        return _json(signed.to_document())

    @bp.route("/buffers/has", methods=["POST"])
    async def has() -> Response:
        admission = await admit("buffers:read")
        try:
            checksums = parse_checksum_list(
                await json_body(admission), max_items=config.buffers.max_batch_count
            )
            present = await buffers.has(checksums, include_pending=False)
            lengths = await buffers.lengths(checksums)
            return _json([size if here else None for here, size in zip(present, lengths, strict=True)])
        finally:
            admission.release()

    @bp.route("/buffers/<checksum>", methods=["PUT"])
    async def put_buffer(checksum: str) -> Response:
        admission = await admit("buffers:write")
        try:
            parse_checksum(checksum)
            if request.headers.get("X-Seamless-Content-SHA256") != checksum:
                # the buffer's name is its hash: the signed body hash must be it
                raise gate.refuse(
                    401, Reason.BODY_MISMATCH.value, "signed body hash is not the checksum", admission.origin
                )
            cfg = config.buffers
            limits = BodyLimits(
                max_bytes=cfg.max_buffer_size,
                idle_timeout=cfg.upload_idle_timeout,
                min_rate=float(cfg.upload_min_rate),
                grace=cfg.upload_grace,
            )
            outcome = await buffers.put_stream(checksum, body_chunks(request, limits))
            return Response("OK", status=_STORED[outcome], content_type="text/plain")
        finally:
            admission.release()

    @bp.route("/results/lookup", methods=["POST"])
    async def lookup() -> Response:
        admission = await admit("results:read")
        try:
            checksums = parse_checksum_list(
                await json_body(admission), max_items=config.database.max_batch_count
            )
            return _json(await service.results.answer(checksums))
        finally:
            admission.release()

    @bp.route("/results/claims", methods=["POST"])
    async def claims() -> Response:
        admission = await admit("results:write")
        try:
            docs = await json_body(admission)
            if not isinstance(docs, list) or len(docs) > config.database.max_batch_count:
                raise Refusal(400, "malformed-body", "expected a JSON list of claims")
            return _json(await service.results.accept_pushed(admission.origin, docs))
        finally:
            admission.release()

    receiver = service.receiver
    job_limits = BodyLimits(max_bytes=receiver.body_limit, idle_timeout=30.0)

    @bp.route("/jobs", methods=["POST"])
    async def run_job() -> Response:
        admission = await gate.admit_job(method=request.method, target=_target(), headers=request.headers)
        try:
            raw = await read_body(request, job_limits)
            if hashlib.sha256(raw).hexdigest() != request.headers.get("X-Seamless-Content-SHA256"):
                raise gate.refuse(
                    401, Reason.BODY_MISMATCH.value, "the body does not match its signed hash",
                    admission.origin,
                )
            try:
                body = json.loads(raw)
            except (ValueError, RecursionError):
                raise Refusal(400, "malformed-body", "expected a JSON body") from None
            return _json(await receiver.run(admission, body))
        finally:
            admission.release()

    @bp.route("/jobs/<checksum>/cancel", methods=["POST"])
    async def cancel_job(checksum: str) -> Response:
        admission = await admit(None)
        parse_checksum(checksum)
        return _json({"cancelled": receiver.cancel(admission.origin, checksum)})

    api = Blueprint("federation_api", __name__, url_prefix="/api/v1")

    @api.route("/peers", methods=["GET"])
    async def peers() -> Response:
        await service.watcher.refresh()
        problems = list(service.watcher.state.problems)
        return _json({"node_id": service.node_id, "peers": service.report(), "problems": problems})

    @api.route("/peers/results/<checksum>", methods=["GET"])
    async def peer_result(checksum: str) -> Response:
        parse_checksum(checksum)
        answer = await service.lookup_result(checksum)
        if answer is None:
            return _json({"error": "unknown transformation"}, 404)
        return _json(answer.to_json())

    @api.route("/peers/fetch/<checksum>", methods=["POST"])
    async def peer_fetch(checksum: str) -> Response:
        parse_checksum(checksum)
        if checksum == EMPTY_CHECKSUM or await service.fetch_missing(checksum):
            return _json({"checksum": checksum, "present": True})
        return _json({"checksum": checksum, "present": False}, 404)

    return [bp, api]
