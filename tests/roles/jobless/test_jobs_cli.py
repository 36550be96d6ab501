"""seamless-node submit / status / cancel / jobs against a node process."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx

from node.transformation import transformation_checksum

from .support import Transformations


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=60)


def test_submit_status_cancel_jobs(node_process, tmp_path):
    proc = node_process("--roles", "buffers,database,jobless")
    tfs = Transformations()
    ok = tfs.python("def f(x):\n    return x + 1\n", x=41)
    slow = tfs.bash("sleep 1000 & sleep 1000; wait")
    with httpx.Client() as http:
        for cs, data in tfs.buffers.items():
            assert http.put(f"{proc.url}/buffers/{cs}", content=data).status_code == 200
    (tmp_path / "ok.json").write_text(json.dumps(ok))
    (tmp_path / "slow.json").write_text(json.dumps({"transformation": slow}))

    r = cli("submit", str(tmp_path / "ok.json"), "--wait", "30", "--url", proc.url)
    assert r.returncode == 0, r.stderr
    cs = transformation_checksum(ok)
    assert f"job      {cs}" in r.stdout and "state    done" in r.stdout and "result   " in r.stdout

    r = cli("status", cs, "--url", proc.url, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "done"

    r = cli("submit", str(tmp_path / "slow.json"), "--url", proc.url)
    assert r.returncode == 0 and ("state    queued" in r.stdout or "state    running" in r.stdout)
    slow_cs = transformation_checksum(slow)
    deadline = time.monotonic() + 10
    while "running" not in cli("status", slow_cs, "--url", proc.url).stdout:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = cli("jobs", "--url", proc.url)
    assert r.returncode == 0 and "backend: local" in r.stdout
    assert slow_cs[:16] in r.stdout and cs[:16] in r.stdout

    r = cli("cancel", slow_cs, "--url", proc.url)
    assert r.returncode == 0 and "cancelled" in r.stdout
    r = cli("status", slow_cs, "--url", proc.url)
    assert r.returncode == 1 and "state    cancelled" in r.stdout

    r = cli("status", "0" * 64, "--url", proc.url)
    assert r.returncode == 2 and "no job" in r.stderr
    r = cli("status", "nothex", "--url", proc.url)
    assert r.returncode == 2
    (tmp_path / "bad.json").write_text(json.dumps({**ok, "__nope__": 1}))
    r = cli("submit", str(tmp_path / "bad.json"), "--url", proc.url)
    assert r.returncode == 2 and "unknown transformation dunder key" in r.stderr
