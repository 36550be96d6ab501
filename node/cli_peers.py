"""``seamless-node peers``: what a node knows about its peers.

::

    seamless-node peers                      # asks the running node (GET /api/v1/peers)
    seamless-node peers --url https://node:5533 --token ...
    seamless-node peers --offline --data-dir ./site-a     # the node is not running

By default the command asks the running node, over its API and with the command's
token: the node's own view (its last probe of each peer, grants both ways, what it last
saw), without reading any key file. The node is the one at ``--url`` (or
``SEAMLESS_NODE_URL``), else at the address its configuration (``--config``,
``--data-dir`` and the environment, as for ``run``) makes it listen on.

If no node answers there, the command says so and reads the data directory instead, as
``--offline`` does: that needs the node's key file, and contacts each peer itself unless
``--no-probe``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
import httpx

from .cli_federation import _config, where_options
from .cli_token import auth_headers, redact, token_option
from .client import base_url, with_ca_file
from .config import NodeConfig
from .errors import NodeError


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"seamless-node: {redact(message)}", err=True)
    sys.exit(code)


def node_url(config: NodeConfig) -> str:
    """The URL a node with *config* answers on, from this machine."""
    host = config.node.host
    if host in ("0.0.0.0", "", "*"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.node.tls_cert_file else "http"
    return f"{scheme}://{host}:{config.node.port}"


class NotRunning(Exception):
    """No node answers at the URL."""


def ask_node(url: str) -> dict[str, Any]:
    """The running node's ``/api/v1/peers`` report; NotRunning if nothing answers there,
    NodeError (with a plain message) if it answers otherwise than with a report."""
    try:
        response = httpx.get(f"{url}/api/v1/peers", headers=auth_headers(), timeout=30.0)
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        if "CERTIFICATE" in str(exc) or "SSL" in str(exc):  # a node answers, not trusted
            raise NodeError(f"cannot verify the node at {url}: {exc} (--ca-file)") from None
        raise NotRunning(str(exc)) from None
    except httpx.HTTPError as exc:
        raise NodeError(f"cannot ask the node at {url}: {exc}") from None
    kind = response.headers.get("content-type", "")
    if response.status_code == 404:
        raise NodeError(f"the node at {url} runs without federation (federation.enabled is off)")
    if response.status_code in (401, 403):
        raise NodeError(
            f"the node at {url} refused: {response.text.strip()[:300]} (give a token with --token)"
        )
    if response.status_code != 200 or not kind.startswith("application/json"):
        raise NodeError(f"the node at {url} answered HTTP {response.status_code}; is it a seamless-node?")
    report = response.json()
    if not isinstance(report, dict) or not isinstance(report.get("peers"), list):
        raise NodeError(f"the node at {url} gave no peer report")
    return report


@click.command()
@where_options
@with_ca_file(click.option(
    "--url", envvar="SEAMLESS_NODE_URL", default=None,
    help="The running node to ask (env SEAMLESS_NODE_URL; default: where its configuration "
    "makes it listen).",
))
@token_option
@click.option("--offline", is_flag=True, help="Do not ask the node: read its data directory (needs its key).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--no-probe", is_flag=True, help="With --offline: do not contact the peers.")
def peers(
    data_dir: str | None,
    config_file: str | None,
    url: str | None,
    offline: bool,
    as_json: bool,
    no_probe: bool,
) -> None:
    """Each peer: reachable?, does it accept us?, grants both ways, last seen.

    Asks the running node; reads the data directory if it is not running (or --offline).
    """
    from .federation.status import collect, render

    config = _config(data_dir, config_file)
    report: dict[str, Any] | None = None
    if not offline:
        where = base_url(url) if url else node_url(config)
        try:
            report = ask_node(where)
        except NotRunning:
            click.echo(
                f"seamless-node: no node answers at {redact(where)}; reading {config.node.data_dir} instead",
                err=True,
            )
        except NodeError as exc:
            _fail(str(exc))
    if report is None:
        try:
            report = collect(config, probe=not no_probe)
        except NodeError as exc:
            _fail(str(exc), 2)
            return
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(render(report), nl=False)
