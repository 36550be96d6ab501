"""Federation commands: ``keygen``, ``key`` and ``link`` (``peers``: cli_peers.py).

::

    seamless-node keygen --data-dir ./site-a            # prints the new node id
    seamless-node key show|rotate --data-dir ./site-a
    seamless-node link grant --data-dir ./site-a --to <node id> --grant buffers:read \
        --expires 90d > a-grants-b.link
    seamless-node link show|verify FILE...
    seamless-node link revoke --data-dir ./site-a --serial 7

Every command finds the key, the peers file and the revocations file from ``--data-dir``
(or ``--config``), as ``seamless-node run`` does.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .atomic_file import write_atomic
from .config import NodeConfig, build_config
from .errors import ConfigError, NodeError


def _fail(message: str, code: int = 1) -> None:
    click.echo(f"seamless-node: {message}", err=True)
    sys.exit(code)


def _config(data_dir: str | None, config_file: str | None) -> NodeConfig:
    try:
        return build_config(config_file=config_file, flags={"node": {"data_dir": data_dir}})
    except ConfigError as exc:
        _fail(str(exc), 2)
        raise AssertionError from None


def where_options(fn: Any) -> Any:
    """--config and --data-dir: where a command finds the node's files, as ``run`` does."""
    fn = click.option(
        "--config", "config_file", type=click.Path(dir_okay=False), help="YAML configuration file."
    )(fn)
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False),
        help="The node's data directory (default ./seamless-data).",
    )(fn)


def _identity(config: NodeConfig) -> Any:
    from .federation.identity import load_identity

    try:
        return load_identity(config.key_file)
    except NodeError as exc:
        _fail(str(exc), 2)


@click.command()
@where_options
@click.option("--force", is_flag=True, help="Replace an existing key (the node gets a new id!).")
def keygen(data_dir: str | None, config_file: str | None, force: bool) -> None:
    """Create the node's key pair (Ed25519) and print its node id.

    The private key goes to <data-dir>/node.key (or federation.key_file), mode 0600. Give
    the node id to the operators of your peers; it never changes, also across `key rotate`.
    """
    from .federation.canonical import now
    from .federation.identity import NodeIdentity, save_identity

    config = _config(data_dir, config_file)
    path = config.key_file
    if os.path.lexists(path) and not force:
        _fail(f"{path} exists already (node id: {_identity(config).node_id}); use --force to replace it", 2)
    identity = NodeIdentity.generate(now())
    save_identity(path, identity)
    click.echo(identity.node_id)


@click.group()
def key() -> None:
    """Show or rotate the node's key."""


@key.command("show")
@where_options
def key_show(data_dir: str | None, config_file: str | None) -> None:
    """Print the node id and every key with its validity period."""
    from .federation.canonical import b64encode, format_time

    identity = _identity(_config(data_dir, config_file))
    click.echo(f"node id: {identity.node_id}")
    for period in identity.keyset.periods:
        current = "  (signing)" if period.public_key == identity.public_key else ""
        click.echo(
            f"key {b64encode(period.public_key)}  valid {format_time(period.valid_from)} .. "
            f"{format_time(period.valid_until) if period.valid_until else '(no end)'}{current}"
        )


@key.command("rotate")
@where_options
@click.option(
    "--overlap", default="7d", show_default=True, help="How long the old key stays valid (e.g. 7d, 12h)."
)
def key_rotate(data_dir: str | None, config_file: str | None, overlap: str) -> None:
    """Replace the signing key; peers accept the old one until the overlap ends.

    Links this node signed with the old key stop counting when the old key expires: issue
    them again (`link grant`) within the overlap. A running node picks the new key up by
    itself.
    """
    from .federation.canonical import now, parse_duration
    from .federation.identity import save_identity

    config = _config(data_dir, config_file)
    try:
        seconds = parse_duration(overlap)
    except ValueError as exc:
        _fail(str(exc), 2)
    rotated = _identity(config).rotate(now(), seconds)
    save_identity(config.key_file, rotated)
    click.echo(f"rotated; node id unchanged: {rotated.node_id}")


@click.group()
def link() -> None:
    """Issue, inspect, verify and revoke signed peer links."""


def _next_serial(config: NodeConfig) -> int:
    path = os.path.join(config.federation_directory, "serial")
    try:
        with open(path, encoding="ascii") as f:
            serial = int(f.read().strip() or 0) + 1
    except FileNotFoundError:
        serial = 1
    except (OSError, ValueError) as exc:
        _fail(f"cannot read the link serial counter {path}: {exc}")
    # durable before the serial is used: a crash must never let a serial be issued twice
    write_atomic(path, f"{serial}\n".encode())
    return serial


