"""Every byte a job uses is verified: attacks on the job doors with bytes that do not hash
to the checksums the transformation names (docs/security.md).

The poisoning attack: a transformation whose code pin names code that is not in the
store, sent with ``__code_text__`` holding *other* code. Before verification the node ran
the other code and recorded its result under the transformation's checksum (and signed
claims for it). Each door must refuse it with 400 naming the pin and both checksums:
nothing runs (the job service never saw a job, the worker pool never started), nothing is
recorded, nothing is stored, and no claim is signed.

Real nodes on 127.0.0.x (port 0); peers are real nodes with real keys and links.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from node.app import build_node, run_node
from node.federation.canonical import b64encode
from node.federation.peers import PeerRefused
from node.transformation import transformation_checksum
from tests.conftest import make_config
from tests.federation.conftest import Cluster, FedNode
from tests.roles.jobless.support import JOBLESS, Transformations, buffer_of

BENIGN = "def f(a):\n    return a + 1\n"
EVIL = "def f(a):\n    return 666\n"

JOBS: dict[str, dict[str, Any]] = {"node": JOBLESS, "jobless": {"workers": 1}}


@pytest.fixture
async def cluster(tmp_path: Path, nursery: trio.Nursery) -> Cluster:
    return Cluster(tmp_path, nursery)


@pytest.fixture
async def start_jobs(tmp_path: Path, nursery: trio.Nursery) -> Any:
    """``url, role = await start_jobs(**sections)``: a node running buffers, database and
    jobless in the test's nursery, and its jobless role."""
    count = 0

    async def start(**sections: dict[str, Any]) -> tuple[str, Any]:
        nonlocal count
        count += 1
        merged = {k: dict(v) for k, v in JOBS.items()}
        for section, values in sections.items():
            merged.setdefault(section, {}).update(values)
        node = build_node(make_config(tmp_path / f"node{count}", **merged))
        urls = await nursery.start(run_node, node)
        return urls[0], jobless_of(node)

    return start


def poisoned(tfs: Transformations) -> tuple[dict[str, Any], str]:
    """A transformation naming BENIGN code, its input stored by ``tfs``, and the code
    buffer left out: the caller sends EVIL as its ``__code_text__``."""
    tf = tfs.python(BENIGN, a=1)
    code_cs = tf["code"][2]
    del tfs.buffers[code_cs]
    return tf, code_cs


def jobless_of(node: Any) -> Any:
    return next(r for r in node.roles if r.name == "jobless")


def nothing_ran(role: Any) -> bool:
    return role.service.counts["submitted"] == 0 and not role.backend.workers and not role.service.active


async def nothing_recorded(http: httpx.AsyncClient, url: str, tf_checksum: str) -> bool:
    query = {"type": "transformation", "checksum": tf_checksum}
    r = await http.request("GET", f"{url}/database", json=query)
    return r.status_code == 404


async def stored(http: httpx.AsyncClient, url: str, checksum: str) -> bool:
    return (await http.get(f"{url}/buffers/{checksum}")).status_code == 200


def evil_cs() -> str:
    return buffer_of(EVIL, "python")[0]


def message_names_the_pin(text: str, expected: str) -> bool:
    return "__code_text__" in text and expected in text and evil_cs() in text


# ------------------------------------------------------------------------- local doors


async def test_code_text_holding_other_code_is_refused_at_jobserver(start_jobs, http: httpx.AsyncClient):
    url, role = await start_jobs()
    tfs = Transformations()
    tf, code_cs = poisoned(tfs)
    await tfs.upload(http, url)
    tf_dict = {**tf, "__code_text__": EVIL}  # where seamless-transformer puts it
    payload = {"transformation_dict": tf_dict, "tf_checksum": transformation_checksum(tf), "tf_dunder": {}}
    r = await http.request("GET", f"{url}/jobserver/run-transformation", json=payload)
    assert r.status_code == 400, r.text
    assert r.text.startswith("Invalid payload:") and message_names_the_pin(r.text, code_cs)
    assert nothing_ran(role)
    assert await nothing_recorded(http, url, transformation_checksum(tf))
    assert not await stored(http, url, evil_cs()) and not await stored(http, url, code_cs)


