"""The Role interface: each deployment role is a part mounted on the node's one app.

A role owns a URL prefix and the routes under it, may start background tasks in the
node's nursery, and is closed on shutdown. Roles reach shared services (the buffer store,
metrics, configuration) through the NodeContext they are built with; they hold no global
state, so several nodes can run in one process (as the tests do).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import trio
from quart import Blueprint

from ..config import NodeConfig
from ..metrics import Metrics
from ..store.service import BufferService

if TYPE_CHECKING:
    from ..federation.results import ResultAnswer
    from ..federation.service import FederationService
    from ..store.mapping_service import MappingService
    from ..web.fastpath import FastRoute


@dataclass
class NodeContext:
    config: NodeConfig
    buffers: BufferService
    metrics: Metrics
    #: the result database, set by the database role when it runs
    mappings: "MappingService | None" = None
    #: signed links with peers (node.federation), set by the node when federation is on
    federation: "FederationService | None" = None

    async def fetch_missing(self, checksum: str) -> bool:
        """Fetch a buffer this node lacks from a peer that holds it (verified, stored).

        True when the buffer is in the store afterwards; False at once when federation is
        off or no peer may be asked. A role answering "not found" calls this first::

            found = await service.get(checksum, ...)
            if found is None and await self.context.fetch_missing(checksum):
                found = await service.get(checksum, ...)
        """
        if self.federation is None:
            return False
        return await self.federation.fetch_missing(checksum)

    async def lookup_result(self, transformation: str) -> "ResultAnswer | None":
        """A transformation's result from a signed claim of a peer trusted for results.

        For a role whose own database does not know the transformation: claims stored here,
        then peers granting this node results:read, only ever those this node trusts with
        results:write (another peer's claim is never a result). None when no such claim
        is known or federation is off."""
        if self.federation is None:
            return None
        return await self.federation.lookup_result(transformation, include_local=False)

    async def lookup_results(self, transformations: list[str]) -> "list[ResultAnswer | None]":
        """``lookup_result`` for many transformations, each peer asked once for all."""
        if self.federation is None or not transformations:
            return [None] * len(transformations)
        return await self.federation.lookup_results(transformations, include_local=False)


class Role(abc.ABC):
    name: ClassVar[str]
    #: URL prefix of the role's upstream-compatible protocol (e.g. "/buffers")
    prefix: ClassVar[str]

    def __init__(self, context: NodeContext) -> None:
        self.context = context

    @abc.abstractmethod
    def blueprints(self) -> list[Blueprint]:
        """The routes of this role, each blueprint with its own url_prefix."""

    def fast_routes(self) -> list["FastRoute"]:
        """Hot routes served below Quart (see node.web.fastpath); none by default."""
        return []

    async def start(self, nursery: trio.Nursery) -> None:
        """Start background tasks; called once the store is open."""

    async def aclose(self) -> None:
        """Release resources on shutdown."""