@link.command("grant")
@where_options
@click.option("--to", "subject", required=True, help="Node id of the peer that gets the grant.")
@click.option(
    "--grant", "caps", required=True, help="Capabilities, e.g. buffers:read,results:read,jobs:submit."
)
@click.option(
    "--limit", "limits", multiple=True, help="A limit, e.g. jobs:submit.max_concurrent=4 (repeatable)."
)
@click.option("--expires", default="90d", show_default=True, help="Validity from now (or from --starts).")
@click.option("--starts", default="0", help="Delay before the link becomes valid (e.g. 1h).")
@click.option("--endpoint", "endpoints", multiple=True, help="URL where the peer is reached (repeatable).")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False), help="Write the link here instead of stdout."
)
def link_grant(
    data_dir: str | None,
    config_file: str | None,
    subject: str,
    caps: str,
    limits: tuple[str, ...],
    expires: str,
    starts: str,
    endpoints: tuple[str, ...],
    output: str | None,
) -> None:
    """Sign a link granting capabilities to another node; print it (JSON).

    Give the file to the peer's operator; list it in both nodes' peers entries.
    """
    from .federation.canonical import format_time, now, parse_duration
    from .federation.identity import is_node_id
    from .federation.links import Link, LinkError, parse_endpoints, parse_grant_spec, sign_link

    config = _config(data_dir, config_file)
    identity = _identity(config)
    if not is_node_id(subject):
        _fail(f"--to {subject!r} is not a node id (52 characters, printed by the peer's keygen)", 2)
    try:
        parsed_limits = {}
        for item in limits:
            name, sep, value = item.partition("=")
            if not sep or not value.strip().isdigit():
                raise LinkError(f"--limit {item!r}: expected CAPABILITY.LIMIT=NUMBER")
            parsed_limits[name.strip()] = int(value)
        grants = parse_grant_spec(caps, parsed_limits)
        start = now() + parse_duration(starts)
        link_doc = Link(
            issuer=identity.node_id,
            subject=subject,
            grants=grants,
            not_before=start,
            not_after=start + parse_duration(expires),
            serial=_next_serial(config),
            issued_at=now(),
            subject_endpoints=parse_endpoints(list(endpoints)),
        )
        text = sign_link(link_doc, identity).to_text()
    except (LinkError, ValueError) as exc:
        _fail(str(exc), 2)
    if output:
        with open(output, "w", encoding="ascii") as f:
            f.write(text)
    else:
        click.echo(text, nl=False)
    click.echo(
        f"granted {', '.join(grants)} to {subject} until {format_time(link_doc.not_after)} "
        f"(serial {link_doc.serial})",
        err=True,
    )


def _read_links(files: tuple[str, ...]) -> list[Any]:
    from .federation.files import read_link_file
    from .federation.links import LinkError

    out = []
    for path in files:
        try:
            out.append(read_link_file(path))
        except LinkError as exc:
            _fail(str(exc), 2)
    return out


@link.command("show")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def link_show(files: tuple[str, ...]) -> None:
    """Print what link files grant (without deciding whether they count: see verify)."""
    from .federation.canonical import format_time

    for path, signed in zip(files, _read_links(files), strict=True):
        link_ = signed.link
        click.echo(f"{path}: serial {link_.serial}")
        click.echo(f"  issuer   {link_.issuer}")
        click.echo(f"  subject  {link_.subject}  {' '.join(link_.subject_endpoints)}")
        for cap, limits in link_.grants.items():
            extra = ", ".join(f"{k}={v}" for k, v in limits.items())
            click.echo(f"  grants   {cap}{f' ({extra})' if extra else ''}")
        click.echo(f"  valid    {format_time(link_.not_before)} .. {format_time(link_.not_after)}")


@link.command("verify")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option(
    "--data-dir", type=click.Path(file_okay=False), help="Apply this node's revocations (and own keys)."
)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML configuration file.")
def link_verify(files: tuple[str, ...], data_dir: str | None, config_file: str | None) -> None:
    """Check signatures, validity window and revocations now. Exit 1 if any does not count."""
    from .federation.canonical import now
    from .federation.files import load_revocations
    from .federation.identity import IdentityError, load_identity
    from .federation.links import Revocations, verify_link

    revocations, own = Revocations(), None
    if data_dir or config_file:
        config = _config(data_dir, config_file)
        try:
            own = load_identity(config.key_file)
            revocations = load_revocations(config.revocations_file, own.node_id)
        except (IdentityError, ConfigError) as exc:
            _fail(str(exc), 2)
    bad = False
    for path, signed in zip(files, _read_links(files), strict=True):
        keys = own.keyset if own is not None and signed.link.issuer == own.node_id else signed.issuer_keys
        verdict = verify_link(signed, keys, revocations, now())
        detail = f" ({verdict.detail})" if verdict.detail else ""
        click.echo(f"{path}: {verdict.status.value}{detail}")
        bad = bad or not verdict.valid
    sys.exit(1 if bad else 0)


@link.command("revoke")
@where_options
@click.option("--serial", "serials", type=int, multiple=True, help="Serial of a link this node issued.")
@click.option(
    "--file", "link_files", multiple=True, type=click.Path(dir_okay=False), help="A link file to revoke."
)
@click.option("--key", "keys", multiple=True, help="A public key (any node's) never to trust again.")
def link_revoke(
    data_dir: str | None,
    config_file: str | None,
    serials: tuple[int, ...],
    link_files: tuple[str, ...],
    keys: tuple[str, ...],
) -> None:
    """Add links or keys to the revocations file; a running node stops honouring them at once."""
    from .federation.canonical import b64decode
    from .federation.files import load_revocations
    from .federation.links import Revocations

    if not (serials or link_files or keys):
        _fail("give --serial, --file or --key", 2)
    config = _config(data_dir, config_file)
    identity = _identity(config)
    try:
        current = load_revocations(config.revocations_file, identity.node_id)
        new_keys = {b64decode(k, length=32) for k in keys}
    except (ConfigError, ValueError) as exc:
        _fail(str(exc), 2)
    new_links = {(identity.node_id, s) for s in serials}
    new_links |= {(s.link.issuer, s.link.serial) for s in _read_links(link_files)}
    updated = Revocations(current.links | new_links, current.keys | new_keys)
    path = config.revocations_file
    write_atomic(path, updated.to_yaml().encode(), mode=0o644)
    click.echo(f"{len(updated.links)} link(s) and {len(updated.keys)} key(s) revoked in {path}")


commands = [keygen, key, link]
