"""The Slurm backend against slurmctld + slurmd + munged on localhost (started here, as
root): jobs run, fail and cancel as on the local pool, with the same result checksums."""

from __future__ import annotations

import time

import pytest
import trio

from node.roles.jobless.backends.slurm import batch_script, parse_squeue
from node.transformation import transformation_checksum

from .slurm_cluster import SlurmCluster, Unavailable
from .support import JOBLESS, Transformations, processes_matching, wait_for


@pytest.fixture
async def slurm(tmp_path, monkeypatch):
    cluster = SlurmCluster(tmp_path / "slurm")
    try:
        await trio.to_thread.run_sync(cluster.start)
    except Unavailable as exc:
        pytest.skip(f"no Slurm test cluster: {exc}")
    monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
    try:
        yield cluster
    finally:
        await trio.to_thread.run_sync(cluster.stop)


def test_batch_script_and_squeue_parsing():
    header = ("--time=10", "#SBATCH --mem=1G")
    script = batch_script("/j/spec", "/j/outcome", "/j/work", name="seamless-abc", log_path="/j/log",
                          partition="short", header=header, python="/opt/py b/python")
    assert script.splitlines() == [
        "#!/bin/bash",
        "#SBATCH --job-name=seamless-abc",
        "#SBATCH --output=/j/log",
        "#SBATCH --partition=short",
        "#SBATCH --time=10",
        "#SBATCH --mem=1G",
        "exec '/opt/py b/python' -m node.roles.jobless.runner /j/spec /j/outcome /j/work",
    ]
    assert parse_squeue("12 RUNNING\n13 completed\n\n") == {"12": "RUNNING", "13": "COMPLETED"}


async def test_slurm_runs_fails_and_cancels(start_node, http, slurm, tmp_path):
    jobless = {"backend": "slurm", "slurm_poll_interval": 0.2, "jobs_dir": str(tmp_path / "shared-jobs"),
               "slurm_header": ["--time=5"]}
    node = await start_node(node=JOBLESS, jobless=jobless)
    url = node.url
    tfs = Transformations()
    add = tfs.python("def add(a, b):\n    return a * 100 + b\n", a=4, b=3)
    bash = tfs.bash("echo $greeting > RESULT; cat data >> RESULT", greeting="hi", data=b"raw\n")
    failing = tfs.bash("echo bad >&2; exit 4")
    sandboxed = tfs.bash(f"id -u > RESULT; if [ -e {node.config.node.data_dir} ]; then echo visible; "
                         "else echo absent; fi >> RESULT")
    slow = tfs.bash("sleep 1005 & sleep 1005; wait")
    await tfs.upload(http, url)

    async def submit(tf, wait=60):
        r = await http.post(f"{url}/api/v1/jobs", params={"wait": wait}, json={"transformation": tf})
        return r.json()["job"]

    job = await submit(add)
    assert job["state"] == "done", job
    assert job["result"] == "97a58cc66d1cd6b51466af8ed52d6a38053b5572fee09a0ae8859c26b82bdf67"
    job = await submit(bash)
    assert job["state"] == "done"
    assert (await http.get(f"{url}/buffers/{job['result']}")).content == b"hi\nraw\n"
    job = await submit(sandboxed)  # the runner on the worker sandboxes the job as the local pool does
    assert (await http.get(f"{url}/buffers/{job['result']}")).content == b"65534\nabsent\n"
    job = await submit(failing)
    assert job["state"] == "failed" and "Return code 4" in job["error"] and "bad" in job["error"]

    await submit(slow, wait=0)
    cs = transformation_checksum(slow)
    await wait_for(lambda: len(processes_matching("sleep 1005")) >= 2, timeout=30)
    assert (await http.get(f"{url}/api/v1/jobs/{cs}")).json()["job"]["state"] == "running"
    started = time.monotonic()
    r = await http.delete(f"{url}/api/v1/jobs/{cs}")
    assert r.json()["job"]["state"] == "cancelled"
    await wait_for(lambda: not processes_matching("sleep 1005", "node.roles.jobless.runner"), timeout=2)
    assert time.monotonic() - started < 2
    r = await http.post(f"{url}/api/v1/database/read", json={"type": "transformation", "checksum": cs})
    assert r.status_code == 404
    again = tfs.bash("echo again > RESULT")
    await tfs.upload(http, url)
    assert (await submit(again))["state"] == "done"  # Slurm runs the next job
