"""seamless-jobserver 0.3 at ``/jobserver`` (protocols.md section 5).

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
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from quart import Blueprint, Response, request

from ...checksum import is_checksum
from ...errors import NodeError
from ...transformation import TransformationError
from ...web.body import BodyLimits, read_json
from .access import check_local
from .service import record_runtime
from .states import JOBSERVER_STATUS, JobState

if TYPE_CHECKING:
    from .role import JoblessRole

LIMITS = BodyLimits(max_bytes=64 * 1024**2, idle_timeout=30.0)
CANCELED = "Transformation was canceled"


def text(body: str, status: int = 200) -> Response:
    return Response(body, status=status, content_type="text/plain; charset=utf-8")


def jobserver_blueprint(role: "JoblessRole") -> Blueprint:
    bp = Blueprint("jobserver", __name__, url_prefix="/jobserver")

    @bp.before_request
    async def local_only() -> None:
        if request.path.rstrip("/") != "/jobserver/healthcheck":
            check_local(request.remote_addr)

    @bp.route("/healthcheck", methods=["GET"])
    async def healthcheck() -> Response:
        return text("OK")

    @bp.route("/", methods=["GET"])
    async def welcome() -> Response:
        return text("Seamless jobserver is running (seamless-node)")

    @bp.route("/run-transformation", methods=["GET", "POST"])
    async def run_transformation() -> Response:
        service = role.service
        try:
            payload = await read_json(request, LIMITS)
        except NodeError as exc:
            return text(f"Invalid JSON: {exc}", 400)
        try:
            if not isinstance(payload, dict):
                raise ValueError("expected a JSON object")
            tf_dict = payload["transformation_dict"]
            tf_checksum = payload["tf_checksum"]
            tf_dunder = payload.get("tf_dunder") or {}
            if not isinstance(tf_dict, dict) or not isinstance(tf_dunder, dict):
                raise ValueError("transformation_dict and tf_dunder must be objects")
            if not is_checksum(tf_checksum):
                raise ValueError(f"tf_checksum is not a checksum: {tf_checksum!r:.80}")
        except (KeyError, ValueError) as exc:
            return text(f"Invalid payload: {exc}", 400)
        if payload.get("record"):
            return text(
                "Jobserver record mode mismatch: client requested record=True, but seamless-node's "
                "jobserver runs with record=False (record mode is not supported)",
                409,
            )
        try:
            job, waiter = await service.submit(tf_dict, tf_dunder, kind="jobserver")
        except TransformationError as exc:
            return text(f"Invalid payload: {exc}", 400)
        if job.checksum != tf_checksum:
            service.detach(job, waiter, explicit=True)
            return text(
                f"Invalid payload: tf_checksum {tf_checksum} does not match the transformation "
                f"(its checksum is {job.checksum})",
                400,
            )
        await service.wait(job, waiter)
        if job.state is JobState.DONE:
            body = {"result_checksum": job.result, "record_runtime": record_runtime(job)}
            return text(json.dumps(body))
        if job.state is JobState.FAILED:
            return text(job.error or "Transformation failed", 500)
        return text(CANCELED)

    @bp.route("/transformation-status/<checksum>", methods=["GET"])
    async def transformation_status(checksum: str) -> Response:
        if not is_checksum(checksum):
            return text(f"Invalid checksum: {checksum!r:.80}", 400)
        job = role.service.get(checksum)
        status = JOBSERVER_STATUS[job.state] if job is not None else "not-running"
        return Response(json.dumps({"status": status}), content_type="application/json")

    @bp.route("/cancel-transformation/<checksum>", methods=["POST"])
    async def cancel_transformation(checksum: str) -> Response:
        if not is_checksum(checksum):
            return text(f"Invalid checksum: {checksum!r:.80}", 400)
        service = role.service
        canceled = service.cancel(checksum, kind="jobserver")
        job = service.get(checksum)
        status = JOBSERVER_STATUS[job.state] if job is not None else "not-running"
        if canceled:
            status = "canceled"
        return Response(json.dumps({"canceled": canceled, "status": status}), content_type="application/json")

    return bp
