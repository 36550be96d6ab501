"""The deployment roles a node can run, by name."""

from __future__ import annotations

from .base import NodeContext, Role


def role_classes() -> dict[str, type[Role]]:
    """Roles built in this version, by name (imported lazily to keep start-up light)."""
    from .buffers import BuffersRole
    from .database import DatabaseRole
    from .jobless.role import JoblessRole

    return {"buffers": BuffersRole, "database": DatabaseRole, "jobless": JoblessRole}


__all__ = ["NodeContext", "Role", "role_classes"]
