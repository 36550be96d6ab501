"""The node's own database API (/api/v1/database), and concurrent use of the database."""

from __future__ import annotations

import random

import httpx
import pytest
import trio

from tests.helpers import checksum_of

TF, R = checksum_of(b"tf"), checksum_of(b"r")


def cs(kind: str, i: int) -> str:
    return checksum_of(f"{kind}-{i}".encode())


@pytest.fixture
async def db(start_node):
    return await start_node(node={"roles": "database"}, database={"max_batch_count": 1000})


async def test_read_and_write(db, http):
    api = db.url + "/api/v1/database"
    r = await http.post(api + "/read", json={"type": "transformation", "checksum": TF})
    assert r.status_code == 404 and r.json() == {"status": 404, "error": "Unknown key"}
    r = await http.post(api + "/write", json={"type": "transformation", "checksum": TF, "value": R})
    assert r.status_code == 200 and r.json() == {"status": 200}
    r = await http.post(api + "/read", json={"type": "transformation", "checksum": TF})
    assert r.json() == {"value": R}
    assert r.headers["content-type"] == "application/json"
    r = await http.post(api + "/read", json={"type": "rev_transformations", "checksum": R})
    assert r.json() == {"value": [TF]}
    r = await http.post(api + "/read", json={"type": "transformation", "checksum": "A" * 64})
    assert r.status_code == 400 and "checksum" in r.json()["error"]


async def test_write_refusal_keeps_upstream_status_and_text(db, http):
    api = db.url + "/api/v1/database"
    record = {"schema_version": 1, "tf_checksum": TF, "result_checksum": R}
    body = {"type": "metadata", "checksum": TF, "result": R, "value": record}
    assert (await http.post(api + "/write", json=body)).status_code == 200
    r = await http.post(api + "/write", json={**body, "value": {**record, "x": 1}})
    assert r.status_code == 409
    assert r.json() == {"status": 409, "error": "Execution record already exists with different metadata"}


async def test_batches(db, http):
    api = db.url + "/api/v1/database"
    writes = [{"type": "transformation", "checksum": cs("tf", i), "value": cs("r", i)} for i in range(500)]
    r = await http.post(api + "/write-many", json={"requests": writes})
    assert r.status_code == 200 and r.json()["results"] == [{"status": 200}] * 500
    reads = [{"type": "transformation", "checksum": cs("tf", i)} for i in range(501)]
    r = await http.post(api + "/read-many", json={"requests": reads})
    assert r.json()["values"] == [cs("r", i) for i in range(500)] + [None]
    info = (await http.get(api + "/info")).json()
    assert info["counts"]["transformation"] == 500 and info["readonly"] is False


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"requests": "x"}, 400, "expected"),
        ([], 400, "expected"),
        (
            {"requests": [{"type": "transformation", "checksum": TF, "value": R}, {"type": "nope"}]},
            400,
            "request 1",
        ),
        ({"requests": [{"type": "transformation", "checksum": TF, "value": R}] * 1001}, 413, "too many"),
    ],
)
async def test_a_bad_batch_is_refused_whole(db, http, body, status, message):
    r = await http.post(db.url + "/api/v1/database/write-many", json=body)
    assert r.status_code == status and message in r.json()["error"]
    r = await http.post(db.url + "/api/v1/database/read", json={"type": "transformation", "checksum": TF})
    assert r.status_code == 404  # nothing was written


async def test_concurrent_writers_and_readers(node_process, http):
    """16 writers and 16 readers at once, 10,000 entries; then every entry reads back.

    Writers send batches of 25 (so 16 transactions' worth of requests are always queued
    for the group commit); readers check that any answer is right and that nothing
    acknowledged is missing, through both the upstream protocol and read-many."""
    proc = node_process("--roles", "database")
    url, api = proc.url + "/database", proc.url + "/api/v1/database"
    total, writers, batch = 10_000, 16, 25
    written: set[int] = set()
    wrong: list[str] = []
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:

        async def writer(k: int) -> None:
            mine = list(range(k, total, writers))
            for start in range(0, len(mine), batch):
                chunk = mine[start : start + batch]
                requests = [
                    {"type": "transformation", "checksum": cs("tf", i), "value": cs("r", i)} for i in chunk
                ]
                r = await client.post(api + "/write-many", json={"requests": requests})
                assert r.status_code == 200 and r.json()["results"] == [{"status": 200}] * len(chunk), r.text
                written.update(chunk)

        def check(i: int, acknowledged: bool, status: int, value: str | None) -> None:
            if status == 200 and value != cs("r", i):
                wrong.append(f"{i}: wrong value {value}")
            elif status == 404 and acknowledged:
                wrong.append(f"{i}: acknowledged but missing")
            elif status not in (200, 404):
                wrong.append(f"{i}: status {status}")

        async def reader(seed: int, stop: trio.Event) -> None:
            rng = random.Random(seed)
            while not stop.is_set():
                keys = [rng.randrange(total) for _ in range(batch)]
                acknowledged = [i in written for i in keys]
                r = await client.post(
                    api + "/read-many",
                    json={"requests": [{"type": "transformation", "checksum": cs("tf", i)} for i in keys]},
                )
                for i, ack, value in zip(keys, acknowledged, r.json()["values"], strict=True):
                    check(i, ack, 200 if value else 404, value)
                i = keys[0]
                ack = i in written
                r = await client.request("GET", url, json={"type": "transformation", "checksum": cs("tf", i)})
                check(i, ack, r.status_code, r.text if r.status_code == 200 else None)

        stop = trio.Event()
        async with trio.open_nursery() as readers:
            for k in range(16):
                readers.start_soon(reader, k, stop)
            async with trio.open_nursery() as nursery:
                for k in range(writers):
                    nursery.start_soon(writer, k)
            stop.set()
        assert not wrong, wrong[:10]
        assert len(written) == total
        for start in range(0, total, 1000):
            reads = [{"type": "transformation", "checksum": cs("tf", i)} for i in range(start, start + 1000)]
            r = await client.post(api + "/read-many", json={"requests": reads})
            assert r.json()["values"] == [cs("r", i) for i in range(start, start + 1000)]
