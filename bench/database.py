"""Benchmark: the node's database role side by side with seamless-database 2.1.0.

Starts both servers as subprocesses on free ports of 127.0.0.1, each on a fresh SQLite
file, and measures ``transformation`` writes and reads per second with N concurrent
clients (asyncio + aiohttp, as the real Seamless client):

* seamless-database 2.1.0: one GET/PUT per entry (its only API);
* seamless-node ``/database``: the same upstream protocol, one request per entry;
* seamless-node ``/api/v1/database/write-many`` / ``read-many``: batches of ``--batch``
  entries per request (the node's own API).

Every write is checked (status 200) and every read must return the value written.
Usage::

    python bench/database.py [--entries 20000] [--clients 16] [--batch 200] [--rounds 3]

Prints a Markdown table for docs/performance.md: rates are medians over ``--rounds`` runs,
ratios the medians of each run's ratio (the servers of one run are measured back to back).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Awaitable, Callable

import aiohttp
from common import bin_path, free_port, wait_healthy


def cs(kind: str, i: int) -> str:
    return hashlib.sha256(f"{kind}-{i}".encode()).hexdigest()




class Server:
    def __init__(self, args: list[str], workdir: str, url_of: Callable[[str], str | None]) -> None:
        self.proc = subprocess.Popen(
            args, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.url = ""
        deadline = time.monotonic() + 30
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            url = url_of(line)
            if url:
                self.url = url
                break
        if not self.url:
            self.stop()
            raise RuntimeError(f"server did not start: {args}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()



def start_upstream(workdir: str) -> Server:
    port = free_port()
    args = [
        bin_path("seamless-database"),
        os.path.join(workdir, "upstream.db"),
        "--writable",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    server = Server(
        args, workdir, lambda line: f"http://127.0.0.1:{port}" if "DATABASE FILE" in line else None
    )
    asyncio.run(wait_healthy(server.url, attempts=200))
    return server


def start_node(workdir: str) -> Server:
    args = [
        sys.executable,
        "-m",
        "node",
        "run",
        "--roles",
        "database",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--data-dir",
        os.path.join(workdir, "node"),
        "--log-level",
        "warning",
    ]
    pattern = re.compile(r"listening on (http://\S+)")

    def url_of(line: str) -> str | None:
        m = pattern.search(line)
        return m.group(1) if m else None

    return Server(args, workdir, url_of)


async def run_clients(clients: int, jobs: list[Callable[[aiohttp.ClientSession], Awaitable[None]]]) -> float:
    """Run *jobs* on *clients* concurrent connections; return the elapsed seconds."""
    queue = list(reversed(jobs))
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker() -> None:
            while queue:
                await queue.pop()(session)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return time.perf_counter() - start


def per_request_jobs(
    url: str, offset: int, n: int, write: bool
) -> list[Callable[[aiohttp.ClientSession], Awaitable[None]]]:
    def job(i: int) -> Callable[[aiohttp.ClientSession], Awaitable[None]]:
        async def put(session: aiohttp.ClientSession) -> None:
            body = {"type": "transformation", "checksum": cs("tf", i), "value": cs("result", i)}
            async with session.put(url, json=body) as r:
                assert r.status == 200, (r.status, await r.text())

        async def get(session: aiohttp.ClientSession) -> None:
            async with session.get(url, json={"type": "transformation", "checksum": cs("tf", i)}) as r:
                text = await r.text()
                assert r.status == 200 and text == cs("result", i), (r.status, text)

        return put if write else get

    return [job(offset + i) for i in range(n)]


def batch_jobs(
    base: str, offset: int, n: int, batch: int, write: bool
) -> list[Callable[[aiohttp.ClientSession], Awaitable[None]]]:
    def job(start: int, stop: int) -> Callable[[aiohttp.ClientSession], Awaitable[None]]:
        async def put(session: aiohttp.ClientSession) -> None:
            requests = [
                {"type": "transformation", "checksum": cs("tf", i), "value": cs("result", i)}
                for i in range(start, stop)
            ]
            async with session.post(base + "/api/v1/database/write-many", json={"requests": requests}) as r:
                answer = await r.json()
                assert r.status == 200 and all(x["status"] == 200 for x in answer["results"]), answer

        async def get(session: aiohttp.ClientSession) -> None:
            requests = [{"type": "transformation", "checksum": cs("tf", i)} for i in range(start, stop)]
            async with session.post(base + "/api/v1/database/read-many", json={"requests": requests}) as r:
                answer = await r.json()
                assert r.status == 200 and answer["values"] == [cs("result", i) for i in range(start, stop)]

        return put if write else get

    return [job(offset + s, offset + min(s + batch, n)) for s in range(0, n, batch)]


def healthchecks(url: str, n: int, clients: int) -> float:
    """GET /healthcheck per second: the ceiling of a server's HTTP stack."""

    async def ping(session: aiohttp.ClientSession) -> None:
        async with session.get(url + "/healthcheck") as r:
            assert r.status == 200
            await r.read()

    return n / asyncio.run(run_clients(clients, [ping] * n))


