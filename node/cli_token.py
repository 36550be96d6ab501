"""``seamless-node token create|list|revoke`` and the ``--token`` option of client commands.

::

    seamless-node token create --name alice --scopes buffers:read,jobs:submit --expires 90d
    seamless-node token list
    seamless-node token revoke alice          # or the id that `token list` shows

``create`` prints the token once, on standard output, and nothing else there (so it can
be captured: ``TOKEN=$(seamless-node token create ...)``); the node keeps only its hash
(``access.tokens_file``, see node/access/tokens.py). A running node sees new and revoked
tokens at the next request that presents one.

Client commands (put, get, has, db, submit, ...) take ``--token`` or
``SEAMLESS_NODE_TOKEN`` and send it as ``Authorization: Bearer``. A token is never
printed: messages that would show the node's URL or a token show ``<redacted>`` instead.
"""

from __future__ import annotations

import datetime
import json
import re
import sys

import click

from .access.scopes import SCOPES, ScopeError, parse_scopes
from .access.tokens import TokenError, create_token, load_tokens, revoke_tokens
from .cli_federation import where_options
from .config import build_config, parse_seconds
from .errors import ConfigError

_SECRET = re.compile(r"/t/[^/\s\"':]+|snt_[A-Za-z0-9_-]+")
_META_KEY = "seamless_node_token"


def redact(text: str) -> str:
    """*text* with every token (and /t/<token> path prefix) replaced by ``<redacted>``."""
    return _SECRET.sub(lambda m: "/t/<redacted>" if m.group(0).startswith("/t/") else "<redacted>", text)


def _remember(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_META_KEY] = value.strip()


token_option = click.option(
    "--token",
    envvar="SEAMLESS_NODE_TOKEN",
    expose_value=False,
    callback=_remember,
    help="Bearer token for the node (env SEAMLESS_NODE_TOKEN); never printed.",
)


def auth_headers() -> dict[str, str]:
    """The Authorization field for the current command's token (none without one)."""
    ctx = click.get_current_context(silent=True)
    token = ctx.meta.get(_META_KEY) if ctx is not None else None
    return {"Authorization": f"Bearer {token}"} if token else {}


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"seamless-node: {redact(message)}", err=True)
    sys.exit(code)


def _tokens_file(data_dir: str | None, config_file: str | None) -> str:
    try:
        return build_config(config_file=config_file, flags={"node": {"data_dir": data_dir}}).tokens_file
    except ConfigError as exc:
        _fail(str(exc), 2)
        raise AssertionError from None


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


@click.group()
def token() -> None:
    """Bearer tokens: create (shown once), list, revoke.

    A token grants scopes to whoever presents it, as `Authorization: Bearer <token>` or
    as a path prefix `/t/<token>/` (for clients that take only a base URL).
    """


@token.command()
@where_options
@click.option("--name", required=True, help="Who or what the token is for (unique among active tokens).")
@click.option("--scopes", required=True, help=f"Comma-separated scopes, from: {', '.join(SCOPES)}.")
@click.option("--expires", default="90d", show_default=True, help="Lifetime (30d, 12h, ...) or 'never'.")
def create(data_dir: str | None, config_file: str | None, name: str, scopes: str, expires: str) -> None:
    """Create a token and print it (once: the node keeps only its hash)."""
    try:
        granted = parse_scopes(scopes)
        lifetime = None if expires.strip().lower() == "never" else float(parse_seconds(expires))
    except (ScopeError, ValueError) as exc:
        _fail(str(exc), 2)
        return
    if lifetime is not None and lifetime <= 0:
        _fail("--expires must be a positive duration or 'never'", 2)
    path = _tokens_file(data_dir, config_file)
    try:
        secret, record = create_token(path, name, granted, lifetime)
    except (TokenError, OSError) as exc:
        _fail(str(exc), 2)
        return
    click.echo(secret)
    click.echo(
        f"token {record.name} (id {record.id}): {', '.join(sorted(record.scopes))}; "
        f"expires {_when(record.expires)}. It is shown only this once.",
        err=True,
    )


@token.command("list")
@where_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_(data_dir: str | None, config_file: str | None, as_json: bool) -> None:
    """Every token the node knows (never the tokens themselves): id, name, scopes,
    created, expires, state (active, expired, revoked)."""
    import time

    try:
        records = load_tokens(_tokens_file(data_dir, config_file))
    except TokenError as exc:
        _fail(str(exc), 2)
        return
    now = time.time()
    if as_json:
        rows = [
            {"id": r.id, "name": r.name, "scopes": sorted(r.scopes), "created": r.created,
             "expires": r.expires, "revoked": r.revoked, "state": r.state(now)}
            for r in records
        ]
        click.echo(json.dumps(rows, indent=2))
        return
    if not records:
        click.echo("no tokens")
        return
    click.echo(f"{'ID':12}  {'NAME':20}  {'STATE':8}  {'EXPIRES':20}  SCOPES")
    for r in records:
        scopes = ",".join(sorted(r.scopes))
        click.echo(f"{r.id:12}  {r.name:20}  {r.state(now):8}  {_when(r.expires):20}  {scopes}")


@token.command()
@where_options
@click.argument("name_or_id")
def revoke(data_dir: str | None, config_file: str | None, name_or_id: str) -> None:
    """Revoke the active tokens named NAME_OR_ID, or the token with that id. A running
    node refuses them (401) from the next request on."""
    try:
        hits = revoke_tokens(_tokens_file(data_dir, config_file), name_or_id)
    except (TokenError, OSError) as exc:
        _fail(str(exc), 2)
        return
    for r in hits:
        click.echo(f"revoked token {r.name} (id {r.id})")
