"""Verified reads of stored buffers.

A stored file is trusted only after it has been re-hashed. A reader hashes every byte it
hands out and reports the verdict when it reaches the end; callers must not let the last
piece of a buffer go out before that verdict (see ``BufferService.stream``). A file is
opened relative to its shard directory with ``O_NOFOLLOW`` on both, and must be a regular
file: a planted symlink, FIFO or device is never read.
"""

from __future__ import annotations

import gzip
import os
import stat
from dataclasses import dataclass
from typing import Callable

import zstandard

from ..checksum import new_hasher
from ..errors import CorruptBuffer, InvalidBody
from .compression import Decompressor
from .layout import LENGTH_SIDECAR_SUFFIX, BufferLocation
from .verified import VERIFIED_MIN_SIZE, FileStamp, VerifiedFiles

CHUNK = 1 << 20
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass
class OpenedBuffer:
    """An open, regular stored file and what is known about it."""

    fd: int
    location: BufferLocation
    stored_size: int
    #: decompressed length when known (always for plain files; from the sidecar otherwise)
    length: int | None
    stamp: FileStamp | None = None


def open_shard(directory: str, *, nofollow: bool) -> int | None:
    """Open a shard directory; None when it is missing or not a real directory."""
    flags = _DIR_FLAGS | (os.O_NOFOLLOW if nofollow else 0)
    try:
        return os.open(directory, flags)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError:  # ELOOP: a symlink planted as a shard directory
        return None


def open_in_shard(dir_fd: int, location: BufferLocation) -> OpenedBuffer | None:
    """Open one stored variant; None if absent, a symlink or not a regular file."""
    try:
        fd = os.open(location.filename, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)
    except OSError:
        os.close(fd)
        return None
    length: int | None = st.st_size
    if location.encoding is not None:
        length = read_sidecar(dir_fd, location)
    return OpenedBuffer(fd, location, st.st_size, length, FileStamp.of(st))


