"""The seamless-node command line, run as a real process."""

import hashlib
import os
import subprocess
import sys
import time

import pytest

from tests.helpers import checksum_of


def cli(*args, env=None, input=None, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        env=env,
        input=input,
        timeout=timeout,
    )


def test_help_lists_commands():
    r = cli("--help")
    assert r.returncode == 0
    for command in (b"run", b"put", b"get", b"has", b"fsck"):
        assert command in r.stdout
    r = cli("run", "--help")
    assert b"--roles" in r.stdout and b"SEAMLESS_NODE__SECTION__KEY" in r.stdout


def test_unknown_role_exits_2_with_valid_list(tmp_path):
    r = cli("run", "--roles", "buffers,bogus", "--data-dir", str(tmp_path))
    assert r.returncode == 2
    assert b"unknown role(s) bogus" in r.stderr
    assert b"buffers, database, jobless, compile, fair, cloudless" in r.stderr


def test_role_not_built_yet_says_so(tmp_path):
    r = cli("run", "--roles", "cloudless", "--data-dir", str(tmp_path))
    assert r.returncode == 2
    assert b"not available" in r.stderr and b"cloudless" in r.stderr


@pytest.mark.parametrize(
    "text, message",
    [(b"node: {port: [}\n", b"not valid YAML"), (b"node:\n  colour: red\n", b"unknown setting node.colour")],
)
def test_bad_config_exits_2_with_one_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    r = cli("run", "--config", str(path))
    assert r.returncode == 2
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_bad_environment_exits_2(tmp_path):
    env = dict(os.environ, SEAMLESS_NODE__NODE__PORT="http")
    r = cli("run", "--data-dir", str(tmp_path), env=env)
    assert r.returncode == 2 and b"SEAMLESS_NODE__NODE__PORT" in r.stderr


def test_port_in_use_is_a_clear_error(node_process, tmp_path):
    proc = node_process("--roles", "buffers")
    port = proc.url.rsplit(":", 1)[1]
    r = cli("run", "--roles", "buffers", "--port", port, "--data-dir", str(tmp_path / "other" / "data"))
    assert r.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use".encode() in r.stderr
    assert not (tmp_path / "other").exists()  # no fresh data directory left behind


def test_sigterm_exits_cleanly_within_5_seconds(node_process):
    proc = node_process("--roles", "buffers")
    start = time.monotonic()
    code = proc.stop()
    assert code == 0
    assert time.monotonic() - start < 5


def test_put_get_has_roundtrip(node_process, tmp_path):
    proc = node_process("--roles", "buffers")
    env = dict(os.environ, SEAMLESS_NODE_URL=proc.url)
    small = tmp_path / "notes.txt"
    small.write_bytes(b"some notes\n")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(5 << 20) + b"end")
    r = cli("put", str(big), str(small), env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().splitlines()
    expected = [f"{checksum_of(p.read_bytes())}  {p}" for p in (big, small)]
    assert lines == expected
    # the output is sha256sum's format
    check = subprocess.run(["sha256sum", "-c"], input=r.stdout, capture_output=True)
    assert check.returncode == 0

    big_cs = checksum_of(big.read_bytes())
    out = tmp_path / "out.bin"
    r = cli("get", big_cs, "-o", str(out), env=env)
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == big.read_bytes()
    r = cli("get", checksum_of(small.read_bytes()), env=env)
    assert r.stdout == small.read_bytes()

    missing = hashlib.sha256(b"never uploaded").hexdigest()
    r = cli("has", big_cs, missing, env=env)
    assert r.returncode == 1
    assert r.stdout.decode().splitlines() == [f"{big_cs} present", f"{missing} missing"]
    r = cli("get", missing, "-o", str(tmp_path / "nothing"), env=env)
    assert r.returncode == 1 and b"not on the node" in r.stderr
    assert not (tmp_path / "nothing").exists()
    r = cli("get", "ABC", env=env)
    assert r.returncode == 2 and b"not a checksum" in r.stderr


def test_put_to_unreachable_node_is_a_clear_error(tmp_path):
    f = tmp_path / "x"
    f.write_bytes(b"x")
    r = cli("put", str(f), "--url", "http://127.0.0.1:9")
    assert r.returncode == 1 and b"cannot reach the node" in r.stderr


def test_fsck_cli(node_process, tmp_path):
    data_dir = tmp_path / "data"
    proc = node_process("--roles", "buffers", data_dir=data_dir)
    f = tmp_path / "f"
    f.write_bytes(b"fsck me\n")
    env = dict(os.environ, SEAMLESS_NODE_URL=proc.url)
    assert cli("put", str(f), env=env).returncode == 0
    r = cli("fsck", "--data-dir", str(data_dir))
    assert r.returncode == 0 and b"checked 1 buffers" in r.stdout
    cs = checksum_of(b"fsck me\n")
    path = data_dir / "buffers" / cs[:2] / cs
    os.chmod(path, 0o644)
    path.write_bytes(b"fsck mE\n")
    r = cli("fsck", "--data-dir", str(data_dir), "--no-repair")
    assert r.returncode == 1 and str(path).encode() in r.stdout and path.exists()
    r = cli("fsck", "--data-dir", str(data_dir))
    assert r.returncode == 1 and not path.exists()
    r = cli("fsck", "--data-dir", str(data_dir))
    assert r.returncode == 0
    r = cli("fsck", "--data-dir", str(tmp_path / "nowhere"))
    assert r.returncode == 2


def test_config_prints_sizes_readably_and_reads_back(tmp_path):
    r = cli("config")
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    assert "max_buffer_size: 64GiB" in text and "reserve_free_bytes: 64MiB" in text
    assert "upload_min_rate: 16KiB" in text
    saved = tmp_path / "node.yaml"
    saved.write_text(text)
    again = cli("config", "--config", str(saved))
    assert again.returncode == 0 and again.stdout.decode() == text
    odd = tmp_path / "odd.yaml"
    odd.write_text("buffers:\n  max_buffer_size: 1000001\n  reserve_free_bytes: 3GB\n")
    text = cli("config", "--config", str(odd)).stdout.decode()
    assert "max_buffer_size: 1000001\n" in text and "reserve_free_bytes: 3GB\n" in text


def test_make_run_installs_only_what_running_needs(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    venv = str(tmp_path / "venv")  # a fresh one: make shows everything it would do

    def plan(target):
        command = ["make", "-n", "-C", root, target, f"VENV={venv}"]
        r = subprocess.run(command, capture_output=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout.decode()

    run = plan("run")
    assert "pip install" in run and "[test]" not in run
    assert "seamless-node run" in run
    assert "pip install --quiet --disable-pip-version-check -e '.[test]'" in plan("test")
