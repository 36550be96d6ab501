"""What a node says about itself: one log line per request (both HTTP paths), per job
transition, and /metrics with typed series from fixed label sets."""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

import pytest
import trio

from node.logs import JsonFormatter, TextFormatter
from node.web.access_log import AREAS, DURATION, REQUESTS, printable, route_area
from tests.helpers import random_buffer
from tests.roles.jobless.support import JOBLESS, Transformations

parser = pytest.importorskip("prometheus_client.parser")


async def raw_exchange(url: str, request: bytes) -> bytes:
    """Send *request* on a fresh connection; what the node answers until it closes."""
    parts = urlsplit(url)
    stream = await trio.open_tcp_stream(parts.hostname, parts.port)
    await stream.send_all(request)
    received = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(65536):
            received += chunk
    await stream.aclose()
    return received


def request_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "seamless_node.requests"]


def families(text: str) -> dict[str, object]:
    return {f.name: f for f in parser.text_string_to_metric_families(text)}


def series(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(name + "{") or line.startswith(name + " ")]


async def test_one_line_per_request_on_both_paths(node, http, caplog):
    caplog.set_level(logging.INFO)
    cs, data = random_buffer(1000)
    assert (await http.put(f"{node.url}/buffers/{cs}", content=data)).status_code in (200, 201)
    assert (await http.get(f"{node.url}/buffers/{cs}")).content == data  # the front
    assert (await http.get(f"{node.url}/api/v1/node")).status_code == 200  # Quart, via hypercorn
    # HTTP/1.0: the front hands it over; the fast route answers inside hypercorn
    answer = await raw_exchange(node.url, f"GET /buffers/{cs} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(data)
    lines = [r.getMessage() for r in request_records(caplog)]
    client, seconds = r"127\.0\.0\.1:\d+", r"\d+\.\d+s"
    for line in (
        rf'{client} "GET /buffers/{cs} HTTP/1\.1" 200 1000 {seconds}',  # the front
        rf'{client} "GET /buffers/{cs} HTTP/1\.0" 200 1000 {seconds}',  # hypercorn, fast route
        rf'{client} "GET /api/v1/node HTTP/1\.1" 200 \d+ {seconds}',  # hypercorn, Quart
    ):
        assert any(re.fullmatch(line, x) for x in lines), (line, lines)
    assert any(f'"PUT /buffers/{cs} HTTP/1.1" 20' in x for x in lines), lines
    # the JSON form carries the same facts as fields
    record = next(r for r in request_records(caplog) if "HTTP/1.0" in r.getMessage())
    import json

    obj = json.loads(JsonFormatter().format(record))
    assert obj["method"] == "GET" and obj["path"] == f"/buffers/{cs}" and obj["status"] == 200
    assert obj["bytes"] == 1000 and obj["duration"] >= 0 and obj["client"].startswith("127.0.0.1:")


async def test_client_text_cannot_forge_log_lines(node, http, caplog):
    caplog.set_level(logging.INFO)
    forged = "/buffers/%0a2026-01-01 INFO seamless_node.requests: forged%0d%0a"
    r = await http.get(node.url + forged)
    assert r.status_code == 400
    # through hypercorn (HTTP/1.0), a path with a quote
    await raw_exchange(node.url, b'GET /nothing"%0a HTTP/1.0\r\nHost: localhost\r\n\r\n')
    # raw control characters: refused before any handler (h11 answers 400), nothing forged
    for raw in (b"GET /buffers/\x0bx HTTP/1.1", b"GET /a\rINFO forged HTTP/1.1", b"GET /\x1b[2J HTTP/1.1"):
        answer = await raw_exchange(node.url, raw + b"\r\nHost: localhost\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400"), answer
    # a token prefix is not logged, on either path
    await http.get(node.url + "/t/snt_secretsecret/healthcheck")
    await raw_exchange(node.url, b"GET /t/snt_secretsecret/healthcheck HTTP/1.0\r\nHost: localhost\r\n\r\n")
    text, json_lines = [], []
    for record in caplog.records:
        if not record.name.startswith("seamless_node"):
            continue  # the test's own client logs what it asked for
        text.append(TextFormatter().format(record))
        json_lines.append(JsonFormatter().format(record))
    assert text and all("\n" not in line and "\r" not in line for line in text + json_lines)
    joined = "\n".join(text)
    escaped = "/buffers/%0a2026-01-01%20INFO%20seamless_node.requests:%20forged%0d%0a"
    assert f'"GET {escaped} HTTP/1.1" 400' in joined
    assert '"GET /nothing\\x22%0a HTTP/1.0" 401' in joined
    assert "snt_secretsecret" not in joined + "".join(json_lines)
    assert '"GET /healthcheck HTTP/1.1" 200' in joined  # the front logs the routed path
    assert '"GET /t/<redacted>/healthcheck HTTP/1.0" 200' in joined


def test_escaping_is_total():
    every_byte = bytes(range(256))
    out = printable(every_byte)
    assert all(0x21 <= ord(c) <= 0x7E for c in out)
    assert out.count("\\x") == 256 - (0x7F - 0x21) + 2  # everything but printable ASCII, plus " and \
    assert printable(b"a" * 5000).endswith("...") and len(printable(b"a" * 5000)) < 2100


def test_route_areas_are_a_fixed_set():
    assert route_area("/buffers/abc") == "buffers"
    assert route_area("/t/anything/database/x") == "database"
    assert route_area("/t/") == "root"
    assert route_area("/") == "root"
    assert route_area("/" + "a" * 64) == "buffers"  # hashserver routes at the host root
    assert route_area("/has-now") == "buffers"
    for junk in ("/nope", "/Buffers", "/%0a", "/t", "//x", "", "x", "/root", "/other/x"):
        assert route_area(junk) in AREAS


async def test_access_log_can_be_turned_off(start_node, http, caplog):
    caplog.set_level(logging.INFO)
    node = await start_node(node={"access_log": False})
    assert (await http.get(f"{node.url}/healthcheck")).status_code == 200
    assert (await http.get(f"{node.url}/api/v1/node")).status_code == 200
    assert request_records(caplog) == []
    metrics = (await http.get(f"{node.url}/metrics")).text
    assert 'seamless_node_http_requests_total{area="healthcheck",status="200"} 1' in metrics


async def test_unknown_paths_make_no_new_series(node, http):
    async def request_series() -> set[str]:
        text = (await http.get(f"{node.url}/metrics")).text
        return {
            line.rsplit(" ", 1)[0]
            for name in (REQUESTS, DURATION + "_count")
            for line in series(text, name)
        }

    for path in ("/nope-0", "/buffers/x0", "/t/junk0/healthcheck", "/%0a0"):
        await http.get(node.url + path)
    await request_series()  # counts this scrape's own area
    before = await request_series()
    async with trio.open_nursery() as nursery:
        for i in range(1, 100):
            for path in (f"/nope-{i}", f"/buffers/x{i}", f"/t/junk{i}/healthcheck", f"/%0a{i}"):
                nursery.start_soon(http.get, node.url + path)
    after = await request_series()
    assert after == before
    areas = {re.search(r'area="([^"]*)"', s).group(1) for s in after}  # type: ignore[union-attr]
    assert areas <= AREAS and "t" not in areas


async def test_metrics_are_typed_and_move(start_node, http, caplog):
    caplog.set_level(logging.INFO)
    node = await start_node(node=JOBLESS, jobless={"workers": 1, "sandbox": False})
    assert (await http.get(f"{node.url}/healthcheck")).status_code == 200
    first = (await http.get(f"{node.url}/metrics")).text
    found = families(first)
    kinds = {name: f.type for name, f in found.items()}  # type: ignore[attr-defined]
    assert kinds["seamless_node_http_requests"] == "counter"  # the parser drops "_total"
    assert kinds["seamless_node_jobs_done"] == kinds["seamless_node_jobs_submitted"] == "counter"
    assert kinds["seamless_node_database_transactions"] == "counter"
    for gauge in (
        "seamless_node_store_bytes", "seamless_node_store_files", "seamless_node_store_free_bytes",
        "seamless_node_jobs_queued", "seamless_node_jobs_running", "seamless_node_open_connections",
    ):
        assert kinds[gauge] == "gauge", gauge
    assert kinds["seamless_node_http_request_duration_seconds"] == "histogram"
    assert "# TYPE seamless_node_jobs_done_total counter" in first
    assert "seamless_node_open_connections 0" not in first  # this very request's connection

    def value(text: str, sample: str) -> float:
        for f in parser.text_string_to_metric_families(text):
            for s in f.samples:
                if s.name == sample:
                    return float(s.value)
        raise AssertionError(f"{sample} not in /metrics")

    files0 = value(first, "seamless_node_store_files")
    bytes0 = value(first, "seamless_node_store_bytes")
    tfs = Transformations()
    good = tfs.python("lambda a: a * 2", a=21)
    bad = tfs.bash("echo 'first line\nINFO forged' >&2; exit 3")
    slow = tfs.bash("sleep 60")
    await tfs.upload(http, node.url)
    for tf, state in ((good, "done"), (bad, "failed")):
        r = await http.post(f"{node.url}/api/v1/jobs", params={"wait": 60}, json={"transformation": tf})
        assert r.json()["job"]["state"] == state, r.text
    r = await http.post(f"{node.url}/api/v1/jobs", json={"transformation": slow})
    job = r.json()["job"]["checksum"]
    r = await http.delete(f"{node.url}/api/v1/jobs/{job}", params={"hard": 1})
    assert r.json()["job"]["state"] == "cancelled"
    after = (await http.get(f"{node.url}/metrics")).text
    assert value(after, "seamless_node_jobs_done_total") == 1
    assert value(after, "seamless_node_jobs_failed_total") == 1
    assert value(after, "seamless_node_jobs_cancelled_total") == 1
    assert value(after, "seamless_node_store_files") > files0 + len(tfs.buffers) - 1
    assert value(after, "seamless_node_store_bytes") > bytes0
    assert value(after, "seamless_node_store_free_bytes") > 0
    job_counts = [
        s for f in parser.text_string_to_metric_families(after) for s in f.samples
        if s.name == "seamless_node_job_duration_seconds_count"
    ]
    assert {(s.labels["executor"], s.labels["state"]) for s in job_counts} == {
        ("local", "done"), ("local", "failed"), ("local", "cancelled")
    }
    api = [
        s for f in parser.text_string_to_metric_families(after) for s in f.samples
        if s.name == "seamless_node_http_request_duration_seconds_count" and s.labels["area"] == "api"
    ]
    assert api and api[0].value >= 2
    # one line per job transition, the failure with its reason, on one line
    jobs = [TextFormatter().format(r) for r in caplog.records if r.name == "seamless_node.jobs"]
    for words in (
        "submitted (python", "started on the local backend", "done in", "failed after",
        "cancelled after", "cancelled (hard)",
    ):
        assert any(words in line for line in jobs), (words, jobs)
    failed = next(line for line in jobs if "failed after" in line)
    assert "first line\\x0aINFO forged" in failed and "\n" not in failed


async def test_store_count_never_holds_a_scrape_long(tmp_path, monkeypatch):
    """A listing that takes long goes on in the background; scrapes get the last count."""
    import threading

    from node.metrics import Metrics
    from node.store.buffers import BufferStore
    from node.store_stats import StoreStats

    store = BufferStore(str(tmp_path / "buffers"))
    store.open()
    cs, data = random_buffer(100)
    store.put(cs, data)
    writes = [0.0]
    stats = StoreStats(store, Metrics(), writes=lambda: writes[0])
    await stats.refresh()
    assert (stats.files, stats.bytes) == (1, 100)
    release = threading.Event()
    listing = store.iter_files

    def slow_listing():  # a store of millions of files
        release.wait(30)
        return listing()

    monkeypatch.setattr(store, "iter_files", slow_listing)
    cs2, data2 = random_buffer(50)
    store.put(cs2, data2)
    writes[0] += 1  # a buffer was stored: the count is stale
    with trio.fail_after(5):
        await stats.refresh(wait=0.05)  # gives up waiting
        await stats.refresh(wait=0.05)  # the listing is still in progress: not started again
    assert (stats.files, stats.bytes) == (1, 100)
    release.set()
    with trio.fail_after(10):
        while stats.files != 2:
            await stats.refresh(wait=0.05)
    assert stats.bytes == 150


def test_a_traceback_cannot_pass_for_a_record():
    import sys

    try:
        raise ValueError("bad input\n2026-01-01 00:00:00,000 INFO seamless_node: forged")
    except ValueError:
        failure = sys.exc_info()
    record = logging.LogRecord("seamless_node", logging.ERROR, __file__, 1, "GET %s failed", ("/x\ny",), None)
    record.exc_info = failure
    lines = TextFormatter().format(record).splitlines()
    assert lines[0].endswith("ERROR seamless_node: GET /x\\x0ay failed")
    assert len(lines) > 2 and all(line.startswith("    ") for line in lines[1:])
    import json

    assert "\n" not in JsonFormatter().format(record)
    assert "forged" in json.loads(JsonFormatter().format(record))["exception"]
