"""The node's own job API (/api/v1/jobs) and the job service's semantics: dedup, cache,
cancellation bookkeeping, events, who may submit."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import httpx
import psutil
import pytest
import trio
from trio_websocket import open_websocket_url

from node.access.policy import NetworkGrants
from tests.certs import make_certs, tls_settings

from .support import JOBLESS, Transformations, wait_for, workers


async def submit(http: httpx.AsyncClient, url: str, tf: dict, wait: float = 0) -> dict:
    r = await http.post(f"{url}/api/v1/jobs", params={"wait": wait}, json={"transformation": tf})
    assert r.status_code in (200, 202), r.text
    assert r.headers["Location"].endswith(r.json()["job"]["checksum"])
    return r.json()["job"]


async def test_submit_status_list(job_node, http):
    tfs = Transformations()
    tf = tfs.python("def add(a, b):\n    return a * 100 + b\n", a=4, b=3)
    await tfs.upload(http, job_node.url)
    job = await submit(http, job_node.url, tf, wait=30)
    assert job["state"] == "done" and job["cached"] is False
    assert job["result"] == "97a58cc66d1cd6b51466af8ed52d6a38053b5572fee09a0ae8859c26b82bdf67"  # mixed 403
    assert job["started"] >= job["submitted"] and job["finished"] >= job["started"]
    r = await http.get(f"{job_node.url}/buffers/{job['result']}")
    assert r.content == b"403\n"
    r = await http.get(f"{job_node.url}/api/v1/jobs/{job['checksum']}")
    assert r.json()["job"]["state"] == "done"
    listing = (await http.get(f"{job_node.url}/api/v1/jobs")).json()
    assert listing["jobs"][0]["checksum"] == job["checksum"]
    assert listing["backend"]["slots"] == 2 and listing["counts"]["done"] == 1
    # recorded in the database role: transformation and execution record
    db = f"{job_node.url}/api/v1/database/read"
    r = await http.post(db, json={"type": "transformation", "checksum": job["checksum"]})
    assert r.json()["value"] == job["result"]
    r = await http.post(db, json={"type": "metadata", "checksum": job["checksum"]})
    record = r.json()["value"]
    assert record["tf_checksum"] == job["checksum"] and record["result_checksum"] == job["result"]
    assert record["wall_time_seconds"] > 0


async def test_submit_by_checksum_and_errors(job_node, http):
    tfs = Transformations()
    tf = tfs.python("lambda x: x + 1", x=1)
    await tfs.upload(http, job_node.url)
    job = await submit(http, job_node.url, tf, wait=30)
    # the dict was stored: a later submission by checksum finds it
    r = await http.post(f"{job_node.url}/api/v1/jobs", json={"checksum": job["checksum"]})
    assert r.status_code == 200 and r.json()["job"]["result"] == job["result"]
    missing = "0" * 64
    r = await http.post(f"{job_node.url}/api/v1/jobs", json={"checksum": missing})
    assert r.status_code == 404 and "not in the buffer store" in r.json()["error"]
    r = await http.post(f"{job_node.url}/api/v1/jobs", json={"transformation": {**tf, "__bogus__": 1}})
    assert r.status_code == 400 and "unknown transformation dunder key" in r.json()["error"]
    r = await http.get(f"{job_node.url}/api/v1/jobs/{missing}")
    assert r.status_code == 404
    r = await http.get(f"{job_node.url}/api/v1/jobs/not-a-checksum")
    assert r.status_code == 400
    # an input that is not in the store: the job fails and says which pin
    orphan = Transformations()
    tf2 = orphan.python("lambda y: y", y=12345)
    r = await http.post(f"{job_node.url}/api/v1/jobs", params={"wait": 30}, json={"transformation": tf2})
    assert r.status_code == 404 or r.json()["job"]["state"] == "failed"


async def test_failed_job_is_not_recorded_and_reports(job_node, http):
    tfs = Transformations()
    tf = tfs.bash("echo oops >&2; exit 2")
    await tfs.upload(http, job_node.url)
    job = await submit(http, job_node.url, tf, wait=30)
    assert job["state"] == "failed" and job["failure"] == "error"
    assert "Return code 2" in job["error"] and "oops" in job["error"]
    query = {"type": "transformation", "checksum": job["checksum"]}
    r = await http.post(f"{job_node.url}/api/v1/database/read", json=query)
    assert r.status_code == 404


async def test_identical_transformations_run_once(start_node, http, tmp_path):
    # the job leaves a mark outside itself, which only an unsandboxed job can do
    job_node = await start_node(node=JOBLESS, jobless={"workers": 2, "sandbox": False})
    marker = tmp_path / "marker"
    tfs = Transformations()
    tf = tfs.bash('echo ran >> "$marker"; sleep 0.5; echo done > RESULT', marker=str(marker))
    await tfs.upload(http, job_node.url)
    results = []

    async def one() -> None:
        results.append(await submit(http, job_node.url, tf, wait=30))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert {job["state"] for job in results} == {"done"}
    assert marker.read_text() == "ran\n"
    counts = (await http.get(f"{job_node.url}/api/v1/jobs")).json()["counts"]
    assert counts["submitted"] == 1


async def test_known_result_answers_at_once_after_restart(start_node, http, tmp_path):
    data_dir = tmp_path / "data"
    tfs = Transformations()
    tf = tfs.python("def f(x):\n    return x * 2\n", x=21)
    node = await start_node(data_dir, node=JOBLESS)
    await tfs.upload(http, node.url)
    job = await submit(http, node.url, tf, wait=30)
    assert job["state"] == "done"
    node.stop()
    await wait_for(lambda: not workers())
    node = await start_node(data_dir, node=JOBLESS)
    start = trio.current_time()
    again = await submit(http, node.url, tf)
    elapsed = trio.current_time() - start
    assert again["state"] == "done" and again["cached"] is True and again["result"] == job["result"]
    assert elapsed < 1.0
    assert not workers()  # answered without starting the pool


async def test_events_websocket(job_node, http):
    tfs = Transformations()
    tf = tfs.bash("sleep 0.3; echo hi > RESULT")
    await tfs.upload(http, job_node.url)
    job = await submit(http, job_node.url, tf)
    ws_url = job_node.url.replace("http://", "ws://") + f"/api/v1/jobs/{job['checksum']}/events"
    states = []
    with trio.fail_after(20):
        async with open_websocket_url(ws_url) as ws:
            while True:
                try:
                    message = json.loads(await ws.get_message())
                except Exception:
                    break
                states.append(message["state"])
                if message["state"] in ("done", "failed", "cancelled"):
                    assert message["result"]
                    break
    assert states[-1] == "done"
    assert states[0] in ("queued", "running")


def _external_address() -> str | None:
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not address.address.startswith("127."):
                return address.address
    return None


async def test_only_local_clients_may_submit_by_default(start_node, http, tmp_path: Path):
    address = _external_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    node = await start_node(node={**JOBLESS, "host": address})
    tfs = Transformations()
    tf = tfs.bash("touch should-not-run; echo x > RESULT")
    before = len(psutil.Process().children(recursive=True))
    for method, path, body in [
        ("POST", "/api/v1/jobs", {"transformation": tf}),
        ("GET", "/api/v1/jobs", None),
        ("GET", "/jobserver/run-transformation", {"transformation_dict": tf, "tf_checksum": "0" * 64}),
        ("POST", "/jobserver/cancel-transformation/" + "0" * 64, None),
    ]:
        r = await http.request(method, node.url + path, json=body)
        assert r.status_code == 401, (path, r.status_code, r.text)  # no scope, no token
        assert "jobs:submit" in r.text
    assert len(psutil.Process().children(recursive=True)) == before  # nothing spawned
    r = await http.get(node.url + "/jobserver/healthcheck")
    assert r.status_code == 200


def test_only_loopback_holds_jobs_submit_by_default():
    grants = NetworkGrants(None)
    for address in ("127.0.0.1", "127.5.0.1", "::1", "::ffff:127.0.0.1", "[::1]"):
        assert "jobs:submit" in grants.scopes_for(address), address
    for address in ("10.0.0.1", "192.168.1.2", "::ffff:10.0.0.1", "fe80::1", "", None, "localhost", "x"):
        assert not grants.scopes_for(address), address


async def test_inputs_and_results_at_another_node(start_node, http):
    """jobless.buffer_url / database_url: a node with only the jobless role takes its
    inputs from another node's buffer server, stores the result there and records it in
    that node's database; a known result there answers at once."""
    store = await start_node(node={"roles": ["buffers", "database"]})
    remote = {"buffer_url": store.url + "/buffers", "database_url": store.url + "/database"}
    runner = await start_node(node={"roles": ["jobless"]}, jobless=remote)
    tfs = Transformations()
    tf = tfs.python("def f(x):\n    return x * 3\n", x=14)
    await tfs.upload(http, store.url)
    job = await submit(http, runner.url, tf, wait=30)
    assert job["state"] == "done", job
    assert (await http.get(f"{store.url}/buffers/{job['result']}")).content == b"42\n"
    query = {"type": "transformation", "checksum": job["checksum"]}
    r = await http.post(f"{store.url}/api/v1/database/read", json=query)
    assert r.json()["value"] == job["result"]
    other = await start_node(node={"roles": ["jobless"]}, jobless=remote)
    again = await submit(http, other.url, tf)
    assert again["state"] == "done" and again["cached"] is True


