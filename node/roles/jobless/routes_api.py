"""The node's own job API under ``/api/v1/jobs`` (JSON in and out).

========================================  ===============================================
``POST   /api/v1/jobs``                   ``{"transformation": {...}[, "tf_dunder": {}]}``
                                          or ``{"checksum": cs}`` (a transformation dict
                                          in the buffer store): 202 ``{"job": ...}``
                                          (200 when already done); ``?wait=S`` waits up
                                          to S seconds for the end. The job id is the
                                          transformation checksum (``Location`` header)
``GET    /api/v1/jobs``                   recent jobs, the backend's slots and counters
``GET    /api/v1/jobs/<cs>``              state, timings, error text, result checksum;
                                          ``?wait=S`` as above; 404 for an unknown job
``DELETE /api/v1/jobs/<cs>``              soft cancel (drop one waiter; the job dies when
                                          none is left); ``?hard=1`` kills it regardless
``WS     /api/v1/jobs/<cs>/events``       one JSON message per state change, from the
                                          current state to the end
========================================  ===============================================

A submission holds the job (it is one of its waiters) until a DELETE releases it.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, request, websocket

from ...checksum import is_checksum
from ...errors import NodeError
from ...transformation import TransformationError, transformation_buffer
from ...web.body import BodyLimits, read_json
from .gateway import InputMissing
from .service import Job

if TYPE_CHECKING:
    from .role import JoblessRole

LIMITS = BodyLimits(max_bytes=64 * 1024**2, idle_timeout=30.0)
#: how long a submission waits for the cache lookup before answering "queued"
CHECK_WAIT = 5.0
MAX_WAIT = 3600.0


def json_response(value: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(value), status=status, content_type="application/json", headers=headers)


def json_error(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


def _wait_seconds() -> float:
    raw = request.args.get("wait")
    if raw is None:
        return 0.0
    try:
        return min(max(float(raw), 0.0), MAX_WAIT)
    except ValueError:
        return 0.0


async def _await_end(job: Job, seconds: float) -> None:
    if seconds > 0:
        with trio.move_on_after(seconds):
            await job.done.wait()


def jobs_api_blueprint(role: "JoblessRole") -> Blueprint:
    bp = Blueprint("jobs_api", __name__, url_prefix="/api/v1/jobs")

    @bp.route("", methods=["POST"])
    async def submit() -> Response:
        service = role.service
        try:
            body = await read_json(request, LIMITS)
            transformation, tf_dunder = await _transformation_of(role, body)
            job, _waiter = await service.submit(transformation, tf_dunder, kind="api")
        except TransformationError as exc:
            return json_error(f"invalid transformation: {exc}", 400)
        except InputMissing as exc:
            return json_error(str(exc), 404)
        except NodeError as exc:
            return json_error(str(exc), exc.http_status)
        with trio.move_on_after(CHECK_WAIT):
            await job.checked.wait()
        await _await_end(job, _wait_seconds())
        status = 200 if job.state.terminal else 202
        return json_response({"job": job.snapshot()}, status, {"Location": f"/api/v1/jobs/{job.checksum}"})

    @bp.route("", methods=["GET"])
    async def listing() -> Response:
        service = role.service
        try:
            limit = max(1, min(int(request.args.get("limit", "100")), 10_000))
        except ValueError:
            return json_error("limit must be a whole number", 400)
        return json_response({
            "jobs": [job.snapshot() for job in service.jobs(limit)],
            "backend": service.backend.info(),
            "counts": dict(service.counts),
        })

    @bp.route("/<checksum>", methods=["GET"])
    async def status(checksum: str) -> Response:
        if not is_checksum(checksum):
            return json_error(f"not a checksum: {checksum!r:.80}", 400)
        job = role.service.get(checksum)
        if job is None:
            return json_error(f"no job for transformation {checksum}", 404)
        await _await_end(job, _wait_seconds())
        return json_response({"job": job.snapshot()})

    @bp.route("/<checksum>", methods=["DELETE"])
    async def cancel(checksum: str) -> Response:
        if not is_checksum(checksum):
            return json_error(f"not a checksum: {checksum!r:.80}", 400)
        service = role.service
        if service.get(checksum) is None:
            return json_error(f"no job for transformation {checksum}", 404)
        hard = request.args.get("hard", "0").lower() in ("1", "true", "yes")
        cancelled = service.cancel(checksum, hard=hard, kind="api")
        job = service.get(checksum)
        assert job is not None
        return json_response({"cancelled": cancelled, "job": job.snapshot()})

    @bp.websocket("/<checksum>/events")
    async def events(checksum: str) -> None:
        job = role.service.get(checksum) if is_checksum(checksum) else None
        if job is None:
            await websocket.accept()
            await websocket.send(json.dumps({"error": f"no job for transformation {checksum:.80}"}))
            await websocket.close(1008)
            return
        receive = role.service.subscribe(job)
        await websocket.accept()
        async with receive:
            async for event in receive:
                await websocket.send(json.dumps({
                    "checksum": event.checksum, "state": event.state, "time": event.time,
                    "result": event.result, "error": event.error,
                }))
        await websocket.close(1000)

    return bp


async def _transformation_of(role: "JoblessRole", body: Any) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The transformation dict of a submission, stored in the buffer store if it came whole."""
    if not isinstance(body, dict):
        raise TransformationError('expected {"transformation": {...}} or {"checksum": "..."}')
    if "checksum" in body and "transformation" not in body:
        checksum = body["checksum"]
        if not is_checksum(checksum):
            raise TransformationError(f"not a checksum: {checksum!r:.80}")
        return await role.gateway.transformation_dict(checksum), body.get("tf_dunder")
    transformation = body.get("transformation", body)
    if not isinstance(transformation, dict):
        raise TransformationError("'transformation' must be a JSON object")
    tf_dunder = body.get("tf_dunder") if "transformation" in body else None
    buffer = transformation_buffer(transformation)
    await role.gateway.store({hashlib.sha256(buffer).hexdigest(): buffer})
    return transformation, tf_dunder if isinstance(tf_dunder, dict) else None
