"""Slow clients: an upload that trickles or stalls is cut off by the node's own idle
timeout / minimum-rate rule, nothing of it is stored, and other clients are served
normally meanwhile; a request head that trickles is cut by ``node.header_timeout``
(hypercorn's keep-alive timer), which does not apply once the head is complete
(security.md rule 5)."""

from __future__ import annotations

import os
import time
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from tests.reliability.support import chunked, raw_request, request_head, scan_store, sha256

LIMITS = {"upload_idle_timeout": 1, "upload_grace": 1, "upload_min_rate": 1000}
HEADER_TIMEOUT = 2


@pytest.fixture
async def strict_node(start_node):
    # the slow-but-steady upload below (3 s) outlasts the header timeout: it shows that
    # the timeout bounds the request head only, not the body
    return await start_node(node={"header_timeout": HEADER_TIMEOUT}, buffers=LIMITS)


async def trickle(url: str, framing: str, bytes_per_second: float, seconds: float, *, stall: bool = False):
    """PUT a 20 kB buffer, sending a few bytes per second (or stopping after 10 bytes)."""
    data = os.urandom(20_000)
    cs = sha256(data)
    step = 0.25
    per_step = max(1, int(bytes_per_second * step))
    if stall:
        parts = [data[:10]]
    else:
        parts = [data[i : i + per_step] for i in range(0, int(bytes_per_second * seconds), per_step)]
    if framing == "chunked":
        head = request_head("PUT", f"/buffers/{cs}", {"Transfer-Encoding": "chunked"})
        parts = list(chunked(parts))[:-1]
    else:
        head = request_head("PUT", f"/buffers/{cs}", {"Content-Length": str(len(data))})
    response = await raw_request(url, head, parts, delay=step, timeout=seconds + 5)
    return cs, response


async def served_normally(node, stop: trio.Event, latencies: list[float]) -> None:
    """A well-behaved client: PUT then GET small buffers in a loop until *stop*."""
    async with httpx.AsyncClient(timeout=10) as http:
        while not stop.is_set():
            data = os.urandom(50_000)
            cs = sha256(data)
            t0 = time.monotonic()
            r = await http.put(f"{node.buffers_url}/{cs}", content=data)
            assert r.status_code == 200
            r = await http.get(f"{node.buffers_url}/{cs}", headers={"Accept-Encoding": "identity"})
            assert r.status_code == 200 and r.content == data
            latencies.append(time.monotonic() - t0)
            await trio.sleep(0.05)


def assert_cut_off(response, seconds_allowed: float) -> None:
    assert response.status == 408 or (response.status is None and response.closed), response
    assert response.elapsed < seconds_allowed, response


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_trickling_body_is_cut_while_others_are_served(strict_node, framing):
    stop = trio.Event()
    latencies: list[float] = []
    results: list[tuple[str, object]] = []

    async def trickler(kind: str) -> None:
        if kind == "stall":
            results.append(await trickle(strict_node.url, framing, 0, 10, stall=True))
        else:
            # 12 bytes per second for up to 15 s: above the idle timeout, far below 1000 B/s
            results.append(await trickle(strict_node.url, framing, 12, 15))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(served_normally, strict_node, stop, latencies)
        async with trio.open_nursery() as tricklers:
            for kind in ["trickle"] * 8 + ["stall"] * 4:
                tricklers.start_soon(trickler, kind)
        stop.set()

    assert len(results) == 12
    print("\n" + "\n".join(f"{r.status} closed={r.closed} after {r.elapsed:.2f} s" for _, r in results))
    print(f"well-behaved client: {len(latencies)} round trips, slowest {max(latencies):.3f} s")
    for cs, response in results:
        # grace 1 s + a check per arriving piece; generous margin for a loaded machine
        assert_cut_off(response, 6)
    # the well-behaved client kept being served quickly throughout
    assert len(latencies) >= 10
    assert max(latencies) < 1.0, latencies
    # nothing of the slow uploads was stored, and no temp file stays behind
    async with httpx.AsyncClient() as http:
        r = await http.request("GET", strict_node.buffers_url + "/has", json=[cs for cs, _ in results])
    assert r.json() == [False] * len(results)
    await trio.sleep(0.2)
    scan = scan_store(strict_node.buffer_dir)
    assert scan.problems == [] and scan.tmp_entries == []
    assert len(scan.buffers) == len(latencies)


