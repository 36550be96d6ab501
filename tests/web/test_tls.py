"""The node serving HTTPS on its one port: the front's fast routes, the bulk paths (large
bodies in and out, the sendfile fallback), the hand-over to hypercorn (Quart routes,
chunked uploads, a websocket), with certificates made in the test."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
from trio_websocket import open_websocket_url

from node.tls import client_context
from tests.certs import Certs, make_certs, tls_settings
from tests.helpers import random_buffer
from tests.roles.jobless.support import JOBLESS, Transformations

MiB = 1 << 20


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
async def tls_node(start_node, certs):  # type: ignore[no-untyped-def]
    return await start_node(node=tls_settings(certs.server))


@pytest.fixture
async def https(certs):  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(timeout=60, verify=certs.client_context()) as client:
        yield client


async def test_the_node_reports_an_https_url(tls_node):
    assert tls_node.url.startswith("https://127.0.0.1:")


async def test_fast_buffer_routes_over_tls(tls_node, https):
    cs, data = random_buffer(3000)
    r = await https.put(f"{tls_node.url}/buffers/{cs}", content=data)
    assert r.status_code == 200, r.text
    r = await https.get(f"{tls_node.url}/buffers/{cs}")
    assert r.status_code == 200 and r.content == data
    assert (await https.get(f"{tls_node.url}/buffers/has-now/{cs}")).status_code in (200, 404)
    assert (await https.get(f"{tls_node.url}/healthcheck")).text == "OK"
    missing = hashlib.sha256(b"not there").hexdigest()
    assert (await https.get(f"{tls_node.url}/buffers/{missing}")).status_code == 404


async def test_large_buffer_in_and_out_over_tls_with_the_sendfile_fallback(tls_node, https):
    """Over 4 MiB: received in bulk pieces through the TLS stream; right after its upload
    the node trusts the file and would send it with sendfile(2) on a plain connection:
    under TLS it goes out through the TLS stream instead (the client would see a broken
    TLS record otherwise)."""
    cs, data = random_buffer(24 * MiB + 5)
    r = await https.put(f"{tls_node.url}/buffers/{cs}", content=data)
    assert r.status_code == 200, r.text
    r = await https.get(f"{tls_node.url}/buffers/{cs}")
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == cs


async def test_large_buffer_hashed_while_streamed_over_tls(start_node, certs, https):
    node = await start_node(node=tls_settings(certs.server), buffers={"verified_ttl": 0})
    cs, data = random_buffer(5 * MiB + 1)
    assert (await https.put(f"{node.url}/buffers/{cs}", content=data)).status_code == 200
    r = await https.get(f"{node.url}/buffers/{cs}")
    assert r.status_code == 200 and r.content == data


async def test_chunked_upload_is_handed_to_hypercorn_over_tls(tls_node, https):
    cs, data = random_buffer(6 * MiB)

    async def chunks():  # no Content-Length: chunked, which the front hands over
        for start in range(0, len(data), MiB):
            yield data[start : start + MiB]

    r = await https.put(f"{tls_node.url}/buffers/{cs}", content=chunks())
    assert r.status_code == 200, r.text
    assert (await https.get(f"{tls_node.url}/buffers/{cs}")).content == data


async def test_quart_routes_over_tls(tls_node, https):
    r = await https.get(f"{tls_node.url}/api/v1/node")
    assert r.status_code == 200 and "buffers" in r.json()["roles"]
    cs, data = random_buffer(100)
    await https.put(f"{tls_node.url}/buffers/{cs}", content=data)
    r = await https.post(f"{tls_node.url}/api/v1/buffers/has", json=[cs])
    assert r.json() == [True]
    assert "seamless_node_http_requests_total" in (await https.get(f"{tls_node.url}/metrics")).text


async def test_fast_and_quart_requests_share_one_tls_connection(tls_node, certs):
    """Pipelined on one TLS connection: fast requests answered by the front, then a Quart
    route, which hands the connection (with the bytes already read) to hypercorn."""
    cs, data = random_buffer(3000)
    host, port = tls_node.url.removeprefix("https://").split(":")
    stream = await trio.open_ssl_over_tcp_stream(
        host, int(port), ssl_context=certs.client_context(), https_compatible=True  # no close_notify
    )
    await stream.send_all(
        f"PUT /buffers/{cs} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
        + f"GET /buffers/{cs} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        + f"GET /api/v1/node HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
        + f"GET /buffers/{cs} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    received = b""
    with trio.fail_after(20):
        while chunk := await stream.receive_some(1 << 16):
            received += chunk
    assert received.count(b"HTTP/1.1 200") == 4
    assert received.count(data) == 2 and b'"roles"' in received
    await stream.aclose()


async def test_websocket_over_tls(start_node, certs, https):
    node = await start_node(node={**JOBLESS, **tls_settings(certs.server)}, jobless={"workers": 1})
    tfs = Transformations()
    tf = tfs.bash("echo hi > RESULT")
    await tfs.upload(https, node.url)
    r = await https.post(f"{node.url}/api/v1/jobs", json={"transformation": tf})
    assert r.status_code in (200, 202), r.text
    job = r.json()["job"]
    ws_url = node.url.replace("https://", "wss://") + f"/api/v1/jobs/{job['checksum']}/events"
    states = []
    with trio.fail_after(30):
        async with open_websocket_url(ws_url, ssl_context=certs.client_context()) as ws:
            while not states or states[-1] not in ("done", "failed", "cancelled"):
                states.append(json.loads(await ws.get_message())["state"])
    assert states[-1] == "done"


async def test_a_client_verifying_with_the_system_store_refuses_the_private_ca(tls_node, https):
    """The node's certificate is only as good as the CA a client trusts."""
    async with httpx.AsyncClient(verify=client_context(None)) as system:
        with pytest.raises(httpx.ConnectError):
            await system.get(f"{tls_node.url}/healthcheck")
    assert (await https.get(f"{tls_node.url}/healthcheck")).text == "OK"


