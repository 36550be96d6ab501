"""The access decision (``access/policy.py``) applied on both HTTP paths.

The front (``front.py``) asks ``Guard.check_head`` about every request head it parsed,
before routing: a refused request is answered on the socket, an allowed one is routed
by the path the verdict gives (a ``/t/<token>`` prefix removed). A connection the front
hands over to hypercorn replays the original bytes, and ``FastPath`` (the ASGI app that
hypercorn runs, fast routes first, then Quart) asks ``Guard.check_scope`` for every
HTTP request and websocket handshake on it. So every request, whichever path serves
it, passes the same decision before any handler sees it (a request the front reads and
then hands over is decided twice, alike), and no handler, log line or metric sees a
token that came in the path.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Awaitable, Callable

from ..access.policy import AccessPolicy, RequestFacts, Verdict, facts_of
from ..errors import NodeError
from .fastpath import FastRoute, Request, Response, error_response

log = logging.getLogger("seamless_node.access")

_ANY = re.compile(r".*", re.DOTALL)


class Guard:
    def __init__(self, policy: AccessPolicy) -> None:
        self.policy = policy

    def decide(self, facts: RequestFacts) -> Verdict:
        try:
            verdict = self.policy.decide(facts)
        except Exception:  # a bug here must cost one request, never the node
            log.exception("the access decision failed for a %s request", facts.method)
            return Verdict(500, "/", b"/", "Internal Server Error")
        if not verdict.allowed and verdict.status != 204:
            log.info(
                "%s %s from %s refused (%d): %s",
                facts.method, verdict.path, facts.client or "?", verdict.status, verdict.message,
            )
        return verdict

    def check_head(self, head: Any, peer: tuple[str, int] | None, local: tuple[str, int] | None) -> Verdict:
        """The verdict on a request head parsed by the front."""
        client = peer[0] if peer else None
        return self.decide(facts_of(head.method, head.path, head.raw_path, head.headers, client, local))

    def check_scope(self, scope: dict[str, Any]) -> Verdict:
        """The verdict on an ASGI http or websocket scope."""
        client = scope.get("client")
        server = scope.get("server")
        raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
        return self.decide(facts_of(
            scope.get("method", "GET"),
            scope["path"],
            raw_path,
            scope.get("headers") or [],
            client[0] if client else None,
            (server[0], server[1]) if server and len(server) >= 2 else None,
            websocket=scope["type"] == "websocket",
        ))


    async def admit(
        self, fast: Any, scope: dict[str, Any], receive: Any, send: "Send"
    ) -> tuple[dict[str, Any], "Send"] | None:
        """For ``FastPath``: the scope and send to go on with, or None when the request
        was refused (the refusal has been answered)."""
        verdict = self.check_scope(scope)
        scope = routed_scope(scope, verdict)
        if verdict.allowed:
            return scope, send_with_headers(send, verdict.headers)
        if scope["type"] == "websocket":
            await refuse_websocket(send, verdict)
        else:
            route = refusal_route(scope["method"], verdict)
            match = _ANY.match("")
            assert match is not None
            await fast._serve(route, Request(scope, receive, match), send)
        return None


def routed_scope(scope: dict[str, Any], verdict: Verdict) -> dict[str, Any]:
    """The scope to route: the verdict's path, and the verdict itself for handlers."""
    scope = dict(scope)
    scope["path"] = verdict.path
    scope["raw_path"] = verdict.raw_path
    scope["seamless.access"] = verdict
    return scope


def refusal(verdict: Verdict) -> Response:
    return Response(verdict.status, verdict.message.encode(), dict(verdict.headers) or None)


def refusal_route(method: str, verdict: Verdict) -> FastRoute:
    """A fast route that answers the refusal (so the body is drained as for any answer)."""

    async def refuse(request: Request) -> Response:
        return refusal(verdict)

    return FastRoute(method, _ANY, refuse)


def with_headers(route: FastRoute, headers: tuple[tuple[str, str], ...]) -> FastRoute:
    """*route* with *headers* (CORS) added to its answers, error answers included."""
    if not headers:
        return route

    async def handler(request: Request) -> Response:
        try:
            response = await route.handler(request)
        except NodeError as exc:
            if request.response_started:
                raise
            response = error_response(request, exc)
        response.headers = {**(response.headers or {}), **dict(headers)}
        return response

    return FastRoute(route.method, route.pattern, handler)


Send = Callable[[dict[str, Any]], Awaitable[None]]


def send_with_headers(send: Send, headers: tuple[tuple[str, str], ...]) -> Send:
    """An ASGI send that adds *headers* to the response start (CORS)."""
    if not headers:
        return send
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]

    async def wrapped(message: dict[str, Any]) -> None:
        if message["type"] in ("http.response.start", "websocket.http.response.start"):
            message = {**message, "headers": list(message.get("headers") or []) + extra}
        await send(message)

    return wrapped


async def refuse_websocket(send: Send, verdict: Verdict) -> None:
    """Refuse a websocket handshake with an HTTP answer (hypercorn supports the ASGI
    ``websocket.http.response`` extension)."""
    headers = [(b"content-type", b"text/plain")]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in verdict.headers]
    await send({"type": "websocket.http.response.start", "status": verdict.status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": verdict.message.encode()})
