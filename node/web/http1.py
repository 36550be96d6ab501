"""HTTP/1.1 request heads, parsed strictly, and response heads (pure: no I/O).

The node's front (``front.py``) serves its hottest routes itself and hands every other
connection to hypercorn. It only keeps requests it understands completely: an HTTP/1.1
request line with an origin-form target, well-formed header fields, and a body framed by a
single Content-Length (or no body), and exactly one Host field. Anything else (HTTP/1.0,
``Transfer-Encoding``, ``Upgrade``, absolute-form targets, duplicate or malformed lengths,
obsolete line folding, control characters, too many headers) makes ``parse_head`` return
None, and hypercorn and h11 answer it exactly as they would without the front. So the
front adds no new way to read a request differently from h11 (no smuggling between the
two; ``tests/web/test_http1.py`` checks this against h11 itself), only a faster one for
the clean common case.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import unquote

#: a request head larger than this is not the front's (h11's own limit is the same)
MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100

_REQUEST_LINE = re.compile(rb"([A-Z]{1,16}) (/[\x21-\x7e]*) HTTP/1\.1")
_FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*([\x20-\x7e\x80-\xff\t]*?)[ \t]*")
_TOKEN_LIST_SPLIT = re.compile(rb"[ \t]*,[ \t]*")

#: header names whose presence means the request is not the front's to serve
_HAND_OVER = frozenset({b"transfer-encoding", b"upgrade", b"http2-settings", b"te", b"trailer"})


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    raw_path: bytes
    path: str  # percent-decoded, as in an ASGI scope
    query: bytes
    headers: list[tuple[bytes, bytes]]  # names lower-cased, in order
    content_length: int  # 0 when the request has no body
    keep_alive: bool
    expect_continue: bool

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def head_end(buffer: bytes | bytearray, searched: int = 0) -> int:
    """Index just past the blank line ending the head in *buffer*, or -1. *searched*:
    how many bytes were already searched without finding it (to avoid rescanning)."""
    index = buffer.find(b"\r\n\r\n", max(0, searched - 3))
    return -1 if index < 0 else index + 4


def parse_head(raw: bytes) -> RequestHead | None:
    """The request head *raw* (ending with the blank line), or None if it is not a plain
    HTTP/1.1 request the front may serve (hypercorn then answers it)."""
    if len(raw) > MAX_HEAD_BYTES or not raw.endswith(b"\r\n\r\n"):
        return None
    lines = raw[:-4].split(b"\r\n")
    line = _REQUEST_LINE.fullmatch(lines[0])
    if line is None or len(lines) - 1 > MAX_HEADERS:
        return None
    headers: list[tuple[bytes, bytes]] = []
    length: int | None = None
    keep_alive = True
    expect_continue = False
    hosts = 0
    for field_line in lines[1:]:
        field = _FIELD.fullmatch(field_line)
        if field is None:  # also obsolete folding (a line starting with a space)
            return None
        name = field.group(1).lower()
        value = field.group(2)
        if name in _HAND_OVER:
            return None
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18 or length is not None:
                return None
            length = int(value)
        elif name == b"connection":
            options = {opt.lower() for opt in _TOKEN_LIST_SPLIT.split(value)}
            if b"upgrade" in options:
                return None
            if b"close" in options:
                keep_alive = False
        elif name == b"host":
            hosts += 1
        elif name == b"expect":
            if value.lower() != b"100-continue":
                return None
            expect_continue = True
        headers.append((name, value))
    if hosts != 1:  # HTTP/1.1 asks for exactly one Host field; h11 answers 400 otherwise
        return None
    target = line.group(2)
    raw_path, _, query = target.partition(b"?")
    return RequestHead(
        method=line.group(1).decode("ascii"),
        raw_path=raw_path,
        path=unquote(raw_path.decode("ascii")),
        query=query,
        headers=headers,
        content_length=length or 0,
        keep_alive=keep_alive,
        expect_continue=expect_continue and bool(length),
    )


_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_date_cache: tuple[int, bytes] = (0, b"")


def http_date() -> bytes:
    """The Date header value, formatted at most once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True).encode("ascii"))
    return _date_cache[1]


def response_head(status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    """Status line and header fields, ending with the blank line. *headers* must already
    hold the framing (Content-Length or Transfer-Encoding) and Connection fields."""
    parts = [b"HTTP/1.1 %d %s\r\ndate: %s\r\n" % (status, _REASONS.get(status, b"Unknown"), http_date())]
    for name, value in headers:
        if b"\r" in value or b"\n" in value or b"\r" in name or b"\n" in name:
            raise ValueError(f"header {name!r} holds a line break")
        parts.append(b"%s: %s\r\n" % (name, value))
    parts.append(b"\r\n")
    return b"".join(parts)


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
