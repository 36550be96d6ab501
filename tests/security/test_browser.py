"""Attacks from web browsers: cross-origin "simple" requests and DNS rebinding.

Every request here is sent as exact bytes on a raw socket, the way a browser would send
it (a "simple" request needs no CORS preflight: ``Content-Type: text/plain``, a foreign
``Origin``; after DNS rebinding, a foreign ``Host``), on the front's fast path and on the
hypercorn path. Each attack is refused and leaves nothing behind: no job submitted, no
mapping written, no buffer stored. The same request sent properly succeeds, so that a
test cannot pass because the route itself is broken.
"""

from __future__ import annotations

import json

import pytest

from tests.helpers import random_buffer
from tests.roles.jobless.support import JOBLESS, Transformations, job_processes

from .raw_http import Reader, connect, exchange, netloc, request

EVIL_HOST = "attacker.example"
EVIL_ORIGIN = "http://attacker.example"
TF = "a" * 64
RESULT = "b" * 64


@pytest.fixture
async def jobs_node(start_node):  # type: ignore[no-untyped-def]
    return await start_node(node=JOBLESS, jobless={"workers": 1, "orphan_grace": 1.0})


def browser_headers(url: str, *, host: str | None = None, origin: str | None = EVIL_ORIGIN,
                    content_type: str = "text/plain;charset=UTF-8") -> dict[str, str]:
    headers = {"Host": host or netloc(url), "Content-Type": content_type}
    if origin is not None:
        headers["Origin"] = origin
    return headers


async def submitted(http, node) -> int:  # type: ignore[no-untyped-def]
    r = await http.get(node.url + "/api/v1/jobs")
    assert r.status_code == 200, r.text
    return r.json()["counts"].get("submitted", 0)


# (Host, Origin, Content-Type) of a browser's request, and the status that stops it
BROWSER_VARIANTS = [
    pytest.param(EVIL_HOST, EVIL_ORIGIN, "text/plain;charset=UTF-8", 421, id="rebound-host"),
    pytest.param(None, EVIL_ORIGIN, "text/plain;charset=UTF-8", 403, id="foreign-origin"),
    pytest.param(None, "null", "application/x-www-form-urlencoded", 403, id="opaque-origin"),
    pytest.param(None, None, "text/plain;charset=UTF-8", 415, id="text-plain-without-origin"),
]


@pytest.mark.parametrize("host, origin, content_type, status", BROWSER_VARIANTS)
async def test_cross_origin_simple_post_to_jobs_runs_nothing(jobs_node, http, host, origin,
                                                            content_type, status):
    tfs = Transformations()
    tf = tfs.bash("echo ran > RESULT")
    await tfs.upload(http, jobs_node.url)
    body = json.dumps({"transformation": tf}).encode()
    headers = browser_headers(jobs_node.url, host=host, origin=origin, content_type=content_type)
    got, _, text = await exchange(jobs_node.url, request("POST", "/api/v1/jobs?wait=5", headers, body))
    assert got == status, text
    assert await submitted(http, jobs_node) == 0 and not job_processes()
    # the same submission, sent as a client sends it, runs
    r = await http.post(jobs_node.url + "/api/v1/jobs", params={"wait": 30}, json={"transformation": tf})
    assert r.status_code == 200 and r.json()["job"]["state"] == "done", r.text
    assert await submitted(http, jobs_node) == 1


@pytest.mark.parametrize("host, origin, content_type, status", BROWSER_VARIANTS)
async def test_cross_origin_simple_post_to_database_write_writes_nothing(node, http, host, origin,
                                                                        content_type, status):
    db = node
    write = {"type": "transformation", "checksum": TF, "value": RESULT}
    headers = browser_headers(db.url, host=host, origin=origin, content_type=content_type)
    raw = request("POST", "/api/v1/database/write", headers, json.dumps(write).encode())
    got, _, text = await exchange(db.url, raw)
    assert got == status, text
    read = {"type": "transformation", "checksum": TF}
    assert (await http.post(db.url + "/api/v1/database/read", json=read)).status_code == 404
    assert (await http.post(db.url + "/api/v1/database/write", json=write)).status_code == 200
    assert (await http.post(db.url + "/api/v1/database/read", json=read)).json() == {"value": RESULT}


