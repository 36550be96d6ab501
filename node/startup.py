"""Checks ``seamless-node run`` makes before it starts, so that a failure names its cause.

* ``prepare_data_dir``: the data directory exists (it is created if missing) and, unless
  both the buffer store and the database are read-only, the node can write in it. A
  problem is reported as the data directory's (``data directory /srv/x: cannot create
  it: Permission denied``), not as the listen address's.
* ``check_port``: the address can be bound, before anything is written, so that a port
  in use is reported as such and leaves no data directory behind.
* ``remove_created``: if the start fails after all, the directories this run created
  (still empty of anything but what the start put there) are removed again.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import uuid

from .config import NodeConfig
from .errors import ConfigError


class StartupError(ConfigError):
    """The node cannot start: the message says why (exit status 1)."""


def prepare_data_dir(config: NodeConfig) -> str | None:
    """Create and check the data directory; the topmost directory created (None if it
    existed already). StartupError with a plain message on any problem."""
    path = os.path.abspath(config.node.data_dir)
    created = _topmost_missing(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"data directory {path}: cannot create it: {_reason(exc)}") from None
    if not os.path.isdir(path):
        raise StartupError(f"data directory {path}: not a directory")
    if config.buffers.readonly and config.database.readonly:
        return created
    probe = os.path.join(path, f".write-test-{uuid.uuid4().hex}")
    try:
        with open(probe, "xb"):
            pass
        os.unlink(probe)
    except OSError as exc:
        remove_created(created)
        raise StartupError(f"data directory {path}: cannot write in it: {_reason(exc)}") from None
    return created


def check_port(host: str, port: int) -> None:
    """StartupError if *host*:*port* cannot be bound now (port 0 always can)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    family, kind, proto, _name, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds
        try:
            sock.bind(address)
        except OSError as exc:
            hint = " (is another node running there?)" if exc.errno == errno.EADDRINUSE else ""
            raise StartupError(f"cannot listen on {host}:{port}: {_reason(exc)}{hint}") from None


def remove_created(created: str | None) -> None:
    """Remove the directory tree this run created (after a failed start)."""
    if created is not None:
        shutil.rmtree(created, ignore_errors=True)


def _topmost_missing(path: str) -> str | None:
    top = None
    while not os.path.lexists(path):
        top = path
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return top


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
