"""Build the node from a NodeConfig and serve it: one trio process, one port, one
Quart-trio app with every enabled role mounted under its prefix. The front
(``web/front.py``) accepts the connections: it answers the hot fast routes itself and hands
everything else to hypercorn, which runs the app.

``serve_node`` is what ``seamless-node run`` calls and what tests use (with port 0): it
opens the store, starts the roles, binds and reports the bound URL through
``task_status``. When its *stop* event is set it shuts down gracefully: it stops
accepting, closes idle connections, gives the requests in flight up to
``node.shutdown_grace`` seconds, then cancels the rest and closes the roles. Cancelling it
stops at once (the roles are still closed).
"""

from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass

import trio
from hypercorn.config import Config as HypercornConfig
from quart import Response, request

from . import __version__
from .access.policy import AccessPolicy
from .config import NodeConfig
from .errors import NodeError
from .federation.service import federation_enabled
from .metrics import Metrics
from .roles import NodeContext, Role, role_classes
from .store.buffers import BufferStore
from .store.service import BufferService
from .store_stats import StoreStats
from .tls import server_context
from .web.access_log import RequestLog
from .web.app_class import NodeApp, needs_close
from .web.fastpath import FastPath, route
from .web.fastpath import Request as FastRequest
from .web.fastpath import Response as FastResponse
from .web.front import Front
from .web.guard import Guard

log = logging.getLogger("seamless_node")

#: longest a job long-poll (``/jobserver/run-transformation``) may stay silent
LONG_POLL_SECONDS = 1260.0


@dataclass
class Node:
    config: NodeConfig
    app: NodeApp
    context: NodeContext
    roles: list[Role]
    #: what hypercorn serves: the fast routes in front of the Quart app
    asgi: FastPath
    #: the TLS server context (node.tls_cert_file), or None for plain HTTP
    tls: ssl.SSLContext | None = None
    #: the request log line and request metrics of both HTTP paths
    requests: RequestLog | None = None


def build_node(config: NodeConfig) -> Node:
    cfg = config.buffers
    store = BufferStore(
        config.buffer_directory,
        readonly=cfg.readonly,
        max_buffer_size=cfg.max_buffer_size,
        layout=cfg.layout,  # type: ignore[arg-type]
        extra_dirs=cfg.extra_dirs,
        fsync=cfg.fsync,
        reserve_free_bytes=cfg.reserve_free_bytes,
        verified_ttl=float(cfg.verified_ttl),
        direct_io_min_size=int(cfg.direct_io_min_size) if cfg.direct_io else None,
        lock_timeout=float(cfg.lock_timeout),
    )
    metrics = Metrics()
    service = BufferService(store, threads=cfg.threads, promise_ttl=cfg.promise_ttl)
    context = NodeContext(config=config, buffers=service, metrics=metrics)
    classes = role_classes()
    roles = [classes[name](context) for name in config.node.roles]
    if federation_enabled(config):
        from .federation.service import FederationService

        context.federation = FederationService(context)

    app = NodeApp("seamless_node")
    app.config["MAX_CONTENT_LENGTH"] = None  # the node enforces its own limits per route
    app.config["BODY_TIMEOUT"] = None
    app.config["RESPONSE_TIMEOUT"] = None
    for role in roles:
        for blueprint in role.blueprints():
            app.register_blueprint(blueprint)
    if context.federation is not None:
        from .federation.routes import federation_blueprints

        for blueprint in federation_blueprints(context.federation):
            app.register_blueprint(blueprint)
    stats = StoreStats(store, metrics, writes=lambda: _store_writes(metrics))
    _install_common_routes(app, node_roles=roles, metrics=metrics, started=time.time(), stats=stats)
    fast = [route("GET", "/healthcheck", _healthcheck)]  # load balancers poll it often
    fast += [r for role in roles for r in role.fast_routes()]
    if context.federation is not None:
        from .federation.routes_fast import federation_fast_routes

        fast += federation_fast_routes(context.federation)
    tls = None
    if config.node.tls_cert_file and config.node.tls_key_file:
        tls = server_context(config.node.tls_cert_file, config.node.tls_key_file)
        metrics.describe(
            "seamless_node_tls_refused_total", "connections refused before their first request, by reason"
        )
    guard = Guard(AccessPolicy.from_config(config))  # who may do what (docs/security.md)
    requests = RequestLog(metrics, enabled=config.node.access_log)
    return Node(config, app, context, roles, FastPath(app, fast, metrics, guard), tls, requests)


