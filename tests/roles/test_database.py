"""The database role over HTTP: upstream's wire format at /database, and hostile input."""

from __future__ import annotations

import json
import sqlite3

import pytest

from tests.helpers import checksum_of

TF, R, R2 = (checksum_of(x) for x in (b"tf", b"r", b"r2"))
TEXT = "text/plain; charset=utf-8"


@pytest.fixture
async def db(start_node):
    node = await start_node(node={"roles": "database"}, database={"max_request_bytes": 65536})
    return node


async def get(http, node, body, path="/database"):
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return await http.request("GET", node.url + path, content=content, headers={"Content-Type": "application/json"})


async def put(http, node, body, path="/database"):
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return await http.put(node.url + path, content=content, headers={"Content-Type": "application/json"})


async def test_healthcheck_and_protocol(db, http):
    r = await http.get(db.url + "/database/healthcheck")
    assert (r.status_code, r.text) == (200, "OK")
    r = await get(http, db, {"type": "protocol"})
    assert (r.status_code, r.text) == (200, '["seamless", "database", "2.2"]')
    assert r.headers["content-type"] == TEXT


@pytest.mark.parametrize("path", ["/database", "/database/", "/database/any/path"])
async def test_every_path_under_the_prefix_is_the_database(db, http, path):
    r = await put(http, db, {"type": "transformation", "checksum": TF, "value": R}, path)
    assert (r.status_code, r.text) == (200, "OK")
    r = await get(http, db, {"type": "transformation", "checksum": TF}, path)
    assert (r.status_code, r.text) == (200, R)  # the bare hex string, not JSON


async def test_missing_key_is_404_unknown_key(db, http):
    for body in (
        {"type": "transformation", "checksum": TF},
        {"type": "metadata", "checksum": TF},
        {"type": "rev_transformations", "checksum": R},
        {"type": "expression", "checksum": TF, "path": [], "celltype": "plain", "target_celltype": "str"},
        {"type": "compilation", "checksum": TF},
    ):
        r = await get(http, db, body)
        assert (r.status_code, r.text) == (404, "ERROR: Unknown key"), body


async def test_metadata_conflict_text(db, http):
    record = {"schema_version": 1, "tf_checksum": TF, "result_checksum": R}
    body = {"type": "metadata", "checksum": TF, "result": R, "value": record}
    assert (await put(http, db, body)).status_code == 200
    assert (await put(http, db, body)).status_code == 200
    r = await put(http, db, {**body, "value": {**record, "extra": 1}})
    assert (r.status_code, r.text) == (409, "ERROR: Execution record already exists with different metadata")
    r = await get(http, db, {"type": "metadata", "checksum": TF})
    assert json.loads(r.text) == record


HOSTILE_READS = [
    b"",
    b"   ",
    b"{not json",
    b"\xff\xfe\x00",
    b"[1, 2]",
    b'"transformation"',
    b"null",
    b"42",
    b"{}",
    b'{"type": "drop table"}',
    b'{"type": null, "checksum": "x"}',
    b'{"type": {"a": 1}}',
    b'{"type": "transformation"}',
    b'{"type": "transformation", "checksum": 5}',
    b'{"type": "transformation", "checksum": "' + b"A" * 64 + b'"}',
    b'{"type": "transformation", "checksum": "' + b"a" * 64 + b'\\n"}',
    b'{"type": "transformation", "checksum": "../../etc/passwd"}',
    b'{"type": "expression", "checksum": "'
    + b"a" * 64
    + b'", "path": "x", "celltype": 1, "target_celltype": []}',
    b'{"type": "bucket_probe"}',
    b'{"type": "irreproducible", "checksum": "' + b"a" * 64 + b'", "result": 12}',
    b'{"type": "semantic_to_syntactic", "checksum": "' + b"a" * 64 + b'"}',
]


@pytest.mark.parametrize("body", HOSTILE_READS)
async def test_hostile_reads_get_400_with_a_message(db, http, body):
    r = await get(http, db, body)
    assert r.status_code == 400, (body, r.status_code, r.text)
    assert r.text.startswith("ERROR: ") and len(r.text) > 20


