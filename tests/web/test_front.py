"""The front on a real node: fast routes on the socket, hand-over to hypercorn, limits."""

from __future__ import annotations

from urllib.parse import urlsplit

import trio

from tests.helpers import random_buffer

MiB = 1 << 20


async def connect(url: str) -> trio.SocketStream:
    parts = urlsplit(url)
    return await trio.open_tcp_stream(parts.hostname, parts.port)


class Reader:
    """Reads answers (Content-Length framed) off one connection, in order."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def _fill(self) -> None:
        with trio.fail_after(10):
            chunk = await self.stream.receive_some(1 << 20)
        assert chunk, "the node closed the connection"
        self.buffer += chunk

    async def response(self) -> tuple[int, dict[bytes, bytes], bytes]:
        while b"\r\n\r\n" not in self.buffer:
            await self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        if status == 100:
            return await self.response()
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            await self._fill()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return status, headers, body


async def test_fast_and_quart_requests_share_one_connection(node):
    cs, data = random_buffer(3000)
    stream = await connect(node.url)
    # pipelined: a fast PUT, a fast GET, then a Quart route (the connection is handed over)
    raw = (
        f"PUT /buffers/{cs} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data
        + f"GET /buffers/{cs} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
        + b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n"
        + f"GET /buffers/{cs} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    )
    await stream.send_all(raw)
    reader = Reader(stream)
    answers = [await reader.response() for _ in range(4)]
    assert [a[0] for a in answers] == [200, 200, 200, 200]
    assert answers[1][2] == data and answers[3][2] == data
    assert b'seamless_node_http_requests_total{area="buffers",status="200"} 2' in answers[2][2]
    assert answers[1][1][b"content-length"] == str(len(data)).encode()
    await stream.aclose()


async def test_unusual_requests_still_work_through_hypercorn(node, http):
    cs, data = random_buffer(5000)

    async def chunks():
        yield data[:1000]
        yield data[1000:]

    r = await http.put(f"{node.buffers_url}/{cs}", content=chunks())  # chunked: hypercorn's
    assert r.status_code == 200
    stream = await connect(node.url)
    await stream.send_all(f"GET /buffers/{cs} HTTP/1.0\r\n\r\n".encode())
    received = b""
    while chunk := await stream.receive_some(65536):
        received += chunk
    assert received.startswith(b"HTTP/1.1 200") and received.endswith(data)


async def test_expect_continue(node):
    cs, data = random_buffer(4000)
    stream = await connect(node.url)
    await stream.send_all(
        f"PUT /buffers/{cs} HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: {len(data)}\r\n\r\n".encode()
    )
    with trio.fail_after(5):
        first = await stream.receive_some(1000)
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    await stream.send_all(data)
    status, _, _ = await Reader(stream).response()
    assert status == 200


async def test_an_early_answer_closes_the_connection(start_node):
    node = await start_node(buffers={"max_buffer_size": 1000})
    cs, data = random_buffer(5000)
    stream = await connect(node.url)
    await stream.send_all(f"PUT /buffers/{cs} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(data)}\r\n\r\n".encode())
    received = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 413") and b"connection: close" in received.lower()


async def test_idle_connections_are_closed(start_node):
    node = await start_node(node={"header_timeout": 0.5})
    stream = await connect(node.url)
    await stream.send_all(b"GET /buffers/")  # a head that never completes
    with trio.fail_after(5):
        assert await stream.receive_some(100) == b""


async def test_large_buffers_go_out_whole_and_a_client_may_leave_midway(node, http):
    cs, data = random_buffer(24 * MiB)
    assert (await http.put(f"{node.buffers_url}/{cs}", content=data)).status_code == 200
    for _ in range(2):  # the upload was hashed: both answers come straight from the file
        r = await http.get(f"{node.buffers_url}/{cs}")
        assert r.status_code == 200 and r.content == data
    stream = await connect(node.url)
    await stream.send_all(f"GET /buffers/{cs} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await stream.receive_some(65536)
    await stream.aclose()  # gone after the first bytes
    r = await http.get(f"{node.buffers_url}/{cs}")
    assert r.status_code == 200 and r.content == data


async def test_healthcheck_on_both_paths(node, http):
    r = await http.get(node.url + "/healthcheck")
    assert (r.status_code, r.text) == (200, "OK")
    r = await http.head(node.url + "/healthcheck")  # HEAD is Quart's (through hypercorn)
    assert r.status_code == 200


async def slow_bulk_upload(node, *, bytes_per_step: int, steps: int) -> tuple[bytes, float]:
    """Declare an 8 MiB body (received by worker threads), then trickle it."""
    stream = await connect(node.url)
    cs = "ab" * 32
    await stream.send_all(f"PUT /buffers/{cs} HTTP/1.1\r\nHost: localhost\r\nContent-Length: {8 * MiB}\r\n\r\n".encode())
    started = trio.current_time()
    received = b""
    with trio.move_on_after(15):
        async with trio.open_nursery() as nursery:

            async def drip() -> None:
                try:
                    for _ in range(steps):
                        await stream.send_all(b"x" * bytes_per_step)
                        await trio.sleep(0.25)
                except trio.BrokenResourceError:
                    pass

            nursery.start_soon(drip)
            while chunk := await stream.receive_some(65536):
                received += chunk
            nursery.cancel_scope.cancel()
    return received, trio.current_time() - started


async def test_slow_large_uploads_are_cut(start_node):
    node = await start_node(buffers={"upload_idle_timeout": 1, "upload_grace": 1, "upload_min_rate": 10_000})
    # a steady trickle far below the minimum rate
    received, elapsed = await slow_bulk_upload(node, bytes_per_step=100, steps=100)
    assert received.startswith(b"HTTP/1.1 408") and elapsed < 6, (received[:100], elapsed)
    # a stall after a few bytes
    received, elapsed = await slow_bulk_upload(node, bytes_per_step=10, steps=1)
    assert received.startswith(b"HTTP/1.1 408") and elapsed < 5, (received[:100], elapsed)
    assert not (node.buffer_dir / "ab" / ("ab" * 32)).exists()
    assert list((node.buffer_dir / ".tmp").iterdir()) == []