def measure(kind: str, url: str, entries: int, clients: int, batch: int, offset: int) -> tuple[float, float]:
    if kind == "batch":
        writes = batch_jobs(url, offset, entries, batch, True)
        reads = batch_jobs(url, offset, entries, batch, False)
    else:
        writes = per_request_jobs(url, offset, entries, True)
        reads = per_request_jobs(url, offset, entries, False)
    t_write = asyncio.run(run_clients(clients, writes))
    t_read = asyncio.run(run_clients(clients, reads))
    return entries / t_write, entries / t_read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--entries", type=int, default=20000, help="transformations written, then read, per run"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--batch", type=int, default=200, help="entries per request on the batched API")
    parser.add_argument("--rounds", type=int, default=3, help="runs per server (the median is reported)")
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-database-")
    rows: dict[str, list[tuple[float, float]]] = {"upstream": [], "node": [], "batch": []}
    ceiling: dict[str, list[float]] = {"upstream": [], "node": []}
    try:
        upstream, node = start_upstream(workdir), start_node(workdir)
        try:
            for round_ in range(args.rounds):
                offset = round_ * 3 * args.entries  # fresh keys every run
                ceiling["upstream"].append(healthchecks(upstream.url, args.entries, args.clients))
                ceiling["node"].append(healthchecks(node.url, args.entries, args.clients))
                rows["upstream"].append(
                    measure("single", upstream.url, args.entries, args.clients, 0, offset)
                )
                rows["node"].append(
                    measure(
                        "single", node.url + "/database", args.entries, args.clients, 0, offset + args.entries
                    )
                )
                rows["batch"].append(
                    measure(
                        "batch", node.url, args.entries, args.clients, args.batch, offset + 2 * args.entries
                    )
                )
        finally:
            upstream.stop()
            node.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    def med(key: str, i: int) -> float:
        return statistics.median(r[i] for r in rows[key])

    def ratio(key: str, i: int) -> float:
        """Median of the per-round ratios: each round runs both servers back to back, so
        load from elsewhere on the machine hits both alike."""
        return statistics.median(
            mine[i] / theirs[i] for mine, theirs in zip(rows[key], rows["upstream"], strict=True)
        )

    labels = {
        "upstream": "seamless-database 2.1.0, GET/PUT per entry",
        "node": "seamless-node `/database`, GET/PUT per entry",
        "batch": f"seamless-node `/api/v1/database/*-many`, {args.batch} per request",
    }
    print(f"{args.clients} concurrent clients, {args.entries} transformations per run, {args.rounds} runs\n")
    print("| server / API | writes/s | reads/s | writes vs upstream | reads vs upstream |")
    print("|---|---:|---:|---:|---:|")
    for key, label in labels.items():
        print(
            f"| {label} | {med(key, 0):,.0f} | {med(key, 1):,.0f} "
            f"| {ratio(key, 0):.2f}x | {ratio(key, 1):.2f}x |"
        )
    up_ceiling, node_ceiling = statistics.median(ceiling["upstream"]), statistics.median(ceiling["node"])
    print(
        f"\nHTTP stack ceiling, GET /healthcheck per second: seamless-database (aiohttp) {up_ceiling:,.0f}, "
        f"seamless-node {node_ceiling:,.0f}"
    )
    print("\n" + json.dumps({k: [[round(w), round(r)] for w, r in v] for k, v in rows.items()}))


if __name__ == "__main__":
    main()
