"""Cancelling a job kills it for real (security.md rule 12), through every door.

A bash job ``sleep 1000 & sleep 1000; wait`` and a Python busy loop are cancelled with
``DELETE /api/v1/jobs/<cs>`` (soft and hard), ``POST /jobserver/cancel-transformation``,
and by the only waiting client going away (after ``jobless.orphan_grace``). Each time:
within 2 s none of the job's processes exist, no result is recorded, and the worker
slot is free again (a new job runs at once).
"""

from __future__ import annotations

import time

import httpx
import pytest
import trio

from node.transformation import transformation_checksum
from tests.roles.jobless.support import JOBLESS, Transformations, job_processes, processes_matching, wait_for

BASH = "sleep 1000 & sleep 1000; wait"
PYTHON = "def spin():\n    while True:\n        pass\n"


def make(kind: str, tfs: Transformations, salt: str) -> dict:
    if kind == "bash":
        return tfs.bash(BASH, salt=salt)
    return tfs.python(PYTHON.replace("spin", "spin_" + salt.replace("-", "_")))


@pytest.mark.parametrize("kind", ["bash", "python"])
@pytest.mark.parametrize("door", ["api-soft", "api-hard", "jobserver", "disconnect"])
async def test_cancel_kills_the_job(start_node, http, kind, door):
    node = await start_node(node=JOBLESS, jobless={"workers": 1, "orphan_grace": 0.5})
    url = node.url
    tfs = Transformations()
    tf = make(kind, tfs, door)
    quick = tfs.bash("echo quick > RESULT")
    await tfs.upload(http, url)
    cs = transformation_checksum(tf)
    expected = 3 if kind == "bash" else 1  # bash + two sleeps, or the Python job process

    async with trio.open_nursery() as nursery:
        poll_scope = trio.CancelScope()
        if door in ("jobserver", "disconnect"):
            async def poll() -> None:
                body = {"transformation_dict": tf, "tf_checksum": cs, "tf_dunder": {}}
                with poll_scope:
                    async with httpx.AsyncClient(timeout=60) as own:
                        await own.request("GET", f"{url}/jobserver/run-transformation", json=body)

            nursery.start_soon(poll)
        else:
            r = await http.post(f"{url}/api/v1/jobs", json={"transformation": tf})
            assert r.status_code == 202
        await wait_for(lambda: len(job_processes()) >= expected, timeout=10)
        # the processes can exist a moment before the service marks the job running
        with trio.fail_after(5):
            while (await http.get(f"{url}/api/v1/jobs/{cs}")).json()["job"]["state"] != "running":
                await trio.sleep(0.02)

        started = time.monotonic()
        if door == "api-soft":
            r = await http.delete(f"{url}/api/v1/jobs/{cs}")
            assert r.json()["cancelled"] is True
        elif door == "api-hard":
            r = await http.delete(f"{url}/api/v1/jobs/{cs}", params={"hard": 1})
            assert r.json()["job"]["state"] == "cancelled"
        elif door == "jobserver":
            r = await http.post(f"{url}/jobserver/cancel-transformation/{cs}")
            assert r.json() == {"canceled": True, "status": "canceled"}
        else:
            poll_scope.cancel()  # the only client goes away
        await wait_for(lambda: not job_processes(), timeout=2 + (0.5 if door == "disconnect" else 0))
        elapsed = time.monotonic() - started
        poll_scope.cancel()

    assert elapsed < 2 + (0.5 if door == "disconnect" else 0)
    job = (await http.get(f"{url}/api/v1/jobs/{cs}")).json()["job"]
    assert job["state"] == "cancelled" and job["result"] is None
    r = await http.post(f"{url}/api/v1/database/read", json={"type": "transformation", "checksum": cs})
    assert r.status_code == 404  # no result recorded
    # the slot is free: the next job runs at once on the only worker
    r = await http.post(f"{url}/api/v1/jobs", params={"wait": 10}, json={"transformation": quick})
    assert r.json()["job"]["state"] == "done"
    info = (await http.get(f"{url}/api/v1/jobs")).json()["backend"]
    assert info["busy"] == 0 and info["slots"] == 1


async def test_hard_cancel_ignores_other_waiters(start_node, http):
    node = await start_node(node=JOBLESS, jobless={"workers": 1})
    tfs = Transformations()
    tf = tfs.bash(BASH, salt="hard")
    await tfs.upload(http, node.url)
    cs = transformation_checksum(tf)
    for _ in range(3):  # three holders
        await http.post(f"{node.url}/api/v1/jobs", json={"transformation": tf})
    await wait_for(lambda: len(job_processes()) >= 3, timeout=10)
    r = await http.delete(f"{node.url}/api/v1/jobs/{cs}")  # soft: two holders remain
    assert r.json()["job"]["state"] == "running"
    assert job_processes()
    r = await http.delete(f"{node.url}/api/v1/jobs/{cs}", params={"hard": 1})
    assert r.json()["job"]["state"] == "cancelled"
    await wait_for(lambda: not job_processes(), timeout=2)


async def test_killed_node_leaves_no_job_processes(node_process, http, tmp_path):
    """SIGKILL of the node (no shutdown at all): its workers see their input end and kill
    their jobs; the processes forked ahead die with their workers (PR_SET_PDEATHSIG)."""
    proc = node_process("--roles", "buffers,database,jobless", data_dir=tmp_path / "killed")
    tfs = Transformations()
    tf = tfs.bash("sleep 1008 & sleep 1008; wait")
    await tfs.upload(http, proc.url)
    r = await http.post(f"{proc.url}/api/v1/jobs", json={"transformation": tf})
    assert r.status_code == 202
    marker = str(tmp_path / "killed")
    await wait_for(lambda: len(processes_matching("sleep 1008")) >= 2, timeout=10)
    assert processes_matching(marker)  # the workers, started with the node's data dir
    proc.kill()
    await wait_for(lambda: not processes_matching("sleep 1008", marker), timeout=2)
