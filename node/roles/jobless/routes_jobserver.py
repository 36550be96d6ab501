"""seamless-jobserver 0.3 at ``/jobserver`` (docs/jobless.md).

==========================================  =============================================
``GET  /healthcheck``                       ``OK``
``GET  /run-transformation``                JSON body; long-poll until the job ends:
                                            200 ``{"result_checksum", "record_runtime"}``,
                                            200 ``Transformation was canceled``, 500 the
                                            error text, 400 ``Invalid payload: ...``
``GET  /transformation-status/<cs>``        ``{"status": running|canceled|failed|done|
                                            not-running}``
``POST /cancel-transformation/<cs>``        ``{"canceled": bool, "status": ...}``
==========================================  =============================================

Unlike upstream, a cancel is real (the job's processes are killed when no client waits
for it any more, see service.py), and the same transformation asked twice runs once.
The protocol does not say which client cancels, so a cancel detaches the oldest
``/jobserver`` waiter of that transformation (which hears "Transformation was canceled").
Record mode (``"record": true``) is refused with 409, as upstream refuses a mismatch.

``run-transformation`` is served on the node's fast path (below Quart; the round trip
is what a remote Seamless client waits for); the Quart route answers the same, for a
node built without it. Both share ``run_transformation``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import trio
from quart import Blueprint, Response, request

from ...checksum import is_checksum
from ...errors import NodeError
from ...transformation import TransformationError
from ...web.body import BodyLimits, read_json
from ...web.fastpath import FastRoute, route
from ...web.fastpath import Request as FastRequest
from ...web.fastpath import Response as FastResponse
from .service import Job, JobService, record_runtime
from .states import JOBSERVER_STATUS, JobState

if TYPE_CHECKING:
    from .role import JoblessRole

LIMITS = BodyLimits(max_bytes=64 * 1024**2, idle_timeout=30.0)
CANCELED = "Transformation was canceled"


def text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/plain; charset=utf-8")


def status_of(job: Job | None) -> str:
    if job is None:
        return "not-running"
    if job.result_ready.is_set():
        return "done"
    return JOBSERVER_STATUS[job.state]


def _payload(payload: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(transformation_dict, tf_checksum, tf_dunder) of a request; ValueError if invalid."""
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object")
    try:
        tf_dict = payload["transformation_dict"]
        tf_checksum = payload["tf_checksum"]
    except KeyError as exc:
        raise ValueError(f"missing {exc}") from None
    tf_dunder = payload.get("tf_dunder") or {}
    if not isinstance(tf_dict, dict) or not isinstance(tf_dunder, dict):
        raise ValueError("transformation_dict and tf_dunder must be objects")
    if not is_checksum(tf_checksum):
        raise ValueError(f"tf_checksum is not a checksum: {tf_checksum!r:.80}")
    return tf_dict, tf_checksum, tf_dunder


async def run_transformation(service: JobService, payload: Any) -> tuple[int, str]:
    """Answer one run-transformation request: (status, text)."""
    try:
        tf_dict, tf_checksum, tf_dunder = _payload(payload)
    except ValueError as exc:
        return 400, f"Invalid payload: {exc}"
    if payload.get("record"):
        return 409, (
            "Jobserver record mode mismatch: client requested record=True, but seamless-node's "
            "jobserver runs with record=False (record mode is not supported)"
        )
    try:
        job, waiter = await service.submit(tf_dict, tf_dunder, kind="jobserver")
    except TransformationError as exc:
        return 400, f"Invalid payload: {exc}"
    if job.checksum != tf_checksum:
        service.detach(job, waiter, explicit=True)
        return 400, (
            f"Invalid payload: tf_checksum {tf_checksum} does not match the transformation "
            f"(its checksum is {job.checksum})"
        )
    await service.wait(job, waiter, result_only=True)
    if job.result_ready.is_set() and job.result is not None:
        return 200, json.dumps({"result_checksum": job.result, "record_runtime": record_runtime(job)})
    if job.state is JobState.FAILED:
        return 500, job.error or "Transformation failed"
    return 200, CANCELED


def jobserver_fast_routes(role: "JoblessRole") -> list[FastRoute]:
    async def handler(req: FastRequest) -> FastResponse:
        try:
            payload = await req.read_json(LIMITS)
        except NodeError as exc:
            return FastResponse(400, f"Invalid JSON: {exc}".encode())
        answer: tuple[int, str] = (200, CANCELED)
        async with trio.open_nursery() as nursery:

            async def until_disconnect() -> None:
                await req.wait_disconnect()
                nursery.cancel_scope.cancel()  # the waiter detaches (service.wait)

            async def answer_it() -> None:
                nonlocal answer
                answer = await run_transformation(role.service, payload)
                nursery.cancel_scope.cancel()

            nursery.start_soon(until_disconnect)
            nursery.start_soon(answer_it)
        status, body = answer
        return FastResponse(status, body.encode(), content_type="text/plain; charset=utf-8")

    return [route("GET", r"/jobserver/run-transformation", handler)]


def jobserver_blueprint(role: "JoblessRole") -> Blueprint:
    bp = Blueprint("jobserver", __name__, url_prefix="/jobserver")

    @bp.route("/healthcheck", methods=["GET"])
    async def healthcheck() -> Response:
        return text("OK")

    @bp.route("/", methods=["GET"])
    async def welcome() -> Response:
        return text("Seamless jobserver is running (seamless-node)")

    @bp.route("/run-transformation", methods=["GET", "POST"])
    async def run_transformation_route() -> Response:
        try:
            payload = await read_json(request, LIMITS)
        except NodeError as exc:
            return text(f"Invalid JSON: {exc}", 400)
        status, body = await run_transformation(role.service, payload)
        return text(body, status)

    @bp.route("/transformation-status/<checksum>", methods=["GET"])
    async def transformation_status(checksum: str) -> Response:
        if not is_checksum(checksum):
            return text(f"Invalid checksum: {checksum!r:.80}", 400)
        return Response(json.dumps({"status": status_of(role.service.get(checksum))}),
                        content_type="application/json")

    @bp.route("/cancel-transformation/<checksum>", methods=["POST"])
    async def cancel_transformation(checksum: str) -> Response:
        if not is_checksum(checksum):
            return text(f"Invalid checksum: {checksum!r:.80}", 400)
        service = role.service
        canceled = service.cancel(checksum, kind="jobserver")
        status = status_of(service.get(checksum))
        if canceled:
            status = "canceled"
        return Response(json.dumps({"canceled": canceled, "status": status}), content_type="application/json")

    return bp
