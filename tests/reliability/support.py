"""Helpers for the reliability and hostile-input tests.

* ``raw_request``: HTTP/1.1 over a bare trio socket, so that a test controls every byte
  (paths that clients would normalise, bodies trickled or cut short, requests whose body
  is never sent) and sees what the server does while the body is still being sent.
* ``scan_store``: walk a buffer directory (prefix layout ``ab/<checksum>``) and re-hash
  every visible file: the invariant "nothing visible under a name it does not hash to".
  The node itself only ever writes plain files (a compressed upload is decompressed on
  the way in); the scan also lists compressed files and length sidecars, so a test can
  check that none appeared.
* ``place_compressed``: put a compressed buffer file into a store by hand, as upstream
  hashserver leaves one (``<checksum>.zst`` / ``.gz``, optionally with its sidecar).
* ``record_file_access``: an audit hook that records the files the test process opens,
  creates, renames or removes (the in-process node included).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import stat
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterable, Iterable, Iterator
from urllib.parse import urlsplit

import trio
import zstandard

CHECKSUM_RE = re.compile(r"[0-9a-f]{64}")
BUFFER_FILE_RE = re.compile(r"(?P<cs>[0-9a-f]{64})(?P<suffix>\.zst|\.gz)?")
SIDECAR_RE = re.compile(r"[0-9a-f]{64}\.BUFFERLENGTH")
#: entries the node keeps at the top of its buffer directory
TOP_LEVEL_NAMES = {".HASHSERVER_PREFIX", ".tmp", ".quarantine"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- raw HTTP ---------------------------------------------------------------------------


@dataclass
class RawResponse:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    #: the whole response (headers and a body of Content-Length bytes) arrived
    complete: bool = False
    #: the server closed the connection (EOF or reset) before or after answering
    closed: bool = False
    send_error: str | None = None
    elapsed: float = 0.0

    def __repr__(self) -> str:
        return (
            f"RawResponse(status={self.status}, body={self.body[:120]!r}, complete={self.complete}, "
            f"closed={self.closed}, send_error={self.send_error}, elapsed={self.elapsed:.2f})"
        )


def request_head(method: str, target: str, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def chunked(parts: Iterable[bytes]) -> Iterator[bytes]:
    """Encode parts with chunked transfer encoding (the terminating chunk included)."""
    for part in parts:
        if part:
            yield b"%x\r\n" % len(part) + part + b"\r\n"
    yield b"0\r\n\r\n"


def _parse_head(raw: bytes) -> tuple[int | None, dict[str, str]]:
    lines = raw.split(b"\r\n")
    try:
        status = int(lines[0].split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None, {}
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return status, headers


async def raw_request(
    url: str,
    head: bytes,
    body_parts: Iterable[bytes] | AsyncIterable[bytes] = (),
    *,
    delay: float = 0.0,
    timeout: float = 10.0,
    eof_after_send: bool = False,
) -> RawResponse:
    """Send *head* then each of *body_parts* (sleeping *delay* between the parts of a plain
    iterable; an async iterable paces itself) while reading
    the answer. Returns as soon as a complete response arrived, the server closed the
    connection, or *timeout* passed."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    result = RawResponse()
    started = trio.current_time()
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    async with stream:

        async def send() -> None:
            try:
                await stream.send_all(head)
                if isinstance(body_parts, AsyncIterable):
                    async for part in body_parts:
                        await stream.send_all(part)
                else:
                    for part in body_parts:
                        await stream.send_all(part)
                        if delay:
                            await trio.sleep(delay)
                if eof_after_send:
                    await stream.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                result.send_error = repr(exc)

        async def receive(cancel_scope: trio.CancelScope) -> None:
            buffer = b""
            length: int | None = None
            body_start = 0
            try:
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        result.closed = True
                        break
                    buffer += data
                    if result.status is None and b"\r\n\r\n" in buffer:
                        raw_head, _, _ = buffer.partition(b"\r\n\r\n")
                        result.status, result.headers = _parse_head(raw_head)
                        body_start = len(raw_head) + 4
                        if "content-length" in result.headers:
                            length = int(result.headers["content-length"])
                    have = len(buffer) - body_start
                    if result.status is not None and length is not None and have >= length:
                        result.complete = True
                        break
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                result.closed = True
            if result.status is not None:
                result.body = buffer[body_start:]
            cancel_scope.cancel()

        with trio.move_on_after(timeout):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                nursery.start_soon(receive, nursery.cancel_scope)
    result.elapsed = trio.current_time() - started
    return result


