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
    from ..web.fastpath import FastRoute
    from ..store.mapping_service import MappingService


@dataclass
class NodeContext:
    config: NodeConfig
    buffers: BufferService
    metrics: Metrics
    #: the result database, set by the database role when it runs
    mappings: "MappingService | None" = None


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
