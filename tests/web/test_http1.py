"""The front's request-head parser: what it keeps, and what it leaves to hypercorn."""

from __future__ import annotations

import pytest

from node.web.http1 import MAX_HEAD_BYTES, head_end, parse_head, response_head


def head(*lines: str) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin1")


def test_a_plain_request():
    parsed = parse_head(
        head("PUT /buffers/ab%63?x=1 HTTP/1.1", "Host: h", "Content-Length: 12", "X-Thing:  padded  ")
    )
    assert parsed is not None
    assert (parsed.method, parsed.path, parsed.raw_path, parsed.query) == ("PUT", "/buffers/abc", b"/buffers/ab%63", b"x=1")
    assert parsed.content_length == 12 and parsed.keep_alive and not parsed.expect_continue
    assert parsed.header(b"x-thing") == b"padded"
    assert parsed.header(b"host") == b"h"


def test_connection_close_and_expect():
    parsed = parse_head(head("PUT /b HTTP/1.1", "Connection: keep-alive, close", "Expect: 100-continue", "Content-Length: 5"))
    assert parsed is not None and not parsed.keep_alive and parsed.expect_continue
    no_body = parse_head(head("GET /b HTTP/1.1", "Expect: 100-continue"))
    assert no_body is not None and not no_body.expect_continue


@pytest.mark.parametrize(
    "raw",
    [
        head("GET /b HTTP/1.0"),
        head("GET http://host/b HTTP/1.1"),
        head("GET * HTTP/1.1"),
        head("get /b HTTP/1.1"),
        head("GET  /b HTTP/1.1"),
        head("GET /b HTTP/1.1", "Transfer-Encoding: chunked"),
        head("PUT /b HTTP/1.1", "Content-Length: 5", "Transfer-Encoding: chunked"),
        head("PUT /b HTTP/1.1", "Content-Length: 5", "Content-Length: 5"),
        head("PUT /b HTTP/1.1", "Content-Length: -5"),
        head("PUT /b HTTP/1.1", "Content-Length: 5x"),
        head("PUT /b HTTP/1.1", "Content-Length: 99999999999999999999"),
        head("GET /b HTTP/1.1", "X-A: 1", " folded"),
        head("GET /b HTTP/1.1", "Bad Name: 1"),
        head("GET /b HTTP/1.1", "X-A: a\x00b"),
        head("GET /b HTTP/1.1", "Upgrade: websocket", "Connection: Upgrade"),
        head("GET /b HTTP/1.1", "Expect: something-else"),
        head("GET /b HTTP/1.1", *[f"X-{i}: {i}" for i in range(101)]),
        b"GET /b HTTP/1.1\r\nHost: h\r\n",  # no blank line
        b"GET /b HTTP/1.1\nHost: h\n\n",  # bare line feeds
        head("GET /" + "a" * MAX_HEAD_BYTES + " HTTP/1.1"),
    ],
)
def test_everything_unusual_is_left_to_hypercorn(raw):
    assert parse_head(raw) is None


def test_head_end_does_not_rescan():
    data = b"GET / HTTP/1.1\r\nHost: x\r\n\r"
    assert head_end(data) == -1
    data += b"\nnext"
    assert head_end(data, searched=len(data) - 5) == len(data) - 4


def test_response_head_refuses_line_breaks():
    out = response_head(200, [(b"content-length", b"2")])
    assert out.startswith(b"HTTP/1.1 200 OK\r\ndate: ") and out.endswith(b"content-length: 2\r\n\r\n")
    with pytest.raises(ValueError):
        response_head(200, [(b"x", b"a\r\nSet-Cookie: evil")])
