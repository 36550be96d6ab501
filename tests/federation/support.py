"""Helpers for federation tests: identities, links, the `peers` command."""

from __future__ import annotations

import sys
from pathlib import Path

import trio

from node.federation.identity import NodeIdentity
from node.federation.links import Link, SignedLink, parse_grant_spec, sign_link

T0 = 1_800_000_000


def make_link(
    issuer: NodeIdentity,
    subject: str,
    caps: str = "buffers:read",
    *,
    serial: int = 1,
    not_before: int = T0 - 3600,
    not_after: int = T0 + 86400,
    limits: dict[str, int] | None = None,
    endpoints: tuple[str, ...] = (),
    issued_at: int | None = None,
) -> SignedLink:
    link = Link(
        issuer=issuer.node_id,
        subject=subject,
        grants=parse_grant_spec(caps, limits),
        not_before=not_before,
        not_after=not_after,
        serial=serial,
        issued_at=not_before if issued_at is None else issued_at,
        subject_endpoints=endpoints,
    )
    return sign_link(link, issuer)


async def peers_command(data_dir: Path, *args: str, offline: bool = True) -> str:
    """What `seamless-node peers --data-dir DATA_DIR ARGS` prints (run as a process; by
    default --offline: from the data directory); the command must succeed."""
    mode = ["--offline"] if offline else []
    proc = await trio.run_process(
        [sys.executable, "-m", "node", "peers", "--data-dir", str(data_dir), *mode, *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout.decode()
