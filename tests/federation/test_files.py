"""Federation configuration: the section, the peers file, reloads, enabling."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest
import trio

from node.app import build_node
from node.config import build_config
from node.errors import ConfigError
from node.federation.files import RegistryWatcher, load_peers_file
from node.federation.identity import IdentityError, NodeIdentity, save_identity
from tests.conftest import make_config

from .support import make_link

A_ID = "a" * 52


def write(path: str, text: str) -> None:
    Path(path).write_text(text)


def test_federation_section_from_yaml(tmp_path: Path):
    path = tmp_path / "site.yaml"
    path.write_text(
        "federation:\n  fetch_idle_timeout: 5s\n  peers:\n"
        f"    - node_id: {A_ID}\n      name: a\n      urls: [http://127.0.0.2:5533]\n"
        "      fetch_buffers: false\n"
    )
    config = build_config(config_file=str(path), environ={})
    assert config.federation.fetch_idle_timeout == 5
    (peer,) = config.federation.peers
    assert peer.name == "a" and peer.urls == ("http://127.0.0.2:5533",) and peer.fetch_buffers is False
    assert config.key_file.endswith("node.key") and config.peers_file.endswith("peers.yaml")


@pytest.mark.parametrize(
    "entry, message",
    [
        ("    - node_id: bob\n", "not a node id"),
        (f"    - node_id: {A_ID}\n      url: http://x\n", "unknown field(s) url"),
        ("    - name: x\n", "missing field(s) node_id"),
        (f"    - node_id: {A_ID}\n      urls: [ftp://x]\n", "must be http(s)"),
        (f"    - node_id: {A_ID}\n    - node_id: {A_ID}\n", "listed twice"),
    ],
)
def test_bad_peer_entries(tmp_path: Path, entry, message):
    path = tmp_path / "site.yaml"
    path.write_text("federation:\n  peers:\n" + entry)
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(config_file=str(path), environ={})


def test_peers_file_relative_links_and_errors(tmp_path: Path):
    path = tmp_path / "site" / "peers.yaml"
    path.parent.mkdir()
    path.write_text(f"peers:\n  - node_id: {A_ID}\n    links: [x.link, /abs/y.link]\n")
    (peer,) = load_peers_file(str(path))
    assert peer.links == (str(tmp_path / "site" / "x.link"), "/abs/y.link")
    assert load_peers_file(str(tmp_path / "absent.yaml")) == []
    path.write_text("peers: 5\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_peers_file(str(path))


async def test_watcher_reloads_and_keeps_the_last_good_revocations(tmp_path: Path):
    me, peer = NodeIdentity.generate(int(time.time()) - 10), NodeIdentity.generate(int(time.time()) - 10)
    config = make_config(tmp_path)
    save_identity(config.key_file, me)
    watcher = RegistryWatcher(config, interval=0)
    assert watcher.registry.peers == {}
    link = make_link(me, peer.node_id, not_before=int(time.time()) - 5, not_after=int(time.time()) + 600)
    (tmp_path / "p.link").write_text(link.to_text())
    write(config.peers_file, f"peers:\n  - node_id: {peer.node_id}\n    links: [p.link]\n")
    await watcher.refresh()
    assert watcher.registry.incoming(peer.node_id, "buffers:read", int(time.time())).allowed
    write(config.revocations_file, f"links:\n  - serial: {link.link.serial}\n")
    await watcher.refresh()
    assert not watcher.registry.incoming(peer.node_id, "buffers:read", int(time.time())).allowed
    write(config.revocations_file, "links: [{serial: oops}]\n")  # broken: stays revoked
    await watcher.refresh()
    assert watcher.reload_error and "serial" in watcher.reload_error
    assert not watcher.registry.incoming(peer.node_id, "buffers:read", int(time.time())).allowed
    (tmp_path / "p.link").write_text("garbage")  # a broken link file grants nothing
    os.unlink(config.revocations_file)
    await watcher.refresh()
    assert watcher.reload_error is None and watcher.state.problems
    assert not watcher.registry.incoming(peer.node_id, "buffers:read", int(time.time())).allowed


def test_enabled_modes(tmp_path: Path):
    off = build_node(make_config(tmp_path / "n1"))
    assert off.context.federation is None
    with pytest.raises(IdentityError, match="keygen"):
        build_node(make_config(tmp_path / "n2", federation={"enabled": "true"}))
    config = make_config(tmp_path / "n3")
    save_identity(config.key_file, NodeIdentity.generate(int(time.time())))
    assert build_node(config).context.federation is not None
    assert (
        build_node(make_config(tmp_path / "n3", federation={"enabled": "false"})).context.federation is None
    )


async def test_no_federation_routes_without_a_key(start_node, http: httpx.AsyncClient):
    node = await start_node()
    assert (await http.get(f"{node.url}/federation/keys")).status_code == 404
    assert (await http.get(f"{node.url}/api/v1/peers")).status_code == 404
    with trio.fail_after(5):
        assert (await http.get(f"{node.url}/healthcheck")).status_code == 200


def test_peers_example_is_valid_and_documents_every_field():
    import dataclasses

    from node.config import FederationSection, PeerConfig

    root = Path(__file__).resolve().parents[2]
    config = build_config(config_file=str(root / "peers.example.yaml"), environ={})
    assert config.federation.peers[0].name == "site-b"
    text = (root / "peers.example.yaml").read_text()
    for f in dataclasses.fields(FederationSection) + dataclasses.fields(PeerConfig):
        assert f"{f.name}:" in text, f.name
    for cap in (
        "buffers:read",
        "buffers:write",
        "results:read",
        "results:write",
        "jobs:submit",
        "compile:submit",
        "forward",
    ):
        assert cap in text