def test_run_refuses_a_key_that_does_not_match_the_certificate(tmp_path: Path, certs):
    env = {
        **os.environ,
        "SEAMLESS_NODE__NODE__TLS_CERT_FILE": str(certs.server.cert),
        "SEAMLESS_NODE__NODE__TLS_KEY_FILE": str(certs.expired.key),
    }
    r = subprocess.run(
        [sys.executable, "-m", "node", "run", "--port", "0", "--data-dir", str(tmp_path / "d")],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2
    assert "node.tls" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_certificate_without_its_key_is_a_configuration_error(tmp_path: Path, certs):
    env = {**os.environ, "SEAMLESS_NODE__NODE__TLS_CERT_FILE": str(certs.server.cert)}
    r = subprocess.run(
        [sys.executable, "-m", "node", "run", "--port", "0", "--data-dir", str(tmp_path / "d")],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert r.returncode == 2 and "tls_key_file" in r.stderr


async def test_receive_pieces_from_a_stream_fills_pieces_in_order_and_ends_at_eof():
    """bulk.receive_pieces_from (the TLS form of the worker-thread receive): pieces of the
    sizes asked, filled in order, never past them; [] once the stream has ended."""
    from trio.testing import memory_stream_pair

    from node.web import bulk

    client, server = memory_stream_pair()
    payload = os.urandom(3 * MiB + 100)
    await client.send_all(payload)
    await client.send_eof()
    got = b""
    offset = 0
    while True:
        sizes = bulk.piece_sizes(offset, len(payload) - offset) or [MiB]
        pieces = await bulk.receive_pieces_from(server, sizes)
        if not pieces:
            break
        for piece, size in zip(pieces, sizes, strict=False):
            assert len(piece) <= size
        got += b"".join(bytes(p) for p in pieces)
        offset = len(got)
    assert got == payload


def test_only_a_tls_handshake_record_counts_as_tls():
    from node.tls import looks_like_plain_http, looks_like_tls

    assert looks_like_tls(b"\x16") and not looks_like_tls(b"G") and not looks_like_tls(b"")
    assert looks_like_plain_http(b"GET") and looks_like_plain_http(b"PUT")
    assert not looks_like_plain_http(b"\x16") and not looks_like_plain_http(b"get")
