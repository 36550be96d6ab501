"""PeerClient: signed requests from this node to its peers (httpx on trio).

Every request under ``/federation/`` is signed (signing.sign_request) for the peer it goes
to, with a fresh nonce and the current time; ``/federation/keys`` is the one unsigned
request (a peer's key set is self-certifying). A peer with several URLs is tried in order
when a connection fails. Answers other than 2xx become ``PeerRefused`` carrying the status
and the peer's reason (``X-Seamless-Refusal``); a peer that cannot be reached,
``PeerUnreachable``.

A peer whose URL is ``https://`` is reached over verified TLS, by httpx and by the large
downloads alike (download.py): its certificate must chain to the node's trust anchors
(``tls``: ``federation.ca_file``, or the system's trust store) and name the URL's host.
A peer whose certificate does not verify is unreachable at that URL, like one that
refuses connections; no request, signed or not, is sent to it.

Errors::

    PeerError             anything that went wrong talking to a peer
    ├── PeerUnreachable   no URL answered (connection refused, timeout, reset)
    ├── PeerRefused       the peer answered 4xx/5xx (401/403/429 carry a reason)
    └── PeerMisbehaved    the peer answered something malformed or unverifiable
"""

from __future__ import annotations

import json
import logging
import ssl
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import h11
import httpx
import trio

from ..errors import NodeError
from ..tls import client_context
from .canonical import b64encode, canonical_json
from .canonical import now as wall_clock
from .download import open_download
from .identity import IdentityError, KeySet
from .signing import sign_request

log = logging.getLogger("seamless_node.federation")

REFUSAL_HEADER = "X-Seamless-Refusal"
#: our key set (base64url of its canonical JSON), sent again with a request a peer refused
#: because it does not know our keys yet (first contact, or after a rotation)
KEYSET_HEADER = "X-Seamless-Key-Set"
_UNKNOWN_US = ("unknown-origin", "unknown-key")
#: most bytes of a JSON answer read from a peer
MAX_ANSWER = 64 * 1024 * 1024


class PeerError(NodeError):
    http_status = 502

    def __init__(self, peer: str, message: str) -> None:
        super().__init__(f"peer {peer[:12]}: {message}")
        self.peer = peer


class PeerUnreachable(PeerError):
    pass


class PeerRefused(PeerError):
    def __init__(self, peer: str, status: int, reason: str, text: str) -> None:
        super().__init__(peer, f"refused with HTTP {status} ({reason or 'no reason'}): {text[:200]}")
        self.status = status
        self.reason = reason


class PeerMisbehaved(PeerError):
    pass