async def test_cross_origin_put_to_the_upstream_database_protocol_writes_nothing(node, http):
    write = json.dumps({"type": "transformation", "checksum": TF, "value": RESULT}).encode()
    for headers, status in (
        (browser_headers(node.url), 403),  # fast route, answered by the front
        (browser_headers(node.url, origin=None), 415),
        (browser_headers(node.url, host=EVIL_HOST), 421),
    ):
        got, _, text = await exchange(node.url, request("PUT", "/database", headers, write))
        assert got == status, text
    r = await http.post(node.url + "/api/v1/database/read", json={"type": "transformation", "checksum": TF})
    assert r.status_code == 404


async def test_cross_origin_buffer_upload_stores_nothing(node, http):
    cs, data = random_buffer(1000)
    headers = {"Host": netloc(node.url), "Origin": EVIL_ORIGIN, "Content-Type": "text/plain"}
    got, _, _ = await exchange(node.url, request("PUT", f"/buffers/{cs}", headers, data))
    assert got == 403
    assert (await http.get(f"{node.url}/buffers/{cs}")).status_code == 404
    # reads from a foreign origin are allowed: the browser does not let the page see the answer
    headers = {"Host": netloc(node.url), "Origin": EVIL_ORIGIN}
    got, answer_headers, _ = await exchange(node.url, request("GET", "/buffers/healthcheck", headers))
    assert got == 200 and "access-control-allow-origin" not in answer_headers


@pytest.mark.parametrize("path", ["/buffers/" + "0" * 64, "/database", "/healthcheck", "/metrics"])
async def test_dns_rebinding_request_is_refused_on_the_fast_path(node, path):
    body = b'{"type": "protocol"}' if path == "/database" else b""
    headers = {"Host": f"{EVIL_HOST}:{node.url.rsplit(':', 1)[1]}", "Content-Type": "application/json"}
    got, _, text = await exchange(node.url, request("GET", path, headers, body))
    assert got == 421, text
    assert b"attacker.example" in text
    # the same request naming the node is served
    headers["Host"] = netloc(node.url)
    got, _, _ = await exchange(node.url, request("GET", path, headers, body))
    assert got in (200, 404)


async def test_dns_rebinding_request_is_refused_on_the_hypercorn_path(node, http):
    cs, data = random_buffer(2000)
    port = node.url.rsplit(":", 1)[1]
    evil = {"Host": f"{EVIL_HOST}:{port}"}
    # HTTP/1.0 and chunked uploads are handed to hypercorn from their first byte
    got, _, _ = await exchange(node.url, request("GET", "/buffers/healthcheck", evil, version="HTTP/1.0"))
    assert got == 421
    chunked = request("PUT", f"/buffers/{cs}", {**evil, "Transfer-Encoding": "chunked"})
    chunked += b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"
    got, _, _ = await exchange(node.url, chunked)
    assert got == 421
    assert (await http.get(f"{node.url}/buffers/{cs}")).status_code == 404
    # after a hand-over, every further request on the connection is hypercorn's
    stream = await connect(node.url)
    try:
        good = {"Host": netloc(node.url)}
        await stream.send_all(
            request("GET", "/metrics", good)
            + request("PUT", f"/buffers/promise/{cs}", evil)
            + request("GET", "/api/v1/node", evil)
            + request("GET", "/api/v1/node", good)
        )
        reader = Reader(stream)
        statuses = [(await reader.response())[0] for _ in range(4)]
    finally:
        await stream.aclose()
    assert statuses == [200, 421, 421, 200]
    r = await http.request("GET", f"{node.url}/buffers/has", json=[cs])
    assert r.json() == [False]  # neither stored nor promised


