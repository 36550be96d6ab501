"""The client commands against a node serving HTTPS (a private CA made in the test):
``--ca-file`` or ``SSL_CERT_FILE``, on every command that takes ``--url``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from tests.certs import Certs, make_certs, tls_settings
from tests.helpers import random_buffer
from tests.roles.jobless.support import JOBLESS


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


async def cli(*args: str, env: dict[str, str] | None = None) -> trio.CompletedProcess[bytes]:
    """Run `seamless-node ARGS` without blocking the node in this process."""
    base = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SEAMLESS_NODE_URL")}
    with trio.fail_after(60):
        return await trio.run_process(
            [sys.executable, "-m", "node", *args],
            env={**base, **(env or {})},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def test_put_get_has_over_https_with_ca_file(start_node, certs, tmp_path: Path):
    node = await start_node(node=tls_settings(certs.server))
    ca = ("--url", node.url, "--ca-file", str(certs.ca))
    cs, data = random_buffer(5 * 1024 * 1024 + 3)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    r = await cli("put", str(src), *ca)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split()[0] == cs
    r = await cli("has", cs, *ca)
    assert r.returncode == 0 and b"present" in r.stdout
    out = tmp_path / "out.bin"
    r = await cli("get", cs, "-o", str(out), *ca)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data


async def test_ssl_cert_file_works_like_ca_file(start_node, certs):
    node = await start_node(node={**JOBLESS, **tls_settings(certs.server)})
    env = {"SSL_CERT_FILE": str(certs.ca), "SEAMLESS_NODE_URL": node.url}
    cs, _ = random_buffer(10)
    r = await cli("has", cs, env=env)
    assert r.returncode == 1 and b"missing" in r.stdout  # reached, and answered
    r = await cli("jobs", env=env)  # the job commands
    assert r.returncode == 0, r.stderr
    r = await cli("db", "get", cs, env=env)  # the database commands
    assert r.returncode in (0, 1) and b"cannot reach" not in r.stderr, r.stderr


async def test_without_the_ca_the_node_is_refused(start_node, certs):
    node = await start_node(node=tls_settings(certs.server))
    cs, _ = random_buffer(10)
    r = await cli("has", cs, "--url", node.url)
    assert r.returncode == 1
    assert b"CERTIFICATE_VERIFY_FAILED" in r.stderr or b"certificate verify failed" in r.stderr


async def test_a_ca_file_that_is_not_a_certificate_is_a_usage_error(certs, tmp_path: Path):
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("nothing\n")
    cs, _ = random_buffer(10)
    r = await cli("has", cs, "--url", "https://127.0.0.1:1", "--ca-file", str(bogus))
    assert r.returncode == 2 and b"--ca-file" in r.stderr


async def test_peers_over_https_needs_the_ca(start_node, certs, tmp_path: Path):
    """A node whose certificate the command cannot verify is not taken for a stopped one."""
    node = await start_node(node=tls_settings(certs.server))
    where = ("--url", node.url, "--data-dir", str(tmp_path / "none"))
    r = await cli("peers", *where)
    assert r.returncode == 1 and b"cannot verify the node at" in r.stderr and b"--ca-file" in r.stderr
    assert b"no node answers" not in r.stderr
    r = await cli("peers", *where, "--ca-file", str(certs.ca))
    assert r.returncode == 1 and b"runs without federation" in r.stderr  # asked, and answered
