"""``seamless-node db get|set|rev|import|export``."""

from __future__ import annotations

import sqlite3
import subprocess
import sys

import trio
from click.testing import CliRunner

from node.cli import main
from node.store.mapping_requests import parse_query, parse_update
from node.store.mappings import MappingStore
from tests.helpers import checksum_of

TF, TF2, R, R2 = (checksum_of(x) for x in (b"tf", b"tf2", b"r", b"r2"))


def record(tf: str, result: str, **extra: object) -> dict:
    return {"schema_version": 1, "tf_checksum": tf, "result_checksum": result, **extra}


def fill(path, *requests):
    store = MappingStore(str(path))
    store.open()
    try:
        outcomes = store.write_batch([parse_update(r) for r in requests])
        assert all(o.ok for o in outcomes), outcomes
    finally:
        store.close()


def read(path, request):
    store = MappingStore(str(path), readonly=True)
    store.open()
    try:
        return store.read(parse_query(request))
    finally:
        store.close()


async def cli(*args: str) -> subprocess.CompletedProcess:
    """The real command line, in its own process (the node under test runs in this one)."""
    return await trio.run_process(
        [sys.executable, "-m", "node", *args], capture_stdout=True, capture_stderr=True, check=False
    )


async def test_get_set_rev_against_a_running_node(start_node):
    node = await start_node(node={"roles": "database"})
    url = ["--url", node.url]
    p = await cli("db", "get", TF, *url)
    assert p.returncode == 1 and b"unknown" in p.stderr
    assert (await cli("db", "set", TF, R, *url)).returncode == 0
    p = await cli("db", "get", TF, *url)
    assert (p.returncode, p.stdout.decode()) == (0, R + "\n")
    p = await cli("db", "rev", R, *url)
    assert (p.returncode, p.stdout.decode()) == (0, TF + "\n")
    assert (await cli("db", "set", TF2, R2, "--type", "compilation", *url)).returncode == 0
    p = await cli("db", "get", TF2, "--type", "compilation", *url)
    assert p.stdout.decode() == R2 + "\n"
    p = await cli("db", "get", "ABC", *url)
    assert p.returncode == 2 and b"not a checksum" in p.stderr


def test_cli_without_a_node_says_so(tmp_path):
    result = CliRunner().invoke(main, ["db", "get", TF, "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1 and "cannot reach the node" in result.output


def test_import_merges_and_keeps_what_the_target_has(tmp_path):
    own, shared = tmp_path / "data" / "seamless.db", tmp_path / "shared.db"
    fill(own, {"type": "transformation", "checksum": TF, "value": R})
    fill(
        shared,
        {"type": "transformation", "checksum": TF, "value": R2},  # conflicts: own wins
        {"type": "metadata", "checksum": TF2, "result": R2, "value": record(TF2, R2)},
        {"type": "buffer_info", "checksum": R2, "value": {"length": 4}},
        {"type": "compilation", "checksum": R, "value": R2},
    )
    result = CliRunner().invoke(main, ["db", "import", str(shared), "--data-dir", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "entries added" in result.output
    assert read(own, {"type": "transformation", "checksum": TF}) == R
    assert read(own, {"type": "transformation", "checksum": TF2}) == R2
    assert read(own, {"type": "rev_transformations", "checksum": R2}) == [TF2]
    assert read(own, {"type": "metadata", "checksum": TF2}) == record(TF2, R2)
    assert read(own, {"type": "buffer_info", "checksum": R2}) == {"length": 4}
    assert read(own, {"type": "compilation", "checksum": R}) == R2
    # importing again adds nothing
    result = CliRunner().invoke(main, ["db", "import", str(shared), "--into", str(own)])
    assert "0 entries added" in result.output


def test_import_respects_irreproducible_marks(tmp_path):
    own, shared = tmp_path / "own.db", tmp_path / "shared.db"
    fill(
        own,
        {"type": "transformation", "checksum": TF, "value": R},
        {"type": "irreproducible", "checksum": TF, "result": R},
    )
    fill(
        shared,
        {"type": "metadata", "checksum": TF, "result": R, "value": record(TF, R)},
        {"type": "transformation", "checksum": TF2, "value": R2},
    )
    fill(
        tmp_path / "marks.db",
        {"type": "transformation", "checksum": TF2, "value": R2},
        {"type": "irreproducible", "checksum": TF2, "result": R2},
    )
    runner = CliRunner()
    assert runner.invoke(main, ["db", "import", str(shared), "--into", str(own)]).exit_code == 0
    assert read(own, {"type": "transformation", "checksum": TF}) is None  # still irreproducible here
    assert read(own, {"type": "metadata", "checksum": TF}) is None
    assert read(own, {"type": "transformation", "checksum": TF2}) == R2
    assert (
        runner.invoke(main, ["db", "import", str(tmp_path / "marks.db"), "--into", str(own)]).exit_code == 0
    )
    assert read(own, {"type": "transformation", "checksum": TF2}) is None  # an incoming mark removes it
    assert read(own, {"type": "rev_transformations", "checksum": R2}) is None


def test_export_writes_a_standalone_file(tmp_path):
    data = tmp_path / "data"
    fill(data / "seamless.db", {"type": "transformation", "checksum": TF, "value": R})
    out = tmp_path / "export.db"
    runner = CliRunner()
    result = runner.invoke(main, ["db", "export", str(out), "--data-dir", str(data)])
    assert result.exit_code == 0, result.output
    assert read(out, {"type": "transformation", "checksum": TF}) == R
    conn = sqlite3.connect(out)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    conn.close()
    result = runner.invoke(main, ["db", "export", str(out), "--data-dir", str(data)])
    assert result.exit_code == 2 and "--force" in result.output
    assert runner.invoke(main, ["db", "export", str(out), "--force", "--data-dir", str(data)]).exit_code == 0
    result = runner.invoke(main, ["db", "import", str(tmp_path / "x.db"), "--into", str(out)])
    assert result.exit_code == 2  # no such source file


def test_import_refuses_a_file_that_is_not_a_database(tmp_path):
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    result = CliRunner().invoke(main, ["db", "import", str(bogus), "--into", str(tmp_path / "own.db")])
    assert result.exit_code == 1 and "cannot import" in result.output
