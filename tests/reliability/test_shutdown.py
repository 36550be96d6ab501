"""Graceful shutdown: SIGTERM (or ``stop`` in process) lets requests in flight finish.

On the signal the node stops accepting at once, closes idle connections at once, gives
the requests in flight ``node.shutdown_grace`` seconds, cuts the rest, and exits as soon
as nothing is left; a second signal stops it at once. Uploads and downloads are driven
over bare sockets, on both paths: the front's and hypercorn's (a chunked upload, an
HTTP/1.0 download).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import httpx
import pytest
import trio

from node.transformation import transformation_checksum
from tests.helpers import random_buffer
from tests.reliability.support import chunked, request_head, scan_store
from tests.roles.jobless.support import JOBLESS, Transformations, job_processes, wait_for

MiB = 1 << 20
PATHS = ["front", "hypercorn"]


async def connect(url: str) -> trio.SocketStream:
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    return await trio.open_tcp_stream(parts.hostname, parts.port)


class Upload:
    """A PUT of one buffer whose body the test sends when it chooses."""

    def __init__(self, url: str, path: str, size: int = 3 * MiB) -> None:
        self.url = url
        self.path = path
        self.checksum, self.data = random_buffer(size)
        self.sent = 0
        self.stream: trio.SocketStream | None = None

    async def begin(self, first: int) -> None:
        if self.path == "front":
            head = request_head("PUT", f"/buffers/{self.checksum}", {"Content-Length": str(len(self.data))})
        else:
            head = request_head("PUT", f"/buffers/{self.checksum}", {"Transfer-Encoding": "chunked"})
        self.stream = await connect(self.url)
        await self.stream.send_all(head)
        await self.send(first)

    async def send(self, n: int) -> None:
        assert self.stream is not None
        part = self.data[self.sent : self.sent + n]
        self.sent += len(part)
        if self.path == "front":
            await self.stream.send_all(part)
        else:
            await self.stream.send_all(b"".join(chunked([part]))[: -len(b"0\r\n\r\n")])
            if self.sent == len(self.data):
                await self.stream.send_all(b"0\r\n\r\n")

    async def trickle(self, piece: int = 64 * 1024, delay: float = 0.05) -> None:
        """Send the rest slowly; stop quietly when the node cuts the connection."""
        try:
            while self.sent < len(self.data):
                await self.send(piece)
                await trio.sleep(delay)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass

    async def answer(self, timeout: float = 10) -> tuple[int | None, bytes]:
        """(status, head) of the answer; (None, b"") when the node closed without one."""
        assert self.stream is not None
        received = b""
        with trio.fail_after(timeout):
            try:
                while b"\r\n\r\n" not in received:
                    chunk = await self.stream.receive_some(65536)
                    if not chunk:
                        return None, b""
                    received += chunk
            except (trio.BrokenResourceError, OSError):
                return None, b""
        head = received.split(b"\r\n\r\n", 1)[0]
        return int(head.split()[1]), head.lower()


async def whole_answer(stream: trio.SocketStream) -> bytes:
    """One answer with a Content-Length body, read to its end."""
    received = b""
    with trio.fail_after(5):
        while b"\r\n\r\n" not in received:
            received += await stream.receive_some(65536)
        head, body = received.split(b"\r\n\r\n", 1)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        while len(body) < length:
            body += await stream.receive_some(65536)
    return head + b"\r\n\r\n" + body


async def closed_by_node(stream: trio.SocketStream, timeout: float = 3) -> bool:
    """True when the node closes *stream* (EOF or reset) within *timeout*."""
    with trio.move_on_after(timeout):
        try:
            while await stream.receive_some(65536):
                pass
        except (trio.BrokenResourceError, OSError):
            pass
        return True
    return False


# -- a real process ----------------------------------------------------------------------


def start_process(node_process: Callable[..., Any], tmp_path: Path, **settings: str) -> Any:
    env = dict(os.environ)
    for key, value in settings.items():
        env[f"SEAMLESS_NODE__NODE__{key.upper()}"] = value
    return node_process("--roles", "buffers", data_dir=tmp_path / "data", env=env)


async def in_log(proc: Any, text: str, timeout: float = 5) -> None:
    with trio.fail_after(timeout):
        while text not in proc.stderr_path.read_text():
            await trio.sleep(0.02)


async def exit_time(proc: Any, timeout: float = 10) -> float:
    """Seconds until the process exits (it must exit with status 0)."""
    start = time.monotonic()
    with trio.fail_after(timeout):
        while proc.proc.poll() is None:
            await trio.sleep(0.02)
    assert proc.proc.returncode == 0, proc.stderr_path.read_text()[-3000:]
    return time.monotonic() - start


async def sigterm(proc: Any) -> None:
    proc.proc.send_signal(signal.SIGTERM)
    await in_log(proc, "requests in flight")


@pytest.mark.parametrize("path", PATHS)
async def test_upload_in_flight_finishes_within_the_grace(node_process, tmp_path, path):
    proc = start_process(node_process, tmp_path, shutdown_grace="4")
    upload = Upload(proc.url, path)
    await upload.begin(MiB)
    await trio.sleep(0.2)  # the node is reading the body
    started = time.monotonic()
    await sigterm(proc)
    assert "shutting down: 1 requests in flight" in proc.stderr_path.read_text()
    with pytest.raises(OSError):  # the listener is closed: a new connection is refused
        await connect(proc.url)
    await upload.trickle(piece=256 * 1024, delay=0.05)
    status, head = await upload.answer()
    assert status == 200  # acknowledged: stored
    assert await closed_by_node(upload.stream)  # no next request on this connection
    if path == "front":
        assert b"connection: close" in head
    await exit_time(proc)
    assert time.monotonic() - started < 3  # as soon as the upload is done, not after 4 s
    scan = scan_store(tmp_path / "data" / "buffers")
    assert list(scan.buffers) == [upload.checksum] and not scan.tmp_entries and not scan.problems
    assert proc.stderr_path.read_text().rstrip().endswith("seamless_node: stopped")


@pytest.mark.parametrize("path", PATHS)
async def test_upload_too_slow_for_the_grace_is_cut_and_leaves_nothing(node_process, tmp_path, path):
    proc = start_process(node_process, tmp_path)  # the default grace: 2 s
    upload = Upload(proc.url, path, size=6 * MiB)  # the front receives it in worker threads
    await upload.begin(MiB + MiB // 2)  # past the first piece: a temp file exists
    await trio.sleep(0.2)
    started = time.monotonic()
    await sigterm(proc)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(upload.trickle, 16 * 1024, 0.1)  # would need 10 s more
        status, _ = await upload.answer()
        nursery.cancel_scope.cancel()
    assert status is None  # never acknowledged
    await exit_time(proc)
    assert 2 <= time.monotonic() - started < 5
    assert "grace of 2 s over: cutting 1 requests" in proc.stderr_path.read_text()
    scan = scan_store(tmp_path / "data" / "buffers")
    assert not scan.buffers and not scan.tmp_entries and not scan.problems


async def test_idle_connections_do_not_delay_exit(node_process, tmp_path):
    proc = start_process(node_process, tmp_path, shutdown_grace="20", header_timeout="30")
    cs, data = random_buffer(1000)
    idle = []
    for head in (
        request_head("PUT", f"/buffers/{cs}", {"Content-Length": str(len(data))}) + data,  # front
        request_head("GET", "/api/v1/node"),  # handed over to hypercorn
        b"",  # connected, nothing sent
        b"GET /buffers/",  # half a request head
    ):
        stream = await connect(proc.url)
        if head:
            await stream.send_all(head)
        idle.append(stream)
    for stream in idle[:2]:
        assert (await whole_answer(stream)).startswith(b"HTTP/1.1 200 ")  # answered, kept alive
    await trio.sleep(0.1)
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    for stream in idle:
        assert await closed_by_node(stream)
    await exit_time(proc)
    assert time.monotonic() - started < 2  # far less than the 20 s grace
    assert "shutting down: 0 requests in flight" in proc.stderr_path.read_text()


async def test_second_signal_stops_at_once(node_process, tmp_path):
    proc = start_process(node_process, tmp_path, shutdown_grace="30")
    upload = Upload(proc.url, "front")
    await upload.begin(MiB + MiB // 2)
    # and a download through hypercorn to a client that does not read
    cs, data = random_buffer(16 * MiB)
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.put(f"{proc.url}/buffers/{cs}", content=data)).status_code == 200
    stalled = await connect(proc.url)
    await stalled.send_all(f"GET /buffers/{cs} HTTP/1.0\r\n\r\n".encode())
    await trio.sleep(0.5)
    await sigterm(proc)
    assert "shutting down: 2 requests in flight" in proc.stderr_path.read_text()
    await trio.sleep(0.3)
    assert proc.proc.poll() is None  # the upload holds the node in its grace
    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    await exit_time(proc)
    assert time.monotonic() - started < 2
    assert "again: stopping at once" in proc.stderr_path.read_text()
    status, _ = await upload.answer()
    assert status is None
    scan = scan_store(tmp_path / "data" / "buffers")
    assert list(scan.buffers) == [cs] and not scan.tmp_entries


# -- in process --------------------------------------------------------------------------


async def test_in_process_shutdown_answers_in_flight_and_closes_idle(start_node, caplog):
    caplog.set_level(logging.INFO, logger="seamless_node")
    node = await start_node(node={"shutdown_grace": 5, "header_timeout": 30})
    idle = await connect(node.url)
    await idle.send_all(request_head("GET", "/api/v1/node"))
    assert (await whole_answer(idle)).startswith(b"HTTP/1.1 200 ")
    upload = Upload(node.url, "front", size=100_000)
    await upload.begin(50_000)
    await trio.sleep(0.1)
    started = trio.current_time()
    node.shut_down()
    assert await closed_by_node(idle, timeout=1)
    assert not node.stopped.is_set()
    await upload.send(50_000)
    status, _ = await upload.answer()
    assert status == 200
    with trio.fail_after(2):
        await node.stopped.wait()
    assert trio.current_time() - started < 1
    assert "shutting down: 1 requests in flight" in caplog.text
    assert (node.buffer_dir / upload.checksum[:2] / upload.checksum).exists()


async def test_long_poll_does_not_hold_shutdown_past_the_grace(start_node):
    node = await start_node(node={**JOBLESS, "shutdown_grace": 1}, jobless={"workers": 1})
    tfs = Transformations()
    tf = tfs.bash("sleep 1000 & sleep 1000; wait", salt="shutdown")
    async with httpx.AsyncClient(timeout=30) as http:
        await tfs.upload(http, node.url)
    body = {"transformation_dict": tf, "tf_checksum": transformation_checksum(tf), "tf_dunder": {}}
    outcome: list[BaseException | int] = []

    async def poll() -> None:
        async with httpx.AsyncClient(timeout=60) as own:
            try:
                r = await own.request("GET", f"{node.url}/jobserver/run-transformation", json=body)
                outcome.append(r.status_code)
            except httpx.HTTPError as exc:
                outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await wait_for(lambda: len(job_processes()) >= 3, timeout=10)
        started = trio.current_time()
        node.shut_down()
        with trio.fail_after(4):
            await node.stopped.wait()
        assert 1 <= trio.current_time() - started < 3
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.HTTPError)  # cut, not answered
    await wait_for(lambda: not job_processes(), timeout=3)


@pytest.mark.parametrize("path", PATHS)
async def test_client_that_stops_reading_does_not_hold_shutdown(node_process, tmp_path, path):
    proc = start_process(node_process, tmp_path)  # the default grace: 2 s
    cs, data = random_buffer(16 * MiB)
    async with httpx.AsyncClient(timeout=30) as http:
        assert (await http.put(f"{proc.url}/buffers/{cs}", content=data)).status_code == 200
    stream = await connect(proc.url)
    version = "HTTP/1.1" if path == "front" else "HTTP/1.0"  # 1.0: handed over
    await stream.send_all(f"GET /buffers/{cs} {version}\r\nHost: localhost\r\n\r\n".encode())
    await trio.sleep(0.5)  # the answer fills the socket buffers: the node waits to send
    started = time.monotonic()
    await sigterm(proc)
    assert "shutting down: 1 requests in flight" in proc.stderr_path.read_text()
    await exit_time(proc)
    assert time.monotonic() - started < 5
    await stream.aclose()