@pytest.mark.parametrize("backend", ["local", "dask"])
async def test_code_text_holding_other_code_is_refused_at_api_v1_jobs(
    start_jobs, http: httpx.AsyncClient, nursery: trio.Nursery, backend: str
):
    """The same refusal whatever the backend: verification comes before any backend."""
    jobless: dict[str, Any] = {"workers": 1}
    if backend == "dask":
        distributed = pytest.importorskip("distributed")
        cluster = await trio.to_thread.run_sync(
            lambda: distributed.LocalCluster(
                n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
            )
        )
        nursery.start_soon(_close_at_end, cluster)
        jobless = {"backend": "dask", "dask_scheduler": cluster.scheduler_address}
    url, role = await start_jobs(jobless=jobless)
    ran: list[Any] = []
    real_run = role.backend.run

    async def recording_run(spec: Any, started: Any) -> Any:
        ran.append(spec)
        return await real_run(spec, started)

    role.backend.run = recording_run
    tfs = Transformations()
    tf, code_cs = poisoned(tfs)
    await tfs.upload(http, url)
    body = {"transformation": tf, "tf_dunder": {"__code_text__": EVIL}}
    r = await http.post(f"{url}/api/v1/jobs", params={"wait": 30}, json=body)
    assert r.status_code == 400, r.text
    assert message_names_the_pin(r.json()["error"], code_cs)
    assert ran == [] and role.service.counts["submitted"] == 0 and not role.service.active
    assert await nothing_recorded(http, url, transformation_checksum(tf))
    assert not await stored(http, url, evil_cs())


async def _close_at_end(cluster: Any) -> None:
    try:
        await trio.sleep_forever()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(cluster.close)


async def test_code_checksum_pointing_at_other_stored_code_is_refused(start_jobs, http: httpx.AsyncClient):
    """``__code_checksum__`` is outside the identity dict too: it may not send the job to
    another code buffer, even one that is in the store (and so verified)."""
    url, role = await start_jobs()
    tfs = Transformations()
    tf = tfs.python(BENIGN, a=1)
    evil, evil_data = buffer_of(EVIL, "python")
    tfs.buffers[evil] = evil_data
    await tfs.upload(http, url)
    tf_dict = {**tf, "__code_checksum__": evil}
    payload = {"transformation_dict": tf_dict, "tf_checksum": transformation_checksum(tf), "tf_dunder": {}}
    r = await http.request("GET", f"{url}/jobserver/run-transformation", json=payload)
    assert r.status_code == 400, r.text
    assert "__code_checksum__" in r.text and evil in r.text and tf["code"][2] in r.text
    assert nothing_ran(role)
    assert await nothing_recorded(http, url, transformation_checksum(tf))


async def test_code_text_that_does_not_hash_is_refused_even_beside_the_right_code(
    start_jobs, http: httpx.AsyncClient
):
    """The code buffer is stored and the dict's own __code_text__ is right; tf_dunder
    carries other code. Every value sent inline must verify, not only the one used."""
    url, role = await start_jobs()
    tfs = Transformations()
    tf = tfs.python(BENIGN, a=1)
    await tfs.upload(http, url)
    body = {"transformation": {**tf, "__code_text__": BENIGN}, "tf_dunder": {"__code_text__": EVIL}}
    r = await http.post(f"{url}/api/v1/jobs", json=body)
    assert r.status_code == 400, r.text
    assert "tf_dunder" in r.json()["error"]
    assert nothing_ran(role)


async def test_honest_code_text_runs_and_its_buffer_is_stored_like_an_upload(
    start_jobs, http: httpx.AsyncClient
):
    """The counterpart: code sent only as text that hashes to the code pin runs, and its
    buffer enters the store (verified), so the job reads it from there."""
    url, _role = await start_jobs()
    tfs = Transformations()
    tf, code_cs = poisoned(tfs)
    await tfs.upload(http, url)
    assert not await stored(http, url, code_cs)
    body = {"transformation": {**tf, "__code_text__": BENIGN.rstrip("\n")}}
    r = await http.post(f"{url}/api/v1/jobs", params={"wait": 60}, json=body)
    assert r.status_code == 200, r.text
    job = r.json()["job"]
    assert job["state"] == "done", job
    assert (await http.get(f"{url}/buffers/{job['result']}")).content == b"2\n"
    r = await http.get(f"{url}/buffers/{code_cs}")
    assert r.status_code == 200 and hashlib.sha256(r.content).hexdigest() == code_cs


