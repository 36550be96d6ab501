"""The real Seamless buffer client (seamless_remote, aiohttp) against a node serving HTTPS
with a private CA made in the test. The client has no CA setting of its own; it verifies
with the default trust store of Python's ssl module, which ``SSL_CERT_FILE`` replaces."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.certs import Certs, make_certs, tls_settings
from tests.helpers import random_buffer

from .support import BUFFERS_ONLY, drive_buffer_client


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


async def test_buffer_client_over_https_with_ssl_cert_file(start_node, certs: Certs, tmp_path: Path):
    node = await start_node(node={**BUFFERS_ONLY, **tls_settings(certs.server)})
    small_cs, small = random_buffer(1000)
    large_cs, large = random_buffer(6 * 1024 * 1024)
    steps = [
        {"op": "write", "checksum": small_cs, "data": small.hex()},
        {"op": "write", "checksum": large_cs, "data": large.hex()},
        {"op": "get", "checksum": small_cs},
        {"op": "get", "checksum": large_cs},
        {"op": "buffer_lengths", "checksums": [small_cs, large_cs]},
    ]
    results = await drive_buffer_client(
        "client", node.buffers_url, steps, home=tmp_path / "home", extra_env={"SSL_CERT_FILE": str(certs.ca)}
    )
    assert all("error" not in r for r in results), results
    assert bytes.fromhex(results[2]["result"]) == small
    assert bytes.fromhex(results[3]["result"]) == large
    assert results[4] == {"result": [True, True]}


async def test_buffer_client_without_the_ca_refuses_the_node(start_node, certs: Certs, tmp_path: Path):
    node = await start_node(node={**BUFFERS_ONLY, **tls_settings(certs.server)})
    cs, data = random_buffer(100)
    steps = [{"op": "write", "checksum": cs, "data": data.hex()}]
    results = await drive_buffer_client("client", node.buffers_url, steps, home=tmp_path / "home")
    assert "error" in results[0] and "certificate" in results[0]["error"].lower(), results
