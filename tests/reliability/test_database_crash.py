"""SIGKILL the node during a burst of database writes: the file stays sound and every
acknowledged write is in it."""

from __future__ import annotations

import random
import signal
import sqlite3

import httpx
import pytest
import trio

from tests.helpers import checksum_of


def cs(kind: str, i: int) -> str:
    return checksum_of(f"{kind}-{i}".encode())


def check_file(path: str, acknowledged: dict[str, str]) -> None:
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = dict(conn.execute("SELECT checksum, result FROM transformation").fetchall())
        reverse = set(conn.execute("SELECT checksum, result FROM rev_transformation").fetchall())
        metadata = {c for (c,) in conn.execute("SELECT checksum FROM meta_data")}
    finally:
        conn.close()
    missing = [tf for tf, result in acknowledged.items() if stored.get(tf) != result]
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
    assert all((tf, result) in reverse for tf, result in acknowledged.items())
    # a metadata write commits its transformation entry in the same transaction
    assert all(stored.get(tf) for tf in metadata)


@pytest.mark.slow
async def test_sigkill_during_write_burst(node_process, tmp_path):
    data_dir = tmp_path / "data"
    acknowledged: dict[str, str] = {}
    counter = 0
    rng = random.Random(7)
    for _round in range(4):
        before = len(acknowledged)
        proc = node_process("--roles", "database", data_dir=data_dir)
        url = proc.url + "/database"

        async def burst(client: httpx.AsyncClient, url: str = url) -> None:
            nonlocal counter
            while True:
                counter += 1
                i = counter
                tf, result = cs("tf", i), cs("r", i)
                if i % 3 == 0:  # a metadata write also records the transformation
                    record = {"schema_version": 1, "tf_checksum": tf, "result_checksum": result, "i": i}
                    body = {"type": "metadata", "checksum": tf, "result": result, "value": record}
                else:
                    body = {"type": "transformation", "checksum": tf, "value": result}
                try:
                    r = await client.put(url, json=body)
                except httpx.HTTPError:
                    return  # the node is gone
                assert r.status_code == 200, r.text
                acknowledged[tf] = result

        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:
            async with trio.open_nursery() as nursery:
                for _ in range(16):
                    nursery.start_soon(burst, client)
                await trio.sleep(0.4 + rng.random() * 0.6)
                proc.kill(signal.SIGKILL)
        assert len(acknowledged) - before > 50, "the burst did not get going"
        check_file(str(data_dir / "seamless.db"), acknowledged)

    # a node restarted on the file serves every acknowledged write
    proc = node_process("--roles", "database", data_dir=data_dir)
    async with httpx.AsyncClient(timeout=30) as client:
        items = list(acknowledged.items())
        for start in range(0, len(items), 1000):
            chunk = items[start : start + 1000]
            r = await client.post(
                proc.url + "/api/v1/database/read-many",
                json={"requests": [{"type": "transformation", "checksum": tf} for tf, _ in chunk]},
            )
            assert r.json()["values"] == [result for _, result in chunk]