async def test_slow_but_steady_upload_is_accepted(strict_node):
    """The rule cuts abusers, not slow links: 5 kB/s (above the 1000 B/s minimum) for 3 s
    gets through."""
    data = os.urandom(15_000)
    cs = sha256(data)
    head = request_head("PUT", f"/buffers/{cs}", {"Content-Length": str(len(data))})
    parts = [data[i : i + 500] for i in range(0, len(data), 500)]
    r = await raw_request(strict_node.url, head, parts, delay=0.1, timeout=15)
    assert r.status == 200, r
    async with httpx.AsyncClient() as http:
        r2 = await http.get(f"{strict_node.buffers_url}/{cs}", headers={"Accept-Encoding": "identity"})
    assert r2.content == data


async def test_headers_only_then_silence_is_cut(strict_node):
    """A PUT whose head announces a body that never comes: cut after the idle timeout."""
    cs = sha256(b"never sent")
    head = request_head("PUT", f"/buffers/{cs}", {"Content-Length": "1000000"})
    r = await raw_request(strict_node.url, head, timeout=10)
    assert_cut_off(r, 4)
    scan = scan_store(strict_node.buffer_dir)
    assert scan.buffers == {} and scan.tmp_entries == []


async def test_trickling_headers_are_cut(strict_node):
    """One header byte every 0.25 s: the connection is closed once node.header_timeout has
    passed since it was opened, though bytes keep arriving."""
    head = b"GET /buffers/healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    parts = [head[i : i + 1] for i in range(len(head))]
    r = await raw_request(strict_node.url, b"", parts, delay=0.25, timeout=10)
    assert r.closed and r.status is None, r
    assert HEADER_TIMEOUT - 0.5 <= r.elapsed < HEADER_TIMEOUT + 2, r
    # the node still serves a client that sends its head at once
    r = await raw_request(strict_node.url, request_head("GET", "/buffers/healthcheck"), timeout=5)
    assert r.status == 200 and r.complete, r


async def _first_request_then(
    url: str, then: bytes, delay: float, wait: float
) -> tuple[bytes, float, bool]:
    """Open a connection, make one quick request, then send *then* one byte every *delay*
    seconds, for at most *wait* seconds. Returns (what came back, seconds from the first
    answer to the close or the end of the wait, whether the server closed)."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    received = b""
    closed = False
    async with stream:
        await stream.send_all(request_head("GET", "/buffers/healthcheck"))
        with trio.fail_after(5):
            while b"\r\n\r\nOK" not in received:
                data = await stream.receive_some(65536)
                assert data, f"closed before the first answer: {received!r}"
                received += data
        answered = trio.current_time()

        async def trickle() -> None:
            try:
                for i in range(len(then)):
                    await trio.sleep(delay)
                    await stream.send_all(then[i : i + 1])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        with trio.move_on_after(wait):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle)
                try:
                    while data := await stream.receive_some(65536):
                        received += data
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
                closed = True
                nursery.cancel_scope.cancel()
    return received, trio.current_time() - answered, closed


async def test_idle_keep_alive_connection_is_closed(strict_node):
    """No next request after an answer: the connection is closed after header_timeout."""
    received, elapsed, closed = await _first_request_then(strict_node.url, b"", 0, HEADER_TIMEOUT + 3)
    assert received.startswith(b"HTTP/1.1 200"), received[:100]
    assert closed, f"idle keep-alive connection still open after {elapsed:.1f} s"
    assert HEADER_TIMEOUT - 0.5 <= elapsed < HEADER_TIMEOUT + 2, elapsed


async def test_trickling_second_request_head_is_cut(strict_node):
    """The second request on a kept-alive connection gets no more time for its head than
    the first."""
    head = b"GET /buffers/healthcheck HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 1000
    received, elapsed, closed = await _first_request_then(strict_node.url, head, 0.25, HEADER_TIMEOUT + 3)
    assert received.count(b"HTTP/1.1 ") == 1, received[:300]
    assert closed, f"trickled head still being accepted after {elapsed:.1f} s"
    assert HEADER_TIMEOUT - 0.5 <= elapsed < HEADER_TIMEOUT + 2, elapsed


async def test_header_timeout_defaults_to_10_seconds(node):
    assert node.config.node.header_timeout == 10
