"""Fixtures for job tests: a node with the jobless role (and buffers, database)."""

from __future__ import annotations

from typing import Any

import pytest

from .support import JOBLESS


@pytest.fixture
async def job_node(start_node: Any) -> Any:
    """An in-process node running buffers, database and jobless (2 local workers)."""
    return await start_node(node=JOBLESS, jobless={"workers": 2, "orphan_grace": 1.0})
