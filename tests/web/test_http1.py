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
    parsed = parse_head(
        head("PUT /b HTTP/1.1", "Host: h", "Connection: keep-alive, close", "Expect: 100-continue", "Content-Length: 5")
    )
    assert parsed is not None and not parsed.keep_alive and parsed.expect_continue
    no_body = parse_head(head("GET /b HTTP/1.1", "Host: h", "Expect: 100-continue"))
    assert no_body is not None and not no_body.expect_continue


def test_exactly_one_host():
    assert parse_head(head("GET /b HTTP/1.1")) is None
    assert parse_head(head("GET /b HTTP/1.1", "Host: a", "Host: b")) is None


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


# -- differential: whatever the front keeps, h11 reads the same way ------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
import h11  # noqa: E402

def _mostly(good: list[str], bad: list[str]) -> st.SearchStrategy[str]:
    """Mostly well-formed pieces, with the odd malformed one (repeats weight the choice)."""
    return st.sampled_from(good * 8 + bad)


_NAMES = _mostly(
    ["Content-Length", "content-length", "Connection", "Expect", "X-Seamless", "Accept-Encoding"],
    ["Transfer-Encoding", "Upgrade", "TE", "Host", "Bad Name", "X-\u00e9", ""],
)
_VALUES = st.one_of(
    _mostly(["0", "5", "12", "close", "keep-alive", "keep-alive, close", "100-continue", "gzip", "a\tb"],
            ["-1", "1x", " 7 ", "chunked", "", "a\x00b", "\u00ff", "upgrade"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=255), max_size=12),
)
_FIELD = st.tuples(_NAMES, _mostly([": ", ":"], ["  :", " :", ":\t"]), _VALUES).map(lambda t: "".join(t))
_LINE = st.tuples(
    _mostly(["GET", "PUT", "POST"], ["get", "HEAD", "G ET"]),
    _mostly([" "], ["  ", "\t"]),
    _mostly(["/buffers/ab", "/database", "/a?b=c", "/%2e%2e/x"], ["*", "http://h/x", "/\u00e9", "/a b"]),
    _mostly([" HTTP/1.1"], [" HTTP/1.0", " HTTP/2.0", "HTTP/1.1", " http/1.1"]),
).map(lambda t: "".join(t))


@settings(max_examples=1000, deadline=None)
@given(_LINE, st.lists(_FIELD, max_size=3), st.sampled_from([1] * 8 + [0, 2]), _mostly(["\r\n"], ["\n"]))
def test_what_the_front_keeps_h11_reads_alike(line, fields, hosts, newline):
    fields = ["Host: h"] * hosts + fields
    raw = (newline.join([line, *fields]) + newline + newline).encode("latin-1", "replace")
    parsed = parse_head(raw)
    if parsed is None:
        return  # left to hypercorn and h11 themselves
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(raw)
    event = conn.next_event()  # must not raise: the front only keeps what h11 accepts
    assert isinstance(event, h11.Request)
    assert event.method.decode() == parsed.method
    assert event.target == parsed.raw_path + (b"?" + parsed.query if parsed.query else b"")
    assert [(k, v) for k, v in event.headers] == parsed.headers
    # the same body framing: h11 expects exactly Content-Length bytes, or none
    body = b"x" * parsed.content_length
    conn.receive_data(body)
    seen = b""
    while True:
        nxt = conn.next_event()
        if isinstance(nxt, h11.Data):
            seen += nxt.data
        else:
            assert isinstance(nxt, h11.EndOfMessage), nxt
            break
    assert seen == body
