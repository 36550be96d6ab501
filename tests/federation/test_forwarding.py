"""Job forwarding between real nodes on 127.0.0.1/2/3 with real keys, links and job processes."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import httpx
import psutil
import pytest
import trio

from node import celltypes
from node.federation.canonical import b64encode
from node.federation.peers import PeerRefused
from node.transformation import transformation_checksum
from tests.roles.jobless.support import Transformations, is_waiting, wait_for

from .conftest import Cluster, FedNode

JOBS: dict[str, dict[str, Any]] = {
    "node": {"roles": ["buffers", "database", "jobless"]},
    "jobless": {"workers": 1, "orphan_grace": 30.0},  # cancels must not rely on it
}
MiB = 1024 * 1024


async def start(cluster: Cluster, *names: str) -> list[FedNode]:
    hosts = {"a": "127.0.0.1", "b": "127.0.0.2", "c": "127.0.0.3"}
    sections = {k: dict(v) for k, v in JOBS.items()}
    return [await cluster.start(cluster.add(n, hosts[n], **sections)) for n in names]


def jobless(fed: FedNode) -> Any:
    assert fed.node is not None
    return next(r for r in fed.node.roles if r.name == "jobless")


def job_pids(fed: FedNode) -> list[int]:
    """Processes running jobs in *fed*'s local pool (not the next job's waiting process,
    also while it still bears its worker's name, a bare fork that has not renamed itself)."""
    pids = []
    for worker in jobless(fed).backend.workers:
        try:
            for proc in psutil.Process(worker.process.pid).children(recursive=True):
                if proc.status() != psutil.STATUS_ZOMBIE and not is_waiting(proc):
                    pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


def nothing_ran(fed: FedNode) -> bool:
    role = jobless(fed)
    return role.service.counts["submitted"] == 0 and not role.backend.workers


def counter(fed: FedNode, name: str, **labels: str) -> float:
    return fed.context.metrics.value(f"seamless_node_federation_{name}", **labels)


async def put(http: httpx.AsyncClient, fed: FedNode, buffers: dict[str, bytes]) -> None:
    for cs, data in buffers.items():
        r = await http.put(f"{fed.url}/buffers/{cs}", content=data)
        assert r.status_code in (200, 201), r.text


async def place_job(
    http: httpx.AsyncClient,
    tfs: Transformations,
    code: str,
    data: bytes,
    *,
    code_at: FedNode,
    data_at: list[FedNode],
) -> tuple[dict[str, Any], str]:
    """A Python transformation of one input, *data*: its code buffers are stored at
    *code_at*, the input only at the nodes *data_at*. Returns it and the input's checksum."""
    tf = tfs.python(code, data=(data, "bytes"))
    data_cs = next(cs for cs, d in tfs.buffers.items() if d is data)
    await put(http, code_at, {cs: d for cs, d in tfs.buffers.items() if cs != data_cs})
    for node in data_at:
        await put(http, node, {data_cs: data})
    return tf, data_cs


async def submit(
    http: httpx.AsyncClient, fed: FedNode, tf: dict[str, Any], wait: float = 30
) -> dict[str, Any]:
    r = await http.post(f"{fed.url}/api/v1/jobs", params={"wait": wait}, json={"transformation": tf})
    assert r.status_code in (200, 202), r.text
    return r.json()["job"]  # type: ignore[no-any-return]


def body_for(tf: dict[str, Any], hops: list[str], **extra: Any) -> dict[str, Any]:
    return {"transformation": tf, "hops": hops, "wait": 30, **extra}


