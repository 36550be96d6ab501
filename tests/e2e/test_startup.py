"""Starting a node with the real CLI: problems name their cause; the log, as JSON."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from .test_cli import cli


def one_line_error(r: subprocess.CompletedProcess) -> str:
    lines = r.stderr.decode().strip().splitlines()
    assert len(lines) == 1, r.stderr.decode()
    return lines[0]


def test_data_dir_under_a_file(tmp_path):
    (tmp_path / "afile").write_bytes(b"")
    data = tmp_path / "afile" / "data"
    r = cli("run", "--port", "0", "--data-dir", str(data))
    assert r.returncode == 1
    assert one_line_error(r) == f"seamless-node: data directory {data}: cannot create it: Not a directory"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_unwritable_data_dir_is_not_blamed_on_the_address(tmp_path):
    parent = tmp_path / "locked"
    parent.mkdir()
    os.chown(parent, 65534, 65534)
    parent.chmod(0o555)
    # root without the capability to override file permissions: as any other user
    caps = "-dac_override,-dac_read_search"
    drop = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]
    for data, why in ((parent / "data", "cannot create it"), (parent, "cannot write in it")):
        r = subprocess.run(
            [*drop, sys.executable, "-m", "node", "run", "--port", "0", "--data-dir", str(data)],
            capture_output=True, timeout=60,
        )
        assert r.returncode == 1
        assert one_line_error(r) == f"seamless-node: data directory {data}: {why}: Permission denied"
        assert b"127.0.0.1" not in r.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting needs root")
def test_read_only_data_dir(tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        r = cli("run", "--port", "0", "--data-dir", str(mount))
        assert r.returncode == 1
        why = "cannot write in it: Read-only file system"
        assert one_line_error(r) == f"seamless-node: data directory {mount}: {why}"
        # both stores read-only: a read-only directory is fine, but it holds no store
        r = cli("run", "--port", "0", "--data-dir", str(mount), "--readonly", timeout=30)
        assert one_line_error(r) == f"seamless-node: buffer directory '{mount}/buffers' does not exist"
    finally:
        subprocess.run(["umount", str(mount)])


def test_failed_start_leaves_no_fresh_data_dir(tmp_path):
    config = tmp_path / "node.yaml"
    missing = tmp_path / "missing.pem"
    config.write_text(f"node:\n  tls_cert_file: {missing}\n  tls_key_file: {tmp_path / 'k.pem'}\n")
    data = tmp_path / "fresh" / "data"
    r = cli("run", "--port", "0", "--data-dir", str(data), "--config", str(config))
    assert r.returncode != 0
    assert b"missing.pem" in r.stderr
    assert not (tmp_path / "fresh").exists()


def test_json_log_format(node_process, tmp_path):
    proc = node_process("--roles", "buffers", "--log-format", "json")
    assert httpx.get(f"{proc.url}/healthcheck").status_code == 200
    assert httpx.get(f"{proc.url}/buffers/%0a%7b%22forged%22:1%7d").status_code == 400
    assert proc.stop() == 0
    assert proc.stderr_path is not None
    lines = Path(proc.stderr_path).read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    requests = [r for r in records if r.get("event") == "request"]
    health = next(r for r in requests if r["path"] == "/healthcheck")
    assert health["method"] == "GET" and health["status"] == 200 and health["bytes"] == 2
    assert health["client"].startswith("127.0.0.1:") and health["level"] == "info"
    assert any(r["path"] == "/buffers/%0a%7b%22forged%22:1%7d" and r["status"] == 400 for r in requests)
    assert not any("forged" in r and r.get("forged") == 1 for r in records)