HOSTILE_WRITES = HOSTILE_READS + [
    b'{"type": "protocol"}',
    b'{"type": "rev_transformations", "checksum": "' + b"a" * 64 + b'"}',
    b'{"type": "transformation", "checksum": "' + b"a" * 64 + b'", "value": null}',
    b'{"type": "transformation", "checksum": "' + b"a" * 64 + b'", "value": ["x"]}',
    b'{"type": "metadata", "checksum": "' + b"a" * 64 + b'", "result": "' + b"b" * 64 + b'", "value": 7}',
    b'{"type": "buffer_info", "checksum": "' + b"a" * 64 + b'", "value": {"length": "big"}}',
    b'{"type": "bucket_probe", "bucket_kind": "node", "label": "x"}',
]


@pytest.mark.parametrize("body", HOSTILE_WRITES)
async def test_hostile_writes_get_400_and_change_nothing(db, http, body):
    r = await put(http, db, body)
    assert r.status_code == 400, (body, r.status_code, r.text)
    assert r.text.startswith("ERROR: ")
    conn = sqlite3.connect(db.config.database_path)
    try:
        assert conn.execute("SELECT COUNT(*) FROM transformation").fetchone()[0] == 0
    finally:
        conn.close()


async def test_oversize_body_is_refused_with_a_message(db, http):
    huge = json.dumps({"type": "transformation", "checksum": TF, "padding": "x" * 100_000})
    r = await get(http, db, huge)
    assert r.status_code == 413 and "limit of 65536 bytes" in r.text
    r = await put(http, db, huge)
    assert r.status_code == 413 and r.text.startswith("ERROR: ")

    async def trickle():  # no Content-Length: the cap applies while reading
        for _ in range(20):
            yield b" " * 8192

    r = await http.put(db.url + "/database", content=trickle(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


async def test_readonly_database_answers_405(start_node, http, tmp_path):
    node = await start_node(node={"roles": "database"}, database={"path": str(tmp_path / "x.db")})
    assert (await put(http, node, {"type": "transformation", "checksum": TF, "value": R})).status_code == 200
    node.stop()
    ro = await start_node(
        node={"roles": "database"}, database={"path": str(tmp_path / "x.db"), "readonly": True}
    )
    r = await put(http, ro, {"type": "transformation", "checksum": TF, "value": R2})
    assert r.status_code == 405 and r.text.startswith("ERROR: Database server is read-only")
    r = await get(http, ro, {"type": "transformation", "checksum": TF})
    assert (r.status_code, r.text) == (200, R)


async def test_extra_files_are_served(start_node, http, tmp_path):
    shared = await start_node(node={"roles": "database"}, database={"path": str(tmp_path / "shared.db")})
    assert (
        await put(http, shared, {"type": "transformation", "checksum": TF, "value": R})
    ).status_code == 200
    shared.stop()
    node = await start_node(
        node={"roles": "database"}, database={"extra_files": [str(tmp_path / "shared.db")]}
    )
    r = await get(http, node, {"type": "transformation", "checksum": TF})
    assert (r.status_code, r.text) == (200, R)


async def test_metrics_count_database_requests(db, http):
    await get(http, db, {"type": "transformation", "checksum": TF})
    text = (await http.get(db.url + "/metrics")).text
    assert 'seamless_node_database_requests_total{op="read",type="transformation"} 1' in text


@pytest.mark.parametrize("depth", [65, 990, 30_000])
async def test_deeply_nested_json_is_400(db, http, depth):
    value = "[" * depth + "]" * depth
    record = '{"schema_version": 1, "tf_checksum": "%s", "result_checksum": "%s", "x": %s}' % (TF, R, value)
    body = '{"type": "metadata", "checksum": "%s", "result": "%s", "value": %s}' % (TF, R, record)
    r = await put(http, db, body.encode())
    assert r.status_code == 400 and r.text.startswith("ERROR: Malformed request: "), r.text[:200]
    assert "nested" in r.text
    r = await http.post(
        db.url + "/api/v1/database/write-many", content=('{"requests": [%s]}' % body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text[:200]