# -- the store on disk ------------------------------------------------------------------


@dataclass
class StoreScan:
    #: checksum -> path of every buffer file visible in the store
    buffers: dict[str, Path] = field(default_factory=dict)
    #: checksum -> decompressed length
    lengths: dict[str, int] = field(default_factory=dict)
    #: every violation of the store's invariants, as human-readable strings
    problems: list[str] = field(default_factory=list)
    tmp_entries: list[str] = field(default_factory=list)
    quarantine_entries: list[str] = field(default_factory=list)
    #: ``ab/<checksum>.zst`` / ``.gz`` files (the node never writes these itself)
    compressed: list[str] = field(default_factory=list)
    #: ``ab/<checksum>.BUFFERLENGTH`` sidecars (the node never writes these itself)
    sidecars: list[str] = field(default_factory=list)


def _hash_file(path: Path, suffix: str | None) -> tuple[str, int]:
    hasher = hashlib.sha256()
    length = 0
    with open(path, "rb") as raw:
        if suffix == ".zst":
            stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
        elif suffix == ".gz":
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        else:
            stream = raw
        while chunk := stream.read(1 << 20):
            hasher.update(chunk)
            length += len(chunk)
    return hasher.hexdigest(), length


def scan_store(buffer_dir: Path | str) -> StoreScan:
    """Walk a prefix-layout buffer directory and re-hash every visible buffer file."""
    root = Path(buffer_dir)
    scan = StoreScan()
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        st = entry.stat(follow_symlinks=False)
        if entry.name in TOP_LEVEL_NAMES:
            if entry.name == ".tmp" and stat.S_ISDIR(st.st_mode):
                scan.tmp_entries = sorted(os.listdir(entry.path))
            if entry.name == ".quarantine" and stat.S_ISDIR(st.st_mode):
                scan.quarantine_entries = sorted(os.listdir(entry.path))
            continue
        if not (len(entry.name) == 2 and re.fullmatch(r"[0-9a-f]{2}", entry.name)):
            if not entry.name.startswith("."):
                scan.problems.append(f"unexpected entry at the top of the store: {entry.name!r}")
            continue
        if not stat.S_ISDIR(st.st_mode):
            scan.problems.append(f"shard {entry.name!r} is not a plain directory")
            continue
        names = set(os.listdir(entry.path))
        for name in sorted(names):
            path = Path(entry.path) / name
            fst = path.lstat()
            if SIDECAR_RE.fullmatch(name):
                scan.sidecars.append(f"{entry.name}/{name}")
                continue  # checked with its buffer file
            m = BUFFER_FILE_RE.fullmatch(name)
            if m is None:
                scan.problems.append(f"{entry.name}/{name}: not a buffer file name (partial write?)")
                continue
            cs, suffix = m.group("cs"), m.group("suffix")
            if not cs.startswith(entry.name):
                scan.problems.append(f"{entry.name}/{name}: in the wrong shard")
            if not stat.S_ISREG(fst.st_mode):
                scan.problems.append(f"{entry.name}/{name}: not a regular file")
                continue
            try:
                digest, length = _hash_file(path, suffix)
            except Exception as exc:  # an undecodable compressed file
                scan.problems.append(f"{entry.name}/{name}: cannot be decoded: {exc!r}")
                continue
            if digest != cs:
                scan.problems.append(f"{entry.name}/{name}: content hashes to {digest}")
                continue
            if suffix:
                scan.compressed.append(f"{entry.name}/{name}")
                # the sidecar is optional (hashserver writes it after the rename; a file
                # copied in by hand has none), but when present it must be right
                sidecar = f"{cs}.BUFFERLENGTH"
                if sidecar in names and (Path(entry.path) / sidecar).read_text().strip() != str(length):
                    scan.problems.append(f"{entry.name}/{sidecar}: wrong length (expected {length})")
            scan.buffers[cs] = path
            scan.lengths[cs] = length
    return scan