# --------------------------------------------------------------------- /federation/jobs


async def pair(cluster: Cluster) -> tuple[FedNode, FedNode]:
    """A runs jobs; B, a peer holding only jobs:submit at A, is the attacker."""
    a = await cluster.start(cluster.add("a", "127.0.0.1", **JOBS))
    b = await cluster.start(cluster.add("b", "127.0.0.2", **JOBS))
    cluster.grant(a, b, "jobs:submit")
    await cluster.configure()
    return a, b


def fed_body(tf: dict[str, Any], hops: list[str], **extra: Any) -> dict[str, Any]:
    return {"transformation": tf, "hops": hops, "wait": 30, **extra}


async def test_code_text_holding_other_code_is_refused_at_federation_jobs(
    cluster: Cluster, http: httpx.AsyncClient
):
    a, b = await pair(cluster)
    tfs = Transformations()
    tf, code_cs = poisoned(tfs)
    inline = {cs: b64encode(d) for cs, d in tfs.buffers.items()}  # the input travels along
    body = fed_body({**tf, "__code_text__": EVIL}, [b.node_id], inline=inline)
    with pytest.raises(PeerRefused) as refused:
        await b.federation.client.call(a.node_id, "POST", "/federation/jobs", body)
    assert (refused.value.status, refused.value.reason) == (400, "wrong-bytes")
    assert "__code_text__" in str(refused.value) and code_cs[:32] in str(refused.value)  # cut at 200
    role = jobless_of(a.node)
    assert nothing_ran(role)
    tf_cs = transformation_checksum(tf)
    assert await nothing_recorded(http, a.url, tf_cs)
    # nothing stored from the refused request, and no claim A could sign for it
    assert not await stored(http, a.url, next(iter(inline)))
    assert await a.federation.results.answer([tf_cs]) == [None]


async def test_a_forwarding_peer_sending_other_code_as_text_is_refused(
    cluster: Cluster, http: httpx.AsyncClient
):
    """B forwards C's job to A (A grants C jobs:submit and B forward): the forwarder is a
    door too, and its tf_dunder is checked like a client's."""
    a, b = await pair(cluster)
    c = await cluster.start(cluster.add("c", "127.0.0.3", **JOBS))
    cluster.grant(a, c, "jobs:submit")
    cluster.grant(a, b, "forward")
    cluster.peer(b, c)
    await cluster.configure()
    tfs = Transformations()
    tf, code_cs = poisoned(tfs)
    inline = {cs: b64encode(d) for cs, d in tfs.buffers.items()}
    body = fed_body(tf, [c.node_id, b.node_id], inline=inline, tf_dunder={"__code_text__": EVIL})
    with pytest.raises(PeerRefused) as refused:
        await b.federation.client.call(a.node_id, "POST", "/federation/jobs", body, on_behalf_of=c.node_id)
    assert (refused.value.status, refused.value.reason) == (400, "wrong-bytes")
    assert nothing_ran(jobless_of(a.node))
    assert await nothing_recorded(http, a.url, transformation_checksum(tf))


async def test_an_inline_input_that_does_not_hash_to_its_checksum_is_refused(
    cluster: Cluster, http: httpx.AsyncClient
):
    """Inputs a peer sends along with a job (``inline``: checksum -> bytes) must hash to
    their checksums: a pin value with other bytes under its name is refused."""
    a, b = await pair(cluster)
    tfs = Transformations()
    tf = tfs.python(BENIGN, a=1)
    a_cs = tf["a"][2]
    inline = {cs: b64encode(d) for cs, d in tfs.buffers.items()}
    inline[a_cs] = b64encode(b"665\n")  # the value 665 under the name of 1
    body = fed_body(tf, [b.node_id], inline=inline)
    with pytest.raises(PeerRefused) as refused:
        await b.federation.client.call(a.node_id, "POST", "/federation/jobs", body)
    assert (refused.value.status, refused.value.reason) == (400, "wrong-bytes")
    assert a_cs in str(refused.value)
    assert nothing_ran(jobless_of(a.node))
    assert not await stored(http, a.url, a_cs) and not await stored(http, a.url, tf["code"][2])
