"""Only trusted results are results: a peer's signed claim answers ``/database``,
``/api/v1/database/*`` and the job service's lookup only when this node trusts that peer
for results (it granted the peer ``results:write``); any other claim is never served
(docs/security.md).

A result mapping cannot be verified by hashing, so a claim is worth what its signer is
worth here. The attacker is a peer B that grants A ``results:read`` (A may ask it) but
that A never trusted for results: B claims a made-up result for a transformation.

Real nodes on 127.0.0.x (port 0) with real keys and links.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from node import celltypes
from node.transformation import transformation_checksum
from tests.federation.conftest import Cluster, FedNode
from tests.roles.jobless.support import JOBLESS, Transformations

JOBS: dict[str, dict[str, Any]] = {"node": JOBLESS, "jobless": {"workers": 1}}
CODE = "def f(a):\n    return a * 2\n"


@pytest.fixture
async def cluster(tmp_path: Path, nursery: trio.Nursery) -> Cluster:
    return Cluster(tmp_path, nursery)


def jobless_of(fed: FedNode) -> Any:
    assert fed.node is not None
    return next(r for r in fed.node.roles if r.name == "jobless")


async def nodes(cluster: Cluster, *, trusted: bool) -> tuple[FedNode, FedNode]:
    """A and B; B grants A results:read and buffers:read; A grants B results:write only
    when *trusted*."""
    a = await cluster.start(cluster.add("a", "127.0.0.1", **JOBS))
    b = await cluster.start(cluster.add("b", "127.0.0.2", **JOBS))
    cluster.grant(b, a, "results:read,buffers:read")
    if trusted:
        cluster.grant(a, b, "results:write")
    else:
        cluster.peer(a, b)  # A knows B's address, and grants it nothing
    await cluster.configure()
    return a, b


async def claim_at(http: httpx.AsyncClient, node: FedNode, tf: str, result: str) -> None:
    """*node* holds tf -> result in its database (and so claims it to peers that ask)."""
    mapping = {"type": "transformation", "checksum": tf, "value": result}
    r = await http.put(f"{node.url}/database", json=mapping)
    assert r.status_code == 200, r.text


def made_up() -> tuple[str, str]:
    return hashlib.sha256(b"some transformation").hexdigest(), hashlib.sha256(b"a made-up result").hexdigest()


async def test_an_untrusted_peers_claim_does_not_answer_database(cluster: Cluster, http: httpx.AsyncClient):
    a, b = await nodes(cluster, trusted=False)
    tf, result = made_up()
    await claim_at(http, b, tf, result)
    query = {"type": "transformation", "checksum": tf}
    r = await http.request("GET", f"{a.url}/database", json=query)
    assert (r.status_code, r.text) == (404, "ERROR: Unknown key")
    assert a.federation.claims.count() == 0
    # control: B answers A's own question with its claim once A trusts it
    cluster.grant(a, b, "results:write")
    await cluster.configure()
    r = await http.request("GET", f"{a.url}/database", json=query)
    assert (r.status_code, r.text) == (200, result)


async def test_an_untrusted_peers_claim_does_not_answer_api_v1_database_or_peers(
    cluster: Cluster, http: httpx.AsyncClient
):
    a, b = await nodes(cluster, trusted=False)
    tf, result = made_up()
    await claim_at(http, b, tf, result)
    query = {"type": "transformation", "checksum": tf}
    r = await http.post(f"{a.url}/api/v1/database/read", json=query)
    assert r.status_code == 404, r.text
    r = await http.post(f"{a.url}/api/v1/database/read-many", json={"requests": [query]})
    assert (r.status_code, r.json()) == (200, {"values": [None]})
    r = await http.get(f"{a.url}/api/v1/peers/results/{tf}")
    assert r.status_code == 404, r.text
    assert a.federation.claims.count() == 0
    # control: trusted, the same claim answers every one of these doors
    cluster.grant(a, b, "results:write")
    await cluster.configure()
    r = await http.post(f"{a.url}/api/v1/database/read-many", json={"requests": [query]})
    assert (r.status_code, r.json()) == (200, {"values": [result]})
    assert (await http.post(f"{a.url}/api/v1/database/read", json=query)).json() == {"value": result}
    assert (await http.get(f"{a.url}/api/v1/peers/results/{tf}")).json()["result"] == result


async def test_an_untrusted_peers_claim_does_not_answer_the_job_lookup(
    cluster: Cluster, http: httpx.AsyncClient
):
    """B claims a made-up result for a real transformation: A computes it instead, and
    records and serves its own result."""
    a, b = await nodes(cluster, trusted=False)
    tfs = Transformations()
    tf = tfs.python(CODE, a=21)
    await tfs.upload(http, a.url)
    tf_cs = transformation_checksum(tf)
    poison = hashlib.sha256(b"666\n").hexdigest()
    await claim_at(http, b, tf_cs, poison)
    payload = {"transformation_dict": tf, "tf_checksum": tf_cs, "tf_dunder": {}}
    r = await http.request("GET", f"{a.url}/jobserver/run-transformation", json=payload)
    assert r.status_code == 200, r.text
    result = r.json()["result_checksum"]
    assert result != poison
    assert celltypes.deserialize(await a.context.buffers.read(result), "mixed") == 42
    job = jobless_of(a).service.get(tf_cs)
    assert job is not None and not job.cached and job.executor is None
    # /jobserver answers once the result is stored; the database record follows it
    query = {"type": "transformation", "checksum": tf_cs}
    with trio.fail_after(10):
        while (r := await http.request("GET", f"{a.url}/database", json=query)).status_code == 404:  # noqa: ASYNC110
            await trio.sleep(0.02)
    assert (r.status_code, r.text) == (200, result)


async def test_a_trusted_claim_answers_the_job_service_instead_of_rerunning(
    cluster: Cluster, http: httpx.AsyncClient
):
    """A already holds B's trusted claim for a transformation B ran: a job for it at A
    (the node's job API, as ``seamless-node submit``, and ``/jobserver``) takes the
    claim's result and runs nothing."""
    a, b = await nodes(cluster, trusted=True)
    tfs = Transformations()
    tf = tfs.python(CODE, a=21)
    await tfs.upload(http, b.url)
    tf_cs = transformation_checksum(tf)
    r = await http.post(f"{b.url}/api/v1/jobs", params={"wait": 60}, json={"transformation": tf})
    assert r.status_code == 200 and r.json()["job"]["state"] == "done", r.text
    result = r.json()["job"]["result"]
    answer = await a.context.lookup_result(tf_cs)  # A learns B's claim, and stores it
    assert answer is not None and answer.result == result and a.federation.claims.count() == 1

    r = await http.post(f"{a.url}/api/v1/jobs", params={"wait": 30}, json={"transformation": tf})
    assert r.status_code == 200, r.text
    job = r.json()["job"]
    assert job["state"] == "done" and job["cached"] and job["result"] == result, job
    payload = {"transformation_dict": tf, "tf_checksum": tf_cs, "tf_dunder": {}}
    r = await http.request("GET", f"{a.url}/jobserver/run-transformation", json=payload)
    assert (r.status_code, r.json()["result_checksum"]) == (200, result)
    role = jobless_of(a)
    assert not role.backend.workers and role.service.counts["done"] == 1  # nothing ran at A
    # the result buffer comes from B on demand (fetch-on-miss, verified)
    r = await http.get(f"{a.url}/buffers/{result}")
    assert r.status_code == 200 and celltypes.deserialize(r.content, "mixed") == 42


async def test_a_trusted_peers_claim_is_asked_for_by_the_job_service(
    cluster: Cluster, http: httpx.AsyncClient
):
    """Not stored yet: the job service asks B (trusted, granting results:read) itself."""
    a, b = await nodes(cluster, trusted=True)
    tfs = Transformations()
    tf = tfs.python(CODE, a=4)
    await tfs.upload(http, b.url)
    r = await http.post(f"{b.url}/api/v1/jobs", params={"wait": 60}, json={"transformation": tf})
    result = r.json()["job"]["result"]
    assert a.federation.claims.count() == 0
    r = await http.post(f"{a.url}/api/v1/jobs", params={"wait": 30}, json={"transformation": tf})
    job = r.json()["job"]
    assert job["state"] == "done" and job["cached"] and job["result"] == result, job
    assert not jobless_of(a).backend.workers
    assert a.federation.claims.count() == 1
