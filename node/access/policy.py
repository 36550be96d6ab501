"""The one access decision per request, taken before routing on both HTTP paths.

``AccessPolicy.decide`` gets the facts of a request (method, path, the Host, Origin,
Content-Type and Authorization fields, the client's address, the address it connected
to) and answers a ``Verdict``: serve it (with the path to route, a token prefix
removed), or refuse it with a status and a message. In order:

1. **Host** (browser.py): not one of the node's names -> 421.
2. **Token prefix**: ``/t/<token>/rest`` is routed as ``/rest`` with ``<token>`` as its
   credentials, for clients that take only a base URL (``http://node/t/<token>/buffers``).
   The token is cut from the path here, before anything logs or counts the path; a
   malformed one is logged as ``/t/<redacted>``.
3. **Origin** (browser.py): a state-changing request or a websocket from a browser page
   whose origin is not allowed -> 403. A CORS preflight from an allowed origin is
   answered (204) without credentials, as browsers send none with it.
4. **Scope** (routes.py): what the route needs. The client holds the scopes its network
   grants (``access.networks``; without that setting loopback holds every scope but
   ``admin``, other addresses none) plus those of a valid token (``Authorization:
   Bearer`` or the path prefix). A token that is malformed, unknown, expired or revoked
   -> 401. Scope missing: 401 when no token was presented (with
   ``WWW-Authenticate: Bearer``), 403 when the token does not grant it.
5. **Content-Type** (browser.py): a route taking JSON without ``application/json`` -> 415.

Signed ``/federation`` routes skip step 4 (their gate admits peers by signed links) and
``/healthcheck`` needs no scope. The decision is pure apart from the token book's look
at the token file; the front (``web/front.py``) and the ASGI path (``web/fastpath.py``)
each call it once per request through ``web/guard.py``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Mapping

from .browser import NodeNames, is_json, origin_refused, parse_origins
from .routes import ANY_SCOPE, required
from .scopes import LOOPBACK_DEFAULT, grants, parse_scopes
from .tokens import TokenBook

_TOKEN_PREFIX = re.compile(r"/t/([^/]*)(/.*)?", re.DOTALL)
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *")
CORS_METHODS = "GET, HEAD, POST, PUT, DELETE"
CORS_HEADERS = "authorization, content-type, content-encoding"
CORS_MAX_AGE = "600"
CHALLENGE = ("WWW-Authenticate", 'Bearer realm="seamless-node"')
_WANTED = frozenset({b"host", b"origin", b"content-type", b"authorization", b"access-control-request-method"})


@dataclass(frozen=True, slots=True)
class RequestFacts:
    method: str
    #: decoded path, as routed
    path: str
    raw_path: bytes
    host: str | None
    origin: str | None
    content_type: str | None
    authorization: str | None
    #: the client's IP address
    client: str | None
    #: (IP address, port) the client connected to
    local: tuple[str, int] | None
    websocket: bool = False
    #: a CORS preflight: OPTIONS with Access-Control-Request-Method
    preflight: bool = False


@dataclass(frozen=True, slots=True)
class Verdict:
    #: 0: serve the request; else the status to refuse it with
    status: int
    #: the path to route, log and count (a token prefix removed or redacted)
    path: str
    raw_path: bytes
    message: str = ""
    #: header fields to add to the answer (CORS, WWW-Authenticate)
    headers: tuple[tuple[str, str], ...] = ()
    #: the scopes the request holds (network and token)
    scopes: frozenset[str] = frozenset()
    #: the name of the token it presented, if any
    token_name: str | None = None

    @property
    def allowed(self) -> bool:
        return self.status == 0


def facts_of(
    method: str,
    path: str,
    raw_path: bytes,
    headers: list[tuple[bytes, bytes]],
    client: str | None,
    local: tuple[str, int] | None,
    websocket: bool = False,
) -> RequestFacts:
    """The facts of a request from its raw header list (lower-case names, as both an
    ASGI scope and the front's parsed head keep them; the first of repeated fields)."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name in _WANTED and name not in found:
            found[name] = value.decode("latin-1")
    return RequestFacts(
        method,
        path,
        raw_path,
        found.get(b"host"),
        found.get(b"origin"),
        found.get(b"content-type"),
        found.get(b"authorization"),
        client,
        local,
        websocket,
        method == "OPTIONS" and b"access-control-request-method" in found,
    )


class NetworkGrants:
    """The scopes each client address holds by its network (``access.networks``)."""

    CACHE = 4096

    def __init__(self, networks: Mapping[str, object] | None) -> None:
        self.default = networks is None
        self.rules: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, frozenset[str]]] = []
        for cidr, scopes in (networks or {}).items():
            try:
                network = ipaddress.ip_network(str(cidr).strip(), strict=True)
            except ValueError as exc:
                raise ValueError(f"access.networks: {cidr!r} is not a network: {exc}") from None
            listed = [scopes] if isinstance(scopes, str) else scopes
            try:
                self.rules.append((network, parse_scopes(listed)))  # type: ignore[arg-type]
            except ValueError as exc:
                raise ValueError(f"access.networks: {cidr}: {exc}") from None
        self._cache: dict[str, frozenset[str]] = {}

    def scopes_for(self, address: str | None) -> frozenset[str]:
        if not address:
            return frozenset()
        cached = self._cache.get(address)
        if cached is not None:
            return cached
        try:
            ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
        except ValueError:
            return frozenset()
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if self.default:
            held = LOOPBACK_DEFAULT if ip.is_loopback else frozenset()
        else:
            held = frozenset(s for network, scopes in self.rules if ip in network for s in scopes)
        if len(self._cache) >= self.CACHE:
            self._cache.clear()
        self._cache[address] = held
        return held


