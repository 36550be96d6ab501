"""An acknowledgement means stored: uploads of one checksum racing each other.

A 200 or 201 for a PUT promises that the buffer is in the store. Concurrent uploads of
the same checksum each write and verify their own bytes; the first verified one wins.
A squatter (declares a body and drips it, or lies about it) never makes an honest
uploader's bytes be dropped.
"""

from __future__ import annotations

import os

import httpx
import trio

from tests.reliability.support import raw_request, request_head, scan_store, sha256

MiB = 1024 * 1024
IDENTITY = {"Accept-Encoding": "identity"}


async def _drip(first: bytes):  # type: ignore[no-untyped-def]
    """A squatter's body: some bytes, then nothing (until the test hangs up)."""
    yield first
    await trio.sleep_forever()


async def test_squatter_does_not_make_an_honest_upload_lose_its_bytes(node, http):
    data = os.urandom(3 * MiB)
    cs = sha256(data)
    url = f"{node.buffers_url}/{cs}"
    squatter: list[object] = []
    hang_up = trio.CancelScope()

    async def squat() -> None:
        # declares 10 MiB (a lie) and drips the first few bytes of the real buffer
        head = request_head("PUT", f"/buffers/{cs}", {"Content-Length": str(10 * MiB)})
        with hang_up:
            squatter.append(await raw_request(node.url, head, _drip(data[:4096]), timeout=60))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(squat)
        # the squatter's upload is under way (/has counts an upload in progress)
        with trio.fail_after(10):
            while not (await http.request("GET", node.buffers_url + "/has", json=[cs])).json()[0]:
                await trio.sleep(0.01)
        r = await http.put(url, content=data)
        assert r.status_code == 200, r.text
        # acknowledged: readable now, while the squatter still holds its connection
        r = await http.get(url, headers=IDENTITY)
        assert r.status_code == 200 and r.content == data
        assert not squatter, "the squatter's request ended early"
        hang_up.cancel()  # closes its socket
    # the squatter hung up: the honest upload's buffer is still there
    r = await http.get(url, headers=IDENTITY)
    assert r.status_code == 200 and r.content == data
    scan = scan_store(node.buffer_dir)
    assert scan.problems == [] and set(scan.buffers) == {cs}


async def test_slow_honest_upload_and_fast_one_both_acknowledged(node, http):
    """The first one in finishes last: both get an acknowledgement only once the buffer
    is stored, and a GET that came while both ran waits and gets it."""
    data = os.urandom(3 * MiB)
    cs = sha256(data)
    url = f"{node.buffers_url}/{cs}"
    release = trio.Event()
    results: dict[str, object] = {}

    async def slow_body():  # type: ignore[no-untyped-def]
        yield data[:MiB]
        await release.wait()
        yield data[MiB:]

    async def slow() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            results["slow"] = (await client.put(url, content=slow_body())).status_code

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        with trio.fail_after(10):
            while not (await http.request("GET", node.buffers_url + "/has", json=[cs])).json()[0]:
                await trio.sleep(0.01)
        r = await http.put(url, content=data)
        assert r.status_code == 200, r.text
        r = await http.get(url, headers=IDENTITY)
        assert r.status_code == 200 and r.content == data
        release.set()
    assert results == {"slow": 201}  # stored meanwhile by the other upload
    r = await http.get(url, headers=IDENTITY)
    assert r.status_code == 200 and r.content == data


async def _race(node, data: bytes, hold_honest: bool) -> dict[str, list[int]]:  # type: ignore[no-untyped-def]
    """10 honest and 10 wrong uploads of *data*'s checksum at once. With *hold_honest*,
    the honest ones keep their last bytes until every wrong one has been answered."""
    cs = sha256(data)
    url = f"{node.buffers_url}/{cs}"
    statuses: dict[str, list[int]] = {"honest": [], "wrong": []}
    wrong_done = trio.Event()

    async def honest_body():  # type: ignore[no-untyped-def]
        yield data[:-1000]
        await wrong_done.wait()
        yield data[-1000:]

    async def upload(kind: str, body: bytes) -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            if kind == "honest" and hold_honest:
                headers = {"Content-Length": str(len(body))}
                r = await client.put(url, content=honest_body(), headers=headers)
            else:
                r = await client.put(url, content=body)
        statuses[kind].append(r.status_code)
        if len(statuses["wrong"]) == 10:
            wrong_done.set()

    async with trio.open_nursery() as nursery:
        for i in range(10):
            wrong = bytearray(data)
            wrong[(i * 7919) % len(data)] ^= 0xFF
            nursery.start_soon(upload, "wrong", bytes(wrong))
            nursery.start_soon(upload, "honest", data)
    async with httpx.AsyncClient(timeout=60) as client:
        r = await client.get(url, headers=IDENTITY)
    assert r.status_code == 200 and r.content == data  # every acknowledged buffer readable
    assert set(statuses["honest"]) <= {200, 201} and len(statuses["honest"]) == 10, statuses
    assert statuses["honest"].count(200) >= 1, statuses
    return statuses


async def test_ten_honest_and_ten_wrong_uploads_race(node):
    """Every acknowledged upload is readable afterwards; every wrong one got 400."""
    # small bodies are hashed even when the buffer is already there: wrong is always 400
    statuses = await _race(node, os.urandom(100_000), hold_honest=False)
    assert statuses["wrong"] == [400] * 10, statuses
    # large ones race while none is stored yet: each writes and verifies its own bytes
    statuses = await _race(node, os.urandom(3 * MiB), hold_honest=True)
    assert statuses["wrong"] == [400] * 10, statuses
    scan = scan_store(node.buffer_dir)
    assert scan.problems == [] and scan.tmp_entries == [] and len(scan.buffers) == 2


async def test_large_upload_of_a_present_buffer_is_201_unread(node, http):
    """Once a large buffer is stored, a PUT of it is answered 201 (present) without its
    body being read, as hashserver does: the answer says the buffer is there, and it is."""
    data = os.urandom(3 * MiB)
    cs = sha256(data)
    r = await http.put(f"{node.buffers_url}/{cs}", content=data)
    assert r.status_code == 200
    r = await http.put(f"{node.buffers_url}/{cs}", content=bytes(len(data)))
    assert r.status_code == 201
    r = await http.get(f"{node.buffers_url}/{cs}", headers=IDENTITY)
    assert r.status_code == 200 and r.content == data
