"""The database role against the real thing: seamless-database 2.1.0 (PyPI) and the real
Seamless 1.x clients, each in its own process.

* the same requests get the same answers from upstream and from the node;
* a ``seamless.db`` written by seamless-database is served by the node (read-only and
  writable), and one written by the node is served by seamless-database;
* the real ``DatabaseClient`` round-trips every request type it has;
* a transformation run by seamless-transformer in one process is a cache hit in a fresh one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

DATABASE_ONLY = {"roles": ["database"]}


def cs(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


TF1, TF2, TF3, R1, R2, R3, S, Y1, Y2, B1, B2 = (
    cs(x) for x in ("tf1", "tf2", "tf3", "r1", "r2", "r3", "s", "y1", "y2", "b1", "b2")
)
RECORD3 = {
    "schema_version": 1,
    "tf_checksum": TF3,
    "result_checksum": R3,
    "wall_time_seconds": 0.25,
    "nested": {"b": [1, 2]},
}
STS = {"celltype": "python", "subcelltype": "transformer"}
EXPR_A = {"checksum": TF1, "path": ["a", 1], "celltype": "mixed", "target_celltype": "plain"}
EXPR_B = {"checksum": TF1, "path": [], "celltype": "text", "target_celltype": "str"}
PROBE = {
    "bucket_kind": "node",
    "label": "host-a",
    "freshness_tokens": {"kernel": "6.1"},
    "captured_at": "2026-01-01T00:00:00Z",
}

#: writes in order; several are refused (409, 404) the same way by both servers
WRITES: list[dict[str, Any]] = [
    {"type": "transformation", "checksum": TF1, "value": R1},
    {"type": "transformation", "checksum": TF2, "value": R1},
    {"type": "buffer_info", "checksum": R1, "value": {"length": 3, "is_utf8": True, "json_type": "int"}},
    {"type": "buffer_info", "checksum": R1, "value": {"is_numpy": False}},
    {"type": "semantic_to_syntactic", "checksum": S, **STS, "value": [Y1, Y2]},
    {"type": "expression", **EXPR_A, "value": R2},
    {"type": "expression", **EXPR_B, "value": R3},
    {"type": "metadata", "checksum": TF3, "result": R3, "value": RECORD3},
    {"type": "metadata", "checksum": TF3, "result": R3, "value": RECORD3},
    {"type": "metadata", "checksum": TF3, "result": R3, "value": {**RECORD3, "wall_time_seconds": 1.0}},
    {
        "type": "metadata",
        "checksum": TF1,
        "result": R2,
        "value": {**RECORD3, "tf_checksum": TF1, "result_checksum": R2},
    },
    {"type": "bucket_probe", **PROBE, "bucket_checksum": B1},
    {"type": "bucket_probe", **PROBE, "bucket_checksum": B2},
    {"type": "irreproducible", "checksum": TF2, "result": R2},
    {"type": "irreproducible", "checksum": TF2, "result": R1},
    {
        "type": "metadata",
        "checksum": TF2,
        "result": R1,
        "value": {**RECORD3, "tf_checksum": TF2, "result_checksum": R1},
    },
]

READS: list[dict[str, Any]] = [
    {"type": "protocol"},
    {"type": "transformation", "checksum": TF1},
    {"type": "transformation", "checksum": TF2},
    {"type": "transformation", "checksum": TF3},
    {"type": "transformation", "checksum": R3},
    {"type": "rev_transformations", "checksum": R1},
    {"type": "rev_transformations", "checksum": R3},
    {"type": "rev_transformations", "checksum": R2},
    {"type": "buffer_info", "checksum": R1},
    {"type": "buffer_info", "checksum": R2},
    {"type": "semantic_to_syntactic", "checksum": S, **STS},
    {"type": "syntactic_to_semantic", "checksum": Y2, **STS},
    {"type": "syntactic_to_semantic", "checksum": Y2, "celltype": "python", "subcelltype": "reactor"},
    {"type": "expression", **EXPR_A},
    {"type": "expression", **EXPR_B},
    {"type": "expression", **EXPR_B, "target_celltype": "plain"},
    {"type": "rev_expression", "checksum": R2},
    {"type": "rev_expression", "checksum": R1},
    {"type": "metadata", "checksum": TF3},
    {"type": "metadata", "checksum": TF1},
    {"type": "bucket_probe", "bucket_kind": "node", "label": "host-a"},
    {"type": "bucket_probe", "bucket_kind": "node", "label": "host-b"},
    {"type": "irreproducible", "checksum": TF2},
    {"type": "irreproducible", "checksum": TF2, "result": R1},
    {"type": "irreproducible", "checksum": TF2, "result": R2},
    {"type": "irreproducible", "checksum": TF1},
]

#: malformed requests: seamless-database answers 400 or even 500; the node always 400
BAD: list[tuple[str, bytes]] = [
    ("GET", b"not json"),
    ("PUT", b"not json"),
    ("GET", b"[1]"),
    ("PUT", b"[1]"),
    ("GET", b'{"type": "nope", "checksum": "' + TF1.encode() + b'"}'),
    ("PUT", b'{"type": "rev_transformations", "checksum": "' + TF1.encode() + b'"}'),
    ("GET", b'{"type": "transformation", "checksum": 12}'),
    ("GET", b'{"type": "transformation", "checksum": "' + TF1.upper().encode() + b'"}'),
    ("PUT", b'{"type": "transformation", "checksum": "' + TF1.encode() + b'", "value": "zz"}'),
    (
        "PUT",
        b'{"type": "metadata", "checksum": "'
        + TF1.encode()
        + b'", "result": "'
        + R1.encode()
        + b'", "value": 1}',
    ),
    (
        "PUT",
        b'{"type": "semantic_to_syntactic", "checksum": "'
        + S.encode()
        + b'", "celltype": "python", "subcelltype": null, "value": []}',
    ),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


class Upstream:
    """A seamless-database 2.1.0 process on a free port of 127.0.0.1."""

    def __init__(self, path: Path, log: Path, *, writable: bool = True) -> None:
        self.path, self.log = path, log
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [script("seamless-database"), str(path), "--host", "127.0.0.1", "--port", str(self.port)]
        if writable:
            args.append("--writable")
        with open(log, "ab") as f:
            self.proc = subprocess.Popen(args, stdout=f, stderr=subprocess.STDOUT)

    async def wait(self) -> "Upstream":
        async with httpx.AsyncClient(timeout=2) as client:
            with trio.move_on_after(30):
                while self.proc.poll() is None:
                    try:
                        if (await client.get(self.url + "/healthcheck")).status_code == 200:
                            return self
                    except httpx.TransportError:
                        pass
                    await trio.sleep(0.05)
        self.stop()
        pytest.fail(f"seamless-database did not start:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def upstream(tmp_path: Path):
    started: list[Upstream] = []

    async def start(path: Path) -> Upstream:
        server = Upstream(path, tmp_path / f"upstream{len(started)}.log")
        started.append(server)
        return await server.wait()

    yield start
    for server in started:
        server.stop()


async def send(
    client: httpx.AsyncClient, url: str, method: str, body: dict[str, Any] | bytes
) -> tuple[int, Any]:
    content = body if isinstance(body, bytes) else json.dumps(body)
    r = await client.request(method, url, content=content, headers={"Content-Type": "application/json"})
    try:
        value: Any = json.loads(r.text)
    except ValueError:
        value = r.text
    return r.status_code, value


async def answers(url: str, requests: list[dict[str, Any]], method: str = "GET") -> list[tuple[int, Any]]:
    async with httpx.AsyncClient(timeout=30) as client:
        return [await send(client, url, method, rq) for rq in requests]


async def test_same_answers_as_seamless_database(start_node, upstream, tmp_path):
    up = await upstream(tmp_path / "upstream.db")
    node = await start_node(node=DATABASE_ONLY, database={"path": str(tmp_path / "node.db")})
    base = node.url + "/database"
    up_writes, node_writes = await answers(up.url, WRITES, "PUT"), await answers(base, WRITES, "PUT")
    assert [s for s, _ in up_writes] == [
        200,
        200,
        200,
        200,
        200,
        200,
        200,
        200,
        200,
        409,
        409,
        200,
        200,
        404,
        200,
        409,
    ]
    assert node_writes == up_writes  # same statuses, same texts
    up_reads, node_reads = await answers(up.url, READS), await answers(base, READS)
    for rq, mine, theirs in zip(READS, node_reads, up_reads, strict=True):
        assert mine == theirs, rq
    async with httpx.AsyncClient(timeout=30) as client:
        for method, body in BAD:
            theirs = await send(client, up.url, method, body)
            mine = await send(client, base, method, body)
            # upstream answers these 400, 405 or 500; it even accepts an uppercase checksum
            # (200), which the node refuses: one buffer, one spelling (security.md rule 1)
            assert theirs[0] in (200, 400, 500), (method, body, theirs)
            assert mine[0] == 400 and str(mine[1]).startswith("ERROR: "), (method, body, mine, theirs)


def schema(path: Path) -> set[tuple[str, str, str]]:
    conn = sqlite3.connect(path)
    try:
        return set(conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"))
    finally:
        conn.close()


async def test_node_writes_the_same_tables_as_seamless_database(start_node, upstream, tmp_path):
    up = await upstream(tmp_path / "upstream.db")
    node = await start_node(node=DATABASE_ONLY, database={"path": str(tmp_path / "node.db")})
    up.stop()
    node.stop()
    await trio.sleep(0.2)
    mine = {row for row in schema(tmp_path / "node.db") if "compilation" not in row[1]}
    assert mine == schema(tmp_path / "upstream.db")


async def test_upstream_file_served_by_node_and_back(start_node, upstream, tmp_path):
    """seamless-database writes a file; the node serves it read-only and writable, adds
    entries; seamless-database serves everything again."""
    path = tmp_path / "seamless.db"
    up = await upstream(path)
    await answers(up.url, WRITES, "PUT")
    expected = await answers(up.url, READS)
    up.stop()

    ro = await start_node(node=DATABASE_ONLY, database={"path": str(path), "readonly": True})
    assert await answers(ro.url + "/database", READS) == expected
    [(status, _)] = await answers(
        ro.url + "/database", [{"type": "transformation", "checksum": R2, "value": R3}], "PUT"
    )
    assert status == 405
    ro.stop()

    rw = await start_node(node=DATABASE_ONLY, database={"path": str(path)})
    assert await answers(rw.url + "/database", READS) == expected
    new = [
        {"type": "transformation", "checksum": cs("new-tf"), "value": cs("new-result")},
        {"type": "compilation", "checksum": S, "value": Y1},
    ]
    assert [s for s, _ in await answers(rw.url + "/database", new, "PUT")] == [200, 200]
    rw.stop()
    await trio.sleep(0.2)

    # (seamless-database's own read-only mode cannot start: with peewee 4 its db_init
    # passes uri=True to Database.connect, a TypeError; so it opens the file writable)
    again = await upstream(path)
    assert await answers(again.url, READS) == expected
    assert await answers(again.url, [{"type": "transformation", "checksum": cs("new-tf")}]) == [
        (200, cs("new-result"))
    ]


async def test_node_file_served_by_upstream(start_node, upstream, tmp_path):
    path = tmp_path / "seamless.db"
    node = await start_node(node=DATABASE_ONLY, database={"path": str(path)})
    await answers(node.url + "/database", WRITES, "PUT")
    expected = await answers(node.url + "/database", READS)
    node.stop()
    await trio.sleep(0.2)
    assert not (tmp_path / "seamless.db-wal").exists()  # one plain file after a clean stop

    rw = await upstream(path)
    assert await answers(rw.url, READS) == expected
    extra = [{"type": "transformation", "checksum": cs("new-tf"), "value": R1}]
    assert [s for s, _ in await answers(rw.url, extra, "PUT")] == [200]
    rw.stop()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


# ----------------------------------------------------------------- the real Seamless clients

DATABASE_CLIENT_SCRIPT = textwrap.dedent(
    """
    import asyncio, hashlib, json, sys
    from seamless import Checksum
    from seamless_remote.database_client import DatabaseClient

    def cs(text):
        return Checksum(hashlib.sha256(text.encode()).hexdigest())

    async def main(url):
        client = DatabaseClient(readonly=False)
        client.url = url
        tf, result, other = cs("tf"), cs("result"), cs("other")
        out = {}
        out["missing"] = await client.get_transformation_result(cs("nothing"))
        await client.set_transformation_result(tf, result)
        out["result"] = (await client.get_transformation_result(tf)).hex()
        out["rev"] = [c.hex() for c in await client.get_rev_transformations(result)]
        out["missing_rev"] = await client.get_rev_transformations(cs("nothing"))
        record = {"schema_version": 1, "tf_checksum": tf.hex(), "result_checksum": result.hex()}
        record["wall_time_seconds"] = 0.5
        out["set_record"] = await client.set_execution_record(tf, result, record)
        out["set_record_again"] = await client.set_execution_record(tf, result, record)
        different = {**record, "wall_time_seconds": 9.0}
        out["set_record_different"] = await client.set_execution_record(tf, result, different)
        out["record"] = await client.get_execution_record(tf)
        out["missing_record"] = await client.get_execution_record(cs("nothing"))
        await client.set_bucket_probe("node", "host-a", other, {"kernel": "6.1"}, "2026-01-01T00:00:00Z")
        out["probe"] = await client.get_bucket_probe("node", "host-a")
        out["missing_probe"] = await client.get_bucket_probe("node", "host-b")
        out["missing_irreproducible"] = await client.get_irreproducible_records(tf)
        out["undo"] = await client.undo_transformation_result(tf, result)
        out["after_undo"] = await client.get_transformation_result(tf)
        out["irreproducible"] = await client.get_irreproducible_records(tf)
        out["irreproducible_other"] = await client.get_irreproducible_records(tf, other)
        print("RESULT " + json.dumps(out))

    asyncio.run(main(sys.argv[1]))
    """
)

TRANSFORMER_SCRIPT = textwrap.dedent(
    """
    import sys
    database, buffers, marker, mode = sys.argv[1:5]
    import seamless_config
    seamless_config.set_remote_clients({
        "database": [{"url": database, "readonly": False}],
        "buffer": [{"url": buffers, "readonly": False}],
    })
    from seamless_transformer import delayed, direct

    def add(a, b):
        with open(MARKER, "a") as f:
            f.write("ran\\n")
        return a * 100 + b

    if mode == "direct":
        tf = direct(add)
        tf.globals.MARKER = marker
        result = tf(4, 2)
    else:
        tf = delayed(add)
        tf.globals.MARKER = marker
        result = tf(4, 3).run()
    print("RESULT", result)
    import seamless
    seamless.close()
    """
)


async def run_script(tmp_path: Path, source: str, *args: str) -> str:
    path = tmp_path / "client_script.py"
    path.write_text(source)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_")}
    env["HOME"] = str(tmp_path)  # no user configuration
    with trio.fail_after(180):
        proc = await trio.run_process(
            [sys.executable, str(path), *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=env,
            cwd=tmp_path,
        )
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()[-3000:]
    return next(line for line in out.splitlines() if line.startswith("RESULT "))[len("RESULT ") :]


def transformation_reads(metrics: str) -> float:
    prefix = 'seamless_node_database_requests_total{op="read",type="transformation"} '
    return sum(float(line[len(prefix) :]) for line in metrics.splitlines() if line.startswith(prefix))


async def test_real_database_client_round_trips(node_process, tmp_path):
    node = node_process("--roles", "database")
    out = json.loads(await run_script(tmp_path, DATABASE_CLIENT_SCRIPT, node.url + "/database"))
    tf, result, other = cs("tf"), cs("result"), cs("other")
    record = {"schema_version": 1, "tf_checksum": tf, "result_checksum": result, "wall_time_seconds": 0.5}
    assert out == {
        "missing": None,
        "result": result,
        "rev": [tf],
        "missing_rev": None,
        "set_record": None,
        "set_record_again": None,
        "set_record_different": False,  # the client recognises upstream's 409 text
        "record": record,
        "missing_record": None,
        "probe": {
            "bucket_kind": "node",
            "label": "host-a",
            "bucket_checksum": other,
            "captured_at": "2026-01-01T00:00:00Z",
            "freshness_tokens": {"kernel": "6.1"},
        },
        "missing_probe": None,
        "missing_irreproducible": None,
        "undo": True,
        "after_undo": None,
        "irreproducible": [{"checksum": tf, "result": result, "metadata": record}],
        "irreproducible_other": None,
    }


@pytest.mark.parametrize("mode, expected", [("direct", "402"), ("delayed", "403")])
async def test_transformation_result_is_a_cache_hit_in_a_fresh_process(
    node_process, tmp_path, mode, expected
):
    node = node_process("--roles", "buffers,database")
    marker = tmp_path / "marker"
    args = (node.url + "/database", node.url + "/buffers", str(marker), mode)
    assert await run_script(tmp_path, TRANSFORMER_SCRIPT, *args) == expected
    assert marker.read_text() == "ran\n"
    async with httpx.AsyncClient() as client:
        info = (await client.get(node.url + "/api/v1/database/info")).json()
        reads_before = transformation_reads((await client.get(node.url + "/metrics")).text)
    assert info["counts"]["transformation"] >= 1 and info["counts"]["meta_data"] >= 1

    assert await run_script(tmp_path, TRANSFORMER_SCRIPT, *args) == expected
    assert marker.read_text() == "ran\n"  # the function did not run again
    async with httpx.AsyncClient() as client:
        reads_after = transformation_reads((await client.get(node.url + "/metrics")).text)
    assert reads_after > reads_before  # the second process asked the node's database

    # control: a node with an empty database makes the same script run the function
    fresh = node_process("--roles", "buffers,database")
    args = (fresh.url + "/database", fresh.url + "/buffers", str(marker), mode)
    assert await run_script(tmp_path, TRANSFORMER_SCRIPT, *args) == expected
    assert marker.read_text() == "ran\nran\n"
