"""The hashserver 1.1 protocol at /buffers, request by request (docs/api.md)."""

import gzip
import json

import httpx
import trio
import zstandard

from node.client import decode_batch
from tests.helpers import checksum_of, random_buffer

MISSING = "f" * 64
IDENTITY = {"Accept-Encoding": "identity"}


async def test_healthchecks(node, http):
    for path in ("/healthcheck", "/buffers/healthcheck"):
        r = await http.get(node.url + path)
        assert (r.status_code, r.text) == (200, "OK")


async def test_put_answers_200_then_201(node, http):
    cs, data = random_buffer(2048)
    r = await http.put(f"{node.buffers_url}/{cs}", content=data)
    assert r.status_code == 200
    r = await http.put(f"{node.buffers_url}/{cs}", content=data)
    assert r.status_code == 201


async def test_get_missing_is_404_and_malformed_is_400(node, http):
    r = await http.get(f"{node.buffers_url}/{MISSING}")
    assert r.status_code == 404
    for bad in ("F" * 64, "f" * 63, "f" * 65, "xyz"):
        r = await http.get(f"{node.buffers_url}/{bad}")
        assert r.status_code == 400, bad
        assert "not a checksum" in r.text


async def test_incorrect_checksum_is_400_and_not_stored(node, http):
    cs, data = random_buffer(100)
    r = await http.put(f"{node.buffers_url}/{cs}", content=data[:-1])
    assert r.status_code == 400 and r.text.startswith("Incorrect checksum")
    r = await http.get(f"{node.buffers_url}/{cs}")
    assert r.status_code == 404


async def test_concurrent_identical_upload_writes_its_own_bytes(node, http):
    """No 202 for an upload in progress: a second identical upload is stored (200) at
    once; the first, when it ends, finds it there (201)."""
    cs, data = random_buffer(3 << 20)
    first_chunk_sent = trio.Event()
    release = trio.Event()

    async def slow_body():
        yield data[: 1 << 20]
        first_chunk_sent.set()
        await release.wait()
        yield data[1 << 20 :]

    results = {}

    async def first():
        r = await http.put(f"{node.buffers_url}/{cs}", content=slow_body())
        results["first"] = r.status_code

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await first_chunk_sent.wait()
        r = await http.request("GET", f"{node.buffers_url}/has", json=[cs])
        assert r.json() == [True]  # an upload in progress counts for /has
        r = await http.put(f"{node.buffers_url}/{cs}", content=data)
        assert r.status_code == 200
        r = await http.get(f"{node.buffers_url}/{cs}", headers=IDENTITY)
        assert r.status_code == 200 and r.content == data
        release.set()
    assert results == {"first": 201}


async def test_get_waits_for_an_upload_in_progress(node, http):
    cs, data = random_buffer(3 << 20)
    first_chunk_sent = trio.Event()
    release = trio.Event()

    async def slow_body():
        yield data[: 1 << 20]
        first_chunk_sent.set()
        await release.wait()
        yield data[1 << 20 :]

    results = {}

    async def upload():
        r = await http.put(f"{node.buffers_url}/{cs}", content=slow_body())
        results["put"] = r.status_code

    async def reader():
        r = await http.get(f"{node.buffers_url}/{cs}", headers=IDENTITY)
        results["get"] = (r.status_code, r.content == data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload)
        await first_chunk_sent.wait()
        nursery.start_soon(reader)  # waits for the upload instead of answering 404
        await trio.sleep(0.2)
        assert "get" not in results
        release.set()
    assert results == {"put": 200, "get": (200, True)}


async def test_has_has_now_and_buffer_length(node, http):
    cs, data = random_buffer(777)
    await http.put(f"{node.buffers_url}/{cs}", content=data)
    body = [cs, MISSING]
    for method in ("GET", "POST"):
        r = await http.request(method, f"{node.buffers_url}/has", json=body)
        assert r.json() == [True, False]
        assert r.headers["content-type"] == "application/json"
        r = await http.request(method, f"{node.buffers_url}/has-now", json=body)
        assert r.json() == [True, False]
        r = await http.request(method, f"{node.buffers_url}/buffer-length", json=body)
        assert r.json() == [777, 0]
    r = await http.post(f"{node.url}/api/v1/buffers/has", json=body)
    assert r.json() == [True, False]