def _store_writes(metrics: Metrics) -> float:
    """A number that moves when buffers are stored (uploads, job results, peer fetches)."""
    return sum(
        metrics.value(name)
        for name in ("seamless_node_buffers_stored_total", "seamless_node_jobs_done_total")
    ) + sum(metrics.series_total("seamless_node_federation_bytes_fetched_total"))


async def _healthcheck(request: FastRequest) -> FastResponse:
    return FastResponse(200, b"OK")


def _install_common_routes(
    app: NodeApp, *, node_roles: list[Role], metrics: Metrics, started: float, stats: StoreStats
) -> None:
    metrics.gauge("seamless_node_uptime_seconds", lambda: time.time() - started, "seconds since start")

    @app.route("/healthcheck", methods=["GET"])
    async def healthcheck() -> Response:
        return Response("OK", content_type="text/plain")

    @app.route("/metrics", methods=["GET"])
    async def metrics_route() -> Response:
        await stats.refresh()
        return Response(metrics.render(), content_type="text/plain; version=0.0.4")

    @app.route("/api/v1/node", methods=["GET"])
    async def node_info() -> Response:
        import json

        body = {
            "version": __version__,
            "roles": [r.name for r in node_roles],
            "prefixes": {r.name: r.prefix for r in node_roles},
        }
        return Response(json.dumps(body), content_type="application/json")

    @app.errorhandler(NodeError)
    async def node_error(exc: NodeError) -> Response:
        status = exc.http_status
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, exc)
        else:
            log.info("%s %s refused (%d): %s", request.method, request.path, status, exc)
        return Response(str(exc), status=status, content_type="text/plain")

    @app.after_request
    async def close_if_needed(response: Response) -> Response:
        if needs_close(request):
            response.headers["Connection"] = "close"
        return response


def _open_connections(front: Front) -> int:
    connections = getattr(front, "_connections", None)
    return len(connections.child_tasks) if connections is not None else 0


def hypercorn_config(config: NodeConfig) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{config.node.host}:{config.node.port}"]
    # hypercorn's keep-alive timer runs from connection (or last response) until a complete
    # request head has arrived, so it bounds slow-header clients as well as idle connections
    hc.keep_alive_timeout = float(config.node.header_timeout)
    hc.read_timeout = 120  # no byte at all for this long ends a connection
    if "jobless" in config.node.roles:
        # /jobserver answers when the job ends: a client waits without sending a byte
        # for as long as its own read timeout (20 min for the Seamless client)
        hc.read_timeout = max(hc.read_timeout, LONG_POLL_SECONDS)
    hc.accesslog = None
    hc.errorlog = logging.getLogger("hypercorn.error")
    hc.include_server_header = False
    return hc


async def serve_node(
    config: NodeConfig,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node until *stop* is set (then shut down gracefully) or until cancelled;
    report the bound base URLs to ``task_status``."""
    await run_node(build_node(config), stop=stop, task_status=task_status)


async def run_node(
    node: Node,
    *,
    stop: trio.Event | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a built node until *stop* is set or until cancelled (tests build it first to
    reach its context)."""
    federation = node.context.federation
    try:
        async with trio.open_nursery() as nursery:
            await node.context.buffers.open(nursery)
            for role in node.roles:
                await role.start(nursery)
            if federation is not None:
                await federation.start(nursery)
            front = Front(
                node.asgi, node.asgi.routes, node.context.metrics, hypercorn_config(node.config),
                tls=node.tls, requests=node.requests,
            )
            node.context.metrics.gauge(
                "seamless_node_open_connections", lambda: _open_connections(front), "client connections open"
            )
            urls = await nursery.start(front.serve)
            task_status.started(urls)
            if stop is None:
                await trio.sleep_forever()
            await stop.wait()
            await front.shut_down(float(node.config.node.shutdown_grace))
            nursery.cancel_scope.cancel()  # the roles' own tasks
    finally:
        with trio.CancelScope(shield=True):
            if federation is not None:
                await federation.aclose()
            for role in node.roles:
                await role.aclose()