def place_compressed(
    buffer_dir: Path | str,
    data: bytes,
    encoding: str,
    *,
    body: bytes | None = None,
    sidecar: bool = True,
) -> Path:
    """Store *data* compressed in a prefix-layout buffer directory the way upstream
    hashserver leaves a compressed upload: ``ab/<checksum>.zst`` (or ``.gz``), mode 0444,
    and a ``<checksum>.BUFFERLENGTH`` sidecar holding the decompressed length (unless
    *sidecar* is false: a file copied in by hand). *body* overrides the compressed bytes.
    Returns the path of the compressed file."""
    cs = sha256(data)
    if body is None:
        if encoding == "zstd":
            body = zstandard.ZstdCompressor().compress(data)
        elif encoding == "gzip":
            body = gzip.compress(data)
        else:
            raise ValueError(encoding)
    suffix = {"zstd": ".zst", "gzip": ".gz"}[encoding]
    shard = Path(buffer_dir) / cs[:2]
    shard.mkdir(exist_ok=True)
    path = shard / (cs + suffix)
    path.write_bytes(body)
    os.chmod(path, 0o444)
    if sidecar:
        (shard / (cs + ".BUFFERLENGTH")).write_text(str(len(data)))
    return path


def flip_byte(path: Path | str, position: int) -> None:
    """Damage a stored file in place (the store makes its files 0444)."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(position)
        old = f.read(1)
        f.seek(position)
        f.write(bytes([old[0] ^ 0x5A]))


def tree_snapshot(root: Path | str) -> dict[str, tuple[int, int]]:
    """relative path -> (mode, size) of everything under *root* (symlinks not followed)."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            out[os.path.relpath(path, root)] = (st.st_mode, st.st_size if not stat.S_ISDIR(st.st_mode) else 0)
    return out


# -- recording file access (audit hook) -------------------------------------------------

_AUDITED_EVENTS = {
    "open",
    "os.mkdir",
    "os.rename",
    "os.remove",
    "os.rmdir",
    "os.symlink",
    "os.link",
    "os.truncate",
    "os.chmod",
    "os.listdir",
    "os.scandir",
    "shutil.rmtree",
}
_audit_lock = threading.Lock()
_audit_logs: list[list[tuple[str, tuple[object, ...]]]] = []
_hook_installed = False


def _audit_hook(event: str, args: tuple[object, ...]) -> None:
    if _audit_logs and event in _AUDITED_EVENTS:
        for log in list(_audit_logs):
            log.append((event, args))


@contextlib.contextmanager
def record_file_access() -> Iterator[list[tuple[str, tuple[object, ...]]]]:
    """Record (event, args) for every file-system audit event raised in this process
    (every thread) while the block runs. Audit hooks cannot be removed, so one hook is
    installed for the session and does nothing outside such blocks."""
    global _hook_installed
    with _audit_lock:
        if not _hook_installed:
            sys.addaudithook(_audit_hook)
            _hook_installed = True
    log: list[tuple[str, tuple[object, ...]]] = []
    _audit_logs.append(log)
    try:
        yield log
    finally:
        _audit_logs.remove(log)


def accessed_paths(log: list[tuple[str, tuple[object, ...]]]) -> list[tuple[str, str]]:
    """(event, path) for every path argument in an audit log (file descriptors skipped)."""
    out = []
    for event, args in log:
        for arg in args[:2] if event in ("os.rename", "os.link", "os.symlink") else args[:1]:
            if isinstance(arg, bytes):
                arg = os.fsdecode(arg)
            if isinstance(arg, os.PathLike):
                arg = os.fspath(arg)
            if isinstance(arg, str):
                out.append((event, arg))
    return out
