"""`seamless-node get` as a user meets it: permissions, existing files, bad paths and
URLs, progress on a terminal."""

from __future__ import annotations

import os
import pty
import stat
import subprocess
import sys

import pytest

from tests.helpers import checksum_of

from .test_cli import cli


@pytest.fixture
def stored(node_process, tmp_path):
    """(node url, checksum, bytes) of a 3 MiB buffer on a running node."""
    proc = node_process("--roles", "buffers")
    data = os.urandom(3 << 20)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    r = cli("put", str(src), "--url", proc.url)
    assert r.returncode == 0, r.stderr
    return proc.url, checksum_of(data), data


def get_with_umask(mask: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node", "get", *args],
        capture_output=True, timeout=60, preexec_fn=lambda: os.umask(mask),
    )


def test_files_get_the_umask(stored, tmp_path):
    url, cs, data = stored
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        out = tmp_path / f"out-{mask:o}"
        r = get_with_umask(mask, cs, "-o", str(out), "--url", url)
        assert r.returncode == 0, r.stderr
        assert out.read_bytes() == data and stat.S_IMODE(out.stat().st_mode) == mode
    r = get_with_umask(0o022, cs, "-d", str(tmp_path / "dir"), "--url", url)
    assert r.returncode == 0 and stat.S_IMODE((tmp_path / "dir" / cs).stat().st_mode) == 0o644


def test_existing_files_are_not_overwritten_silently(stored, tmp_path):
    url, cs, data = stored
    out = tmp_path / "precious"
    out.write_bytes(b"keep me")
    r = cli("get", cs, "-o", str(out), "--url", url)
    assert r.returncode == 1 and b"exists; use --force" in r.stderr
    assert out.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".seamless-get")] == []
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / cs).write_bytes(b"other")
    r = cli("get", cs, "-d", str(tmp_path / "d"), "--url", url)
    assert r.returncode == 1 and (tmp_path / "d" / cs).read_bytes() == b"other"
    r = cli("get", cs, "-o", str(out), "--force", "--url", url)
    assert r.returncode == 0 and out.read_bytes() == data


def test_output_into_a_missing_directory(stored, tmp_path):
    url, cs, _ = stored
    target = tmp_path / "nowhere" / "out.bin"
    r = cli("get", cs, "-o", str(target), "--url", url)
    assert r.returncode == 1
    assert r.stderr.decode().strip() == (
        f"seamless-node: cannot write {target}: directory {target.parent} does not exist"
    )


def test_url_with_a_path(stored, tmp_path):
    url, cs, data = stored
    out = tmp_path / "via-buffers"
    r = cli("get", cs, "-o", str(out), "--url", url + "/buffers")
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == data
    r = cli("get", cs, "--url", url + "/buffers/")
    assert r.returncode == 0 and r.stdout == data
    for bad in ("/nonsense", "/api"):
        r = cli("get", cs, "-o", str(tmp_path / "x"), "--url", url + bad)
        assert r.returncode == 1
        text = r.stderr.decode()
        assert "<html" not in text.lower() and len(text.strip().splitlines()) == 1, text
        assert f"--url must be the node's base URL, without a path such as {bad}" in text
        r = cli("get", cs, "--url", url + bad)
        assert r.returncode == 1 and "base URL" in r.stderr.decode(), r.stderr


def test_progress_on_a_terminal(stored, tmp_path):
    url, cs, data = stored
    out = tmp_path / "tty.bin"
    controller, terminal = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node", "get", cs, "-o", str(out), "--url", url],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=terminal,
        )
        os.close(terminal)
        seen = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(60) == 0
    finally:
        os.close(controller)
    assert out.read_bytes() == data
    assert b"downloading " + cs[:12].encode() in seen and b"100%" in seen
    # not on a terminal: nothing on stderr
    r = cli("get", cs, "-o", str(tmp_path / "quiet.bin"), "--url", url)
    assert r.returncode == 0 and r.stderr == b""
