"""The Dask backend against a LocalCluster started here: jobs run, fail and cancel as on
the local pool, with the same result checksums."""

from __future__ import annotations

import json
import time

import pytest
import trio

from node.transformation import transformation_checksum

from .support import JOBLESS, Transformations, processes_matching, wait_for

distributed = pytest.importorskip("distributed")


@pytest.fixture
async def cluster():
    def start():
        return distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        )

    cluster = await trio.to_thread.run_sync(start)
    try:
        yield cluster
    finally:
        await trio.to_thread.run_sync(cluster.close)


async def test_dask_runs_fails_and_cancels(start_node, http, cluster):
    dask = {"backend": "dask", "dask_scheduler": cluster.scheduler_address}
    node = await start_node(node=JOBLESS, jobless=dask)
    url = node.url
    tfs = Transformations()
    add = tfs.python("def add(a, b):\n    return a * 100 + b\n", a=4, b=3)
    bash = tfs.bash("echo $greeting > RESULT; cat data >> RESULT", greeting="hi", data=b"raw\n")
    failing = tfs.python("def f():\n    raise KeyError('missing')\n")
    sandboxed = tfs.bash(f"id -u > RESULT; if [ -e {node.config.node.data_dir} ]; then echo visible; "
                         "else echo absent; fi >> RESULT")
    slow = tfs.bash("sleep 1004 & sleep 1004; wait")
    await tfs.upload(http, url)

    async def submit(tf, wait=60):
        r = await http.post(f"{url}/api/v1/jobs", params={"wait": wait}, json={"transformation": tf})
        return r.json()["job"]

    job = await submit(add)
    assert job["state"] == "done", job
    # the checksum that in-process Seamless gives (mixed 403)
    assert job["result"] == "97a58cc66d1cd6b51466af8ed52d6a38053b5572fee09a0ae8859c26b82bdf67"
    job = await submit(bash)
    assert job["state"] == "done"
    assert (await http.get(f"{url}/buffers/{job['result']}")).content == b"hi\nraw\n"
    job = await submit(sandboxed)  # the runner on the worker sandboxes the job as the local pool does
    assert (await http.get(f"{url}/buffers/{job['result']}")).content == b"65534\nabsent\n"
    job = await submit(failing)
    assert job["state"] == "failed" and "KeyError: 'missing'" in job["error"]

    job = await submit(slow, wait=0)
    cs = transformation_checksum(slow)
    await wait_for(lambda: len(processes_matching("sleep 1004")) >= 2, timeout=30)
    started = time.monotonic()
    r = await http.delete(f"{url}/api/v1/jobs/{cs}", params={"hard": 1})
    assert r.json()["job"]["state"] == "cancelled"
    await wait_for(lambda: not processes_matching("sleep 1004", "node.roles.jobless.runner"), timeout=2)
    assert time.monotonic() - started < 2
    r = await http.post(f"{url}/api/v1/database/read", json={"type": "transformation", "checksum": cs})
    assert r.status_code == 404
    # both Dask workers are free again: two jobs run side by side
    quick = [tfs.bash(f"sleep 0.5; echo {n} > RESULT") for n in range(2)]
    await tfs.upload(http, url)
    done = []

    async def one(tf):
        done.append((await submit(tf))["state"])

    start = time.monotonic()
    async with trio.open_nursery() as nursery:
        for tf in quick:
            nursery.start_soon(one, tf)
    assert done == ["done", "done"] and time.monotonic() - start < 5
    info = json.loads((await http.get(f"{url}/api/v1/jobs")).text)["backend"]
    assert info["backend"] == "dask" and info["busy"] == 0
