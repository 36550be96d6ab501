"""Two real nodes serving HTTPS, linked: buffers fetched and signed requests sent over
verified TLS, with a private CA (``federation.ca_file``) made in the test."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from node.federation.peers import PeerUnreachable
from tests.certs import Certs, make_certs, tls_settings
from tests.helpers import random_buffer

from .conftest import Cluster, FedNode

MiB = 1 << 20


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


async def https_node(cluster: Cluster, name: str, host: str, certs: Certs, ca_file: Path | None) -> FedNode:
    federation = {"ca_file": str(ca_file)} if ca_file is not None else {}
    fed = cluster.add(name, host, node=tls_settings(certs.server), federation=federation)
    return await cluster.start(fed)


async def test_buffers_and_signed_requests_between_nodes_over_https(cluster: Cluster, certs: Certs):
    a = await https_node(cluster, "a", "127.0.0.1", certs, certs.ca)
    b = await https_node(cluster, "b", "127.0.0.2", certs, certs.ca)
    assert a.url.startswith("https://") and b.url.startswith("https://")
    cluster.grant(b, a, "buffers:read")
    cluster.grant(a, b, "buffers:read")
    await cluster.configure()
    async with httpx.AsyncClient(verify=certs.client_context(), timeout=60) as https:
        small_cs, small = random_buffer(1000)
        large_cs, large = random_buffer(9 * MiB + 3)  # the bulk download path (download.py) over TLS
        for cs, data in ((small_cs, small), (large_cs, large)):
            assert (await https.put(f"{b.url}/buffers/{cs}", content=data)).status_code == 200
        # signed requests: a ping, a batched presence query
        assert (await a.federation.client.ping(b.node_id))["node_id"] == b.node_id
        assert await a.federation.client.has(b.node_id, [small_cs, large_cs]) == [len(small), len(large)]
        # fetch-on-miss through GET /buffers/<cs> at A
        for cs in (small_cs, large_cs):
            r = await https.get(f"{a.url}/buffers/{cs}")
            assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == cs
        fetched = a.context.metrics.value("seamless_node_federation_bytes_fetched_total", peer="b")
        assert fetched == len(small) + len(large)
        # and the other way round, B asking A
        cs, data = random_buffer(5 * MiB)
        await https.put(f"{a.url}/buffers/{cs}", content=data)
        assert await b.context.fetch_missing(cs)


async def test_without_ca_file_peers_are_verified_against_the_system_store(cluster: Cluster, certs: Certs):
    """The default trust anchors are the system's: a private CA's certificate does not
    verify there, so the peer is unreachable (and nothing is fetched from it)."""
    a = await https_node(cluster, "a", "127.0.0.1", certs, None)
    b = await https_node(cluster, "b", "127.0.0.2", certs, certs.ca)
    cluster.grant(b, a, "buffers:read")
    await cluster.configure()
    cs, data = random_buffer(1000)
    async with httpx.AsyncClient(verify=certs.client_context()) as https:
        await https.put(f"{b.url}/buffers/{cs}", content=data)
    with pytest.raises(PeerUnreachable):
        await a.federation.client.ping(b.node_id)
    assert not await a.context.fetch_missing(cs)


async def test_a_ca_file_that_holds_no_certificate_stops_the_node(cluster: Cluster, tmp_path: Path):
    from node.errors import ConfigError

    bogus = tmp_path / "not-a-ca.pem"
    bogus.write_text("nothing here\n")
    with pytest.raises(ConfigError, match="federation.ca_file"):
        await cluster.start(cluster.add("a", "127.0.0.1", federation={"ca_file": str(bogus)}))
