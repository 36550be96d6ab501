"""What this machine allows a verified, durable upload at best: the ceiling for large PUTs.

Run it as ``.venv/bin/python bench/ceiling.py [--dir DIR]`` (DIR: a directory on the disk the
store uses; default a temporary one under the system's temp directory). For a 64 MiB
buffer it measures, each as the median of ``--rounds``:

1. SHA-256 on one core (hashlib): the bound the buffer benchmark's PUT goal is set against;
2. loopback TCP: a client process sends, this process receives into reused buffers and
   does nothing else;
3. the disk: 2 MiB ``O_DIRECT`` writes of the buffer, then ``fdatasync``;
4. the pipeline: the three at once, as the node does them but without HTTP, an event loop
   or Python objects per piece: one thread receives into a ring of page-aligned 2 MiB
   buffers, one hashes them in order, two write them with ``O_DIRECT``, then ``fsync``.
   The client shares the machine's cores, as in ``bench/buffers.py``.

Figure 4 is what a minimal implementation of the same work (receive, hash, durable write)
reaches for a 64 MiB PUT on this machine, a reference for the node's PUT figure from
``bench/buffers.py`` (run them close together: on a shared machine both drift over
minutes). MB is 10^6 bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import mmap
import os
import queue
import socket
import statistics
import tempfile
import threading
import time

MIB = 1 << 20
MB = 1_000_000
SIZE = 64 * MIB
PIECE = 2 * MIB
RING = 4
WRITERS = 2
O_DIRECT = getattr(os, "O_DIRECT", 0)


def sha256_speed(data: bytes) -> float:
    started = time.perf_counter()
    hashlib.sha256(data).digest()
    return SIZE / (time.perf_counter() - started) / MB


def disk_speed(directory: str, ring: list[mmap.mmap]) -> float:
    path = os.path.join(directory, "ceiling-disk.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_DIRECT, 0o600)
    try:
        started = time.perf_counter()
        for offset in range(0, SIZE, PIECE):
            os.pwrite(fd, ring[(offset // PIECE) % RING], offset)
        os.fdatasync(fd)
        return SIZE / (time.perf_counter() - started) / MB
    finally:
        os.close(fd)
        os.unlink(path)


def serve_once(listener: socket.socket, ring: list[mmap.mmap], directory: str | None) -> float:
    """Accept one upload of SIZE bytes; receive only (directory None) or the pipeline."""
    conn, _ = listener.accept()
    with conn:
        started = time.perf_counter()
        if directory is None:
            view = memoryview(ring[0])
            got = 0
            while got < SIZE:
                n = conn.recv_into(view)
                if not n:
                    raise RuntimeError("the client stopped early")
                got += n
        else:
            _pipeline(conn, ring, directory)
        elapsed = time.perf_counter() - started
        conn.sendall(b"k")
    return SIZE / elapsed / MB


def _pipeline(conn: socket.socket, ring: list[mmap.mmap], directory: str) -> None:
    path = os.path.join(directory, "ceiling-pipeline.tmp")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | O_DIRECT, 0o600)
    hasher = hashlib.sha256()
    free: queue.Queue[int] = queue.Queue()
    for index in range(RING):
        free.put(index)
    to_hash: queue.Queue[tuple[int, int] | None] = queue.Queue()
    to_write: queue.Queue[tuple[int, int, int] | None] = queue.Queue()
    done: queue.Queue[int | None] = queue.Queue()

    def hash_pieces() -> None:
        while (item := to_hash.get()) is not None:
            index, n = item
            hasher.update(memoryview(ring[index])[:n])
            done.put(index)

    def write_pieces() -> None:
        while (item := to_write.get()) is not None:
            index, n, offset = item
            os.pwrite(fd, memoryview(ring[index])[:n], offset)
            done.put(index)
        to_write.put(None)  # let the other writers stop too

    def recycle() -> None:  # a piece is free once hashed and written
        count = [0] * RING
        while (index := done.get()) is not None:
            count[index] += 1
            if count[index] == 2:
                count[index] = 0
                free.put(index)

    threads = [threading.Thread(target=hash_pieces), threading.Thread(target=recycle)]
    threads += [threading.Thread(target=write_pieces) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        offset = 0
        while offset < SIZE:
            index = free.get()
            view = memoryview(ring[index])
            got = 0
            while got < PIECE:
                n = conn.recv_into(view[got:])
                if not n:
                    raise RuntimeError("the client stopped early")
                got += n
            to_hash.put((index, got))
            to_write.put((index, got, offset))
            offset += got
    finally:
        to_hash.put(None)
        to_write.put(None)
        threads[0].join()
        for thread in threads[2:]:
            thread.join()
        done.put(None)
        threads[1].join()
        os.fsync(fd)
        os.close(fd)
        os.unlink(path)


def client(port: int, data: bytes, count: int) -> None:
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(data)
            sock.recv(1)


def measure_uploads(data: bytes, ring: list[mmap.mmap], directory: str | None, rounds: int) -> float:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        pid = os.fork()
        if pid == 0:  # the client: its own process, as a real client would be
            try:
                client(port, data, rounds + 1)
            finally:
                os._exit(0)
        try:
            serve_once(listener, ring, directory)  # warm-up
            figures = [serve_once(listener, ring, directory) for _ in range(rounds)]
        finally:
            os.waitpid(pid, 0)
    return statistics.median(figures)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", help="a directory on the store's disk (default: a temporary one)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if not O_DIRECT:
        raise SystemExit("this platform has no O_DIRECT")
    data = os.urandom(SIZE)
    ring = [mmap.mmap(-1, PIECE) for _ in range(RING)]
    for buffer in ring:
        buffer.write(data[:PIECE])
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="seamless-ceiling-") as directory:
        sha = statistics.median(sha256_speed(data) for _ in range(args.rounds))
        tcp = measure_uploads(data, ring, None, args.rounds)
        disk = statistics.median(disk_speed(directory, ring) for _ in range(args.rounds))
        pipeline = measure_uploads(data, ring, directory, args.rounds)
    print(f"64 MiB, median of {args.rounds} rounds, MB/s, {os.cpu_count()} cores:")
    print(f"  SHA-256, one core (hashlib)                  {sha:8,.0f}")
    print(f"  loopback TCP receive, nothing else           {tcp:8,.0f}")
    print(f"  O_DIRECT write + fdatasync, 2 MiB pieces     {disk:8,.0f}")
    print(f"  pipeline: receive + hash + O_DIRECT + fsync  {pipeline:8,.0f}  = {pipeline / sha:.2f}x SHA-256")
    print(f"  (the buffer benchmark's PUT goal: 0.7x SHA-256 = {0.7 * sha:,.0f})")


if __name__ == "__main__":
    main()
