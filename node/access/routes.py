"""Which scope each route needs, and which routes take a JSON body (pure).

One table for the whole node, read before routing, so that it can be audited in one
place and that both HTTP paths (the front and hypercorn) apply the same rule. Paths are
classified by *area* (their leading segments), never by the exact route: a spelling the
router would also accept (``/api/v1/jobs/``, ``//api/v1/jobs``) lands in the same area
and needs the same scope. Inside an area the known read routes need the read scope and
every other method or path the write scope, so a route added later without an entry
here is never less protected than its neighbours; a path outside every area needs
``admin`` (so ``/`` and the node's unknown paths answer 401/403 to everyone but admins).

================================================  =================  ===========
path (method)                                     scope              JSON body
================================================  =================  ===========
``/healthcheck``, ``/<role>/healthcheck`` (GET)   none               no
``/federation/...``                               none: signed       (its own)
                                                  links (gate.py)
``/metrics``, ``/api/v1/node``,                   any one scope      no
``GET /api/v1/peers``
``/buffers/...`` GET, HEAD                        buffers:read       no
``/buffers/has|has-now|buffer-length``            buffers:read       yes
``/buffers/...`` other methods                    buffers:write      no
``/has``, ``/has-now``, ``/buffer-length``        buffers:read       yes
(root aliases)
``PUT /<checksum>`` (root alias)                  buffers:write      no
``GET /<checksum>`` (not served: 404)             buffers:read       no
``/api/v1/buffers/has|lengths|get``               buffers:read       yes
``/database/...`` GET, HEAD                       results:read       yes
``/database/...`` other methods                   results:write      yes
``/api/v1/database/read|read-many|info``          results:read       POST: yes
``/api/v1/database/...`` other                    results:write      POST: yes
``/api/v1/peers/results/...``                     results:read       no
``/api/v1/peers/fetch/...``                       buffers:read       no
``/jobserver/...``                                jobs:submit        run-transformation
``/api/v1/jobs...`` (websocket included)          jobs:submit        ``POST /api/v1/jobs``
anything else                                     admin              no
================================================  =================  ===========
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .scopes import ADMIN

#: the scope value that any one granted scope satisfies
ANY_SCOPE = "*"
_READS = ("GET", "HEAD")


@dataclass(frozen=True, slots=True)
class Need:
    """What a request must bring: a scope (None: nothing) and maybe a JSON body."""

    scope: str | None
    json: bool = False
    #: a signed federation route: its own gate decides, not the node's scopes
    signed: bool = False


PUBLIC = Need(None)
SIGNED = Need(None, signed=True)
OBSERVE = Need(ANY_SCOPE)
_HEALTHCHECKS = frozenset(
    {"/healthcheck", "/buffers/healthcheck", "/database/healthcheck", "/jobserver/healthcheck"}
)
_BUFFER_QUERIES = frozenset({"has", "has-now", "buffer-length"})
_SLASHES = re.compile(r"/{2,}")
_CHECKSUM = re.compile(r"[0-9a-f]{64}", re.ASCII)


def normalize(path: str) -> str:
    """The path with runs of slashes merged (as the router may treat them)."""
    return _SLASHES.sub("/", path) if "//" in path else path


def _under(path: str, area: str) -> bool:
    return path == area or path.startswith(area + "/")


def required(method: str, path: str) -> Need:
    """What a request for *method* *path* (decoded, without a token prefix) needs."""
    path = normalize(path)
    read = method in _READS
    if path in _HEALTHCHECKS and read:
        return PUBLIC
    if _under(path, "/federation"):
        return SIGNED
    if _under(path, "/buffers"):
        last = path.rsplit("/", 1)[1]
        if path.count("/") == 2 and last in _BUFFER_QUERIES and method in ("GET", "POST"):
            return Need("buffers:read", json=True)
        return Need("buffers:read") if read else Need("buffers:write")
    if _under(path, "/database"):
        return Need("results:read" if read else "results:write", json=True)
    if _under(path, "/jobserver"):
        return Need("jobs:submit", json=path == "/jobserver/run-transformation")
    if _under(path, "/api/v1"):
        return _api(method, path)
    if path in ("/metrics",):
        return OBSERVE
    if path.count("/") == 1:  # root aliases of the buffer routes (seamless-core, seamless-upload)
        if path[1:] in _BUFFER_QUERIES and method in ("GET", "POST"):
            return Need("buffers:read", json=True)
        if _CHECKSUM.fullmatch(path[1:]):  # PUT is served; a GET finds nothing (404)
            return Need("buffers:read") if read else Need("buffers:write")
    return Need(ADMIN)


def _api(method: str, path: str) -> Need:
    if path == "/api/v1/node":
        return OBSERVE
    if _under(path, "/api/v1/buffers"):
        if path in ("/api/v1/buffers/has", "/api/v1/buffers/lengths", "/api/v1/buffers/get"):
            return Need("buffers:read", json=method == "POST")
        return Need("buffers:write")
    if _under(path, "/api/v1/database"):
        reads = ("/api/v1/database/read", "/api/v1/database/read-many", "/api/v1/database/info")
        scope = "results:read" if path in reads else "results:write"
        return Need(scope, json=method == "POST")
    if _under(path, "/api/v1/jobs"):
        return Need("jobs:submit", json=method == "POST" and path == "/api/v1/jobs")
    if path == "/api/v1/peers" and method in _READS:
        return OBSERVE
    if _under(path, "/api/v1/peers/results"):
        return Need("results:read")
    if _under(path, "/api/v1/peers/fetch"):
        return Need("buffers:read")
    return Need(ADMIN)
