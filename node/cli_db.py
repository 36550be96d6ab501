"""``seamless-node db``: the result database from the command line.

``get``, ``set`` and ``rev`` talk to a running node (``--url``, through its
``/api/v1/database`` API); ``import`` and ``export`` move entries between SQLite files
(the node's own ``seamless.db`` and files written by the node or by seamless-database).
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import click
import httpx

from .checksum import is_checksum
from .client import with_ca_file
from .cli_token import auth_headers, redact, token_option
from .config import build_config
from .errors import ConfigError, NodeError

DEFAULT_URL = "http://127.0.0.1:5533"
READ_TYPES = (
    "transformation",
    "compilation",
    "metadata",
    "buffer_info",
    "irreproducible",
    "rev_transformations",
)

url_option = with_ca_file(click.option(
    "--url",
    envvar="SEAMLESS_NODE_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Base URL of the node, http:// or https:// (env SEAMLESS_NODE_URL).",
))
data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    help="The node's data directory (its seamless.db is used).",
)
config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    help="Take the database path from this YAML configuration.",
)


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"seamless-node: {redact(message)}", err=True)
    sys.exit(code)


def _checksum_arg(value: str, what: str) -> str:
    if not is_checksum(value):
        _fail(f"{what} is not a checksum (64 lowercase hex characters): {value!r}", 2)
    return value


def _call(url: str, endpoint: str, body: dict[str, Any]) -> tuple[int, Any]:
    try:
        with httpx.Client(timeout=60) as client:
            target = url.rstrip("/") + "/api/v1/database/" + endpoint
            r = client.post(target, json=body, headers=auth_headers())
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the node at {url}: {exc}")
    try:
        answer = r.json()
    except ValueError:
        _fail(f"the node at {url} answered {r.status_code} without JSON (does it run the database role?)")
    if r.status_code not in (200, 404):
        _fail(f"the node refused: {answer.get('error', answer)} (HTTP {r.status_code})")
    return r.status_code, answer


def _database_path(data_dir: str | None, config_file: str | None) -> str:
    try:
        config = build_config(config_file=config_file, flags={"node": {"data_dir": data_dir}})
    except ConfigError as exc:
        _fail(str(exc), 2)
        raise
    return config.database_path


@click.group()
def db() -> None:
    """Read and write the result database (transformation -> result and the rest).

    get/set/rev ask a running node; import/export copy entries between seamless.db files.
    """


@db.command()
@click.argument("checksum")
@click.option("--type", "type_", type=click.Choice(READ_TYPES), default="transformation", show_default=True)
@url_option
@token_option
def get(checksum: str, type_: str, url: str) -> None:
    """Print what the node knows for CHECKSUM: a bare checksum for transformation and
    compilation, JSON otherwise. Exit status 1 when the node does not know it."""
    _checksum_arg(checksum, "CHECKSUM")
    status, answer = _call(url, "read", {"type": type_, "checksum": checksum})
    if status == 404:
        click.echo(f"unknown: no {type_} entry for {checksum}", err=True)
        sys.exit(1)
    value = answer["value"]
    click.echo(value if isinstance(value, str) else json.dumps(value, indent=2))


@db.command("set")
@click.argument("checksum")
@click.argument("result")
@click.option(
    "--type",
    "type_",
    type=click.Choice(["transformation", "compilation"]),
    default="transformation",
    show_default=True,
)
@url_option
@token_option
def set_(checksum: str, result: str, type_: str, url: str) -> None:
    """Record RESULT as the result of CHECKSUM (a transformation, or with --type
    compilation a module definition and its compiled binary)."""
    _checksum_arg(checksum, "CHECKSUM")
    _checksum_arg(result, "RESULT")
    _call(url, "write", {"type": type_, "checksum": checksum, "value": result})


@db.command()
@click.argument("result")
@url_option
@token_option
def rev(result: str, url: str) -> None:
    """List the transformations known to give RESULT, one per line (exit 1 if none)."""
    _checksum_arg(result, "RESULT")
    status, answer = _call(url, "read", {"type": "rev_transformations", "checksum": result})
    if status == 404:
        click.echo(f"unknown: no transformation gives {result}", err=True)
        sys.exit(1)
    for checksum in answer["value"]:
        click.echo(checksum)


def _report(added: dict[str, int], source: str, target: str) -> None:
    total = sum(added.values())
    detail = ", ".join(f"{n} {table}" for table, n in added.items() if n)
    click.echo(f"{source} -> {target}: {total} entries added" + (f" ({detail})" if detail else ""))


@db.command("import")
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--into",
    "target",
    type=click.Path(dir_okay=False),
    help="The file to import into (default: the node's seamless.db).",
)
@data_dir_option
@config_option
def import_(
    sources: tuple[str, ...], target: str | None, data_dir: str | None, config_file: str | None
) -> None:
    """Merge the entries of SOURCES (seamless.db files of a node or of seamless-database)
    into the node's database. What the node already has wins; a running node may keep
    serving (its writes wait until the import commits)."""
    from .store.mapping_transfer import merge_file

    target = target or _database_path(data_dir, config_file)
    for source in sources:
        try:
            added = merge_file(target, source)
        except (NodeError, ValueError, OSError) as exc:
            _fail(f"cannot import {source}: {exc}")
            return
        except Exception as exc:  # sqlite3 errors: locked, corrupt, not a database
            _fail(f"cannot import {source}: {type(exc).__name__}: {exc}")
            return
        _report(added, source, target)


@db.command()
@click.argument("destination", type=click.Path(dir_okay=False))
@click.option(
    "--from",
    "source",
    type=click.Path(exists=True, dir_okay=False),
    help="The file to export (default: the node's seamless.db).",
)
@click.option("--force", is_flag=True, help="Replace DESTINATION if it exists.")
@data_dir_option
@config_option
def export(
    destination: str, source: str | None, force: bool, data_dir: str | None, config_file: str | None
) -> None:
    """Write the node's database entries into a new standalone file DESTINATION, which
    seamless-database 2.1.0 and other nodes can open (e.g. to share a cache)."""
    from .store.mapping_transfer import merge_file

    source = source or _database_path(data_dir, config_file)
    if not os.path.isfile(source):
        _fail(f"no database file at {source}", 2)
    if os.path.exists(destination):
        if not force:
            _fail(f"{destination} exists; use --force to replace it, or `db import --into` to merge", 2)
        os.remove(destination)
    try:
        added = merge_file(destination, source)
    except Exception as exc:
        _fail(f"cannot export {source}: {exc}")
        return
    _report(added, source, destination)
