"""The browser rules (pure): the Host a request names, its Origin, its Content-Type.

A browser on the node's machine, or on a network that reaches it, runs code from any web
site. Three rules keep that code from using the node:

* **Host.** DNS rebinding points a name the attacker owns at the node's address: the
  page's requests then reach the node as same-origin requests for the attacker's name,
  with ``Host: attacker.example``. A request is served only when its Host names this
  node: one of ``node.public_names``, the address it listens on, ``localhost``, or the
  address the client connected to, with the port the client connected to or without a
  port (clients leave a default port out; a rebinding page's Host always names the
  attacker's domain, whatever the port). A ``node.public_names`` entry that carries a
  port (``node.example.org:443``, for a node behind a proxy) also matches with that
  port. Anything else: 421 Misdirected Request. (A request without Host, HTTP/1.0, comes
  from no browser and passes.)
* **Origin.** A page may send "simple" cross-origin requests (form posts, ``fetch`` with
  ``no-cors``) without asking the server first; browsers mark every one of them with an
  ``Origin`` field. A request that may change state (any method but GET, HEAD and
  OPTIONS) or opens a websocket (browsers do not apply the same-origin policy to those)
  is refused with 403 when it carries an Origin that ``access.allowed_origins`` does not
  list. Clients that are not browsers send no Origin and are not affected.
* **Content-Type.** A simple request can only carry ``text/plain``, form or multipart
  bodies. Every route that takes a JSON body (``routes.py``) requires
  ``Content-Type: application/json`` (every Seamless 1.x client sends it there), else
  415; so even a page at an allowed origin needs a CORS preflight to send JSON.

CORS is off unless ``access.allowed_origins`` lists origins: then a preflight from one of
them is answered, and answers to its requests carry ``Access-Control-Allow-Origin``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Iterable

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})
_HOST = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+))(?::([0-9]{1,5}))?", re.ASCII)
_ORIGIN = re.compile(r"https?://(?:\[[0-9a-f:.]+\]|[a-z0-9._-]+)(?::[0-9]{1,5})?", re.ASCII)


def split_host(value: str) -> tuple[str, int | None] | None:
    """(host name or address in canonical form, port or None) of a Host field; None
    when it is not a well-formed ``host[:port]``."""
    match = _HOST.fullmatch(value.strip())
    if match is None:
        return None
    name = canonical_host(match.group(1) or match.group(2))
    port = int(match.group(3)) if match.group(3) else None
    if name is None or (port is not None and not 0 < port < 65536):
        return None
    return name, port


def canonical_host(name: str) -> str | None:
    """Lower case; IP addresses in their compressed form (IPv4-mapped IPv6 as IPv4)."""
    name = name.strip("[]").lower()
    if not name:
        return None
    try:
        ip = ipaddress.ip_address(name.split("%")[0])
    except ValueError:
        name = name[:-1] if name.endswith(".") else name  # "localhost." is "localhost"
        return name if name and ".." not in name and not name.startswith(".") else None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


@dataclass(frozen=True)
class NodeNames:
    """The names a request may give in its Host field."""

    #: names valid with the port the client connected to
    names: frozenset[str]
    #: (name, port) pairs valid with exactly that port
    names_with_port: frozenset[tuple[str, int]]
    #: answers given, by (Host field, local address): parsing addresses costs microseconds
    _seen: dict[tuple[str | None, tuple[str, int] | None], bool] = field(
        default_factory=dict, compare=False, repr=False
    )
    CACHE = 1024

    @classmethod
    def build(cls, public_names: Iterable[str], listen_host: str) -> "NodeNames":
        names = {"localhost"}
        with_port = set()
        if listen_host.strip() not in _WILDCARDS:
            host = canonical_host(listen_host)
            if host:
                names.add(host)
        for entry in public_names:
            parsed = split_host(entry)
            if parsed is None:
                raise ValueError(f"node.public_names: not a host name or host:port: {entry!r}")
            name, port = parsed
            if port is None:
                names.add(name)
            else:
                with_port.add((name, port))
        return cls(frozenset(names), frozenset(with_port))

    def allows(self, host_field: str | None, local: tuple[str, int] | None) -> bool:
        """Whether *host_field* names this node, for a connection to the address *local*."""
        key = (host_field, local)
        known = self._seen.get(key)
        if known is None:
            if len(self._seen) >= self.CACHE:
                self._seen.clear()  # many different names: someone probing; start over
            known = self._seen[key] = self._allows(host_field, local)
        return known

    def _allows(self, host_field: str | None, local: tuple[str, int] | None) -> bool:
        if host_field is None:
            return True  # HTTP/1.0 without Host: not a browser (HTTP/1.1 requires the field)
        parsed = split_host(host_field)
        if parsed is None:
            return False
        name, port = parsed
        if port is not None and (name, port) in self.names_with_port:
            return True
        if local is None:
            return False
        local_ip, local_port = canonical_host(local[0]), local[1]
        if port is not None and port != local_port:
            return False
        return name in self.names or name == local_ip


def parse_origins(values: Iterable[str]) -> frozenset[str]:
    """Allowed origins in canonical form (``scheme://host[:port]``); ValueError otherwise."""
    origins = set()
    for value in values:
        origin = value.strip().lower().rstrip("/")
        if not _ORIGIN.fullmatch(origin):
            raise ValueError(f"access.allowed_origins: not an origin (scheme://host[:port]): {value!r}")
        origins.add(origin)
    return frozenset(origins)


def origin_refused(method: str, origin: str | None, websocket: bool, allowed: frozenset[str]) -> bool:
    """Whether a request with this method and Origin field must be refused (403)."""
    if origin is None:
        return False
    if method in SAFE_METHODS and not websocket:
        return False
    return origin.strip().lower() not in allowed


def is_json(content_type: str | None) -> bool:
    """Whether a Content-Type field says ``application/json`` (parameters allowed)."""
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"
