"""The real Seamless 1.x clients (seamless-transformer 0.6.1 / seamless-remote 0.4.0)
against a node with buffers, database and jobless: Python transformations with
``delayed`` and bash commands with ``seamless-run``, executed remotely through the
node's ``/jobserver``, give the same result checksums as in-process execution, and a
second run is a cache hit. The clients run in their own processes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import httpx

from .support import HERE, run_tool, venv_script

JOBLESS = {"roles": ["buffers", "database", "jobless"]}


def client_env(home: Path, url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEAMLESS_")}
    home.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    if url is not None:
        env["SEAMLESS_REMOTE_CLIENTS"] = json.dumps({
            "buffer": [{"readonly": False, "remote_url": url + "/buffers"}],
            "database": [{"readonly": False, "remote_url": url + "/database"}],
        })
        env["SEAMLESS_JOBSERVER_URL"] = url + "/jobserver"
    return env


def result_line(stdout: bytes) -> dict:
    line = next(x for x in stdout.decode().splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


async def jobs_of(url: str) -> dict:
    async with httpx.AsyncClient() as http:
        return (await http.get(url + "/api/v1/jobs")).json()


async def test_delayed_python_through_the_jobserver(start_node, tmp_path):
    node = await start_node(node=JOBLESS)
    driver = [sys.executable, str(HERE / "delayed_driver.py")]
    local = await run_tool([*driver, "local"], env=client_env(tmp_path / "h1", None), cwd=tmp_path,
                           timeout=120)
    assert local.returncode == 0, local.stderr[-3000:]
    remote = await run_tool([*driver, "remote", node.url], env=client_env(tmp_path / "h2", None),
                            cwd=tmp_path, timeout=120)
    assert remote.returncode == 0, remote.stderr[-3000:]
    expected, got = result_line(local.stdout), result_line(remote.stdout)
    assert got == expected
    assert got["add"]["checksum"] == hashlib.sha256(b"403\n").hexdigest()

    listing = await jobs_of(node.url)
    ran = {job["result"] for job in listing["jobs"] if job["state"] == "done"}
    assert ran == {entry["checksum"] for entry in expected.values()}  # every one ran on the node
    submitted = listing["counts"]["submitted"]

    again = await run_tool([*driver, "remote", node.url], env=client_env(tmp_path / "h3", None),
                           cwd=tmp_path, timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert result_line(again.stdout) == expected
    assert (await jobs_of(node.url))["counts"]["submitted"] == submitted  # cache hits: nothing ran


async def test_seamless_run_bash_through_the_jobserver(start_node, tmp_path):
    remote_node = await start_node(node=JOBLESS)
    local_node = await start_node(node={"roles": ["buffers", "database"]})
    work = tmp_path / "work"
    (work / "indir" / "sub").mkdir(parents=True)
    (work / "input.txt").write_text("banana\napple\ncherry\n")
    (work / "indir" / "a.txt").write_text("A\n")
    (work / "indir" / "sub" / "b.txt").write_text("B\n")
    commands = [
        ["wc -l input.txt; cat input.txt | tr a-z A-Z"],
        ["--var", "count=2", "head -n $count input.txt; echo $count"],
        ["-cp", "sorted.txt", "sort input.txt > sorted.txt; echo sorted"],
        ["-i", "indir", "ls -R indir; cat indir/a.txt indir/sub/b.txt"],
    ]
    tools = {
        "remote": [sys.executable, str(HERE / "seamless_run_remote.py")],
        # the plain command: with SEAMLESS_REMOTE_CLIENTS it executes in-process
        "local": [venv_script("seamless-run")],
    }
    outputs = {}
    for n, args in enumerate(commands):
        for where, node in (("remote", remote_node), ("local", local_node)):
            cwd = tmp_path / f"{where}{n}"
            shutil.copytree(work, cwd)
            run = await run_tool([*tools[where], *args], env=client_env(tmp_path / f"h-{where}", node.url),
                                 cwd=cwd, timeout=120)
            assert run.returncode == 0, (args, where, run.stderr[-3000:])
            outputs[(n, where)] = run.stdout
    # (in-process execution also echoes the job's stdout, so only the remote output is exact)
    assert outputs[(0, "remote")] == b"3 input.txt\nBANANA\nAPPLE\nCHERRY\n"
    assert outputs[(1, "remote")] == b"banana\napple\n2\n"
    assert outputs[(3, "remote")].endswith(b"A\nB\n")
    assert (tmp_path / "remote2" / "sorted.txt").read_text() == "apple\nbanana\ncherry\n"
    assert (tmp_path / "local2" / "sorted.txt").read_text() == "apple\nbanana\ncherry\n"

    listing = await jobs_of(remote_node.url)
    done = [job for job in listing["jobs"] if job["origin"] == "jobserver"]
    assert len(done) == len(commands) and {job["state"] for job in done} == {"done"}, done
    async with httpx.AsyncClient() as http:
        for job in done:  # the local run recorded the same transformation -> result
            query = {"type": "transformation", "checksum": job["checksum"]}
            r = await http.post(local_node.url + "/api/v1/database/read", json=query)
            assert r.status_code == 200 and r.json()["value"] == job["result"], job

    # a second run is a cache hit: same output, nothing submitted to the jobserver
    env = client_env(tmp_path / "h-again", remote_node.url)
    again = await run_tool([*tools["remote"], *commands[0]], env=env, cwd=tmp_path / "remote0", timeout=120)
    assert again.returncode == 0 and again.stdout == outputs[(0, "remote")]
    assert (await jobs_of(remote_node.url))["counts"]["submitted"] == len(commands)
