"""Scopes: the named permissions a network grant or a bearer token carries.

A scope names one kind of operation on the node (``buffers:read``, ``jobs:submit``, ...).
Every route needs exactly one scope, or none (see ``routes.py``). ``admin`` implies every
other scope. A role that brings new kinds of operation registers its own scope with
``register_scope`` before the configuration is validated; names are ``area:verb`` or a
single word, lower case.
"""

from __future__ import annotations

import re
from typing import Iterable

ADMIN = "admin"

#: every known scope and what it allows (``register_scope`` adds more)
SCOPES: dict[str, str] = {
    "buffers:read": "read buffers and ask which exist (/buffers GET, /has, /api/v1/buffers)",
    "buffers:write": "upload buffers and promise uploads (/buffers PUT)",
    "results:read": "read the result database (/database GET, /api/v1/database reads)",
    "results:write": "write the result database (/database PUT, /api/v1/database writes)",
    "jobs:submit": "submit, watch and cancel jobs (/jobserver, /api/v1/jobs)",
    ADMIN: "every scope, and the routes that administer the node",
}

#: what the loopback addresses get when ``access.networks`` is not set
LOOPBACK_DEFAULT: frozenset[str] = frozenset(s for s in SCOPES if s != ADMIN)

_NAME = re.compile(r"[a-z][a-z0-9_-]*(?::[a-z][a-z0-9_-]*)?", re.ASCII)


class ScopeError(ValueError):
    """A scope list names a scope that does not exist."""


def register_scope(name: str, description: str) -> None:
    """Make *name* a known scope (for roles that bring their own kinds of operation)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not a scope name: {name!r} (expected area:verb in lower case)")
    SCOPES.setdefault(name, description)


def parse_scopes(values: str | Iterable[str]) -> frozenset[str]:
    """A set of known scopes from ``"a,b"`` or an iterable; ScopeError names an unknown one."""
    items = values.split(",") if isinstance(values, str) else list(values)
    scopes = set()
    for item in items:
        if not isinstance(item, str):
            raise ScopeError(f"a scope must be a string, got {item!r}")
        name = item.strip()
        if not name:
            continue
        if name not in SCOPES:
            raise ScopeError(f"unknown scope {name!r} (known: {', '.join(SCOPES)})")
        scopes.add(name)
    return frozenset(scopes)


def grants(held: frozenset[str], needed: str) -> bool:
    """Whether the scopes *held* allow an operation that needs the scope *needed*."""
    return needed in held or ADMIN in held