async def test_websocket_from_a_foreign_origin_or_host_is_refused(jobs_node, http):
    tfs = Transformations()
    tf = tfs.bash("echo x > RESULT")
    await tfs.upload(http, jobs_node.url)
    r = await http.post(jobs_node.url + "/api/v1/jobs", params={"wait": 30}, json={"transformation": tf})
    checksum = r.json()["job"]["checksum"]
    handshake = {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    target = f"/api/v1/jobs/{checksum}/events"
    for extra, status in (
        ({"Host": netloc(jobs_node.url), "Origin": EVIL_ORIGIN}, 403),
        ({"Host": EVIL_HOST, "Origin": f"http://{EVIL_HOST}"}, 421),
        ({"Host": netloc(jobs_node.url)}, 101),  # a client that is no browser
    ):
        stream = await connect(jobs_node.url)
        try:
            await stream.send_all(request("GET", target, {**handshake, **extra}))
            reader = Reader(stream)
            while b"\r\n\r\n" not in reader.buffer:
                assert await reader._fill()
            assert reader.buffer.startswith(b"HTTP/1.1 %d " % status), reader.buffer[:200]
        finally:
            await stream.aclose()


async def test_no_cors_unless_configured(node, start_node, http):
    preflight = {
        "Host": netloc(node.url), "Origin": "https://app.example",
        "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type",
    }
    got, headers, _ = await exchange(node.url, request("OPTIONS", "/api/v1/database/write", preflight))
    assert "access-control-allow-origin" not in headers
    # configured: the allowed origin gets its preflight answered, and may write
    allowed = await start_node(access={"allowed_origins": ["https://app.example"]})
    preflight["Host"] = netloc(allowed.url)
    got, headers, _ = await exchange(allowed.url, request("OPTIONS", "/api/v1/database/write", preflight))
    assert got == 204 and headers["access-control-allow-origin"] == "https://app.example"
    assert "content-type" in headers["access-control-allow-headers"]
    write = json.dumps({"type": "transformation", "checksum": TF, "value": RESULT}).encode()
    page = {"Host": netloc(allowed.url), "Origin": "https://app.example", "Content-Type": "application/json"}
    got, headers, _ = await exchange(allowed.url, request("POST", "/api/v1/database/write", page, write))
    assert got == 200 and headers["access-control-allow-origin"] == "https://app.example"
    got, headers, _ = await exchange(allowed.url, request("PUT", "/database", page, write))  # the front
    assert got == 200 and headers["access-control-allow-origin"] == "https://app.example"
    assert headers["vary"] == "Origin"
    # any other origin is still refused there
    page["Origin"] = EVIL_ORIGIN
    got, headers, _ = await exchange(allowed.url, request("POST", "/api/v1/database/write", page, write))
    assert got == 403 and "access-control-allow-origin" not in headers


async def test_public_names_are_the_only_other_names_served(start_node):
    node = await start_node(node={"public_names": ["seamless.lab.example", "proxy.lab.example:443"]})
    port = node.url.rsplit(":", 1)[1]
    for host, status in (
        (f"seamless.lab.example:{port}", 200),
        ("seamless.lab.example", 200),
        ("proxy.lab.example:443", 200),
        (f"localhost:{port}", 200),
        (f"[::ffff:127.0.0.1]:{port}", 200),
        ("seamless.lab.example:1", 421),  # a port this node does not listen on
        ("proxy.lab.example:8443", 421),
        (f"seamless.lab.example.attacker.example:{port}", 421),
        (f"127.0.0.2:{port}", 421),  # not the address the client connected to
        ("", 421),
    ):
        got, _, _ = await exchange(node.url, request("GET", "/healthcheck", {"Host": host}))
        assert got == status, host