async def test_bad_json_for_has_is_400(node, http):
    for content in (b"", b"[", b'{"a": 1}', b'["abc"]', json.dumps(["F" * 64]).encode(), b"[1, 2]"):
        r = await http.request("GET", f"{node.buffers_url}/has", content=content, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, content


async def test_promise_counts_for_has_and_get_waits_for_upload(node, http):
    cs, data = random_buffer(100)
    r = await http.put(f"{node.buffers_url}/promise/{cs}")
    assert r.status_code == 202
    assert r.json() == {"checksum": cs, "expires_in": 600.0}
    r = await http.request("GET", f"{node.buffers_url}/has", json=[cs])
    assert r.json() == [True]
    r = await http.request("GET", f"{node.buffers_url}/has-now", json=[cs])
    assert r.json() == [False]
    r = await http.request("GET", f"{node.buffers_url}/buffer-length", json=[cs])
    assert r.json() == [0]  # never `true`, unlike upstream

    got = {}

    async def waiter():
        r = await http.get(f"{node.buffers_url}/{cs}")
        got["r"] = r

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.sleep(0.3)
        assert not got
        r = await http.put(f"{node.buffers_url}/{cs}", content=data)
        assert r.status_code == 200
    assert got["r"].status_code == 200 and got["r"].content == data


async def test_promise_expiry_ends_the_wait(start_node, http):
    node = await start_node(buffers={"promise_ttl": 0.5})
    r = await http.put(f"{node.buffers_url}/promise/{MISSING}")
    assert r.json()["expires_in"] == 0.5
    with trio.fail_after(5):
        r = await http.get(f"{node.buffers_url}/{MISSING}")
    assert r.status_code == 404
    r = await http.request("GET", f"{node.buffers_url}/has", json=[MISSING])
    assert r.json() == [False]


async def test_compressed_uploads_checksum_is_over_decompressed_bytes(node, http):
    data = b"hello seamless\n" * 5000
    cs = checksum_of(data)
    for encoding, body in (("zstd", zstandard.ZstdCompressor().compress(data)), ("gzip", gzip.compress(data))):
        r = await http.put(f"{node.buffers_url}/{cs}", content=body, headers={"Content-Encoding": encoding})
        assert r.status_code in (200, 201)
        # a client that does not accept compression gets the plain bytes
        r = await http.get(f"{node.buffers_url}/{cs}", headers=IDENTITY)
        assert r.content == data and "content-encoding" not in r.headers


async def test_stored_compressed_sent_compressed_only_when_accepted(node, http):
    # a file stored compressed, as hashserver leaves it (uploads are stored decompressed)
    data = b"x" * 100_000
    cs = checksum_of(data)
    shard = node.buffer_dir / cs[:2]
    shard.mkdir(exist_ok=True)
    (shard / (cs + ".zst")).write_bytes(zstandard.ZstdCompressor().compress(data))
    async with httpx.AsyncClient() as raw:
        r = await raw.get(f"{node.buffers_url}/{cs}", headers={"Accept-Encoding": "zstd"})
        assert r.headers.get("content-encoding") == "zstd"
        assert r.content == data  # httpx decoded it
        r = await raw.get(f"{node.buffers_url}/{cs}", headers={"Accept-Encoding": "gzip"})
        assert "content-encoding" not in r.headers and r.content == data
    r = await http.request("GET", f"{node.buffers_url}/buffer-length", json=[cs])
    assert r.json() == [100_000]


async def test_unknown_content_encoding_refused(node, http):
    cs, data = random_buffer(10)
    r = await http.put(f"{node.buffers_url}/{cs}", content=data, headers={"Content-Encoding": "br"})
    assert r.status_code == 400 and "Content-Encoding" in r.text


async def test_large_buffer_streams_both_ways(node, http):
    cs, data = random_buffer(9 << 20)
    r = await http.put(f"{node.buffers_url}/{cs}", content=data)
    assert r.status_code == 200
    r = await http.get(f"{node.buffers_url}/{cs}", headers=IDENTITY)
    assert r.status_code == 200
    assert int(r.headers["content-length"]) == len(data)
    assert r.content == data


async def test_oversize_refused_with_413_before_reading(start_node, http):
    node = await start_node(buffers={"max_buffer_size": 1000})
    cs, data = random_buffer(1001)
    r = await http.put(f"{node.buffers_url}/{cs}", content=data)
    assert r.status_code == 413
    r = await http.request("GET", f"{node.buffers_url}/has-now", json=[cs])
    assert r.json() == [False]


async def test_readonly_node_refuses_writes(start_node, http, tmp_path):
    writable = await start_node(data_dir=tmp_path / "shared")
    cs, data = random_buffer(10)
    await http.put(f"{writable.buffers_url}/{cs}", content=data)
    ro = await start_node(data_dir=tmp_path / "shared", buffers={"readonly": True})
    r = await http.get(f"{ro.buffers_url}/{cs}")
    assert r.content == data
    r = await http.put(f"{ro.buffers_url}/{checksum_of(b'x')}", content=b"x")
    assert r.status_code == 405
    r = await http.put(f"{ro.buffers_url}/promise/{checksum_of(b'x')}")
    assert r.status_code == 405


async def test_batched_download(node, http):
    buffers = [random_buffer(n) for n in (0, 1, 1000, 50_000)]
    for cs, data in buffers:
        await http.put(f"{node.buffers_url}/{cs}", content=data)
    wanted = [cs for cs, _ in buffers] + [MISSING]
    r = await http.post(f"{node.url}/api/v1/buffers/get", json=wanted)
    assert r.status_code == 200
    decoded = decode_batch(r.content)
    assert list(decoded) == wanted
    for cs, data in buffers:
        assert decoded[cs] == data
    assert decoded[MISSING] is None


async def test_metrics_and_node_info(node, http):
    cs, data = random_buffer(10)
    await http.put(f"{node.buffers_url}/{cs}", content=data)
    r = await http.get(f"{node.url}/metrics")
    assert "seamless_node_buffers_stored_total 1" in r.text
    assert 'seamless_node_http_requests_total{area="buffers",status="200"}' in r.text
    r = await http.get(f"{node.url}/api/v1/node")
    assert "buffers" in r.json()["roles"]


async def test_early_answers_close_the_connection_and_leak_nothing(start_node, http):
    """201/413 answered before the body is read: the client's next request must not hang,
    and the server must not keep the abandoned connections open."""
    import os

    node = await start_node(buffers={"max_buffer_size": 1 << 20})
    cs, data = random_buffer(1 << 20)
    assert (await http.put(f"{node.buffers_url}/{cs}", content=data)).status_code == 200
    big_cs, big = random_buffer(3 << 20)
    fds_before = len(os.listdir("/proc/self/fd"))
    with trio.fail_after(30):
        for _ in range(20):
            r = await http.put(f"{node.buffers_url}/{cs}", content=data)
            assert r.status_code == 201
            r = await http.put(f"{node.buffers_url}/{big_cs}", content=big)
            assert r.status_code == 413 and r.headers["connection"] == "close"
            r = await http.request("GET", f"{node.buffers_url}/has", json=[cs])
            assert r.json() == [True]
    with trio.fail_after(10):
        while len(os.listdir("/proc/self/fd")) > fds_before + 4:
            await trio.sleep(0.2)


async def test_gets_keep_the_connection_alive(node, http):
    cs, data = random_buffer(5 << 20)
    await http.put(f"{node.buffers_url}/{cs}", content=data)
    small, small_data = random_buffer(10)
    await http.put(f"{node.buffers_url}/{small}", content=small_data)
    for checksum in (cs, small, MISSING):
        r = await http.get(f"{node.buffers_url}/{checksum}")
        assert r.headers.get("connection") != "close"