@dataclass
class AccessPolicy:
    names: NodeNames
    networks: NetworkGrants
    tokens: TokenBook
    allowed_origins: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def from_config(cls, config: object) -> "AccessPolicy":
        """The policy of a NodeConfig (ValueError for a malformed access setting)."""
        node = config.node  # type: ignore[attr-defined]
        access = config.access  # type: ignore[attr-defined]
        return cls(
            names=NodeNames.build(node.public_names, node.host),
            networks=NetworkGrants(access.networks),
            tokens=TokenBook(config.tokens_file),  # type: ignore[attr-defined]
            allowed_origins=parse_origins(access.allowed_origins),
        )

    def decide(self, facts: RequestFacts) -> Verdict:
        path, raw_path = facts.path, facts.raw_path
        if not self.names.allows(facts.host, facts.local):
            return Verdict(421, path, raw_path, f"this node does not answer to the name {facts.host!r:.100}")
        path_token: str | None = None
        if path.startswith("/t/"):
            prefix = _TOKEN_PREFIX.fullmatch(raw_path.decode("latin-1"))
            if prefix is None or not path.startswith(f"/t/{prefix.group(1)}/"):
                rest = path.split("/", 3)[3] if path.count("/") >= 3 else ""
                redacted = "/t/<redacted>/" + rest
                return Verdict(401, redacted, redacted.encode(), "malformed token path", (CHALLENGE,))
            path_token = prefix.group(1)
            path = path[len(path_token) + 3:]
            raw_path = raw_path[len(path_token) + 3:]
        cors: tuple[tuple[str, str], ...] = ()
        if facts.origin is not None and facts.origin.strip().lower() in self.allowed_origins:
            cors = (("Access-Control-Allow-Origin", facts.origin.strip()), ("Vary", "Origin"))
            if facts.preflight:
                return Verdict(204, path, raw_path, "", cors + (
                    ("Access-Control-Allow-Methods", CORS_METHODS),
                    ("Access-Control-Allow-Headers", CORS_HEADERS),
                    ("Access-Control-Max-Age", CORS_MAX_AGE),
                ))
        elif origin_refused(facts.method, facts.origin, facts.websocket, self.allowed_origins):
            message = f"requests from the web origin {facts.origin!r:.100} are not allowed"
            return Verdict(403, path, raw_path, message)
        need = required(facts.method, path)
        held = frozenset[str]()
        token_name = None
        if need.scope is not None:
            held = self.networks.scopes_for(facts.client)
            token, problem = self._presented(path_token, facts.authorization)
            if problem is not None:
                return Verdict(401, path, raw_path, problem, (CHALLENGE,) + cors)
            if token is not None:
                check = self.tokens.check(token)
                if check.record is None:
                    return Verdict(401, path, raw_path, f"{check.problem}", (CHALLENGE,) + cors)
                held = held | check.record.scopes
                token_name = check.record.name
            if not (bool(held) if need.scope == ANY_SCOPE else grants(held, need.scope)):
                what = "a granted scope" if need.scope == ANY_SCOPE else f"the scope {need.scope}"
                if token_name is None:
                    message = (
                        f"this request needs {what}: present a token "
                        "(Authorization: Bearer, or /t/<token>/ before the path)"
                    )
                    return Verdict(401, path, raw_path, message, (CHALLENGE,) + cors)
                return Verdict(403, path, raw_path, f"token {token_name!r} does not grant {what}", cors)
        if need.json and not is_json(facts.content_type):
            message = "this route takes a JSON body: send Content-Type: application/json"
            return Verdict(415, path, raw_path, message, cors)
        return Verdict(0, path, raw_path, "", cors, held, token_name)

    @staticmethod
    def _presented(path_token: str | None, authorization: str | None) -> tuple[str | None, str | None]:
        """(the token presented or None, a problem or None)."""
        header_token = None
        if authorization is not None:
            match = _BEARER.fullmatch(authorization)
            if match is None:
                if authorization.split(" ", 1)[0].lower() == "bearer":
                    return None, "malformed Authorization: Bearer field"
            else:
                header_token = match.group(1)
        if path_token is not None and header_token is not None and path_token != header_token:
            return None, "two different tokens (path prefix and Authorization field)"
        return path_token if path_token is not None else header_token, None