async def test_job_runs_where_its_50mb_input_is(cluster: Cluster, http: httpx.AsyncClient, caplog):
    """(a) the input is at B only: the job submitted at A runs at B (B's record says so, and
    for whom), A gets the result and the result buffer; C, which lacks the input, is passed
    over; B never sends the job back to A."""
    a, b, c = await start(cluster, "a", "b", "c")
    for peer in (b, c):
        cluster.grant(peer, a, "jobs:submit,buffers:read")
    cluster.grant(a, b, "jobs:submit,buffers:read,results:write")
    await cluster.configure()
    tfs, big = Transformations(), os.urandom(50 * MiB)
    code_text = "def f(data):\n    return len(data) * 2\n"
    tf, data_cs = await place_job(http, tfs, code_text, big, code_at=a, data_at=[b])
    code = set(tfs.buffers) - {data_cs}

    caplog.set_level(logging.INFO)
    job = await submit(http, a, tf)
    assert job["state"] == "done", job
    assert job["executor"] == b.node_id
    said = [r.getMessage() for r in caplog.records if r.name == "seamless_node.jobs"]
    for words in ("forwarded to peer b", "started on peer b", "done in"):
        assert any(line.startswith(f"job {job['checksum']} {words}") for line in said), (words, said)
    result = job["result"]
    assert celltypes.deserialize(await a.context.buffers.read(result), "mixed") == 100 * MiB
    # the 50 MB input never moved to A; A's own pool never started
    assert (await a.context.buffers.has([data_cs], include_pending=False)) == [False]
    assert not jobless(a).backend.workers
    # B ran it, for A, and recorded it
    ran = jobless(b).service.get(job["checksum"])
    assert ran is not None and ran.submitter == a.node_id and ran.executor is None
    query = {"type": "metadata", "checksum": job["checksum"]}
    r = await http.post(f"{b.url}/api/v1/database/read", json=query)
    record = r.json()["value"]
    assert record["result_checksum"] == result
    assert record["submitter"] == a.node_id and record["forwarded_by"] == [a.node_id]
    # the signed claim came back and is stored (A grants B results:write)
    stored = await trio.to_thread.run_sync(a.federation.claims.get, job["checksum"])
    assert [(cl.signer, cl.result) for cl in stored] == [(b.node_id, result)]
    # counted per peer; nothing went to C or back to A
    assert counter(a, "jobs_forwarded_total", peer="b") == 1
    assert counter(a, "jobs_forwarded_total", peer="c") == 0
    assert counter(b, "jobs_received_total", peer="a") == 1
    assert counter(b, "jobs_forwarded_total", peer="a") == 0
    assert nothing_ran(c)
    metrics = (await http.get(f"{a.url}/metrics")).text
    assert 'seamless_node_federation_jobs_forwarded_total{peer="b"} 1' in metrics
    peers = (await http.get(f"{a.url}/api/v1/peers")).json()["peers"]
    assert {p["name"]: p["jobs_forwarded"] for p in peers} == {"b": 1, "c": 0}

    # the /jobserver door forwards too, and answers as a local run would
    tf2 = tfs.python("def g(data):\n    return len(data) + 1\n", data=(big, "bytes"))
    await put(http, a, {cs: d for cs, d in tfs.buffers.items() if cs not in code and cs != data_cs})
    payload = {"transformation_dict": tf2, "tf_checksum": transformation_checksum(tf2), "tf_dunder": {},
               "scratch": False, "strict_dunder": False, "record": False}
    r = await http.request("GET", f"{a.url}/jobserver/run-transformation", json=payload)
    assert r.status_code == 200, r.text
    answer = json.loads(r.text)
    assert set(answer) == {"result_checksum", "record_runtime"}
    data = await a.context.buffers.read(answer["result_checksum"])
    assert celltypes.deserialize(data, "mixed") == 50 * MiB + 1
    assert counter(a, "jobs_forwarded_total", peer="b") == 2


async def test_placement_keeps_a_job_whose_inputs_are_here(cluster: Cluster, http: httpx.AsyncClient):
    a, b = await start(cluster, "a", "b")
    cluster.grant(b, a, "jobs:submit,buffers:read")
    await cluster.configure()
    tfs = Transformations()
    tf = tfs.python("def f(data):\n    return len(data)\n", data=(os.urandom(3 * MiB), "bytes"))
    await tfs.upload(http, a.url)
    job = await submit(http, a, tf)
    assert job["state"] == "done" and job["executor"] is None
    assert counter(a, "jobs_forwarded_total", peer="b") == 0
    assert nothing_ran(b)


async def test_forwarding_needs_a_jobs_submit_grant(cluster: Cluster, http: httpx.AsyncClient):
    """(c) C does not grant B jobs:submit: C refuses B's job, spawning nothing, and B's
    placement never picks C (it runs the job itself, fetching the input from C)."""
    b, c = await start(cluster, "b", "c")
    cluster.grant(c, b, "buffers:read,results:read")
    cluster.grant(b, c, "buffers:read")
    await cluster.configure()
    tfs = Transformations()
    big = os.urandom(4 * MiB)
    tf = tfs.python("def f(data):\n    return len(data)\n", data=(big, "bytes"))
    await tfs.upload(http, c.url)
    with pytest.raises(PeerRefused) as refused:
        await b.federation.client.call(c.node_id, "POST", "/federation/jobs", body_for(tf, [b.node_id]))
    assert refused.value.status == 403 and refused.value.reason == "not-granted"
    assert nothing_ran(c)
    assert counter(c, "refused_total", peer="b", reason="not-granted") == 1
    job = await submit(http, b, tf)
    assert job["state"] == "done" and job["executor"] is None
    assert celltypes.deserialize(await b.context.buffers.read(job["result"]), "mixed") == len(big)
    assert nothing_ran(c)