def failure_reason(exc: BaseException | None) -> str:
    """Why a connection to a peer failed, readably: a TLS certificate that did not verify
    is named as such (httpx and trio wrap it without a message)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"its TLS certificate is not accepted ({seen.verify_message or seen.reason})"
        if isinstance(seen, ssl.SSLError):
            return f"TLS failed ({seen.reason or seen})"
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


class PeerClient:
    """Talks to peers as the node identified by ``watcher.identity``.

    *watcher* is a files.RegistryWatcher (or anything with ``identity`` and ``registry``).
    """

    def __init__(
        self,
        watcher: Any,
        *,
        timeout: float = 10.0,
        clock: Callable[[], int] = wall_clock,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.watcher = watcher
        #: verifies peers' https:// certificates (tls.client_context)
        self.tls = tls or client_context()
        self.clock = clock
        self.timeout = timeout
        #: called with (peer, status, reason) for every refusal a peer answers (the service
        #: fetches the peer's revocation list when it answers 403)
        self.on_refused: Callable[[str, int, str], None] | None = None
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
            follow_redirects=False,  # never: a signed request is for one destination
            verify=self.tls,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    def urls(self, peer: str) -> tuple[str, ...]:
        return self.watcher.registry.endpoints(peer, self.clock())

    def _refused(self, peer: str, status: int, reason: str, text: str) -> PeerRefused:
        if self.on_refused is not None:
            try:
                self.on_refused(peer, status, reason)
            except Exception as exc:  # a hook never changes what the caller sees
                log.warning("refusal hook failed: %s", exc)
        return PeerRefused(peer, status, reason, text)

    def keyset_header(self) -> str:
        return b64encode(canonical_json(self.watcher.identity.keyset.to_document()))

    def _prepare(
        self, peer: str, base: str, method: str, target: str, body: bytes, on_behalf_of: str
    ) -> tuple[str, dict[str, str]]:
        url = base.rstrip("/") + target
        raw_target = httpx.URL(url).raw_path.decode("ascii")
        headers = sign_request(
            self.watcher.identity,
            method=method,
            target=raw_target,
            body=body,
            destination=peer,
            timestamp=self.clock(),
            on_behalf_of=on_behalf_of,
        )
        if body:
            headers["Content-Type"] = "application/json"
        headers["Accept-Encoding"] = "identity"
        return url, headers

    @asynccontextmanager
    async def stream(
        self,
        peer: str,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        on_behalf_of: str = "",
        time_limit: float | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """A signed request whose answer is read as a stream (raise PeerRefused on non-2xx)."""
        urls = self.urls(peer)
        if not urls:
            raise PeerUnreachable(peer, "no URL known (set urls in its peers entry)")
        last: Exception | None = None
        for base in urls:
            try:
                response = await self._send(peer, base, method, target, body, on_behalf_of, time_limit)
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = exc
                continue
            try:
                if response.status_code >= 300:
                    text = (await response.aread())[:1000].decode("utf-8", "replace")
                    raise self._refused(
                        peer, response.status_code, response.headers.get(REFUSAL_HEADER, ""), text
                    )
                yield response
                return
            finally:
                await response.aclose()
        raise PeerUnreachable(peer, f"cannot connect: {failure_reason(last)}")

    async def _send(
        self,
        peer: str,
        base: str,
        method: str,
        target: str,
        body: bytes,
        on_behalf_of: str,
        time_limit: float | None,
    ) -> httpx.Response:
        """Send once; if the peer does not know our keys yet, once more with our key set."""
        extra: dict[str, str] = {}
        while True:
            url, headers = self._prepare(peer, base, method, target, body, on_behalf_of)
            request = self.http.build_request(
                method, url, content=body, headers={**headers, **extra}, timeout=time_limit or self.timeout
            )
            response = await self.http.send(request, stream=True)
            refusal = response.headers.get(REFUSAL_HEADER)
            if extra or response.status_code != 401 or refusal not in _UNKNOWN_US:
                return response
            await response.aclose()
            extra = {KEYSET_HEADER: self.keyset_header()}

    async def call(
        self,
        peer: str,
        method: str,
        target: str,
        payload: Any = None,
        *,
        on_behalf_of: str = "",
        time_limit: float | None = None,
    ) -> Any:
        """A signed request with an optional JSON body; the JSON answer."""
        body = b"" if payload is None else json.dumps(payload).encode()
        try:
            async with self.stream(
                peer, method, target, body=body, on_behalf_of=on_behalf_of, time_limit=time_limit
            ) as response:
                data = bytearray()
                async for chunk in response.aiter_raw():
                    data += chunk
                    if len(data) > MAX_ANSWER:
                        raise PeerMisbehaved(peer, f"answer over {MAX_ANSWER} bytes")
        except (httpx.TransportError, httpx.TimeoutException) as exc:
            raise PeerUnreachable(peer, f"request failed: {failure_reason(exc)}") from None
        try:
            return json.loads(data)
        except (ValueError, RecursionError):
            raise PeerMisbehaved(peer, "answer is not JSON") from None

    # -- the federation protocol ------------------------------------------------------

    @asynccontextmanager
    async def download(
        self, peer: str, target: str, *, time_limit: float | None = None
    ) -> AsyncIterator[tuple[dict[str, str], AsyncIterator[bytes]]]:
        """A signed GET whose (large) answer streams in pieces (see download.py).

        Yields the answer's headers (lowercase names) and its raw body; PeerRefused for
        any status but 2xx, PeerUnreachable when no URL answers with a response head."""
        urls = self.urls(peer)
        if not urls:
            raise PeerUnreachable(peer, "no URL known (set urls in its peers entry)")
        last: Exception | None = None
        for base in urls:
            extra: dict[str, str] = {}
            while True:
                url, headers = self._prepare(peer, base, "GET", target, b"", "")
                yielded = False
                try:
                    async with open_download(
                        url,
                        {**headers, **extra},
                        head_timeout=time_limit or self.timeout,
                        ssl_context=self.tls,
                    ) as (status, answer, body):
                        refusal = answer.get(REFUSAL_HEADER.lower(), "")
                        if status == 401 and not extra and refusal in _UNKNOWN_US:
                            extra = {KEYSET_HEADER: self.keyset_header()}
                            continue
                        if status >= 300:
                            text = b""
                            with trio.move_on_after(self.timeout):
                                async for chunk in body:
                                    text += chunk
                                    if len(text) > 1000:
                                        break
                            raise self._refused(peer, status, refusal, text[:1000].decode("utf-8", "replace"))
                        yielded = True
                        yield answer, body
                        return
                except (OSError, trio.TooSlowError, trio.BrokenResourceError, h11.ProtocolError) as exc:
                    if yielded:
                        raise
                    last = exc
                    break
        raise PeerUnreachable(peer, f"cannot download: {failure_reason(last)}")

    async def keys(self, peer: str) -> KeySet:
        """The peer's key set, verified against its node id (unsigned request)."""
        last: Exception | None = None
        for base in self.urls(peer):
            try:
                response = await self.http.get(base.rstrip("/") + "/federation/keys")
            except (httpx.TransportError, httpx.TimeoutException) as exc:
                last = exc
                continue
            if response.status_code != 200:
                raise PeerRefused(peer, response.status_code, "", response.text)
            try:
                return KeySet.from_document(response.json(), node_id=peer)
            except (ValueError, IdentityError) as exc:
                raise PeerMisbehaved(peer, f"bad key set: {exc}") from None
        raise PeerUnreachable(peer, f"cannot fetch keys: {failure_reason(last) if last else 'no URL known'}")

    async def ping(self, peer: str) -> dict[str, Any]:
        return await self.call(peer, "GET", "/federation/ping")  # type: ignore[no-any-return]

    async def has(self, peer: str, checksums: list[str]) -> list[int | None]:
        """Lengths of the buffers the peer holds, None for the others."""
        answer = await self.call(peer, "POST", "/federation/buffers/has", checksums)
        if (
            not isinstance(answer, list)
            or len(answer) != len(checksums)
            or not all(
                a is None or (isinstance(a, int) and not isinstance(a, bool) and a >= 0) for a in answer
            )
        ):
            raise PeerMisbehaved(peer, "malformed presence answer")
        return answer

    async def lookup_results(self, peer: str, transformations: list[str]) -> list[Any]:
        answer = await self.call(peer, "POST", "/federation/results/lookup", transformations)
        if not isinstance(answer, list) or len(answer) != len(transformations):
            raise PeerMisbehaved(peer, "malformed result lookup answer")
        return answer

    async def push_claims(self, peer: str, claims: list[dict[str, Any]]) -> Any:
        return await self.call(peer, "POST", "/federation/results/claims", claims)

    async def revocations(self, peer: str) -> Any:
        """The peer's signed revocation list document (unverified: see revocation_sync)."""
        return await self.call(peer, "GET", "/federation/revocations")
