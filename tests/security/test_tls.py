"""Attacks on the node's TLS: a peer impersonated with a certificate the private CA did not
issue (or issued for another host, or expired), a client that speaks plain HTTP or
garbage to the TLS port, and clients that hold connections in the handshake. The node
must refuse each one, send nothing signed to a peer it could not verify, and serve on.

Certificates are made in the test (tests/certs.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from node.federation.peers import PeerUnreachable
from tests.certs import Certs, KeyPair, make_certs, tls_settings
from tests.federation.conftest import Cluster
from tests.helpers import random_buffer


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def cluster(tmp_path: Path, nursery: trio.Nursery) -> Cluster:
    return Cluster(tmp_path, nursery)


async def https(certs: Certs) -> httpx.AsyncClient:
    return httpx.AsyncClient(verify=certs.client_context(), timeout=30)


async def connect(url: str) -> trio.SocketStream:
    parts = urlsplit(url)
    return await trio.open_tcp_stream(parts.hostname, parts.port)


async def wait_closed(stream: trio.SocketStream, within: float) -> None:
    """Return when the node closes *stream* (its bytes, if any, are dropped)."""
    with trio.fail_after(within):
        while True:
            try:
                if not await stream.receive_some(4096):
                    return
            except trio.BrokenResourceError:
                return


async def peer_with(cluster: Cluster, certs: Certs, pair: KeyPair) -> None:
    """Node A (trusting only the private CA) and its peer B serving HTTPS with *pair*,
    B granting A buffers:read and holding a buffer A lacks; A must refuse B's TLS."""
    a = await cluster.start(
        cluster.add("a", "127.0.0.1", node=tls_settings(certs.server), federation={"ca_file": str(certs.ca)})
    )
    b = await cluster.start(cluster.add("b", "127.0.0.2", node=tls_settings(pair)))
    cluster.grant(b, a, "buffers:read,results:read")
    await cluster.configure()
    cs, data = random_buffer(5 * 1024 * 1024)
    b_store = b.context.buffers
    await b_store.put_bytes(cs, data)
    with pytest.raises(PeerUnreachable, match="(?i)certificate"):
        await a.federation.client.ping(b.node_id)
    assert not await a.context.fetch_missing(cs)
    assert await a.context.buffers.has([cs]) == [False]
    # no request, signed or not, reached B's gate
    rendered = b.context.metrics.render()
    assert "seamless_node_federation_requests_total{" not in rendered
    assert "seamless_node_federation_refused_total{" not in rendered


async def test_peer_certificate_not_from_the_ca_is_refused(cluster: Cluster, certs: Certs):
    await peer_with(cluster, certs, certs.self_signed)


async def test_peer_certificate_for_another_host_is_refused(cluster: Cluster, certs: Certs):
    await peer_with(cluster, certs, certs.wrong_host)


async def test_expired_peer_certificate_is_refused(cluster: Cluster, certs: Certs):
    await peer_with(cluster, certs, certs.expired)


async def test_plain_http_to_the_tls_port_gets_an_error_and_the_node_serves_on(start_node, certs: Certs):
    node = await start_node(node=tls_settings(certs.server))
    plain = node.url.replace("https://", "http://")
    cs, data = random_buffer(1000)
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.put(f"{plain}/buffers/{cs}", content=data)
        assert r.status_code == 400 and "https://" in r.text
        r = await client.get(f"{plain}/healthcheck")
        assert r.status_code == 400
    async with await https(certs) as client:
        assert (await client.get(f"{node.url}/buffers/{cs}")).status_code == 404  # nothing was stored
        assert (await client.get(f"{node.url}/healthcheck")).text == "OK"
    assert await refused(node, certs, "plain-http") == 2


async def test_garbage_instead_of_a_handshake_is_cut_and_the_node_serves_on(start_node, certs: Certs):
    node = await start_node(node=tls_settings(certs.server))
    garbage_openings = (
        b"\x00\x01\x02binary",  # neither TLS nor HTTP
        b"\x16\x03\x01\x00\x10" + os.urandom(16),  # a handshake record of noise
        b"\x16" + b"\xff" * 4096,  # a malformed record
    )
    for garbage in garbage_openings:
        stream = await connect(node.url)
        await stream.send_all(garbage)
        await wait_closed(stream, 10)
        await stream.aclose()
    async with await https(certs) as client:
        assert (await client.get(f"{node.url}/healthcheck")).text == "OK"
    assert await refused(node, certs, "not-tls") == 1 and await refused(node, certs, "handshake-failed") == 2


async def test_client_stalling_in_the_handshake_is_cut(start_node, certs: Certs):
    """A client that starts a handshake and never finishes it is cut after
    node.header_timeout, and holds up no one meanwhile."""
    node = await start_node(node={**tls_settings(certs.server), "header_timeout": 1.0})
    stalled = [await connect(node.url) for _ in range(20)]
    for stream in stalled[:10]:
        await stream.send_all(b"\x16\x03\x01\x02\x00\x01")  # a ClientHello's first bytes, then silence
    async with await https(certs) as client:  # served while they stall
        assert (await client.get(f"{node.url}/healthcheck")).text == "OK"
    for stream in stalled:
        await wait_closed(stream, 10)
        await stream.aclose()
    assert await refused(node, certs, "handshake-timeout") == 20


async def test_a_client_stalled_in_the_handshake_does_not_hold_up_shutdown(start_node, certs: Certs):
    """Shutdown closes a connection still in its handshake at once, like an idle one
    (neither the handshake deadline nor the grace for requests in flight is waited for)."""
    settings = {**tls_settings(certs.server), "header_timeout": 600.0, "shutdown_grace": 600.0}
    node = await start_node(node=settings)
    stream = await connect(node.url)
    await stream.send_all(b"\x16\x03\x01\x02\x00")
    async with await https(certs) as client:  # the staller's task is running by now
        assert (await client.get(f"{node.url}/healthcheck")).text == "OK"
    node.shut_down()
    with trio.fail_after(10):
        await node.stopped.wait()
    await wait_closed(stream, 5)


async def test_client_trusting_only_its_ca_refuses_a_node_certificate_not_from_it(start_node, certs: Certs):
    """The command line client, pointed at a node that presents a certificate the CA did
    not issue (an impersonator), refuses to talk to it and uploads nothing."""
    node = await start_node(node=tls_settings(certs.self_signed))
    cs, data = random_buffer(1000)
    with trio.fail_after(60):
        r = await trio.run_process(
            [sys.executable, "-m", "node", "has", cs, "--url", node.url, "--ca-file", str(certs.ca)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert r.returncode == 1 and b"present" not in r.stdout and b"missing" not in r.stdout
    assert b"certificate" in r.stderr.lower()


async def refused(node, certs: Certs, reason: str) -> float:  # type: ignore[no-untyped-def]
    """How many connections *node* refused before a request, for *reason*."""
    async with await https(certs) as client:
        text = (await client.get(f"{node.url}/metrics")).text
    line = f'seamless_node_tls_refused_total{{reason="{reason}"}} '
    for row in text.splitlines():
        if row.startswith(line):
            return float(row[len(line) :])
    return 0.0