async def test_inputs_and_results_at_another_node_over_https_with_a_private_ca(start_node, tmp_path):
    """The job service's requests to jobless.buffer_url / database_url verify the server
    against federation.ca_file, as peer requests do; without it a private CA is refused."""
    certs = make_certs(tmp_path / "certs")
    store = await start_node(node={"roles": ["buffers", "database"], **tls_settings(certs.server)})
    assert store.url.startswith("https://")
    remote = {"buffer_url": store.url + "/buffers", "database_url": store.url + "/database"}
    runner = await start_node(
        node={"roles": ["jobless"]}, jobless=remote, federation={"ca_file": str(certs.ca)}
    )
    tfs = Transformations()
    tf = tfs.python("def f(x):\n    return x * 5\n", x=7)
    async with httpx.AsyncClient(verify=certs.client_context(), timeout=60) as https, httpx.AsyncClient(
        timeout=60
    ) as plain:
        await tfs.upload(https, store.url)
        job = await submit(plain, runner.url, tf, wait=30)
        assert job["state"] == "done", job
        assert (await https.get(f"{store.url}/buffers/{job['result']}")).content == b"35\n"
        untrusting = await start_node(node={"roles": ["jobless"]}, jobless=remote)
        other = tfs.python("def f(x):\n    return x * 6\n", x=7)
        r = await plain.post(f"{untrusting.url}/api/v1/jobs", json={"transformation": other})
        assert r.status_code == 502, r.text  # the buffer server is not trusted: said, not run
        assert "CERTIFICATE_VERIFY_FAILED" in r.json()["error"] and store.url in r.json()["error"], r.text