async def test_forwarding_is_not_transitive(cluster: Cluster, http: httpx.AsyncClient):
    """Rule 8: B forwards C's job to A. A must grant jobs:submit to C *and* forward to B."""
    a, b, c = await start(cluster, "a", "b", "c")
    cluster.grant(a, b, "jobs:submit")  # B may submit its own jobs, not forward others'
    cluster.grant(a, c, "buffers:read")  # A knows C, grants it no jobs
    cluster.peer(b, c)
    await cluster.configure()
    tfs = Transformations()
    tf = tfs.python("lambda: 41 + 1")
    inline = {cs: b64encode(d) for cs, d in tfs.buffers.items()}
    send = b.federation.client.call

    async def refused_reason() -> tuple[int, str]:
        with pytest.raises(PeerRefused) as exc:
            body = body_for(tf, [c.node_id, b.node_id], inline=inline)
            await send(a.node_id, "POST", "/federation/jobs", body, on_behalf_of=c.node_id)
        return exc.value.status, exc.value.reason

    assert await refused_reason() == (403, "not-granted")  # C holds no jobs:submit at A
    cluster.grant(a, c, "jobs:submit")
    await cluster.configure()
    assert await refused_reason() == (403, "not-granted")  # B holds no forward at A
    assert nothing_ran(a)
    cluster.grant(a, b, "forward")
    await cluster.configure()
    answer = await send(a.node_id, "POST", "/federation/jobs",
                        body_for(tf, [c.node_id, b.node_id], inline=inline), on_behalf_of=c.node_id)
    assert answer["state"] == "done"
    assert celltypes.deserialize(await a.context.buffers.read(answer["result"]), "mixed") == 42
    assert jobless(a).service.get(transformation_checksum(tf)).submitter == c.node_id


async def test_loops_and_hop_limits_are_refused(cluster: Cluster, http: httpx.AsyncClient):
    a, b, c = await start(cluster, "a", "b", "c")
    cluster.grant(a, b, "jobs:submit,forward,buffers:read")
    cluster.grant(a, c, "jobs:submit")
    cluster.grant(b, a, "jobs:submit,buffers:read")
    await cluster.configure()
    tfs = Transformations()
    tf = tfs.python("lambda: 7")
    send = b.federation.client.call
    # a forged hop list naming the executor: refused before anything runs
    with pytest.raises(PeerRefused) as exc:
        await send(a.node_id, "POST", "/federation/jobs", body_for(tf, [c.node_id, a.node_id, b.node_id]),
                   on_behalf_of=c.node_id)
    assert (exc.value.status, exc.value.reason) == (409, "forward-loop")
    # longer than max_hops (3)
    with pytest.raises(PeerRefused) as exc:
        await send(a.node_id, "POST", "/federation/jobs",
                   body_for(tf, [c.node_id, c.node_id, c.node_id, b.node_id]), on_behalf_of=c.node_id)
    assert (exc.value.status, exc.value.reason) == (409, "too-many-hops")
    # a hop list that does not end with its sender
    with pytest.raises(PeerRefused) as exc:
        await send(a.node_id, "POST", "/federation/jobs", body_for(tf, [c.node_id]), on_behalf_of=c.node_id)
    assert exc.value.status == 400
    assert nothing_ran(a)

    # A -> B -> A never happens: A sends B a job whose 2 MiB input only A holds. Left to
    # itself B would send it straight back (A holds everything); the hop list forbids it.
    big = os.urandom(2 * MiB)
    tf2 = tfs.python("def f(data):\n    return len(data)\n", data=(big, "bytes"))
    await tfs.upload(http, a.url)
    answer = await a.federation.client.call(b.node_id, "POST", "/federation/jobs", body_for(tf2, [a.node_id]))
    assert answer["state"] == "done"
    assert counter(b, "jobs_forwarded_total", peer="a") == 0
    assert counter(a, "refused_total", peer="b", reason="forward-loop") == 1  # only the forged one
    assert jobless(b).service.get(transformation_checksum(tf2)).executor is None


async def test_jobs_submit_limit_429(cluster: Cluster, http: httpx.AsyncClient):
    a, b = await start(cluster, "a", "b")
    cluster.grant(a, b, "jobs:submit", limits={"jobs:submit.max_concurrent": 1})
    await cluster.configure()
    slow_tfs, quick_tfs = Transformations(), Transformations()
    slow = slow_tfs.python("def f():\n    import time\n    time.sleep(60)\n")
    quick = quick_tfs.python("lambda: 1")
    slow_inline = {cs: b64encode(d) for cs, d in slow_tfs.buffers.items()}
    inline = {cs: b64encode(d) for cs, d in quick_tfs.buffers.items()}
    send = b.federation.client.call
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: send(
                a.node_id, "POST", "/federation/jobs", body_for(slow, [b.node_id], inline=slow_inline)
            )
        )
        await wait_for(lambda: job_pids(a), timeout=10)
        with pytest.raises(PeerRefused) as exc:
            await send(a.node_id, "POST", "/federation/jobs", body_for(quick, [b.node_id], inline=inline))
        assert (exc.value.status, exc.value.reason) == (429, "over-limit")
        assert jobless(a).service.counts["submitted"] == 1  # the refused one never became a job
        nursery.cancel_scope.cancel()  # B goes away: A kills the job it ran for B
    await wait_for(lambda: not job_pids(a), timeout=2)
    answer = await send(a.node_id, "POST", "/federation/jobs", body_for(quick, [b.node_id], inline=inline))
    assert answer["state"] == "done"


