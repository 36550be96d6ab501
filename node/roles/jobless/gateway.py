"""Where jobs get their inputs and put their results.

Buffers come from, and go to, the node's own store through ``BufferService`` (the one
door of the store; a buffer missing there is fetched from a peer that holds it, when
federation is on), or a buffer server at ``jobless.buffer_url`` when one is configured
(the hashserver protocol; every buffer fetched is verified against its checksum). Known
results are looked up in, and new ones recorded into, the node's database role when it
runs (``context.mappings``), else a database server at ``jobless.database_url``, else
nowhere; a result unknown there may still be known from a signed claim of a peer this
node trusts for results (``NodeContext.lookup_result``; never any other peer's claim).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import httpx
import trio

from ...celltypes import CelltypeError, deserialize
from ...checksum import is_checksum
from ...errors import NodeError, UpstreamUnavailable
from ...store.mapping_requests import parse_query, parse_update
from ...tls import client_context
from ...transformation import Transformation
from ..base import NodeContext
from .sandbox.plan import network_allowed
from .spec import JobSpec, Limits, PinInput

log = logging.getLogger("seamless_node.jobless")


class InputMissing(NodeError):
    """An input buffer of a job cannot be found."""

    http_status = 404


class Gateway:
    def __init__(self, context: NodeContext) -> None:
        cfg = context.config.jobless
        self.context = context
        self.buffer_url = cfg.buffer_url.rstrip("/") if cfg.buffer_url else None
        self.database_url = cfg.database_url.rstrip("/") if cfg.database_url else None
        self._http: httpx.AsyncClient | None = None

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            # https:// services are verified like peers: against federation.ca_file if set
            tls = client_context(self.context.config.federation.ca_file)
            self._http = httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10), verify=tls)
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request to a configured service; a failure to reach it (refused, TLS
        verification, timeout) is an UpstreamUnavailable naming the service."""
        try:
            return await self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            reason = str(exc) or type(exc).__name__
            cause: BaseException | None = exc
            while cause is not None:  # httpx hides the TLS verification message levels down
                reason = str(cause) or reason
                cause = cause.__cause__ or cause.__context__
            raise UpstreamUnavailable(f"cannot reach {url}: {reason}") from None

    # ------------------------------------------------------------------------ buffers

    async def fetch(self, checksum: str) -> bytes | None:
        if self.buffer_url is None:
            service = self.context.buffers
            data = await service.read(checksum)
            if data is None and service.pending.is_pending(checksum):
                await service.pending.wait(checksum)
                data = await service.read(checksum)
            if data is None and await self.context.fetch_missing(checksum):
                data = await service.read(checksum)  # fetched from a peer (verified)
            return data
        r = await self._call("GET", f"{self.buffer_url}/{checksum}")
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            answer = f"{r.status_code} {r.text[:200]}"
            raise UpstreamUnavailable(f"the buffer server answered {answer} for {checksum}")
        if hashlib.sha256(r.content).hexdigest() != checksum:
            raise InputMissing(f"the buffer server sent wrong bytes for {checksum}")
        return r.content

    async def fetch_many(self, checksums: list[str]) -> dict[str, bytes | None]:
        found: dict[str, bytes | None] = {}

        async def one(cs: str) -> None:
            found[cs] = await self.fetch(cs)

        async with trio.open_nursery() as nursery:
            for cs in dict.fromkeys(checksums):
                nursery.start_soon(one, cs)
        return found

    async def store(self, buffers: dict[str, bytes]) -> None:
        for checksum, data in buffers.items():
            if self.buffer_url is None:
                await self.context.buffers.put_bytes(checksum, data)
            else:
                r = await self._call("PUT", f"{self.buffer_url}/{checksum}", content=data)
                if r.status_code not in (200, 201, 202):
                    raise UpstreamUnavailable(
                        f"the buffer server refused the result buffer: {r.status_code} {r.text[:200]}"
                    )

    # ------------------------------------------------------------------------ results

    async def lookup(self, tf_checksum: str) -> str | None:
        """The known result of a transformation, or None: from the database, else from a
        signed claim of a peer this node trusts for results (``NodeContext.lookup_result``)."""
        request = {"type": "transformation", "checksum": tf_checksum}
        mappings = self.context.mappings
        if mappings is not None:
            value = await mappings.read(parse_query(request))
            if is_checksum(value):
                return value
        elif self.database_url is not None:
            r = await self._call("GET", self.database_url, json=request)
            if r.status_code == 200 and is_checksum(r.text.strip()):
                return r.text.strip()
        try:
            answer = await self.context.lookup_result(tf_checksum)
        except Exception as exc:  # a claim lookup that fails leaves the job to run
            log.warning("claim lookup for %s failed: %s", tf_checksum, exc)
            return None
        return answer.result if answer is not None else None

    async def record(self, tf_checksum: str, result: str, record: dict[str, Any]) -> None:
        """Record a result and its execution record (no-op without a database)."""
        writes: list[dict[str, Any]] = [
            {"type": "transformation", "checksum": tf_checksum, "value": result},
            {"type": "metadata", "checksum": tf_checksum, "result": result, "value": record},
        ]
        mappings = self.context.mappings
        if mappings is not None:
            if mappings.readonly:
                return
            outcomes = await mappings.write_many([parse_update(w) for w in writes])
            for outcome in outcomes:
                if not outcome.ok:
                    log.info("database refused a record of %s: %s", tf_checksum, outcome.message)
            return
        if self.database_url is not None:
            for w in writes:
                try:
                    r = await self._call("PUT", self.database_url, json=w)
                except UpstreamUnavailable as exc:  # the result stands; only its record is lost
                    log.warning("cannot record the %s of %s: %s", w["type"], tf_checksum, exc)
                    continue
                if r.status_code >= 400 and r.status_code != 409:
                    log.warning("database at %s refused %s: %s", self.database_url, w["type"], r.text[:200])

    # --------------------------------------------------------------------- job inputs

    async def transformation_dict(self, checksum: str) -> dict[str, Any]:
        """A transformation dict stored as a plain buffer."""
        data = await self.fetch(checksum)
        if data is None:
            raise InputMissing(f"transformation {checksum} is not in the buffer store")
        try:
            value = deserialize(data, "plain")
        except CelltypeError as exc:
            raise InputMissing(f"buffer {checksum} is not a transformation dict: {exc}") from None
        if not isinstance(value, dict):
            raise InputMissing(f"buffer {checksum} is not a transformation dict")
        return value

    async def build_spec(self, tf: Transformation, limits: Limits) -> JobSpec:
        """Everything the job needs, by checksum: fetched (and so verified: see ``fetch``),
        or sent inline with the transformation and verified against its checksum when it
        was submitted (``Transformation.inline``, node.inline_values); those are stored
        like any upload meanwhile, in the same round of thread hops."""
        wanted = [cs for cs in tf.input_checksums if cs not in tf.inline]
        found: dict[str, bytes | None] = {}

        async def fetch() -> None:
            found.update(await self.fetch_many(wanted))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(fetch)
            if tf.inline:
                nursery.start_soon(self.store, tf.inline)
        found.update(tf.inline)
        code_data = found[tf.code_checksum]
        if code_data is None:
            raise InputMissing(f"the code buffer {tf.code_checksum} is not in the buffer store")
        code = code_data.decode(errors="replace").rstrip("\n")
        pins = []
        for pin in tf.pins:
            data = found[pin.checksum]
            if data is None:
                raise InputMissing(f"the buffer {pin.checksum} of pin {pin.key!r} is not in the buffer store")
            fmt = tf.formats.get(pin.key)
            members = None
            if isinstance(fmt, dict) and (fmt.get("filesystem") or {}).get("mode") == "directory":
                members = await self._members(pin.key, data)
            fmt = fmt if isinstance(fmt, dict) else None
            pins.append(PinInput(pin.name, pin.celltype, data, members, fmt))
        return JobSpec(
            checksum=tf.checksum,
            language=tf.language,
            code=code,
            output_name=tf.output_name,
            output_celltype=tf.output_celltype,
            pins=tuple(pins),
            limits=limits,
            meta=tf.meta,
            network=await self.network_for(tf),
        )

    async def network_for(self, tf: Transformation) -> bool:
        """Whether the job may reach the network: jobless.network, and, under
        ``requested``, the ``powers`` of the transformation's environment (``__env__``)."""
        policy = self.context.config.jobless.network
        if policy != "requested" or tf.env_checksum is None:
            return network_allowed(policy, None)
        data = await self.fetch(tf.env_checksum)
        try:
            env = deserialize(data, "plain") if data is not None else None
        except CelltypeError:
            env = None
        return network_allowed(policy, env.get("powers") if isinstance(env, dict) else None)

    async def _members(self, key: str, data: bytes) -> dict[str, bytes]:
        try:
            deep = json.loads(data)
        except ValueError:
            raise InputMissing(f"directory pin {key!r} does not hold a deep folder") from None
        if not isinstance(deep, dict) or not all(is_checksum(v) for v in deep.values()):
            raise InputMissing(f"directory pin {key!r} does not hold a deep folder (path -> checksum)")
        found = await self.fetch_many(list(deep.values()))
        members = {}
        for path, cs in deep.items():
            member = found[cs]
            if member is None:
                raise InputMissing(
                    f"file {path!r} ({cs}) of directory pin {key!r} is not in the buffer store"
                )
            members[path] = member
        return members