def read_sidecar(dir_fd: int, location: BufferLocation) -> int | None:
    base = location.filename.rsplit(".", 1)[0]
    try:
        fd = os.open(base + LENGTH_SIDECAR_SUFFIX, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        raw = os.read(fd, 64)
    finally:
        os.close(fd)
    try:
        value = int(raw.strip())
    except ValueError:
        return None
    return value if value >= 0 else None


#: called with a damaged file's location, the reason and the file's identity when it was
#: opened, before CorruptBuffer is raised
OnCorrupt = Callable[[BufferLocation, str, "FileStamp | None"], object]


class VerifiedReader:
    """Reads one stored buffer in chunks, hashing the decompressed bytes.

    ``send_encoding`` is the encoding of the bytes handed out: the stored encoding when the
    client accepts it, else None (the stored bytes are decompressed on the way out).
    With *verified* given, a plain file verified recently and unchanged since (see
    ``verified.py``) is read without hashing (``trusted``), and a file that hashes right
    to its end is remembered there.

    A compressed file's length sidecar is a hint, checked like the bytes: decompressed
    output is counted, never handed out beyond the sidecar's length (which is what a
    decompressed answer declares), and at the end must equal it. Any damage (wrong hash,
    wrong length, undecodable data) calls *on_corrupt* (the store's one quarantine
    function) and raises CorruptBuffer.
    """

    def __init__(
        self,
        opened: OpenedBuffer,
        checksum: str,
        send_encoding: str | None,
        verified: VerifiedFiles | None = None,
        on_corrupt: OnCorrupt | None = None,
    ) -> None:
        self.opened = opened
        self.checksum = checksum
        self.send_encoding = send_encoding
        self._verified = verified
        self._on_corrupt = on_corrupt
        plain = opened.location.encoding is None and opened.stamp is not None
        self.trusted = plain and verified is not None and verified.is_verified(checksum, opened.stamp)
        self._hasher = new_hasher()
        self._file = os.fdopen(opened.fd, "rb", buffering=0)
        self._remaining = opened.stored_size
        #: decompressed bytes seen so far (compressed files)
        self.decoded = 0
        stored = opened.location.encoding
        self._raw_decoder: Decompressor | None = None
        self._decoded_stream = None
        if stored is not None and send_encoding == stored:
            # the stored bytes go out as they are; decoding them here both hashes the
            # content and checks that the stream is well-formed to its last byte
            self._raw_decoder = Decompressor(stored, self._count_and_hash)
        elif stored == "zstd":
            self._decoded_stream = zstandard.ZstdDecompressor().stream_reader(self._file)
        elif stored == "gzip":
            self._decoded_stream = gzip.GzipFile(fileobj=self._file, mode="rb")
        self.finished = False
        #: the file failed verification; and was moved to quarantine
        self.damaged = False
        self.quarantined = False

    def _count_and_hash(self, piece: bytes) -> None:
        self.decoded += len(piece)
        self._hasher.update(piece)

    @property
    def content_length(self) -> int | None:
        """Length of what will be sent, when known in advance."""
        if self.opened.location.encoding is None or self._raw_decoder is not None:
            return self.opened.stored_size
        return self.opened.length

    def _corrupt(self, message: str) -> CorruptBuffer:
        """Report damage: quarantine (through the store) and return the error to raise."""
        self.damaged = True
        self.close()
        if self._verified is not None:
            self._verified.forget(self.checksum)
        if self._on_corrupt is not None:
            self.quarantined = bool(self._on_corrupt(self.opened.location, message, self.opened.stamp))
        return CorruptBuffer(message)

    def read_chunk(self, size: int = CHUNK) -> tuple[bytes, bool]:
        """Return (data, at_end). At the end, raise CorruptBuffer if the hash is wrong."""
        sidecar = self.opened.length if self.opened.location.encoding is not None else None
        try:
            if self._decoded_stream is not None:
                data = self._decoded_stream.read(size)
                self._count_and_hash(data)
                at_end = not data
            else:
                data = self._file.read(min(size, self._remaining)) if self._remaining else b""
                self._remaining -= len(data)
                if self._raw_decoder is not None:
                    self._raw_decoder.feed(data)
                elif not self.trusted:
                    self._hasher.update(data)
                at_end = self._remaining <= 0 or not data
                if at_end and self._raw_decoder is not None:
                    self._raw_decoder.finish()
        except (OSError, EOFError, zstandard.ZstdError, ValueError, InvalidBody) as exc:
            raise self._corrupt(f"buffer {self.checksum} is unreadable: {exc}") from None
        if sidecar is not None and self.decoded > sidecar:
            # never more than the sidecar said (a decompressed answer declared that length)
            raise self._corrupt(
                f"buffer {self.checksum} decompresses to more than its length sidecar says ({sidecar})"
            )
        if at_end:
            self.finished = True
            self.close()
            if self.trusted:
                if self._remaining > 0:
                    raise self._corrupt(f"buffer {self.checksum} is shorter than when it was verified")
                return data, at_end
            if sidecar is not None and self.decoded != sidecar:
                raise self._corrupt(
                    f"buffer {self.checksum} decompresses to {self.decoded} bytes, "
                    f"its length sidecar says {sidecar}"
                )
            digest = self._hasher.hexdigest()
            if digest != self.checksum:
                raise self._corrupt(f"File corruption: stored buffer {self.checksum} hashes to {digest}")
            opened = self.opened
            if (
                self._verified is not None
                and opened.location.encoding is None
                and opened.stamp is not None
                and opened.stored_size >= VERIFIED_MIN_SIZE
            ):
                self._verified.remember(self.checksum, opened.stamp)
        return data, at_end

    def file_for_sendfile(self) -> tuple[int, int] | None:
        """(fd, length) when the file may go out as it is stored, unhashed: trusted, plain,
        nothing read yet. The reader must still be closed afterwards."""
        if self.trusted and self.send_encoding is None and self._remaining == self.opened.stored_size:
            return self._file.fileno(), self.opened.stored_size
        return None

    def read_all(self) -> bytes:
        parts = []
        while True:
            data, at_end = self.read_chunk()
            parts.append(data)
            if at_end:
                return b"".join(parts)

    def close(self) -> None:
        try:
            if self._decoded_stream is not None:
                self._decoded_stream.close()
            self._file.close()
        except OSError:
            pass