async def test_cancel_at_origin_kills_the_job_at_the_executor(cluster: Cluster, http: httpx.AsyncClient):
    """(d) cancelling at A kills the job's processes at B within 2 s."""
    a, b = await start(cluster, "a", "b")
    cluster.grant(b, a, "jobs:submit,buffers:read")
    cluster.grant(a, b, "jobs:submit")
    await cluster.configure()
    code = "def f(data):\n    import time\n    time.sleep(60)\n    return 0\n"
    tf, _ = await place_job(http, Transformations(), code, os.urandom(2 * MiB), code_at=a, data_at=[b])
    job = await submit(http, a, tf, wait=0)
    assert job["state"] in ("queued", "running")
    await wait_for(lambda: job_pids(b), timeout=10)
    pids = job_pids(b)
    assert jobless(a).service.get(job["checksum"]).state.value == "running"
    # the same job sent back to A (which forwards it to B) would wait for itself: refused
    with pytest.raises(PeerRefused) as exc:
        await b.federation.client.call(a.node_id, "POST", "/federation/jobs", body_for(tf, [b.node_id]))
    assert (exc.value.status, exc.value.reason) == (409, "forward-loop")
    r = await http.delete(f"{a.url}/api/v1/jobs/{job['checksum']}")
    assert r.json()["cancelled"] is True
    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    took = await wait_for(lambda: not any(alive(p) for p in pids), timeout=2)
    assert took < 2
    await wait_for(lambda: jobless(b).service.get(job["checksum"]).state.value == "cancelled", timeout=2)
    assert jobless(a).service.get(job["checksum"]).state.value == "cancelled"
    assert not job_pids(b) and not jobless(a).backend.workers


async def test_a_refused_job_runs_here(cluster: Cluster, http: httpx.AsyncClient):
    """A peer that turns the job down (here: it revoked A's jobs:submit link, which A does
    not know) costs one round trip; the job runs at the origin, inputs fetched on miss."""
    a, b = await start(cluster, "a", "b")
    jobs_link = cluster.grant(b, a, "jobs:submit")
    cluster.grant(b, a, "buffers:read")
    await cluster.configure()
    (b.data_dir / "revocations.yaml").write_text(f"links: [{{serial: {jobs_link.link.serial}}}]\n")
    await b.federation.watcher.refresh(force=True)
    code = "def f(data):\n    return len(data) + 5\n"
    tf, _ = await place_job(http, Transformations(), code, os.urandom(2 * MiB), code_at=a, data_at=[b])
    job = await submit(http, a, tf)
    assert job["state"] == "done" and job["executor"] is None
    assert celltypes.deserialize(await a.context.buffers.read(job["result"]), "mixed") == 2 * MiB + 5
    assert counter(a, "jobs_forward_failed_total", peer="b", reason="refused") == 1
    assert nothing_ran(b)


async def test_a_job_whose_executor_is_lost_runs_here(cluster: Cluster, http: httpx.AsyncClient):
    """The executor goes away mid-job: the origin runs the job itself (its input fetched
    from the other peer holding it)."""
    a, b, c = await start(cluster, "a", "b", "c")
    for peer in (b, c):
        cluster.grant(peer, a, "jobs:submit,buffers:read")
    await cluster.configure()
    tfs, big = Transformations(), os.urandom(2 * MiB)
    code = "def f(data):\n    import time\n    time.sleep(1)\n    return len(data)\n"
    tf, data_cs = await place_job(http, tfs, code, big, code_at=a, data_at=[b, c])
    job = await submit(http, a, tf, wait=0)
    await wait_for(lambda: job_pids(b) or job_pids(c), timeout=10)
    lost, other = (b, c) if job_pids(b) else (c, b)
    lost.stop()
    r = await http.get(f"{a.url}/api/v1/jobs/{job['checksum']}", params={"wait": 30})
    done = r.json()["job"]
    assert done["state"] == "done" and done["executor"] is None, done
    assert celltypes.deserialize(await a.context.buffers.read(done["result"]), "mixed") == 2 * MiB
    reasons = ("unreachable", "refused", "bad-answer")
    assert sum(counter(a, "jobs_forward_failed_total", peer=lost.name, reason=r) for r in reasons) == 1
    assert nothing_ran(other)
