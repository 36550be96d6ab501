"""The federation commands: keygen, key, link grant/show/verify/revoke, peers."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import trio
import yaml
from click.testing import CliRunner

from node.cli import main
from node.federation.identity import load_identity
from node.federation.links import parse_link_text

from .conftest import Cluster
from .support import peers_command


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_keygen_link_revoke_verify(tmp_path: Path):
    a, b = str(tmp_path / "site-a"), str(tmp_path / "site-b")
    code, a_id, _ = run("keygen", "--data-dir", a)
    assert code == 0 and len(a_id.strip()) == 52
    assert stat.S_IMODE((tmp_path / "site-a" / "node.key").stat().st_mode) == 0o600
    code, _, err = run("keygen", "--data-dir", a)
    assert code == 2 and "exists already" in err
    b_id = run("keygen", "--data-dir", b)[1].strip()
    code, text, err = run(
        "link",
        "grant",
        "--data-dir",
        a,
        "--to",
        b_id,
        "--grant",
        "buffers:read,results:read,jobs:submit",
        "--limit",
        "jobs:submit.max_concurrent=4",
        "--expires",
        "90d",
        "--endpoint",
        "http://127.0.0.2:5533",
    )
    assert code == 0, err
    signed = parse_link_text(text)
    assert signed.link.issuer == a_id.strip() and signed.link.subject == b_id
    assert signed.link.grants["jobs:submit"] == {"max_concurrent": 4}
    assert signed.link.not_after - signed.link.not_before == 90 * 86400
    link_file = tmp_path / "a-grants-b.link"
    link_file.write_text(text)
    second = run("link", "grant", "--data-dir", a, "--to", b_id, "--grant", "buffers:read")[1]
    assert parse_link_text(second).link.serial == signed.link.serial + 1
    code, out, _ = run("link", "show", str(link_file))
    assert "jobs:submit (max_concurrent=4)" in out
    assert run("link", "verify", str(link_file))[0] == 0
    code, out, _ = run("link", "revoke", "--data-dir", a, "--serial", str(signed.link.serial))
    assert code == 0
    code, out, _ = run("link", "verify", "--data-dir", a, str(link_file))
    assert code == 1 and "revoked" in out
    # tampering
    doc = json.loads(text)
    doc["link"]["grants"]["compile:submit"] = {}
    (tmp_path / "bad.link").write_text(json.dumps(doc))
    code, out, _ = run("link", "verify", str(tmp_path / "bad.link"))
    assert code == 1 and "bad-signature" in out
    for bad_args, message in [
        (["--to", "bob", "--grant", "buffers:read"], "not a node id"),
        (["--to", b_id, "--grant", "buffers:delete"], "unknown capability"),
        (["--to", b_id, "--grant", "buffers:read", "--limit", "x"], "CAPABILITY.LIMIT=NUMBER"),
        (["--to", b_id, "--grant", "buffers:read", "--expires", "soon"], "duration"),
    ]:
        code, _, err = run("link", "grant", "--data-dir", a, *bad_args)
        assert code == 2 and message in err, err


def test_key_rotate_keeps_the_id(tmp_path: Path):
    a = str(tmp_path / "a")
    node_id = run("keygen", "--data-dir", a)[1].strip()
    code, out, _ = run("key", "rotate", "--data-dir", a, "--overlap", "2d")
    assert code == 0 and node_id in out
    identity = load_identity(str(tmp_path / "a" / "node.key"))
    assert identity.node_id == node_id and len(identity.keyset.periods) == 2
    out = run("key", "show", "--data-dir", a)[1]
    assert out.count("key ") == 2 and "(signing)" in out


def test_commands_without_a_key_fail_clearly(tmp_path: Path):
    code, _, err = run(
        "link", "grant", "--data-dir", str(tmp_path), "--to", "a" * 52, "--grant", "buffers:read"
    )
    assert code == 2 and "keygen" in err
    code, _, err = run("peers", "--data-dir", str(tmp_path), "--offline")
    assert code == 2 and "keygen" in err


async def test_peers_command_against_running_nodes(cluster: Cluster, http: httpx.AsyncClient):
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    c = await cluster.start(cluster.add("c", "127.0.0.3"))
    cluster.grant(a, b, "buffers:read,results:read")
    cluster.grant(b, a, "buffers:read")
    cluster.peer(a, c)
    await cluster.configure()
    await b.federation.client.ping(a.node_id)  # A sees B
    a.federation._save_state()
    report = json.loads(await peers_command(a.data_dir, "--json"))
    rows = {r["name"]: r for r in report["peers"]}
    assert rows["b"]["reachable"] and rows["b"]["accepts_us"]
    assert rows["b"]["to_peer"][0]["grants"] == {"buffers:read": {}, "results:read": {}}
    assert rows["b"]["from_peer"][0]["status"] == "valid"
    assert rows["b"]["last_seen"]
    assert rows["b"]["job_load"] == 0  # B runs jobless (every built role), idle
    assert rows["c"]["reachable"] and rows["c"]["accepts_us"] is False
    text = await peers_command(a.data_dir)
    assert "reachable    yes   accepts us: yes" in text and "we grant     buffers:read,results:read #" in text
    assert "runs jobs    yes (load 0)" in text
    assert yaml.safe_load((a.data_dir / "peers.yaml").read_text())["peers"]


async def test_peers_asks_the_running_node(
    cluster: Cluster, http: httpx.AsyncClient, tmp_path: Path, start_node: Any
):
    a = await cluster.start(cluster.add("a", "127.0.0.1"))
    b = await cluster.start(cluster.add("b", "127.0.0.2"))
    cluster.grant(a, b, "buffers:read")
    cluster.grant(b, a, "buffers:read")
    await cluster.configure()
    assert (await a.federation.probe(b.node_id)).accepts_us is True
    # the node's own view, over its API: no key file is read (there is none here)
    empty = tmp_path / "no-key-here"
    report = json.loads(await peers_command(empty, "--url", a.url, "--json", offline=False))
    assert report["node_id"] == a.node_id and not (empty / "node.key").exists()
    (row,) = report["peers"]
    assert row["name"] == "b" and row["reachable"] and row["accepts_us"]
    assert row["to_peer"][0]["grants"] == {"buffers:read": {}}
    text = await peers_command(empty, "--url", a.url, offline=False)
    assert text.startswith(f"node {a.node_id}\n") and "reachable    yes   accepts us: yes" in text
    # no node there: it says so, then reads the data directory
    nowhere = "http://127.0.0.1:9"
    proc = await peers_process("--data-dir", str(a.data_dir), "--url", nowhere, "--no-probe", "--json")
    assert proc.returncode == 0, proc.stderr
    assert f"no node answers at http://127.0.0.1:9; reading {a.data_dir} instead" in proc.stderr.decode()
    assert json.loads(proc.stdout)["node_id"] == a.node_id
    # a node without federation says so
    plain = await start_node()
    proc = await peers_process("--url", plain.url, "--data-dir", str(empty))
    assert proc.returncode == 1 and b"runs without federation" in proc.stderr


async def peers_process(*args: str) -> Any:
    return await trio.run_process(
        [sys.executable, "-m", "node", "peers", *args], capture_stdout=True, capture_stderr=True, check=False
    )
